"""One writer per folder, and only a run's own entries touched (issue 22, "Data loss"): each test names the
probe it reproduces."""
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from photochat_lib.data.toy_world import write_toy_dataset
from photochat_lib.training.run_folder import clean_leftovers, clear_run, latest_checkpoint, run_checkpoints
from photochat_lib.utils.folder_lock import FolderBusy, hold_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    write_toy_dataset(out, seed=0, n_train=40, n_dev=8, n_test=8)
    return out


def checkpoint(run: Path, step: int, weights: bool = True) -> Path:
    """A folder as save_checkpoint leaves it: trainer_state.json (the marker) and, if complete, the weights."""
    c = run / f"checkpoint-{step}"
    c.mkdir(parents=True)
    (c / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if weights:
        (c / "model.safetensors").write_bytes(b"weights")
    return c


@pytest.fixture
def held(tmp_path):
    """Another process holding tmp_path/run's lock as a training run would, until the test ends."""
    run = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys, time
        from photochat_lib.utils.folder_lock import hold_folder
        with hold_folder({str(run)!r}, "photochat train (end2end)"):
            print("held", flush=True)
            sys.stdin.read()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    yield run, p.pid
    p.stdin.close()
    p.wait(timeout=30)


def test_checkpoints_are_the_exact_name_with_the_runs_marker(tmp_path):
    """Probe: a folder named checkpoint-final-good stopped a run at its first checkpoint ("invalid literal for
    int()"), and rotation on resume deleted the user's checkpoint-my-1/."""
    run = tmp_path / "run"
    checkpoint(run, 2), checkpoint(run, 10)
    for name in ("checkpoint-final-good", "checkpoint-my-1", "checkpoint-6-keep"):
        (run / name).mkdir()
        (run / name / "NOTES.txt").write_text("mine")
    (run / "checkpoint-7").mkdir()                           # the right name, but not written by a run
    assert [p.name for p in run_checkpoints(run)] == ["checkpoint-2", "checkpoint-10"]   # by step, not by text
    assert latest_checkpoint(run).name == "checkpoint-10"


def test_a_checkpoint_without_weights_is_skipped_with_a_warning(tmp_path):
    """Probe: two runs in one folder left checkpoint-6 with trainer_state.json and no weights; resume failed on
    it instead of falling back to checkpoint-4."""
    run = tmp_path / "run"
    checkpoint(run, 4), checkpoint(run, 6, weights=False)
    said = []
    assert latest_checkpoint(run, warn=said.append).name == "checkpoint-4"
    assert len(said) == 1 and "checkpoint-6 has no model weights" in said[0]


def test_overwrite_refuses_a_user_folder_that_only_starts_like_a_checkpoint(tmp_path):
    """Probe: --overwrite removed checkpoint-6-keep/ with the NOTES.txt inside ("removed 8 entries")."""
    run = tmp_path / "run"
    checkpoint(run, 2)
    (run / "losses.jsonl").write_text("")
    (run / "checkpoint-6-keep").mkdir()
    (run / "checkpoint-6-keep" / "NOTES.txt").write_text("mine")
    with pytest.raises(ValueError, match="checkpoint-6-keep"):
        clear_run(run)
    assert (run / "checkpoint-6-keep" / "NOTES.txt").read_text() == "mine" and (run / "checkpoint-2").is_dir()


def test_leftovers_of_a_killed_save_are_removed_and_nothing_else(tmp_path):
    """Probe: a SIGKILL during the final save left a 20 MB .final.tmp.*; resume never removed it, and
    --overwrite then refused the folder."""
    run = tmp_path / "run"
    for name in (".tmp-checkpoint-4", ".final.tmp.k2j3", ".best.old.x9"):
        (run / name).mkdir(parents=True)
    (run / ".losses.jsonl.abc.tmp").write_text("")
    (run / ".my.tmp").write_text("mine")
    (run / "final.tmp").mkdir()
    assert sorted(clean_leftovers(run)) == [".best.old.x9", ".final.tmp.k2j3", ".losses.jsonl.abc.tmp", ".tmp-checkpoint-4"]
    assert sorted(p.name for p in run.iterdir()) == [".my.tmp", "final.tmp"]
    (run / ".final.tmp.zz").mkdir()
    (run / ".my.tmp").unlink(), (run / "final.tmp").rmdir()
    assert clear_run(run) == [".final.tmp.zz"]               # --overwrite: a leftover is the run's own


def test_a_second_writer_is_told_who_holds_the_folder(held):
    """Probe: two `train` runs into one --output-dir both ran, every step logged twice."""
    run, pid = held
    with pytest.raises(FolderBusy, match=rf"in use by photochat train \(end2end\) \(pid {pid} on .*since .*\); wait"):
        with hold_folder(run, "photochat train"):
            pass
    assert not (run / "losses.jsonl").exists()


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    run = tmp_path / "run"
    with hold_folder(run, "photochat train"):
        with hold_folder(run, "photochat train (end2end)"):   # the CLI holds it, then its Trainer takes it again
            assert json.loads((run / ".photochat.lock.json").read_text())["what"] == "photochat train"
    assert not (run / ".photochat.lock.json").exists()
    code = f"from photochat_lib.utils.folder_lock import hold_folder\nwith hold_folder({str(run)!r}, 'x'): print('ok')"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True).stdout == "ok\n"


