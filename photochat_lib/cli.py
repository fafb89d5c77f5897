"""The `photochat` command line: one entry point, one sub-command per job.

Each module that owns a job registers its own sub-command through a `register(subparsers)`
function, so this file stays a table of contents.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (module, what it adds) — each module exposes register(subparsers) -> None
_COMMANDS = [
    "photochat_lib.data.cli",      # photochat data {toy,stats,download}
    "photochat_lib.pretrain",      # photochat pretrain
    "photochat_lib.train",         # photochat train
    "photochat_lib.evaluate",      # photochat evaluate
    "photochat_lib.chat",          # photochat chat
    "photochat_lib.memory",        # photochat estimate-memory
    "photochat_lib.demo",          # photochat demo
]


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="photochat",
        description="End-to-end photo-sharing multimodal dialogue (LLM + Q-Former + Stable Diffusion).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
