"""Turn a `@dataclass` config into argparse options, with each field's comment as its help string.

The configs document every field with a trailing comment (nanoGPT style); reading those comments
here keeps the help text and the code in one place.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import sys
import typing


def field_comments(cls) -> dict[str, str]:
    """Return {field name: its trailing `# comment`} from the dataclass source; a comment continued on the
    next lines (lines holding only an aligned `# ...`) is joined to it."""
    out, last = {}, None
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif last and (c := re.match(r"\s+#\s*(.+)$", line)):
            out[last] += " " + c.group(1).strip()
        else:
            last = None
    return out


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add --field-name options for every field of `cls` (bools become --flag / --no-flag).

    Options are kebab-case like every other command's (``--output-dir``); the snake_case spelling of
    earlier releases and of diffusers' scripts (``--output_dir``) still works, hidden from the help.
    The help says the default unless the field's comment already does (``default: the recipe's``).
    """
    helps = field_comments(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name == "extra":
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = hints[f.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        comment = helps.get(f.name, f.name)
        help_text = comment if "default" in comment or default is None else f"{comment} (default: {default})"
        flag, alias = "--" + f.name.replace("_", "-"), "--" + f.name
        action = dict(action=argparse.BooleanOptionalAction) if base is bool else dict(type=base)
        parser.add_argument(flag, dest=f.name, default=default, help=help_text, **action)
        if alias != flag:
            parser.add_argument(alias, dest=f.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **action)


def at_least(low: int):
    """Return an argparse `type` for integers >= low: a nonsense value stops at parse time, in one line."""
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    check.__name__ = f"integer >= {low}"
    return check


def non_negative(text: str) -> float:
    """argparse `type` for a float >= 0 (a guidance scale, a timeout)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def config_defaults(parser: argparse.ArgumentParser, path: str) -> dict:
    """Return the settings in a YAML/JSON file as `parser` defaults (so flags given on the command line
    override them). A run's saved ``config.json`` works as it is: its ``"train"`` section is read.
    Unknown keys are a ValueError naming them and the file."""
    import yaml
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=_NoAliasLoader)  # JSON is YAML
    except OSError as e:
        raise ValueError(f"--config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"--config {path}: not valid YAML/JSON ({' '.join(str(e).split())})") from None
    if isinstance(data, dict) and isinstance(data.get("train"), dict):
        data = data["train"]                            # a training run's config.json
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {a.dest for a in parser._actions} | {f.name for f in getattr(parser, "config_fields", ())}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown settings {', '.join(unknown)}")
    actions = {a.dest: a for a in parser._actions}
    return {k: _checked(actions[k], k, v, path) if k in actions else v for k, v in values.items()}


def _checked(action: argparse.Action, key: str, value, path: str):
    """Return a --config value as its flag would parse it; a wrong type is a ValueError naming file and key
    (argparse converts only string defaults, so `max_steps: 2.5` or `lr: [1, 2]` once reached the run)."""
    if value is None:
        return None
    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
        if not isinstance(value, bool):
            raise ValueError(f"--config {path}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(value, (dict, list, bool)) or (action.type is int and isinstance(value, float)):
        kind = {int: "an integer", float: "a number", str: "text"}.get(action.type, "one value")
        raise ValueError(f"--config {path}: {key} must be {kind}, got {value!r}")
    if action.type is None or action.type is str:
        return value if isinstance(value, str) else str(value)
    try:
        value = action.type(str(value))
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise ValueError(f"--config {path}: {key}: {e}") from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"--config {path}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


try:
    import yaml as _yaml

    class _NoAliasLoader(_yaml.SafeLoader):
        """yaml.SafeLoader without aliases: a settings file needs no ``*ref``, and nested aliases expand
        exponentially (a few lines once stalled the run while config.json was written)."""

        def compose_node(self, parent, index):
            if self.check_event(_yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise _yaml.YAMLError(f"aliases (*name) are not allowed in a settings file (line {mark.line + 1})")
            return super().compose_node(parent, index)
except ImportError:                                    # pyyaml is a dependency; keep the module importable
    _NoAliasLoader = None


def dataclass_from_args(cls, args: argparse.Namespace):
    """Return `cls(**{field: args.field})` for the fields present in args."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def progress_bar(iterable=None, *, disable: bool = False, **kwargs):
    """Return a tqdm bar: live on a terminal; in a log file or pipe (CI, ``make demo > log``) it refreshes
    at most every 30 s instead of several times a second, so a long run writes a few lines a minute."""
    import functools

    from tqdm.auto import tqdm
    if sys.stderr.isatty():
        return tqdm(iterable, disable=disable, **kwargs)
    kwargs.setdefault("mininterval", 30.0)
    kwargs.setdefault("maxinterval", 60.0)
    bar = tqdm(iterable, disable=disable, **kwargs)
    bar.set_postfix = functools.partial(bar.set_postfix, refresh=False)   # a postfix would redraw every step
    return bar


def quiet_libraries() -> None:
    """Turn off the Hub's, transformers' and diffusers' own progress bars ("Loading weights", "Writing model
    shards", "Fetching files") for a CLI run, as the notebooks do; their warnings still show."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")     # read by huggingface_hub and transformers
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as df_logging
        df_logging.disable_progress_bar()
