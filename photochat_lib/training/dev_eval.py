"""Dev evaluation, early stopping and validation photos during training (§3.1.2).

The trainer's judging half (`Trainer` mixes `DevEvaluation` in). After every ``eval_every_epochs`` epochs the
model is scored on dev (`evaluate.evaluate_model`); each side keeps the weights of its best epoch in
``best/`` and stops when its metrics have not improved for ``early_stopping_patience`` epochs ("BLEU-2 and FID
scores do not increase on the dev set"): the end-to-end model as one side, the pipeline's dialogue side (LLM +
perceptron, BLEU-2) and image side (SD, FID) each on their own (§3.1.4). With ``report_to``, a few dev contexts'
replies and photos go to the trackers every ``validation_steps``.
"""
from __future__ import annotations

import torch


class DevEvaluation:
    """Early stopping and validation logging of a `Trainer` (uses its acc, cfg, state, recipe, opt, sides)."""

    # what each side's early stopping watches (§3.1.2: "BLEU-2 and FID scores do not increase on the dev set")
    WATCH = {"joint": ("BLEU-2", "FID"), "dialogue": ("BLEU-2",), "image": ("FID",)}
    SAVES = {"joint": None, "dialogue": ("llm", "perceptron"), "image": ("sd",)}   # what best/ takes from a side

    def _end_of_epoch(self) -> bool:
        """Evaluate on dev, update each side's early stopping; return True when every side has stopped."""
        cfg, st = self.cfg, self.state
        if not cfg.eval_every_epochs or st["epoch"] % cfg.eval_every_epochs or self.dev is None:
            return False
        from photochat_lib.evaluation.evaluate import evaluate_model
        metrics = evaluate_model(self.unwrapped, cfg.data, "dev", preset=cfg.preset, max_samples=cfg.eval_samples,
                                 seed=cfg.seed, accelerator=self.acc, dialogues=self.dev)["metrics"]
        self.model.train()
        best = st["best"]
        improved = set()
        if metrics.get("BLEU-2", -1) > best.get("BLEU-2", -1):
            best["BLEU-2"] = metrics["BLEU-2"]
            improved.add("BLEU-2")
        if "FID" in metrics and metrics["FID"] < best.get("FID", float("inf")):
            best["FID"] = metrics["FID"]
            improved.add("FID")
        st["history"].append({"epoch": st["epoch"], "step": st["global_step"], **metrics})
        self.acc.print(f"[dev] epoch {st['epoch']}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()
                                                                   if isinstance(v, float)))
        for side in self.sides:
            if side in st["stopped_sides"]:
                continue
            better = improved & set(self.WATCH[side])
            st["bad_epochs"][side] = 0 if better else st["bad_epochs"][side] + 1
            if self.acc.is_main_process and (("BLEU-2" in better) if side == "joint" else better):
                self._save_model(self.out / "best", self.SAVES[side])
            if st["bad_epochs"][side] >= self.recipe.early_stopping_patience:
                st["stopped_sides"].append(side)
                for g in self.opt.param_groups:           # from now on this side takes no step
                    if side in ("joint", g["side"]):
                        g["lr"] = 0.0
                self.acc.print(f"[train] {side} side: no better dev {' or '.join(self.WATCH[side])} for "
                               f"{st['bad_epochs'][side]} epochs; it stops here")
        if len(st["stopped_sides"]) == len(self.sides):
            watched = " or ".join(dict.fromkeys(m for side in self.sides for m in self.WATCH[side]))
            st["stopped"] = f"early stopping: no better dev {watched} for {self.recipe.early_stopping_patience} epochs"
            return True
        return False

    @torch.no_grad()
    def _log_validation(self) -> None:
        """Log, for the validation contexts: the model's replies (text, as `evaluate` generates them), the photos
        it shared, and the image generator drawing the reference captions (always there, also before the LLM
        has learnt to share: the image side's progress on its own)."""
        from photochat_lib.evaluation.evaluate import predict
        from photochat_lib.model.generation import draw_captions
        if not self.validation or not self.acc.is_main_process:
            return
        step, model = self.state["global_step"], self.unwrapped
        records, images = predict(model, self.validation, seed=self.cfg.seed)
        references = [p.caption for s in self.validation for p in s.target_photos()[:1]]
        groups = {"validation/shared_photos": [img for r in records for img in images.get(r["id"], [])[:1]],
                  "validation/reference_captions": draw_captions(model.image_generator, references, seed=self.cfg.seed)}
        model.train()
        text = "\n\n".join(f"**{r['id']}** reference: {r['reference']}  \nreply: {r['prediction']}" for r in records)
        for tracker in self.acc.trackers:
            if tracker.name == "tensorboard":
                import numpy as np
                for tag, imgs in groups.items():
                    if imgs:                                    # one grid, every photo at the largest size
                        side = max(max(img.size) for img in imgs)
                        grid = np.stack([np.asarray(img.convert("RGB").resize((side, side))) for img in imgs])
                        tracker.log_images({tag: grid}, step=step, dataformats="NHWC")
                tracker.writer.add_text("validation/replies", text, global_step=step)
            elif tracker.name == "wandb":
                import wandb
                tracker.log({tag: [wandb.Image(img) for img in imgs] for tag, imgs in groups.items() if imgs},
                            step=step)
