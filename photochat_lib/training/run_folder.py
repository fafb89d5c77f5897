"""A training run's folder: what a run writes there, how it checkpoints and resumes, and what it may delete.

The trainer's bookkeeping half (`Trainer` mixes `RunFolder` in): ``checkpoint-{step}/`` written atomically
(a temp folder, then a rename; the last N kept) with accelerate's ``save_state`` plus ``trainer_state.json``;
``losses.jsonl`` (one line per optimizer step, trimmed back on resume so replayed steps are not logged twice);
``final/`` and ``best/`` (loadable PhotoChatModel folders, LoRA merged); and the rules around them: resuming
with settings that change the run is refused (`check_resume`), and ``--overwrite`` deletes only `RUN_FILES`.
A checkpoint is a folder named exactly ``checkpoint-<digits>`` holding the ``trainer_state.json`` the run wrote
(`is_run_checkpoint`): ``checkpoint-6-keep/`` or ``checkpoint-final-good/`` are the user's, never rotated,
cleared or resumed from.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from photochat_lib.utils.atomic import replace_dir, write_json, write_text


CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")    # the exact name save_checkpoint gives; a prefix is not enough
TEMP_NAME = re.compile(r"\.tmp-checkpoint-\d+|\.(final|best)\.(tmp|old)\..+"     # what a killed save leaves
                       r"|\.(losses\.jsonl|config\.json|trainer_state\.json)\..+\.tmp")


def run_checkpoints(output_dir: str | Path) -> list[Path]:
    """Return the run's own checkpoint folders (exact name + its trainer_state.json marker), oldest step first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*")
             if CHECKPOINT_NAME.fullmatch(p.name) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.fullmatch(p.name).group(1)))


def latest_checkpoint(output_dir: str | Path, warn=None) -> Path | None:
    """Return the run's newest complete checkpoint, or None; one without weights (a save another process cut
    short) is skipped, with `warn(message)` called for it, and the one before it is used."""
    from photochat_lib.model.hub import is_training_checkpoint
    for path in reversed(run_checkpoints(output_dir)):
        if is_training_checkpoint(path):
            return path
        if warn is not None:
            warn(f"[train] {path} has no model weights (an interrupted save?); skipping it")
    return None


def clean_leftovers(out: Path) -> list[str]:
    """Delete the temporary folders a killed save left in `out` (only the exact names this module makes)."""
    gone = [p for p in out.iterdir() if TEMP_NAME.fullmatch(p.name)] if out.is_dir() else []
    for p in gone:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return [p.name for p in gone]


# what defines a run: resuming with any of these changed is refused (allow_changed_config overrides); the
# rest (max_steps, checkpointing, evaluation, logging) may change between a run's sessions
RUN_DEFINING = ("data", "preset", "mode", "init", "llm", "perceptron", "sd", "random_init", "smoke", "seed", "micro_batch_size",
                "grad_accum_steps", "lr", "sd_lr", "weight_decay", "warmup_steps", "alpha", "tau_start", "tau_end",
                "tau_anneal_epochs", "sd_caption_source", "pipeline_context", "dvtm_impl", "bridge", "freeze_sd", "loss_reduction", "photo_only", "lr_decay",
                "lr_schedule_steps", "photo_repeats", "remark_repeats", "caption_supervision", "max_train_samples", "max_grad_norm", "clip")


def data_identity(data: str | os.PathLike) -> dict:
    """Return what the training data is, not how it was spelled: the resolved folder and a fingerprint of its
    train split (every file's relative path, and the dialogue files' bytes). A photo's bytes are left out: one
    that went bad between sessions is the same data, which `--lenient` gets past (README)."""
    import hashlib
    root = Path(data).resolve()
    h = hashlib.sha256()
    for f in sorted(p for p in (root / "train").rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root).as_posix()}\0".encode())
        if f.suffix in (".json", ".jsonl"):
            h.update(f.read_bytes())
    return {"path": str(root), "fingerprint": h.hexdigest()[:16]}


