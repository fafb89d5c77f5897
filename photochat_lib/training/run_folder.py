"""A training run's folder: what a run writes there, how it checkpoints and resumes, and what it may delete.

The trainer's bookkeeping half (`Trainer` mixes `RunFolder` in): ``checkpoint-{step}/`` written atomically
(a temp folder, then a rename; the last N kept) with accelerate's ``save_state`` plus ``trainer_state.json``;
``losses.jsonl`` (one line per optimizer step, trimmed back on resume so replayed steps are not logged twice);
``final/`` and ``best/`` (loadable PhotoChatModel folders, LoRA merged); and the rules around them: resuming
with settings that change the run is refused (`check_resume`), and ``--overwrite`` deletes only `RUN_FILES`.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from photochat_lib.utils.atomic import replace_dir, write_json, write_text


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """Return the checkpoint-{step} folder with the highest step, or None."""
    ckpts = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None


# what defines a run: resuming with any of these changed is refused (allow_changed_config overrides); the
# rest (max_steps, checkpointing, evaluation, logging) may change between a run's sessions
RUN_DEFINING = ("data", "preset", "mode", "init", "llm", "perceptron", "sd", "random_init", "smoke", "seed", "micro_batch_size",
                "grad_accum_steps", "lr", "sd_lr", "weight_decay", "warmup_steps", "alpha", "tau_start", "tau_end",
                "tau_anneal_epochs", "sd_caption_source", "pipeline_context", "dvtm_impl", "photo_only", "lr_decay",
                "lr_schedule_steps", "photo_repeats", "remark_repeats", "caption_supervision", "max_train_samples", "max_grad_norm")


def check_resume(cfg) -> None:
    """Raise ValueError, naming every changed setting, if cfg resumes a run whose config.json says otherwise."""
    saved = Path(cfg.output_dir) / "config.json"
    if not cfg.resume_from_checkpoint or cfg.allow_changed_config or not saved.exists():
        return
    before = json.loads(saved.read_text()).get("train", {})
    now = asdict(cfg)
    changed = [f"{k} {before[k]!r} -> {now[k]!r}" for k in RUN_DEFINING if k in before and before[k] != now[k]]
    if changed:
        raise ValueError(f"resuming {cfg.output_dir} with settings that change the run ({'; '.join(changed)}): "
                         f"pass --allow-changed-config to resume anyway")


RUN_FILES = ("config.json", "losses.jsonl", "trainer_state.json", "final", "best", "checkpoint-*", ".tmp-*", "logs",
             "batches.rank*.jsonl", "weights.rank*.sha256")   # everything a training run writes in output_dir


def clear_run(out: Path) -> list[str]:
    """Delete what an earlier run wrote in `out` (``--overwrite``) and return the names deleted.

    Refuses — a ValueError naming them, nothing deleted — when `out` holds anything a run does not write
    (data, notes, an evaluation the user put there): ``--output-dir . --overwrite`` must never cost a file.
    """
    from fnmatch import fnmatch
    entries = sorted(out.iterdir())
    foreign = [p.name for p in entries if not any(fnmatch(p.name, pattern) for pattern in RUN_FILES)]
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
        if final.exists():                     # this step is saved already (e.g. Ctrl-C right after a save)
            return final
        tmp = self.out / f".tmp-{final.name}"
        if self.acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)            # every process writes its RNG state into it
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp), safe_serialization=True)
        if self.acc.is_main_process:
            write_json(tmp / "trainer_state.json", {**self.state, "tau": self.tau.state_dict()})
            os.replace(tmp, final)
            ckpts = sorted((p for p in self.out.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[-1]))
            for old in ckpts[: max(0, len(ckpts) - self.cfg.checkpoints_total_limit)]:
                shutil.rmtree(old)
        self.acc.wait_for_everyone()
        return final

    def load_checkpoint(self, where: str) -> None:
        """Restore model, optimizer, scheduler and trainer state from a checkpoint (or 'latest')."""
        path = latest_checkpoint(self.out) if where == "latest" else Path(where)
        if path is None:
            self.acc.print(f"[train] no checkpoint in {self.out}; starting from scratch")
            return
        self.acc.load_state(str(path))
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
        """After a resume, drop log lines past the restored step (they will be replayed)."""
        path = self.out / "losses.jsonl"
        if self.acc.is_main_process and path.exists():
            keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.state["global_step"]]
            write_text(path, "".join(ln + "\n" for ln in keep))

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
            self._save_model(self.out / "final")
            write_json(self.out / "trainer_state.json", self.state)


def _cpu_copy(model: torch.nn.Module) -> torch.nn.Module:
    """Return a deep copy of `model` whose parameters and buffers are fresh CPU tensors (no GPU copy made)."""
    import copy
    memo = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b.detach().to("cpu", copy=True)
    return copy.deepcopy(model, memo)
