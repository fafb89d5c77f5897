"""One writer per folder: the exclusive lock a training run, a chat session or an evaluation holds on the folder
it writes into, so two of them can never mix their files (issue 22: two runs started 2 s apart into one
``--output-dir`` left a folder holding both and a checkpoint without weights).

The lock is an OS file lock (`filelock`: fcntl on Unix, msvcrt on Windows) on ``FOLDER/.photochat.lock``; the OS
drops it when the holder exits, however it exits (a SIGKILL included), so there is never a stale lock to
delete by hand. Beside it, ``.photochat.lock.json`` says who holds it (what, pid, host, since when), so the
second writer's error names the first in one line. Re-entrant within a process: the CLI takes the lock before
``--overwrite`` clears a folder, and the `Trainer` it then starts takes the same one again without blocking.
"""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from photochat_lib.utils.atomic import write_json

LOCK_NAME = ".photochat.lock"
OWNER_NAME = ".photochat.lock.json"
_held: dict[str, int] = {}                       # resolved folder -> nesting depth, in this process


class FolderBusy(ValueError):
    """Another process writes into the folder (a ValueError, so the CLI prints it in one line, exit 2)."""


def holder(folder: str | os.PathLike) -> str:
    """Return who holds `folder`'s lock, in words (from its owner file), or 'another process'."""
    try:
        o = json.loads((Path(folder) / OWNER_NAME).read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(o["since"]))
        return f"{o['what']} (pid {o['pid']} on {o['host']}, since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def hold_folder(folder: str | os.PathLike, what: str):
    """Hold `folder`'s exclusive lock for the block (the folder is created if missing).

    Raises FolderBusy naming the holder when another process has it; `what` ("photochat train", ...) is what
    this process tells the next one.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _held:                             # this process holds it already (CLI, then Trainer)
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    lock = FileLock(folder / LOCK_NAME, timeout=0, is_singleton=False)
    try:
        lock.acquire()
    except Timeout:
        raise FolderBusy(f"{folder} is in use by {holder(folder)}; wait for it to finish, or choose another "
                         f"folder") from None
    _held[key] = 1
    try:
        write_json(folder / OWNER_NAME, {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                                         "since": time.time()})
        yield
    finally:
        del _held[key]
        try:
            (folder / OWNER_NAME).unlink()
        except OSError:
            pass
        lock.release()
