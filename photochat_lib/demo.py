"""`photochat demo`: the main job on the toy preset (what `make demo` runs).

Until joint training lands, the demo shows the whole method working on one toy batch: toy data →
the toy model → one forward pass with both losses (eq. 13) → a backward pass that reaches the LLM
from the image loss (eq. 4–12) → one optimiser step → `generate()` on a toy context.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def register(subparsers) -> None:
    """Add `photochat demo`."""
    p = subparsers.add_parser("demo", help="run the toy preset end to end and print what happened",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/toy", help="toy dataset folder (generated if absent)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, model and noise")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0 on success."""
    from .data.collate import Collator, PhotoChatDataset
    from .data.images import image_transform, sd_image_transform
    from .data.photochat import read_photochat
    from .data.samples import make_samples
    from .data.toy_world import write_toy_dataset
    from .generation import generate
    from .presets import build_model, get_preset

    torch.manual_seed(args.seed)
    data = Path(args.data)
    if not (data / "train").exists():
        print(f"[data] writing the toy world to {data}")
        write_toy_dataset(data, seed=args.seed)
    samples = make_samples(read_photochat(data / "train"), photo_only=True)
    print(f"[data] {len(samples)} photo-sharing samples in {data / 'train'}")
    preset = get_preset("toy")
    model = build_model(preset, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[model] toy preset: {n_params / 1e6:.2f} M parameters")
    collate = Collator(model.tokenizer, model.image_generator.tokenizer, image_transform(preset.image_size),
                       sd_image_transform(preset.sd_resolution), max_length=preset.max_length)
    ds = PhotoChatDataset(samples)
    batch = collate([ds[i] for i in range(4)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    t0 = time.perf_counter()
    out = model(batch, tau=1.0, generator=torch.Generator().manual_seed(args.seed))
    out.image_loss.backward(retain_graph=True)
    reach = sum(float(p.grad.abs().sum()) for p in model.llm.parameters() if p.grad is not None)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    print(f"[train] L = Lt + αLv = {out.text_loss.item():.3f} + {model.config.alpha} × {out.image_loss.item():.3f}"
          f" = {out.loss.item():.3f}; |∂Lv/∂LLM|₁ = {reach:.3e} (the image loss reaches the LLM);"
          f" one step in {time.perf_counter() - t0:.2f} s")
    s = samples[0]
    reply = generate(model, [t.text if t.text else _image(t) for t in s.context[-3:]], max_new_tokens=24,
                     num_inference_steps=5, seed=args.seed)
    print(f"[chat] reply: {reply.text!r}; photos drawn: {len(reply.images)}; notes: {reply.notes}")
    return 0


def _image(turn):
    from .data.images import load_image
    return load_image(turn.photo)
