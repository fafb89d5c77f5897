"""`photochat estimate-memory`: will a preset's recipe fit the GPU, and how long will a step take?

It joins the two budgets, each in its own module: memory (`memory.estimate`: weights, gradients, AdamW states,
activations) and time (`steptime.step_cost`: FLOPs of one optimizer step, seconds on a V100 and a T4). Neither
imports the other; this command imports both.
"""
from __future__ import annotations

import argparse
import json

from photochat_lib.recipe import RECIPES
from photochat_lib.training.memory import estimate
from photochat_lib.training.steptime import step_cost


def register(subparsers) -> None:
    """Add the `estimate-memory` sub-command to the `photochat` parser."""
    p = subparsers.add_parser(
        "estimate-memory", help="estimate GPU memory (and time per step) for training a preset; say whether it fits",
        description="Build the preset's architectures on the meta device (no download), count parameters "
                    "exactly and estimate training memory (weights, grads, AdamW, activations) for its recipe, "
                    "and the FLOPs of one optimizer step with the seconds they take on a V100 and a T4.")
    p.add_argument("--preset", choices=sorted(RECIPES), default="paper",
                   help="architectures and training recipe to estimate (default: paper)")
    p.add_argument("--gpu-gb", type=float, default=32.0,
                   help="GPU memory in GB (GiB) to check the estimate against, besides V100 32GB and T4 16GB "
                        "(default: 32)")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="override the recipe's micro-batch size (dialogues per forward/backward)")
    p.add_argument("--json", action="store_true",
                   help="print the estimate as JSON instead of the table")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    """Print the estimate; returns 0 if it fits --gpu-gb, else 1."""
    if args.micro_batch is not None and args.micro_batch < 1:
        raise SystemExit(f"estimate-memory: --micro-batch must be >= 1, got {args.micro_batch}")
    if args.gpu_gb <= 0:
        raise SystemExit(f"estimate-memory: --gpu-gb must be > 0, got {args.gpu_gb}")
    from dataclasses import asdict

    est = estimate(args.preset, gpu_gb=args.gpu_gb, micro_batch=args.micro_batch)
    cost = step_cost(args.preset, est.recipe)           # the same recipe and shapes: FLOPs -> seconds per step
    if args.json:
        print(json.dumps({**est.to_dict(), "step_cost": {**asdict(cost), "seconds": {
            gpu: cost.seconds(gpu) for gpu in ("V100 32GB", "T4 16GB")}}}, indent=2))
    else:
        print("\n".join([est.table(), *cost.lines()]))
    return 0 if est.fits() else 1
