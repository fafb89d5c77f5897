"""Training UX as in diffusers' example scripts (issue 12): --report-to through accelerate's trackers
(TensorBoard, offline: losses, τ, lr and validation photos), --mixed-precision, and --config, which reads
back a run's saved config.json (or a YAML file) with flags overriding it."""
import contextlib
import io
import json
from pathlib import Path

import pytest

from photochat_lib.apps.cli import main
from photochat_lib.data.toy_world import write_toy_dataset

SMALL = ["--max-train-samples", "8", "--micro-batch-size", "4", "--eval-every-epochs", "0", "--no-progress"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    write_toy_dataset(out, seed=0, n_train=24, n_dev=8, n_test=4)
    return out


def run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def test_report_to_tensorboard_logs_losses_tau_lr_and_validation_photos(toy, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    rc, out, err = run("train", "--data", toy, "--output-dir", tmp_path / "run", "--max-steps", "4", *SMALL,
                       "--report-to", "tensorboard", "--validation-steps", "2", "--validation-samples", "3")
    assert rc == 0, err
    assert f"logging to tensorboard in {tmp_path / 'run' / 'logs'}" in out
    events = [p for p in (tmp_path / "run" / "logs").rglob("events.out.tfevents.*")]
    scalars, images, texts = {}, {}, {}
    for file in events:
        acc = EventAccumulator(str(file), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [e.step for e in acc.Scalars(tag)]
        for tag in acc.Tags()["images"]:
            images[tag] = [(e.step, e.width, e.height) for e in acc.Images(tag)]
        for tag in acc.Tags()["tensors"]:
            texts[tag] = [e.step for e in acc.Tensors(tag)]
    for name in ("loss", "text_loss", "image_loss", "tau", "lr"):
        assert scalars[f"train/{name}"] == [1, 2, 3, 4], scalars
    # one grid per validation: the 3 dev reference captions drawn at 32² side by side, at steps 2 and 4
    assert images["validation/reference_captions"] == [(2, 96, 32), (4, 96, 32)], images
    assert any(t.startswith("validation/replies") for t in texts), texts
    losses = [json.loads(ln) for ln in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert len(losses) == 4                                          # the jsonl log is unchanged


def test_mixed_precision_flag(toy, tmp_path):
    rc, out, err = run("train", "--data", toy, "--output-dir", tmp_path / "fp16", "--max-steps", "1", *SMALL,
                       "--mixed-precision", "fp16")
    import torch
    if not torch.cuda.is_available():
        assert rc == 2 and "--mixed-precision fp16 needs a CUDA GPU" in err, err
    from photochat_lib.training.train import TrainConfig, Trainer
    tr = Trainer(TrainConfig(data=str(toy), output_dir=str(tmp_path / "bf16"), max_steps=1, max_train_samples=4,
                             micro_batch_size=4, eval_every_epochs=0, progress=False, mixed_precision="bf16"))
    assert tr.acc.mixed_precision == "bf16"
    state = tr.train()
    assert state["global_step"] == 1 and (tmp_path / "bf16" / "final" / "photochat.json").exists()
    with pytest.raises(ValueError, match="--mixed-precision must be one of no, fp16, bf16"):
        TrainConfig(mixed_precision="fp8")


def test_config_reads_back_a_runs_config_and_flags_override_it(toy, tmp_path):
    first = tmp_path / "first"
    rc, out, err = run("train", "--data", toy, "--output-dir", first, "--max-steps", "1", *SMALL, "--lr", "3e-4",
                       "--seed", "3", "--photo-repeats", "2")
    assert rc == 0, err
    second = tmp_path / "second"
    rc, out, err = run("train", "--config", first / "config.json", "--output-dir", second, "--max-steps", "2")
    assert rc == 0, err
    a, b = (json.loads((p / "config.json").read_text())["train"] for p in (first, second))
    assert {k for k in a if a[k] != b[k]} == {"output_dir", "max_steps"}
    assert (b["lr"], b["seed"], b["photo_repeats"], b["max_steps"]) == (3e-4, 3, 2, 2)
    # a hand-written YAML file, kebab-case keys welcome
    (tmp_path / "run.yaml").write_text(f"data: {toy}\nmax-steps: 1\nmicro-batch-size: 4\nmax-train-samples: 4\n"
                                       f"eval-every-epochs: 0\nprogress: false\nlr: 2.0e-4\n")
    rc, out, err = run("train", "--config", tmp_path / "run.yaml", "--output-dir", tmp_path / "third")
    assert rc == 0, err
    c = json.loads((tmp_path / "third" / "config.json").read_text())["train"]
    assert (c["lr"], c["max_steps"], c["micro_batch_size"]) == (2e-4, 1, 4)


def test_config_file_errors_are_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("lr: 1e-4\nlearning_rate: 3\n")
    rc, out, err = run("train", "--config", tmp_path / "bad.yaml", "--output-dir", tmp_path / "r")
    assert rc == 2 and "unknown settings learning_rate" in err and str(tmp_path / "bad.yaml") in err, err
    (tmp_path / "broken.yaml").write_text("lr: [1e-4\n")
    rc, out, err = run("train", "--config", tmp_path / "broken.yaml", "--output-dir", tmp_path / "r")
    assert rc == 2 and "not valid YAML/JSON" in err and len(err.splitlines()) == 1, err
    rc, out, err = run("train", "--config", tmp_path / "missing.yaml", "--output-dir", tmp_path / "r")
    assert rc == 2 and "missing.yaml" in err, err
    # issue 22's probes: wrong types reached the run (a TypeError, or "2.5 optimizer steps" that ran 3), and
    # a YAML alias bomb under extra: stalled while config.json was written
    for text, message in [("max_steps: 2.5\n", "max_steps must be an integer, got 2.5"),
                          ("lr: [1, 2]\n", "lr must be a number, got [1, 2]"),
                          ("data: {a: 1}\n", "data must be text, got {'a': 1}"),
                          ("progress: 3\n", "progress must be true or false, got 3"),
                          ("extra:\n  a: &a [x, x, x]\n  b: [*a, *a, *a]\n", "aliases (*name) are not allowed")]:
        (tmp_path / "typed.yaml").write_text(text)
        rc, out, err = run("train", "--config", tmp_path / "typed.yaml", "--output-dir", tmp_path / "r")
        assert rc == 2 and message in err and "typed.yaml" in err and len(err.splitlines()) == 1, (text, err)
    assert not (tmp_path / "r").exists()                 # refused before anything was written


def test_llm_perceptron_and_sd_flags_reach_the_preset_loader(monkeypatch, tmp_path):
    """The README's `--llm/--perceptron/--sd` overrides (hub id or folder) exist and replace the preset's
    models; they are refused where nothing is loaded from the Hub (toy, --init, --random-init)."""
    import photochat_lib.presets as P
    from photochat_lib.utils.cliutil import dataclass_from_args
    from photochat_lib.apps.cli import build_parser
    from photochat_lib.training.train import TrainConfig, build_training_model
    from photochat_lib.recipe import get_recipe
    seen = {}

    def fake_build_model(preset, **kw):
        seen.update(kw, preset=preset)
        raise RuntimeError("stop here: no weights in this test")
    monkeypatch.setattr(P, "build_model", fake_build_model)
    args = build_parser().parse_args(["train", "--preset", "paper", "--llm", "/models/llama-2-7b-chat",
                                      "--perceptron", "Salesforce/blip2-opt-2.7b-coco", "--sd", "./sd21"])
    cfg = dataclass_from_args(TrainConfig, args)
    with pytest.raises(RuntimeError, match="stop here"):
        build_training_model(cfg, get_recipe("paper"))
    assert (seen["preset"], seen["llm"], seen["perceptron"], seen["sd"]) == (
        "paper", "/models/llama-2-7b-chat", "Salesforce/blip2-opt-2.7b-coco", "./sd21")
    with pytest.raises(ValueError, match="--llm replace the colab/paper preset's pretrained models"):
        build_training_model(TrainConfig(llm="/models/x"), get_recipe("toy"))
    rc, out, err = run("train", "--llm", "/models/x", "--output-dir", tmp_path / "r", "--max-steps", "1")
    assert rc == 2 and "--llm replace" in err, err


def test_notebook_06_real_branch_is_the_readme_runbooks_command(tmp_path):
    """Notebook 06 trains the colab/paper presets through the same `photochat train` command as the README's
    runbooks (resumable: --resume-from-checkpoint latest); its arguments parse into a valid TrainConfig."""
    import os
    from pathlib import Path

    from photochat_lib.apps.cli import build_parser
    from photochat_lib.utils.cliutil import dataclass_from_args
    from photochat_lib.training.train import TrainConfig
    root = Path(__file__).resolve().parents[1]
    nb = json.loads((root / "notebooks" / "06_joint_training.ipynb").read_text())
    source = "".join(next(c for c in nb["cells"] if c.get("id") == "fbfcf339")["source"])
    readme = (root / "README.md").read_text()
    for preset in ("colab", "paper"):
        env = dict(PRESET=preset, MODE="end2end", SEED=0, WORK_DIR=tmp_path, REPO_ROOT=tmp_path, DATA_DIR=tmp_path,
                   Path=Path, os=os, json=json, TrainConfig=TrainConfig)
        with contextlib.redirect_stdout(io.StringIO()):
            exec(source, env)
        argv = env["train_argv"]
        cfg = dataclass_from_args(TrainConfig, build_parser().parse_args(argv))
        assert (cfg.preset, cfg.resume_from_checkpoint, cfg.output_dir) == (preset, "latest", str(env["RUN"]))
        # the README runbook's first `train --preset PRESET` command sets the same run (paths aside)
        import shlex
        line = next(ln for ln in readme.replace("\\\n", " ").splitlines()
                    if ln.startswith(f"photochat train --preset {preset} "))
        ref = dataclass_from_args(TrainConfig, build_parser().parse_args(shlex.split(line.split("#")[0])[1:]))
        same = lambda c: {k: v for k, v in vars(c).items()                                   # noqa: E731
                          if k not in ("data", "output_dir", "resume_from_checkpoint", "mode", "seed")}
        assert same(cfg) == same(ref), (argv, line)


def test_the_flags_diffusers_users_type(monkeypatch, toy, tmp_path):
    """Issue 21's probes: diffusers' script flags were "unrecognized arguments"; `accelerate launch
    --mixed_precision bf16` was silently ignored; there was no --push-to-hub, --hub-model-id or
    --gradient-checkpointing."""
    from huggingface_hub import HfApi, RepoUrl
    from photochat_lib.apps.cli import build_parser
    from photochat_lib.recipe import get_recipe
    from photochat_lib.training.train import TrainConfig, mixed_precision_for, resolve
    from photochat_lib.utils.cliutil import dataclass_from_args
    args = build_parser().parse_args(["train", "--learning_rate", "3e-4", "--train_batch_size", "2",
                                      "--gradient_accumulation_steps", "4", "--max_train_steps", "7",
                                      "--num_train_epochs", "2", "--lr_scheduler", "cosine", "--lr_warmup_steps", "5",
                                      "--gradient_checkpointing", "--output_dir", str(tmp_path / "x")])
    cfg = dataclass_from_args(TrainConfig, args)
    assert (cfg.lr, cfg.micro_batch_size, cfg.grad_accum_steps, cfg.max_steps, cfg.max_epochs, cfg.lr_decay,
            cfg.warmup_steps, cfg.gradient_checkpointing) == (3e-4, 2, 4, 7, 2, "cosine", 5, True)
    paper = resolve(TrainConfig(preset="paper", gradient_checkpointing=False))
    assert not paper.llm_gradient_checkpointing and not paper.unet_gradient_checkpointing
    assert resolve(TrainConfig(preset="paper")).llm_gradient_checkpointing       # the recipe's default
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")                       # what accelerate launch sets
    assert mixed_precision_for(TrainConfig(), get_recipe("toy")) == "bf16"
    assert mixed_precision_for(TrainConfig(mixed_precision="no"), get_recipe("toy")) == "no"   # the flag wins
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    with pytest.raises(ValueError, match="--hub-model-id names where --push-to-hub uploads"):
        TrainConfig(hub_model_id="me/x")
    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *, repo_id, folder_path, **kw: calls.update(
        repo_id=repo_id, card=(Path(folder_path) / "README.md").read_text()) or "commit")
    rc, out, err = run("train", "--data", toy, "--output-dir", tmp_path / "run", "--max-steps", "1", *SMALL,
                       "--push-to-hub", "--hub-model-id", "me/photochat-toy")
    assert rc == 0, err
    assert calls["repo_id"] == "me/photochat-toy" and "pushed" in out and "max_steps" in calls["card"]