def check_resume(cfg) -> None:
    """Raise ValueError, naming every changed setting, if cfg resumes a run whose config.json says otherwise.

    The data is compared by `data_identity` (a run's config.json records it): the same folder spelled
    relative or absolute resumes; a relative path given from another working directory that names other
    data is refused."""
    saved = Path(cfg.output_dir) / "config.json"
    if not cfg.resume_from_checkpoint or cfg.allow_changed_config or not saved.exists():
        return
    record = json.loads(saved.read_text())
    before, now = record.get("train", {}), asdict(cfg)
    changed = []
    if "data" in record:                               # runs since issue 22 record what the data is
        was, is_ = record["data"], data_identity(cfg.data)
        if was["fingerprint"] != is_["fingerprint"]:
            changed.append(f"data {was['path']} -> {is_['path']} (its train split differs)")
        before = {k: v for k, v in before.items() if k != "data"}
    changed += [f"{k} {before[k]!r} -> {now[k]!r}" for k in RUN_DEFINING if k in before and before[k] != now[k]]
    if changed:
        raise ValueError(f"resuming {cfg.output_dir} with settings that change the run ({'; '.join(changed)}): "
                         f"pass --allow-changed-config to resume anyway")


RUN_FILES = ("config.json", "losses.jsonl", "trainer_state.json", "final", "best", "logs", "batches.rank*.jsonl",
             "weights.rank*.sha256", ".photochat.lock", ".photochat.lock.json")   # what a run writes in output_dir,
                                                  # besides its checkpoints and TEMP_NAME leftovers


def _run_entry(p: Path) -> bool:
    from fnmatch import fnmatch
    return (any(fnmatch(p.name, pattern) for pattern in RUN_FILES) or bool(TEMP_NAME.fullmatch(p.name))
            or (CHECKPOINT_NAME.fullmatch(p.name) is not None and (p / "trainer_state.json").is_file()))


def clear_run(out: Path) -> list[str]:
    """Delete what an earlier run wrote in `out` (``--overwrite``) and return the names deleted.

    Refuses — a ValueError naming them, nothing deleted — when `out` holds anything a run does not write
    (data, notes, an evaluation the user put there): ``--output-dir . --overwrite`` must never cost a file.
    """
    entries = sorted(p for p in out.iterdir() if p.name not in (".photochat.lock", ".photochat.lock.json"))
    foreign = [p.name for p in entries if not _run_entry(p)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"{out} holds files a training run does not write ({shown}); --overwrite deletes only a "
                         f"run's own files, so move those away or choose another --output-dir")
    for p in entries:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return [p.name for p in entries]


