"""Bad input stops early with one line (issue 13): broken photos are found before step 1 and name their
dialogue and path (or are counted and skipped under --lenient), broken model folders name the broken file,
local-looking paths never reach the Hub, and --debug brings the traceback back."""
import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from photochat_lib.apps.cli import main
from photochat_lib.data import images as I
from photochat_lib.data.photochat import read_photochat
from photochat_lib.data.toy_world import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
TOY_END2END = ROOT / "photochat_lib" / "toy" / "checkpoints" / "toy-end2end"
SMALL = ["--max-train-samples", "8", "--micro-batch-size", "4", "--eval-every-epochs", "0", "--no-progress"]


@pytest.fixture
def toy(tmp_path):
    write_toy_dataset(tmp_path / "toy", seed=0, n_train=24, n_dev=4, n_test=8)
    return tmp_path / "toy"


def break_photo(split: Path, k: int = 0) -> tuple[str, str]:
    """Truncate the first photo of the k-th dialogue with photos in `split`; return (dialogue id, path)."""
    d = [d for d in read_photochat(split) if d.photos][k]
    path = d.photos[0].path
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return d.dialogue_id, path


def run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


# ----- load_image: one loader, one notion of a good photo -----

def test_load_image_names_truncated_and_non_image_files(tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not a photo")
    assert I.load_image(str(tmp_path / "ok.png")).size == (64, 64)
    for name in ("cut.png", "text.jpg"):
        with pytest.raises(I.ImageError, match=rf"{name}: cannot decode"):
            I.load_image(str(tmp_path / name))


def test_large_photos_are_downscaled_and_bombs_refused_by_our_limit_not_pils(tmp_path, monkeypatch):
    Image.new("RGB", (400, 100), "blue").save(tmp_path / "wide.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)     # PIL would raise DecompressionBombError here
    monkeypatch.setattr(I, "LARGE_PIXELS", 10_000)
    img = I.load_image(str(tmp_path / "wide.png"))
    assert img.width * img.height <= 10_000 and abs(img.width / img.height - 4) < 0.1   # aspect kept
    monkeypatch.setattr(I, "MAX_DECODE_PIXELS", 39_999)
    with pytest.raises(I.ImageError, match=r"wide.png: 400x100 pixels is over the 39,999-pixel limit"):
        I.load_image(str(tmp_path / "wide.png"))
    assert Image.MAX_IMAGE_PIXELS == 100                      # PIL's own setting restored


# ----- data stats --check-images -----

def test_data_stats_check_images_names_dialogue_and_path_or_counts_under_lenient(toy):
    did, path = break_photo(toy / "train")
    rc, out, err = run("data", "stats", toy / "train")
    assert rc == 0                                            # without the flag the photos are not opened
    rc, out, err = run("data", "stats", toy / "train", "--check-images")
    assert rc == 2 and f"dialogue {did}" in err and path in err and "unreadable image" in err, err   # was 1
    rc, out, err = run("data", "stats", toy / "train", "--check-images", "--lenient")
    assert rc == 0 and "1 dialogues skipped for bad images" in err and "bad_image: 1" in err, err


# ----- train: every photo checked before step 1, --lenient to skip, never stuck on a bad batch -----

def test_train_checks_every_photo_before_step_1_and_lenient_skips_it(toy, tmp_path):
    did, path = break_photo(toy / "train")
    run_dir = tmp_path / "run"
    rc, out, err = run("train", "--data", toy, "--output-dir", run_dir, "--max-steps", "1", *SMALL)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"dialogue {did}" in err and path in err and "--debug" in err
    assert not (run_dir / "losses.jsonl").exists()            # stopped before any step
    rc, out, err = run("train", "--data", toy, "--output-dir", run_dir, "--max-steps", "1", "--checkpointing-steps",
                       "1", *SMALL, "--lenient")
    assert rc == 0, err
    assert "[train] train: 23 dialogues, every photo decoded; skipped 1 (bad_image: 1) (--lenient)" in out, out
    assert "trainable parameters" in out and "optimizer steps" in out
    assert f"[train] final model: {run_dir / 'final'}" in out
    # the data goes bad between two sessions of a run: resuming is refused before the bad batch is reached,
    # and --lenient gets past it
    break_photo(toy / "train", k=1)
    args = ["train", "--data", toy, "--output-dir", run_dir, "--max-steps", "2", *SMALL,
            "--resume-from-checkpoint", "latest"]
    rc, out, err = run(*args)
    assert rc == 2 and path in err and "unreadable image" in err, err        # the first bad one stops it
    rc, out, err = run(*args, "--lenient")
    assert rc == 0 and "skipped 2 (bad_image: 2)" in out, out
    assert json.loads((run_dir / "trainer_state.json").read_text())["global_step"] == 2


def test_evaluate_checks_photos_before_generating(toy, tmp_path):
    did, path = break_photo(toy / "test")
    rc, out, err = run("evaluate", "--model", TOY_END2END, "--data", toy, "--out", tmp_path / "ev")
    assert rc == 2 and f"dialogue {did}" in err and path in err, err
    assert not (tmp_path / "ev" / "predictions.jsonl").exists()


def test_chat_survives_a_decompression_bomb_and_a_truncated_photo(tmp_path, monkeypatch):
    """`/image` with a 14000² PNG raised DecompressionBombError and ended the session."""
    import argparse

    from photochat_lib.apps.chat import register
    Image.new("RGB", (300, 300), "red").save(tmp_path / "big.png")
    Image.effect_noise((100, 100), 50).convert("RGB").save(tmp_path / "small.png")
    data = (tmp_path / "small.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)     # makes big.png a "bomb" to PIL, cheaply
    monkeypatch.setattr(I, "MAX_DECODE_PIXELS", 50_000)       # and over our own limit
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["chat", "--out", str(tmp_path / "photos")])
    stdout = io.StringIO()
    script = f"/image {tmp_path / 'big.png'}\n/image {tmp_path / 'cut.png'}\nhello!\n/quit\n"
    assert args.func(args, stdin=io.StringIO(script), stdout=stdout) == 0
    said = stdout.getvalue()
    assert "over the 50,000-pixel limit; the conversation goes on" in said, said
    assert "cut.png: cannot decode" in said
    assert said.count("bot> ") >= 1                            # the session went on to a reply


# ----- model folders: the broken file named, local paths never sent to the Hub -----

def test_truncated_weights_and_broken_configs_name_the_file(tmp_path):
    from photochat_lib.model.photochat_model import PhotoChatModel
    model = tmp_path / "m"
    shutil.copytree(TOY_END2END, model)
    weights = sorted((model / "llm").glob("*.safetensors"))[0]      # the shipped LLM is sharded (files < 5 MB)
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{weights}: truncated or corrupt weights"):
        PhotoChatModel.from_pretrained(model)
    rc, out, err = run("evaluate", "--model", model, "--out", tmp_path / "ev")
    assert rc == 2 and str(weights) in err and len(err.splitlines()) == 1, err
    shutil.copy(TOY_END2END / "llm" / weights.name, weights)
    (model / "sd" / "unet" / "config.json").write_text('{"sample_size": ')
    with pytest.raises(ValueError, match=r"sd/unet/config.json: not valid JSON"):
        PhotoChatModel.from_pretrained(model)


@pytest.mark.parametrize("field,value", [("vocab_size", 10 ** 10), ("num_hidden_layers", 10 ** 5)])
def test_absurd_model_sizes_are_refused_before_any_tensor(tmp_path, field, value):
    """Issue 22's probes: vocab_size 1e10 in a model folder gave a RuntimeError; num_hidden_layers 1e5 left
    `chat --model` silent for minutes. Now: one line naming the file, in well under a second."""
    import json
    import time
    from photochat_lib.model.photochat_model import PhotoChatModel
    model = tmp_path / "m"
    shutil.copytree(TOY_END2END, model)
    config = json.loads((model / "llm" / "config.json").read_text())
    (model / "llm" / "config.json").write_text(json.dumps({**config, field: value}))
    t = time.perf_counter()
    with pytest.raises(ValueError, match=rf"llm/config.json: vocab_size .* parameters .* is the config broken\?"):
        PhotoChatModel.from_pretrained(model)
    assert time.perf_counter() - t < 5
    rc, out, err = run("evaluate", "--model", model, "--out", tmp_path / "ev")
    assert rc == 2 and "is the config broken?" in err and len(err.splitlines()) == 1, err


def test_local_looking_paths_never_reach_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    from photochat_lib.model.hub import looks_local
    from photochat_lib.model.photochat_model import PhotoChatModel

    def no_hub(*a, **k):
        raise AssertionError(f"sent to the Hub: {a}")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("runs/e2e", "runs/e2e/final", "./model", "../model", "/abs/model", "~/model", "a b"):
        assert looks_local(name), name
        with pytest.raises(FileNotFoundError, match="no such model folder"):
            PhotoChatModel.from_pretrained(name)
    (tmp_path / "half").mkdir()                               # a folder without llm/: not taken for a Hub id
    shutil.copy(TOY_END2END / "photochat.json", tmp_path / "half")
    with pytest.raises(FileNotFoundError, match=r"half is not a complete PhotoChatModel folder: it lacks llm/, "
                                                r"perceptron/, sd/"):
        PhotoChatModel.from_pretrained("half")
    assert not looks_local("meta-llama/Llama-2-7b-chat-hf") and not looks_local("gpt2")


def test_hub_ids_load_through_snapshot_download_and_offline_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from photochat_lib.model.photochat_model import PhotoChatModel
    snapshot = tmp_path / "hub" / "models--someone--photochat-toy" / "snapshots" / "abc123"
    shutil.copytree(TOY_END2END, snapshot)                    # a Hub snapshot's layout
    calls = []

    def fake_snapshot(repo_id, revision=None, token=None, **kw):
        calls.append((repo_id, revision))
        return str(snapshot)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.chdir(tmp_path)
    model = PhotoChatModel.from_pretrained("someone/photochat-toy", revision="v1", dtype="float32", device_map="cpu")
    assert calls == [("someone/photochat-toy", "v1")] and next(model.llm.parameters()).dtype.is_floating_point

    def offline(*a, **k):
        raise LocalEntryNotFoundError("offline")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    rc, out, err = run("evaluate", "--model", "someone/photochat-toy", "--out", tmp_path / "ev")
    assert rc == 2 and "not in the local Hub cache and the Hub cannot be reached" in err, err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["evaluate", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "ev"), "--debug"])
    with pytest.raises(FileNotFoundError):
        main(["--debug", "evaluate", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "ev")])


