"""Seconds for one chat reply that shares a photo (toy preset, CPU), split into its three parts:
perception (ViT + Q-Former on the context photos), text generation (the LLM writes the reply with
its caption) and image generation (SD draws the caption). Target: ≤ 3 s in total on 2 cores.

    python benchmarks/chat_latency.py [--model runs/toy/end2end-seed0/final] [--repeats 5] [--steps 20]

The context is a toy test dialogue up to the turn where the reference shares a photo, opened by a
photo the user attached (another test dialogue's), so the reply really perceives one. If the model
does not share a photo there, the header says so and image generation is timed on the reference
caption. "text generation" includes encoding the context photo again inside generate().
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="PhotoChatModel folder (default: runs/toy/end2end-seed0/final "
                   "if present, else the shipped toy model)")
    p.add_argument("--data", default="data/toy", help="toy dataset (generated there if absent)")
    p.add_argument("--repeats", type=int, default=5, help="timed replies (after one warm-up)")
    p.add_argument("--steps", type=int, default=20, help="denoising steps per photo")
    p.add_argument("--max-new-tokens", type=int, default=48, help="longest reply in LLM tokens")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from photochat_lib.data.images import load_image
    from photochat_lib.data.photochat import read_photochat
    from photochat_lib.data.samples import make_samples
    from photochat_lib.data.schema import Turn
    from photochat_lib.model.generation import Segment, draw_photos, generate_batch
    from photochat_lib.model.photochat_model import PhotoChatModel
    from photochat_lib.presets import load_toy_model
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (Path(args.data) / "test").exists():
        from photochat_lib.data.toy_world import write_toy_dataset
        write_toy_dataset(args.data, seed=0)
    default = Path("runs/toy/end2end-seed0/final")
    path = args.model or (str(default) if default.exists() else None)
    model = PhotoChatModel.from_pretrained(path) if path else load_toy_model()
    model.eval()
    samples = make_samples(read_photochat(Path(args.data) / "test"))
    sample = next(s for s in samples if s.shares_photo)
    # A chat where the user attached a photo earlier: another test dialogue's photo opens the context.
    other = next(s for s in samples if s.shares_photo and s.dialogue_id != sample.dialogue_id)
    user_photo = Turn(speaker=sample.context[0].speaker, photo=other.target_photos()[0])
    context = [user_photo] + sample.context
    photos = [load_image(user_photo.photo)]
    rows = {"perception": [], "text generation": [], "image generation": []}
    shared = None
    for k in range(args.repeats + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            model.perceptron(model.perceptron.preprocess(photos))             # the context photos, eq. (3)
        t1 = time.perf_counter()
        reply = generate_batch(model, [context], [sample.speaker], max_new_tokens=args.max_new_tokens,
                               draw_images=False)[0]
        t2 = time.perf_counter()
        shared = reply.shared_photo and any(s.text for s in reply.segments if s.kind == "photo")
        if not shared:                                                        # draw the reference caption
            reply.segments.append(Segment("photo", sample.target_photos()[0].caption))
        draw_photos(model, reply, num_inference_steps=args.steps)
        t3 = time.perf_counter()
        if k:  # the first reply is a warm-up
            rows["perception"].append(t1 - t0)
            rows["text generation"].append(t2 - t1)  # includes the perceptron again: generate re-encodes photos
            rows["image generation"].append(t3 - t2)
    total = [sum(x) for x in zip(*rows.values())]
    print(f"chat reply latency, toy preset, model={path or 'shipped toy'}, sample {sample.id}, "
          f"{len(photos)} photo(s) perceived, {args.steps} denoising steps, threads={torch.get_num_threads()}, "
          f"median of {args.repeats}; the model {'shared a photo' if shared else 'did NOT share (reference caption drawn)'}")
    print(f"{'part':18s} {'seconds':>8s}")
    for name, xs in rows.items():
        print(f"{name:18s} {statistics.median(xs):8.3f}")
    med = statistics.median(total)
    print(f"{'total':18s} {med:8.3f}   (target <= 3 s: {'met' if med <= 3 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