@pytest.mark.parametrize("command", [["train", "--data", "{data}", "--max-steps", "1", "--no-progress"],
                                     ["evaluate", "--model", "photochat_lib/toy/checkpoints/toy-end2end", "--data", "{data}", "--max-samples", "1"]])
def test_train_and_evaluate_into_a_held_folder_stop_in_one_line(held, toy_data, command):
    """Probe: an end2end and a pipeline run 2 s apart left the first dead with a raw SafetensorError and a
    folder mixing both; two `evaluate` runs into one --out kept the last writer's metrics."""
    run, pid = held
    flag = "--output-dir" if command[0] == "train" else "--out"
    args = [a.format(data=toy_data) for a in command] + [flag, str(run)]
    p = subprocess.run([sys.executable, "-m", "photochat_lib.apps.cli", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and f"pid {pid}" in lines[0] and "in use by photochat train" in lines[0], lines
    assert sorted(q.name for q in run.iterdir()) == [".photochat.lock", ".photochat.lock.json"]   # nothing written


def test_two_chat_sessions_never_save_to_one_name(tmp_path):
    """Probe: two `chat` sessions with the same --out both printed "saved to …/photo_004.png"; a full disk left
    a 0-byte photo."""
    from photochat_lib.apps.chat import save_photo
    img = Image.new("RGB", (8, 8), "red")
    a, n_a = save_photo(tmp_path, img, 3)                    # both sessions counted 3 photos at their start
    b, n_b = save_photo(tmp_path, img, 3)
    assert (a.name, b.name, n_a, n_b) == ("photo_004.png", "photo_005.png", 4, 5)
    assert Image.open(a).size == (8, 8) and Image.open(b).size == (8, 8)

    class FullDisk:
        def save(self, *args, **kw):
            raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space"):
        save_photo(tmp_path, FullDisk(), 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo_004.png", "photo_005.png"]   # no empty file


def test_evaluation_photo_names_are_unique_per_record():
    """Probe: ids `x y` and `x_y` both became images/x_y_3_0.png, and both records pointed at the one file."""
    from photochat_lib.evaluation.evaluate import image_name
    assert image_name("x y", 0) != image_name("x_y", 0)
    assert image_name("x y", 0).startswith("x_y_") and image_name("x y", 0).endswith("_0.png")
    name = image_name("../../etc", 1)
    assert "/" not in name and not name.startswith(".")       # still one plain name inside images/


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_temp_folder(toy_data, tmp_path, monkeypatch):
    """Probe: a full disk during a checkpoint gave a SafetensorError traceback (exit 1) and left the failed
    44 MB .tmp-checkpoint-4 on the full disk."""
    from photochat_lib.training.run_folder import SaveError
    from photochat_lib.training.train import TrainConfig, Trainer
    run = tmp_path / "run"
    trainer = Trainer(TrainConfig(data=str(toy_data), output_dir=str(run), max_train_samples=8, micro_batch_size=4,
                                  max_steps=2, checkpointing_steps=1, eval_every_epochs=0, progress=False))

    def full(path, **kw):
        (Path(path) / "model.safetensors").write_bytes(b"half a file")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(trainer.acc, "save_state", full)
    with pytest.raises(SaveError, match=rf"could not write checkpoint checkpoint-1 in {run} \(\[Errno 28\] No space "
                                        r"left on device\); [\d,]+ MB free there, about [\d,]+ MB needed"):
        trainer.train()
    assert not [p.name for p in run.iterdir() if "checkpoint" in p.name]   # no .tmp-checkpoint-1, no checkpoint-1
    assert isinstance(SaveError("x"), OSError)                             # the CLI's one-line errors


class _Payload:
    """A pickle that would create a file when unpickled, if anything ever ran it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_non_weights_pickle_in_a_checkpoint_is_one_line_and_never_runs(toy_data, tmp_path):
    """Probe: a non-weights pickle as optimizer.bin or pytorch_model.bin gave an UnpicklingError traceback (the
    payload stayed blocked); now one line naming the checkpoint or file, and still nothing runs."""
    import pickle
    from photochat_lib.model.photochat_model import PhotoChatModel
    from photochat_lib.training.train import TrainConfig, Trainer
    run = tmp_path / "run"
    cfg = dict(data=str(toy_data), output_dir=str(run), max_train_samples=8, micro_batch_size=4, checkpointing_steps=1,
               eval_every_epochs=0, progress=False)
    Trainer(TrainConfig(max_steps=1, **cfg)).train()
    marker = tmp_path / "ran"
    (run / "checkpoint-1" / "optimizer.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match=r"checkpoint-1: cannot restore this checkpoint \(UnpicklingError"):
        Trainer(TrainConfig(max_steps=2, resume_from_checkpoint="latest", **cfg)).train()
    (run / "checkpoint-1" / "model.safetensors").unlink()
    (run / "checkpoint-1" / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match=r"checkpoint-1/pytorch_model.bin: not a weights file torch loads safely"):
        PhotoChatModel.from_pretrained(run / "checkpoint-1")
    assert not marker.exists()


def test_an_over_long_output_path_is_one_line(toy_data, tmp_path):
    """Probe: an over-long path during a checkpoint or final save gave a SafetensorError traceback (exit 1)."""
    run = tmp_path / ("r" * 300)                           # one name over the 255-byte limit
    p = subprocess.run([sys.executable, "-m", "photochat_lib.apps.cli", "train", "--data", str(toy_data),
                        "--output-dir", str(run), "--max-steps", "1", "--no-progress"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "File name too long" in lines[0], lines


def test_an_evaluation_replaces_the_photos_of_the_one_before(toy_data, tmp_path):
    """Probe: two `evaluate` runs into one --out kept the last writer's metrics plus the other run's leftover
    images; now images/ holds exactly the photos predictions.jsonl points at."""
    from photochat_lib.evaluation.evaluate import evaluate_model
    from photochat_lib.presets import load_toy_model
    model, out = load_toy_model(which="end2end"), tmp_path / "ev"
    evaluate_model(model, toy_data, "test", max_samples=8, seed=0, out_dir=out, num_inference_steps=2)
    first = {p.name for p in (out / "images").iterdir()}
    evaluate_model(model, toy_data, "test", max_samples=8, seed=1, out_dir=out, num_inference_steps=2)
    records = [json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines()]
    pointed = {Path(p).name for r in records for p in r["prediction_images"]}
    assert {p.name for p in (out / "images").iterdir()} == pointed and first and pointed
    assert all(Path(p).parent == out / "images" for r in records for p in r["prediction_images"])
    assert not [p for p in out.iterdir() if p.name.startswith(".images")]