# ----- one flag style, honest help -----

def _all_parsers(parser):
    import argparse
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_command_spells_its_flags_in_kebab_case_and_old_spellings_still_work():
    import argparse

    from photochat_lib.apps.cli import build_parser
    from photochat_lib.utils.cliutil import dataclass_from_args
    from photochat_lib.training.train import TrainConfig
    parser = build_parser()
    shown = [(p.prog, s) for p in _all_parsers(parser) for a in p._actions if a.help != argparse.SUPPRESS
             for s in a.option_strings if s.startswith("--")]
    assert len(shown) > 80
    assert [s for s in shown if "_" in s[1]] == []
    args = parser.parse_args(["train", "--output_dir", "x", "--max_steps", "3", "--no-progress",
                              "--resume_from_checkpoint", "latest"])
    cfg = dataclass_from_args(TrainConfig, args)
    assert (cfg.output_dir, cfg.max_steps, cfg.progress, cfg.resume_from_checkpoint) == ("x", 3, False, "latest")
    helps = [a.help for p in _all_parsers(parser) for a in p._actions if a.help]
    assert not [h for h in helps if "(default: None)" in h or ("default:" in h and h.count("default:") > 1)]


def test_progress_bars_are_sparse_off_a_terminal():
    from photochat_lib.utils.cliutil import progress_bar
    log = io.StringIO()
    bar = progress_bar(total=500, file=log)                    # pytest's stderr is not a terminal
    for step in range(500):                                    # as train does: a postfix at every step
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
    bar.close()
    assert bar.mininterval == 30.0
    assert log.getvalue().count("\r") <= 3, log.getvalue()          # the first and last draws, not 500


