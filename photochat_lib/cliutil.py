"""Turn a `@dataclass` config into argparse options, with each field's comment as its help string.

The configs document every field with a trailing comment (nanoGPT style); reading those comments
here keeps the help text and the code in one place.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing


def field_comments(cls) -> dict[str, str]:
    """Return {field name: its trailing `# comment`} from the dataclass source."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add --field options for every field of `cls` (bools become --flag / --no-flag)."""
    helps = field_comments(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name == "extra":
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = hints[f.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        help_text = f"{helps.get(f.name, f.name)} (default: {default})"
        if base is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=base, default=default, help=help_text)


def dataclass_from_args(cls, args: argparse.Namespace):
    """Return `cls(**{field: args.field})` for the fields present in args."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})
