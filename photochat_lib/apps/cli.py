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
    "photochat_lib.data.cli",             # photochat data {toy,stats,download}
    "photochat_lib.apps.pretrain",        # photochat pretrain
    "photochat_lib.training.train",       # photochat train
    "photochat_lib.evaluation.evaluate",  # photochat evaluate
    "photochat_lib.apps.chat",            # photochat chat
    "photochat_lib.training.budget",      # photochat estimate-memory
    "photochat_lib.apps.demo",            # photochat demo
    "photochat_lib.utils.doctor",         # photochat doctor
]


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="photochat",
        description="End-to-end photo-sharing multimodal dialogue (LLM + Q-Former + Stable Diffusion).",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    from photochat_lib import __version__
    parser.add_argument("--version", action="version", version=f"photochat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMANDS:
        importlib.import_module(name).register(sub)
    _add_debug_everywhere(sub)
    return parser


def _add_debug_everywhere(subparsers) -> None:
    """Let --debug follow any sub-command too (``photochat train ... --debug``)."""
    for p in subparsers.choices.values():
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error")
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_debug_everywhere(action)


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """Return the sub-command's own parser."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user can fix: bad data (DataError is a ValueError), a bad flag or file, a missing or corrupt model
    folder, an unreachable Hub, a full disk, a torch build without kernels for the GPU. These end in one line;
    anything else is a bug and shows its traceback."""
    from photochat_lib.utils.doctor import UnsupportedGPUError
    return ValueError, OSError, UnsupportedGPUError


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status (2 for an error the user can fix)."""
    from photochat_lib.utils.cliutil import quiet_libraries
    quiet_libraries()
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None):      # a settings file: its values become defaults, flags override
            from photochat_lib.utils.cliutil import config_defaults
            sub = _subparser(parser, args.command)
            sub.set_defaults(**config_defaults(sub, args.config))
            args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except _user_errors() as e:
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"photochat {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"photochat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
