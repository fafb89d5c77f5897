"""The smoke test `make test-min` runs at the lowest versions pyproject.toml allows (tests/min_versions.py pins
them in a venv of its own); it runs in the ordinary suite too. Issue 21's probes, at the old floors: transformers
4.46 could not load the toy model, diffusers 0.30/0.35.0 failed to import, peft 0.17 failed on HybridCache,
accelerate 0.33 could not resume, torch-fidelity 0.3 could not compute the toy FID/IS."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "diffusers", "accelerate", "peft", "tokenizers", "huggingface_hub",
            "safetensors", "torch-fidelity", "numpy")


def test_versions_are_within_the_declared_ranges():
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet
    from packaging.requirements import Requirement
    try:
        import tomllib
    except ImportError:
        import tomli as tomllib
    declared = {Requirement(r).name.lower().replace("_", "-"): Requirement(r).specifier for r in
                tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    seen = {}
    for name in PACKAGES:
        seen[name] = version(name)
        assert declared[name.lower().replace("_", "-")].contains(seen[name], prereleases=True), (name, seen[name])
    print("versions:", ", ".join(f"{k} {v}" for k, v in seen.items()))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from photochat_lib.data.toy_world import write_toy_dataset
    out = tmp_path_factory.mktemp("toy")
    write_toy_dataset(out, seed=0, n_train=24, n_dev=4, n_test=12)
    return out


def test_the_toy_model_loads_talks_and_draws_what_it_is_told():
    """Loading must bring every weight back, not only run: at transformers 5.0.0 the saved CLIP text encoder
    loaded with every weight MISSING (a warning, random weights), and photos came out of a blind SD."""
    from photochat_lib.model.generation import draw_captions, generate
    from photochat_lib.presets import load_toy_model
    from photochat_lib.toy.classifier import judge
    model = load_toy_model(which="end2end")
    reply = generate(model, [("A", "I bought a red ball and a blue box."), ("B", "Nice! Can I see a photo?")],
                     speaker="A", num_inference_steps=5)
    assert reply.shared_photo and reply.images[0].size == (32, 32), reply
    captions = [f"Objects in the photo: {c} {s}" for c in ("red", "blue", "green", "yellow", "purple")
                for s in ("circle", "square", "triangle")]
    drawn = judge(draw_captions(model.image_generator, captions, seed=0), captions)
    assert drawn["exact_match"] >= 0.8, drawn["exact_match"]     # the shipped SD: ~95 % (PRETRAIN.md)


def test_two_steps_train_and_resume(toy, tmp_path):
    common = ["--data", toy, "--output-dir", tmp_path / "run", "--max-train-samples", "8", "--micro-batch-size", "4",
              "--eval-every-epochs", "0", "--checkpointing-steps", "1", "--no-progress"]
    cli = [sys.executable, "-m", "photochat_lib.apps.cli", "train"]
    first = subprocess.run([*cli, *map(str, common), "--max-steps", "1"], cwd=ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    again = subprocess.run([*cli, *map(str, common), "--max-steps", "2", "--resume-from-checkpoint", "latest"],
                           cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stdout + again.stderr
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "run" / "losses.jsonl").read_text().splitlines() if ln]
    assert steps == [1, 2]


def test_toy_fid_and_is(toy):
    from photochat_lib.evaluation.evaluate import evaluate_model
    from photochat_lib.presets import load_toy_model
    m = evaluate_model(load_toy_model(which="end2end"), toy, "test", num_inference_steps=5)["metrics"]
    assert m["n_drawn"] >= 2 and m["FID"] >= 0 and m["IS_mean"] >= 1, m
