"""Seconds per optimiser step and peak memory: end-to-end vs pipeline, toy preset, one run.

Both modes train the same model on the same batches; the only difference is whether L_v's gradient
flows through the DVTM and the STGS into the LLM (end2end) or stops at the SD tokenizer's one-hots
(pipeline). Each mode runs in a fresh subprocess so peak memory is its own. Target: end2end ≤ 1.3×.

    python benchmarks/train_step.py [--steps 10] [--batch 8] [--data data/toy] [--threads 0]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="timed optimiser steps per mode (after 2 warm-up steps)")
    p.add_argument("--batch", type=int, default=8, help="samples per step (half share a photo)")
    p.add_argument("--data", default="data/toy", help="toy dataset (generated there if absent)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed for the batches and the noise")
    p.add_argument("--worker", choices=["end2end", "pipeline"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(args) -> dict:
    import torch

    from photochat_lib.data.collate import PhotoChatDataset
    from photochat_lib.presets import collator_for
    from photochat_lib.data.photochat import read_photochat
    from photochat_lib.data.samples import make_samples
    from photochat_lib.presets import load_toy_model
    from profiling import PeakMemory
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    samples = make_samples(read_photochat(Path(args.data) / "train"))
    photo = [s for s in samples if s.shares_photo][: args.batch * (args.steps + 2)]
    text = [s for s in samples if not s.shares_photo][: args.batch * (args.steps + 2)]
    model = load_toy_model(mode=args.worker)
    model.train()
    collate = collator_for(model, "toy")
    half = args.batch // 2
    ds_p, ds_t = PhotoChatDataset(photo), PhotoChatDataset(text)
    batches = [collate([ds_p[k * half + i] for i in range(half)] + [ds_t[k * half + i] for i in range(args.batch - half)])
               for k in range(args.steps + 2)]                               # built outside the timed region
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(k):
        out = model(batches[k], tau=0.5, generator=torch.Generator().manual_seed(k))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out

    for k in range(2):
        step(k)
    times = []
    with PeakMemory("cpu") as mem:
        for k in range(2, args.steps + 2):
            t = time.perf_counter()
            out = step(k)
            times.append(time.perf_counter() - t)
    return {"median": statistics.median(times), "min": min(times), "peak": mem.peak, "what": mem.what,
            "threads": torch.get_num_threads(), "last_loss": float(out.loss)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if not (Path(args.data) / "train").exists():
        from photochat_lib.data.toy_world import write_toy_dataset
        write_toy_dataset(args.data, seed=0)
    from profiling import fmt_bytes
    res = {}
    for mode in ("end2end", "pipeline"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, f"--steps={args.steps}",
               f"--batch={args.batch}", f"--data={args.data}", f"--threads={args.threads}", f"--seed={args.seed}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return 1
        res[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"toy preset, batch {args.batch} (half share a photo), {args.steps} timed steps after 2 warm-up, "
          f"threads={res['end2end']['threads']}; memory: {res['end2end']['what']}")
    print(f"{'mode':10s} {'s/step (median)':>16s} {'s/step (min)':>13s} {'peak memory':>12s}")
    for mode, r in res.items():
        print(f"{mode:10s} {r['median']:16.3f} {r['min']:13.3f} {fmt_bytes(r['peak']):>12s}")
    ratio = res["end2end"]["median"] / res["pipeline"]["median"]
    print(f"end2end / pipeline = {ratio:.2f}x (target <= 1.30x: {'met' if ratio <= 1.3 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