def test_training_casts_without_diffusers_float32_warning():
    """apply_recipe cast fp16-loaded trained parts with ModelMixin.to(dtype), which logs "modules ... should
    be kept in float32: []" every time; it now casts tensor by tensor."""
    import logging

    import torch

    from photochat_lib.training.finetune import apply_recipe
    from photochat_lib.presets import load_toy_model
    from photochat_lib.recipe import get_recipe
    model = load_toy_model(which="end2end", mode="end2end")
    for p in model.image_generator.unet.parameters():
        p.data = p.data.half()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        apply_recipe(model, get_recipe("toy"), torch.float32)
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "kept in float32" in r.getMessage()]
    assert all(p.dtype == torch.float32 for p in model.image_generator.unet.parameters())


def test_license_file_matches_pyproject():
    import tomllib
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0" and meta["license-files"] == ["LICENSE"]     # SPDX expression
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


@pytest.mark.slow
def test_a_small_demo_run_is_quiet_off_a_terminal(tmp_path):
    """A non-interactive `make demo` wrote ~6,400 lines (tqdm refreshes, 66 "Loading weights" bars, 30
    "Writing model shards" bars, float32 warnings). A short demo now writes a few dozen."""
    write_toy_dataset(tmp_path / "toy", seed=0, n_train=24, n_dev=4, n_test=8)
    p = subprocess.run([sys.executable, "-m", "photochat_lib.apps.cli", "demo", "--data", str(tmp_path / "toy"),
                        "--runs", str(tmp_path / "runs"), "--reports", str(tmp_path / "reports"), "--seeds", "0",
                        "--steps", "2", "--train-samples", "8", "--eval-samples", "4", "--denoise-steps", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    text = p.stdout + p.stderr
    lines = text.replace("\r", "\n").splitlines()
    assert len(lines) < 60, text
    for noise in ("Loading weights", "Writing model shards", "kept in float32", "Warning", "warn"):
        assert noise not in text, text


@pytest.mark.parametrize("argv,message", [
    (["evaluate", "--model", "m", "--out", "o", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (["evaluate", "--model", "m", "--out", "o", "--max-samples", "-5"], "argument --max-samples: must be >= 1"),
    (["evaluate", "--model", "m", "--out", "o", "--guidance", "-1"], "argument --guidance: must be >= 0"),
    (["chat", "--max-new-tokens", "0"], "argument --max-new-tokens: must be >= 1"),
    (["demo", "--eval-samples", "1"], "argument --eval-samples: must be >= 2"),
    (["demo", "--steps", "x"], "argument --steps: expected an integer, got 'x'"),
    (["pretrain", "--threads", "0"], "argument --threads: must be >= 1"),
])
def test_every_commands_numeric_flags_are_range_checked_at_parse_time(argv, message, capsys):
    """Not only train's: evaluate, chat, demo and pretrain refuse nonsense numbers before any work (exit 2)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_long_output_name_fits_its_temporary_name(tmp_path):
    """Issue 22's probe: `data toy --out` with a 245-character name failed on its temporary name (".NAME.tmp.XXXX"
    went past the 255-byte limit of a file name)."""
    out = tmp_path / ("d" * 245)
    rc, _, err = run("data", "toy", "--out", out, "--n-train", "2", "--n-dev", "1", "--n-test", "1")
    assert rc == 0, err
    assert (out / "toy_dataset.json").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
