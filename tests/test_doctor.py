"""photochat doctor: does the installed torch build have kernels for this machine's GPU?

No GPU needed: the GPU (name, compute capability, count) and the build's architecture list are mocked, so each
case reads as the machine it stands for: a V100 with PyPI's CUDA 13.0 torch, a V100 with the CUDA 12.6 build,
Colab's T4, an H100, a laptop without CUDA. The Makefile's `TORCH_CUDA` switch is checked with a dry run.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from photochat_lib.utils import doctor
from photochat_lib.apps.cli import main

ROOT = Path(__file__).resolve().parents[1]
CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]          # PyPI's torch 2.14.1 (x86_64)
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]   # download.pytorch.org/whl/cu126
PINS = re.search(r"^TORCH_PINS_X86_64 := (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
V100_FIX = f"pip install {' '.join(p + '+cu126' for p in PINS)} --index-url https://download.pytorch.org/whl/cu126"


@pytest.fixture
def machine(monkeypatch):
    """Make torch see `count` GPUs called `name` of `capability` and a build compiled for `arch_list`."""
    def fake(name: str = "", capability: tuple[int, int] = (0, 0), arch_list: list[str] = CU130,
             cuda: str | None = "13.0", count: int = 1) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
        monkeypatch.setattr(torch.version, "cuda", cuda)
        monkeypatch.setattr(doctor, "_host", lambda: "x86_64")
        # the versions a `make install` venv holds, whatever this test venv has
        monkeypatch.setattr(doctor, "_installed_pins", lambda: PINS)
    return fake


def test_v100_on_the_default_cu130_build_is_refused_with_the_cu126_fix(machine):
    machine("Tesla V100-SXM2-32GB", (7, 0), CU130)
    with pytest.raises(RuntimeError) as err:
        doctor.require_supported_gpu()
    message = str(err.value)
    assert "\n" not in message
    for part in ("Tesla V100-SXM2-32GB", "7.0", "sm_70", " ".join(CU130), V100_FIX, "make install TORCH_CUDA=cu126"):
        assert part in message, part


@pytest.mark.parametrize("name,capability,arch_list,cuda", [
    ("Tesla V100-SXM2-32GB", (7, 0), CU126, "12.6"),   # the lab V100 with the CUDA 12.6 build
    ("Tesla T4", (7, 5), CU130, "13.0"),               # Colab
    ("NVIDIA A100-SXM4-80GB", (8, 0), CU130, "13.0"),
    ("NVIDIA H100 80GB HBM3", (9, 0), CU130, "13.0"),
], ids=["v100-cu126", "t4", "a100", "h100"])
def test_supported_gpus_pass(machine, name, capability, arch_list, cuda):
    machine(name, capability, arch_list, cuda)
    doctor.require_supported_gpu()
    assert [d["supported"] for d in doctor.gpu_report()["devices"]] == [True]


def test_a_cpu_only_machine_passes(machine):
    machine(count=0)
    doctor.require_supported_gpu()
    report = doctor.gpu_report()
    assert report["devices"] == [] and report["cuda_available"] is False


def test_gpu_report_lists_versions_archs_and_devices(machine):
    machine("Tesla V100-SXM2-32GB", (7, 0), CU130, count=2)
    report = doctor.gpu_report()
    assert report["torch"] == torch.__version__ and report["cuda"] == "13.0" and report["arch_list"] == CU130
    assert report["devices"] == [{"index": i, "name": "Tesla V100-SXM2-32GB", "capability": (7, 0), "supported": False}
                                 for i in range(2)]


@pytest.mark.parametrize("capability,arch_list,cuda,expected", [
    ((7, 0), CU130, None, False),          # V100: the default build has no Volta
    ((7, 0), CU126, None, True),
    ((8, 6), ["sm_80"], None, True),       # a lower minor of the same major runs
    ((8, 0), ["sm_86"], None, False),      # ... a higher one does not
    ((9, 0), ["sm_80"], None, False),      # nor another major
    ((9, 0), ["sm_90a"], None, True),      # arch-specific suffixes count as their number
    ((8, 0), ["compute_80"], None, True),  # PTX entries count like sm_ ones (torch's rule: same major only)
    ((7, 2), ["sm_70"], "13.0", False),    # Jetson Xavier: dGPU kernels do not run ...
    ((7, 2), ["sm_70"], "13.2", True),     # ... until CUDA 13.2
    ((7, 0), [], None, False),
    ((7, 0), ["gfx90a"], None, False),     # a ROCm name is not a CUDA architecture
])
def test_supported_follows_torchs_rule(capability, arch_list, cuda, expected):
    assert doctor.supported(capability, arch_list, cuda) is expected


@pytest.mark.skipif(not hasattr(torch.cuda, "_code_compatible_with_device"), reason="torch < 2.14 has no such check")
@pytest.mark.parametrize("cuda", ["12.6", "13.0", "13.2"])
def test_supported_agrees_with_torchs_own_check(monkeypatch, cuda):
    monkeypatch.setattr(torch.version, "cuda", cuda)
    for code in torch.cuda.DEVICE_REQUIREMENT:
        for device in range(50, 130):
            assert doctor.supported((device // 10, device % 10), [f"sm_{code}"], cuda) \
                == torch.cuda._code_compatible_with_device(device, code), (code, device)


def test_install_hint_names_the_build_that_has_the_gpu(machine):
    machine()
    assert doctor.install_hint((7, 0)) == V100_FIX
    assert doctor.install_hint((12, 0)).endswith("--index-url https://download.pytorch.org/whl/cu130")  # Blackwell
    assert doctor.install_hint((3, 7)).startswith("none: no CUDA build")                           # K80


@pytest.mark.parametrize("name,capability,arch_list,count,code", [
    ("Tesla V100-SXM2-32GB", (7, 0), CU130, 1, 1),
    ("Tesla V100-SXM2-32GB", (7, 0), CU126, 1, 0),
    ("Tesla T4", (7, 5), CU130, 1, 0),
    ("", (0, 0), CU130, 0, 0),
], ids=["v100-cu130", "v100-cu126", "t4", "cpu"])
def test_photochat_doctor_exit_code(machine, capsys, name, capability, arch_list, count, code):
    machine(name, capability, arch_list, count=count)
    assert main(["doctor"]) == code
    out = capsys.readouterr().out
    assert "torch " in out and " ".join(arch_list) in out
    if code:
        assert "verdict: mismatch" in out and V100_FIX in out and "make install TORCH_CUDA=cu126" in out
    else:
        assert "verdict: ok" in out


def _make_dry_run(tmp_path: Path, *variables: str) -> str:
    """`make -n install` into a venv that does not exist: prints the recipe, runs none of it (make is what the
    README's two commands need, so it is there wherever the project is installed)."""
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CUDA"}
    res = subprocess.run(["make", "-n", "install", f"VENV={venv}", *variables], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert not venv.exists(), "a dry run must not create the venv"
    return res.stdout


def test_make_install_torch_cuda_cu126_installs_the_pins_from_the_cu126_index(tmp_path):
    out = _make_dry_run(tmp_path, "TORCH_CUDA=cu126")
    assert "--index-url https://download.pytorch.org/whl/cu126" in out
    assert V100_FIX.removeprefix("pip install ") in out   # the same command `photochat doctor` prints
    assert ".photochat-installed-cu126" in out            # its own stamp: reinstalls over a default venv


def test_make_install_default_installs_the_pins_from_pypi(tmp_path):
    out = _make_dry_run(tmp_path)
    assert f"pip install --quiet {' '.join(PINS)};" in out and "--index-url" not in out
    assert re.search(r"touch \S+/\.photochat-installed$", out, re.M)


def test_train_evaluate_and_chat_stop_at_start_up_with_the_fix(machine, tmp_path, capsys):
    """On a V100 under the CUDA 13 build, the commands that touch the GPU stop before loading anything, in one
    line (exit 2), instead of failing at the first kernel launch with "no kernel image is available"."""
    import argparse
    import io

    from photochat_lib.apps.chat import register
    from photochat_lib.apps.cli import main
    machine("Tesla V100-SXM2-32GB", (7, 0), CU130)
    for argv in (["train", "--data", str(tmp_path / "none"), "--output-dir", str(tmp_path / "run")],
                 ["evaluate", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "ev")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and V100_FIX in err and "sm_70" in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "ev").exists()
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["chat", "--out", str(tmp_path / "photos")])
    stdout = io.StringIO()
    assert args.func(args, stdin=io.StringIO("hi\n"), stdout=stdout) == 2
    assert V100_FIX in stdout.getvalue() and "you>" not in stdout.getvalue()