class RunFolder:
    """Checkpoints, logs and saved models of a `Trainer` (uses its acc, cfg, state, tau, out)."""

    def save_checkpoint(self) -> Path:
        """Write checkpoint-{step} atomically (temp folder, then rename); keep the last N.

        Kept by hand, not accelerate's ProjectConfiguration(automatic_checkpoint_naming, total_limit): that names
        folders by save count (checkpoints/checkpoint_0, _1, ...) rather than optimizer step, and writes them in
        place, so a SIGKILL mid-save leaves a checkpoint that looks complete (tests/test_train.py kills runs)."""
        final = self.out / f"checkpoint-{self.state['global_step']}"
        if final.exists():
            from photochat_lib.model.hub import is_training_checkpoint
            if is_training_checkpoint(final):  # this step is saved already (e.g. Ctrl-C right after a save)
                return final
            if not (final / "trainer_state.json").is_file():
                raise ValueError(f"{final} is in the way: this run did not write it (no trainer_state.json); "
                                 f"move it away and resume")
            if self.acc.is_main_process:       # the run's own, cut short before its weights: write it anew
                shutil.rmtree(final)
        tmp = self.out / f".tmp-{final.name}"
        if self.acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)            # every process writes its RNG state into it
        self.acc.wait_for_everyone()
        with self._saving(f"checkpoint {final.name}", tmp, bytes_per_param=12):   # weights + AdamW's 2 moments
            self.acc.save_state(str(tmp), safe_serialization=True)
            if self.acc.is_main_process:
                write_json(tmp / "trainer_state.json", {**self.state, "tau": self.tau.state_dict()})
        if self.acc.is_main_process:
            os.replace(tmp, final)
            ckpts = run_checkpoints(self.out)          # the run's own only: checkpoint-my-1/ is the user's
            for old in ckpts[: max(0, len(ckpts) - self.cfg.checkpoints_total_limit)]:
                shutil.rmtree(old)
        self.acc.wait_for_everyone()
        return final

    def load_checkpoint(self, where: str) -> None:
        """Restore model, optimizer, scheduler and trainer state from a checkpoint (or 'latest')."""
        path = latest_checkpoint(self.out, warn=self.acc.print) if where == "latest" else Path(where)
        if path is None:
            self.acc.print(f"[train] no checkpoint in {self.out}; starting from scratch")
            return
        import pickle
        from safetensors import SafetensorError
        try:
            self.acc.load_state(str(path))
        except (pickle.UnpicklingError, SafetensorError, EOFError) as e:   # not a state torch loads safely
            reason = " ".join(str(e).split())[:200]
            raise ValueError(f"{path}: cannot restore this checkpoint ({type(e).__name__}: {reason}); its files are "
                             f"not what a run saves (nothing of them ran): resume from another checkpoint-N "
                             f"or start afresh") from None
        saved = json.loads((path / "trainer_state.json").read_text())
        self.tau.load_state_dict(saved.pop("tau"))
        self.state.update(saved)
        self.acc.print(f"[train] resumed from {path} (step {self.state['global_step']})")

    def _log(self, record: dict) -> None:
        if self.acc.is_main_process:
            with open(self.out / "losses.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.cfg.report_to and "loss" in record:      # accelerate's trackers: every process calls, main logs
            self.acc.log({f"train/{k}": record[k] for k in ("loss", "text_loss", "image_loss", "tau", "lr")},
                         step=record["step"])

    def _trim_log(self) -> None:
        """After a resume, drop log lines past the restored step (they will be replayed), and a torn last line
        (a kill mid-write) with a note; a broken line before the last is an error naming the file and line."""
        path = self.out / "losses.jsonl"
        if not (self.acc.is_main_process and path.exists()):
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        rows = []
        for i, ln in enumerate(lines, 1):
            try:
                rows.append((json.loads(ln)["step"], ln))
            except (ValueError, KeyError, TypeError) as e:
                if i < len(lines):
                    raise ValueError(f"{path}, line {i}: not a log record ({e}); fix or delete the line") from None
                self.acc.print(f"[train] {path}: dropped a torn last line (line {i}: {ln[:40]!r}...)")
        write_text(path, "".join(ln + "\n" for step, ln in rows if step <= self.state["global_step"]))

    def _save_model(self, path: Path, components: tuple[str, ...] | None = None) -> None:
        """Save a loadable PhotoChatModel folder (LoRA merged into a copy) atomically; with `components`,
        replace only those folders of an existing one (the pipeline keeps each side's best)."""
        import shutil as _shutil
        from photochat_lib.training.finetune import merge_lora_
        model = self.unwrapped
        if any("lora_" in n or "trainable_tokens_" in n for n, _ in model.named_parameters()):
            model = merge_lora_(_cpu_copy(model))       # on CPU: a 7B copy would not fit next to the live one

        def write(tmp: Path) -> None:
            if components is not None and (path / "photochat.json").exists():
                _shutil.copytree(path, tmp, dirs_exist_ok=True)
            model.save_pretrained(tmp, components=components if (path / "photochat.json").exists() else None)
        replace_dir(path, write)

    def save_final(self) -> None:
        """Write final/ (the last weights) and trainer_state.json."""
        self.acc.wait_for_everyone()
        if self.cfg.log_ranks:
            import hashlib
            h = hashlib.sha256()
            for name, p in sorted(self.unwrapped.state_dict().items()):
                h.update(name.encode()), h.update(p.detach().cpu().float().numpy().tobytes())
            (self.out / f"weights.rank{self.acc.process_index}.sha256").write_text(h.hexdigest())
        if self.acc.is_main_process:
            with self._saving("final/", None, bytes_per_param=4):
                self._save_model(self.out / "final")
                write_json(self.out / "trainer_state.json", self.state)

    @contextmanager
    def _saving(self, what: str, tmp: Path | None, bytes_per_param: int):
        """Turn a failed save (a full disk, an over-long path: OSError or SafetensorError) into one SaveError
        naming the folder, the free space and about what the save needs; the temp folder is removed."""
        from safetensors import SafetensorError
        try:
            yield
        except (OSError, SafetensorError, RuntimeError) as e:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            need = sum(p.numel() for p in self.unwrapped.parameters()) * bytes_per_param / 1e6
            try:
                free = f"{shutil.disk_usage(self.out).free / 1e6:,.0f} MB free there"
            except OSError:
                free = "free space unknown"
            reason = " ".join(str(e).split()) or type(e).__name__
            raise SaveError(f"could not write {what} in {self.out} ({reason}); {free}, about {need:,.0f} MB "
                            f"needed: free some space or choose another --output-dir") from e


class SaveError(OSError):
    """A checkpoint or final model could not be written (the CLI prints it in one line, exit 2)."""


def _cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    """Return a deep copy of `model` whose parameters and buffers are fresh CPU tensors (no GPU copy made)."""
    import copy
    memo = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(model, memo)
