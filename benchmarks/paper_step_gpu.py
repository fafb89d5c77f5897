"""The paper preset's training step on one GPU: seconds per optimizer step and peak memory.

The issue's GPU check. No weights are downloaded: `photochat_lib.presets.build_config_components`
builds Llama-2-7b-chat, BLIP-2's ViT-g + Q-Former and stable-diffusion-2-1-base from the configs
shipped in photochat_lib/configs/, with random weights, directly on the GPU in fp16 (as
`load_components(dtype=float16)` would load them). The trainer is `photochat_lib.training.train.Trainer`,
unchanged, with the paper recipe (`photochat_lib.recipe.RECIPES["paper"]`): fp16 autocast + gradient
scaling, LLM and UNet LoRA, Q-Former + projection trained in fp32, ViT / text encoder / VAE frozen,
gradient checkpointing, micro-batch 4 × 8 accumulation = batch 32, AdamW lr 5e-5.

The batches are the estimator's worst case, so the measurement can be set against
`photochat estimate-memory --preset paper`: toy-world dialogues whose response shares a photo
(photo_only, so every sample carries the image loss), each given the recipe's 2 context photos
(2 × 32 <image> tokens after <s>, random 224² pixels) and padded to the recipe's 512 LLM tokens; the
SD targets are the 512² photos, the captions 77 CLIP tokens.

    python benchmarks/paper_step_gpu.py [--steps 3] [--modes end2end pipeline] [--preset paper]
    python benchmarks/paper_step_gpu.py --smoke     # the same code at tiny widths, on a CPU (checks the script)

Needs the project's packages (diffusers, transformers 5.x, peft, accelerate) beside CUDA torch; on
a GPU machine without a registry, carry them as wheels (`pip download --no-deps ...`, then
`pip install --no-index --target DIR *.whl` there and put DIR on PYTHONPATH with the repo root).

Prints one row per mode: setup seconds, seconds per optimizer step (median after the first, which
warms up kernels), memory held by the weights, peak allocated and peak reserved by PyTorch's
allocator (nvidia-smi would add the CUDA context, ~0.5 GB), and the estimator's figure.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

GiB = 2 ** 30


class WorstCaseBatches:
    """Wrap a collate function: add `n_photos` context photos per row and pad every row to `length`."""

    def __init__(self, collate, length: int, n_photos: int, image_size: int, placeholder_id: int, pad_id: int):
        self.collate, self.length, self.n_photos = collate, length, n_photos
        self.image_size, self.placeholder_id, self.pad_id = image_size, placeholder_id, pad_id

    def cut_report(self, samples):
        """What the wrapped collator's limits cut (the trainer's start-up summary asks)."""
        return self.collate.cut_report(samples)

    def __call__(self, items):
        from photochat_lib.data.tokens import IGNORE_INDEX, NUM_VISUAL_TOKENS
        b = self.collate(items)
        B, k = b["input_ids"].shape[0], self.n_photos * NUM_VISUAL_TOKENS
        n = b["attention_mask"].sum(1)                                          # (B,) real tokens per row
        if int(n.max()) + k > self.length:
            raise ValueError(f"batch {b['ids']}: {int(n.max())} + {k} visual tokens > {self.length}")
        out = {key: torch.full((B, self.length), fill, dtype=torch.long) for key, fill in
               (("input_ids", self.pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX),
                ("caption_positions", -1))}                                     # (B, length)
        for key, fill in (("input_ids", self.placeholder_id), ("attention_mask", 1), ("labels", IGNORE_INDEX),
                          ("caption_positions", -1)):
            for r in range(B):                                                  # <s>, k placeholders, the rest
                row = b[key][r, : n[r]]
                out[key][r, : n[r] + k] = torch.cat([row[:1], torch.full((k,), fill), row[1:]])
        new = torch.randn(B * self.n_photos, 3, self.image_size, self.image_size)  # (B·n_photos, 3, S, S)
        old_pix, old_idx = b["context_pixel_values"], b["context_image_batch_index"]
        pix, idx = [], []
        for r in range(B):                  # a row's new photos come first: their placeholders do
            pix += [new[r * self.n_photos + j] for j in range(self.n_photos)] + list(old_pix[old_idx == r])
            idx += [r] * (self.n_photos + int((old_idx == r).sum()))
        b.update(out, context_pixel_values=torch.stack(pix), context_image_batch_index=torch.tensor(idx))
        return b


def run_mode(mode: str, args, data: Path, out: Path) -> dict:
    """Build the preset on the device, train `args.steps` optimizer steps, return the measurements."""
    import photochat_lib.training.train as T
    from photochat_lib.presets import get_preset
    from photochat_lib.model.text_generator import placeholder_id

    preset = get_preset(args.preset)
    real_make_loader = T.make_loader

    def make_loader(cfg, recipe, model, split, dialogues=None):
        ds, loader = real_make_loader(cfg, recipe, model, split, dialogues)
        loader.collate_fn = WorstCaseBatches(loader.collate_fn, recipe.max_text_length, recipe.max_context_images,
                                             preset.image_size, placeholder_id(model.tokenizer),
                                             model.tokenizer.pad_token_id)
        return ds, loader

    T.make_loader = make_loader
    cuda = torch.cuda.is_available()
    try:
        t0 = time.perf_counter()
        cfg = T.TrainConfig(data=str(data), output_dir=str(out / mode), preset=args.preset, mode=mode,
                            random_init=True, smoke=args.smoke, photo_only=True, max_steps=args.steps,
                            eval_every_epochs=0, checkpointing_steps=10 ** 9, progress=False)
        trainer = T.Trainer(cfg)
        trainer.save_final = lambda: None          # a merged 7B copy on disk is not what is measured here
        if cuda:
            torch.cuda.synchronize()
        setup = time.perf_counter() - t0
        weights = torch.cuda.memory_allocated() / GiB if cuda else float("nan")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        rows = [json.loads(ln) for ln in (out / mode / "losses.jsonl").read_text().splitlines() if ln]
        steps = [r["seconds"] for r in rows if "seconds" in r]
        res = {"mode": mode, "setup_s": setup, "first_step_s": steps[0],
               "step_s": statistics.median(steps[1:]) if len(steps) > 1 else steps[0],
               "weights_gib": weights, "trainable": trainer.trainable,
               "loss": [round(r["loss"], 4) for r in rows if "loss" in r],
               "image_loss": [round(r["image_loss"], 4) for r in rows if "image_loss" in r],
               "skipped": sum("skipped" in r for r in rows),
               "peak_allocated_gib": torch.cuda.max_memory_allocated() / GiB if cuda else float("nan"),
               "peak_reserved_gib": torch.cuda.max_memory_reserved() / GiB if cuda else float("nan")}
    finally:
        T.make_loader = real_make_loader
    del trainer
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper", choices=["paper", "colab"])
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per mode (each = 8 micro-batches of 4)")
    p.add_argument("--modes", nargs="+", default=["end2end", "pipeline"], choices=["end2end", "pipeline"])
    p.add_argument("--smoke", action="store_true", help="tiny widths: check the script on a CPU")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        p.error("no GPU: this benchmark needs CUDA (or --smoke to check the script on a CPU)")
    from photochat_lib.data.toy_world import write_toy_dataset
    from photochat_lib.training.memory import estimate
    from photochat_lib.recipe import get_recipe
    from photochat_lib.training.steptime import step_cost
    recipe = get_recipe(args.preset)
    est = estimate(args.preset)
    cost = step_cost(args.preset)                   # FLOPs at the same shapes -> an s/step band per GPU
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        need = recipe.effective_batch_size * (args.steps + 1)
        write_toy_dataset(Path(tmp) / "data", seed=0, n_train=need, n_dev=2, n_test=2)
        for mode in args.modes:
            results.append(run_mode(mode, args, Path(tmp) / "data", Path(tmp) / "runs"))
            print(json.dumps(results[-1]), flush=True)
    print(f"\n{args.preset} preset{' (SMOKE: tiny widths)' if args.smoke else ''}, random weights, on {device}; "
          f"torch {torch.__version__}; recipe: fp16 autocast, micro-batch {recipe.micro_batch_size} × "
          f"{recipe.grad_accum_steps} accumulation, {recipe.max_text_length} LLM tokens with "
          f"{recipe.max_context_images} context photos, {recipe.image_resolution}² SD targets")
    print(f"{'mode':9s} {'setup s':>8s} {'1st step s':>10s} {'s/step':>8s} {'weights GiB':>12s} "
          f"{'peak alloc GiB':>15s} {'peak reserved GiB':>18s} {'skipped':>8s}")
    for r in results:
        print(f"{r['mode']:9s} {r['setup_s']:8.1f} {r['first_step_s']:10.2f} {r['step_s']:8.2f} "
              f"{r['weights_gib']:12.2f} {r['peak_allocated_gib']:15.2f} {r['peak_reserved_gib']:18.2f} "
              f"{r['skipped']:8d}")
    print(f"estimate-memory --preset {args.preset}: {est.total_gb:.2f} GiB (incl. 1 GiB CUDA context and a 10 % "
          f"margin); target ≤ 30 GB so that it fits a 32 GB V100")
    bands = {gpu: cost.seconds(gpu) for gpu in ("V100 32GB", "T4 16GB")}
    print(f"estimated s/step ({cost.step_tflops:.4g} TFLOPs per optimizer step at 50–25 % of peak): "
          + "; ".join(f"{gpu} {fast:.3g}–{slow:.3g}" for gpu, (fast, slow) in bands.items())
          + " (the measured s/step above is per optimizer step too)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "torch": torch.__version__,
                                               "estimate_gib": est.total_gb, "estimate_step_s": bands,
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
