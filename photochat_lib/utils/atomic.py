"""Atomic writes: nothing half-written is ever left under a final name.

Files go through a temp file in the same folder (fsync, then os.replace); folders are built in a temp
sibling and swapped in. Every writer in the package (datasets, manifests, checkpoints, reports) uses
these, so an interrupted run leaves either the old file or the new one. File names built from data go
through `safe_name`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """Return `text` (a dialogue or sample id) as one plain file-name component: every run of characters other
    than letters, digits, '_', '-' and '.' becomes '_' and leading dots go, so an id such as '../../x',
    '/abs/x' or 'a/b' can neither leave its folder nor name a missing subfolder."""
    return _UNSAFE.sub("_", str(text)).lstrip(".") or "_"


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries to disk (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _short(name: str, keep: int = 100) -> str:
    """Return a temp name's stem: the target's name, cut to `keep` characters (a 245-character folder name
    plus ".tmp.XXXXXXXX" once went past the 255-byte limit of a file name)."""
    return name if len(name) <= keep else name[:keep]


def write_file(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path) on a temp file beside path, then rename it onto path; returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{_short(path.name)}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)                      # mkstemp makes 0600; shipped files must be readable
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically; returns path."""
    return write_file(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically; returns path."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, **dumps) -> Path:
    """Write obj as indented JSON (json.dumps options may be given) atomically; returns path."""
    return write_text(path, json.dumps(obj, **{"indent": 2, **dumps}) + "\n")


def write_jsonl(path: str | os.PathLike, rows) -> Path:
    """Write one JSON object per line atomically; returns path."""
    return write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def replace_dir(final: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a fresh temp sibling of final, then swap it into place; returns final."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_short(final.name)}.tmp.", dir=final.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)                      # mkdtemp makes 0700
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{_short(final.name)}.old.", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)
    return final
