"""The repository's contracts: one dependency list in two files, the CLI, the scale-out configs."""
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    norm = lambda reqs: sorted(r.replace(" ", "").lower().replace("_", "-") for r in reqs)
    assert norm(pip) == norm(wanted), "environment.yml and pyproject.toml must list the same requirements"


def test_torch_pins_live_only_in_the_makefile():
    pins = re.findall(r"torch==[\d.]+", (ROOT / "Makefile").read_text())
    assert pins == ["torch==2.14.1"]
    for f in ("pyproject.toml", "environment.yml", ".ci/run"):
        assert "torch==" not in (ROOT / f).read_text(), f


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci/run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_console_script_runs():
    res = subprocess.run([sys.executable, "-m", "photochat_lib.apps.cli", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0 and "usage: photochat" in res.stdout, res.stderr


@pytest.mark.parametrize("cmd", [["data"], ["train"], ["evaluate"], ["chat"], ["pretrain"], ["estimate-memory"],
                                 ["demo"], ["data", "toy"], ["data", "stats"], ["data", "download"]])
def test_every_command_has_help(cmd, capsys):
    from photochat_lib.apps.cli import build_parser
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*cmd, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: photochat " + " ".join(cmd))
    parser = build_parser()
    for action in _subparser(parser, cmd)._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 10, f"{cmd} {action.option_strings} has no help string"


def _subparser(parser, cmd):
    import argparse
    for word in cmd:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


@pytest.mark.parametrize("name,kind", [("deepspeed_zero2.yaml", "DEEPSPEED"), ("fsdp.yaml", "FSDP")])
def test_scale_out_configs_are_valid_accelerate_configs(name, kind):
    from accelerate.commands.config.config_args import ClusterConfig
    cfg = ClusterConfig.from_yaml_file(ROOT / "photochat_lib" / "configs" / "accelerate" / name)
    assert cfg.distributed_type.value == kind and cfg.mixed_precision == "fp16"


def test_release_hygiene_version_urls_changelog_and_types():
    """Issue 21: `photochat --version` failed; there was no __version__, CHANGELOG, py.typed or Project-URLs."""
    import photochat_lib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert photochat_lib.__version__ == project["project"]["version"]
    out = subprocess.run([sys.executable, "-m", "photochat_lib.apps.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"photochat {photochat_lib.__version__}", out
    repo = project["tool"]["photochat"]["course"]["repository"].rstrip("/")
    urls = project["project"]["urls"]
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(urls) and all(u.startswith(repo) for u in urls.values())
    assert (ROOT / "photochat_lib" / "py.typed").exists() and "py.typed" in project["tool"]["setuptools"]["package-data"]["photochat_lib"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {photochat_lib.__version__}" in changelog


@pytest.mark.slow
def test_the_wheel_holds_everything_a_user_runs(tmp_path):
    """Issue 21 (release hygiene): the wheel `make dist` builds, installed on its own into a folder outside the
    repository (its dependencies from this environment), loads the shipped toy model, reads the wording set,
    answers `photochat --version` and carries py.typed and the committed reports; nothing of tests/ or notebooks/
    goes in. Notebook 07, which shows those reports, runs top to bottom from that install alone, as on Colab."""
    import zipfile
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(ROOT)],
                   check=True, timeout=600, capture_output=True)
    wheel = next(dist.glob("photochat_lib-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "photochat_lib/py.typed" in names and "photochat_lib/toy/checkpoints/toy-end2end/README.md" in names
    assert {"photochat_lib/reports/toy_results.json", "photochat_lib/reports/when_end2end_helps.md"} <= set(names)
    assert not [n for n in names if n.startswith(("tests/", "notebooks/", "book/", "benchmarks/"))]
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=600, capture_output=True)
    code = ("import photochat_lib, sys; assert photochat_lib.__file__.startswith(sys.argv[1]), photochat_lib.__file__\n"
            "from photochat_lib.presets import load_toy_model\n"
            "from photochat_lib.data.wording import read_source\n"
            "m = load_toy_model(which='end2end'); print('loaded', m.config.mode, len(read_source('test')))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and "loaded end2end" in out.stdout, out.stderr[-2000:]
    version = subprocess.run([sys.executable, "-m", "photochat_lib.apps.cli", "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert version.stdout.strip().startswith("photochat 0."), version.stderr
    course = tmp_path / "course"                         # a notebook alone, as Colab opens it: no repository around
    course.mkdir()
    shutil.copy(ROOT / "notebooks" / "07_evaluation.ipynb", course)
    run = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                          "--output", "executed.ipynb", "--ExecutePreprocessor.timeout=1200", "07_evaluation.ipynb"],
                         cwd=course, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    executed = json.loads((course / "executed.ipynb").read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors and any("toy_results" in json.dumps(c.get("source")) for c in executed["cells"])
