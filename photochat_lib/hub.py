"""Where a PhotoChatModel comes from: a local folder or a Hugging Face Hub id, and what is wrong when it
does not load.

The rules a transformers user expects, with one line of error when they fail:

* a folder that exists is loaded as it is (a training run's ``final/``, ``best/`` or ``checkpoint-N/``);
* a name that *looks* local — absolute, ``./``/``../``/``~``, more than one ``/``, or whose first part is a
  local folder (``runs/e2e``) — is never sent to the Hub: it is a missing folder;
* anything else of the form ``name`` or ``owner/name`` is a Hub repo, fetched with
  ``huggingface_hub.snapshot_download`` (cached; ``HF_HUB_OFFLINE=1`` uses the cache only).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")   # "name" or "owner/name"


class HubConnectionError(OSError):
    """The Hub could not be reached (offline, no network) for a model that is not in the local cache."""


def looks_local(name: str) -> bool:
    """Return True if `name` can only mean a path on this machine (never a Hub repo id)."""
    s = str(name)
    if s.startswith(("/", ".", "~")) or "\\" in s or s.count("/") > 1 or not HUB_ID.match(s):
        return True
    return "/" in s and Path(s.split("/")[0]).is_dir()     # "runs/e2e" when ./runs exists


def resolve_model_path(name: str | os.PathLike, revision: str | None = None, token: str | None = None) -> Path:
    """Return a local folder for `name`: the folder itself, or the Hub snapshot of a repo id.

    Raises FileNotFoundError for a missing local folder or an unknown repo, HubConnectionError when the
    Hub cannot be reached and the repo is not cached.
    """
    if os.path.isdir(name):
        return Path(name)
    if looks_local(str(name)):
        raise FileNotFoundError(f"{name}: no such model folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)
    try:
        return Path(snapshot_download(str(name), revision=revision, token=token))
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as e:
        raise FileNotFoundError(f"{name} is neither a local folder nor a Hub model you can read "
                                f"({type(e).__name__})") from None
    except LocalEntryNotFoundError:
        raise HubConnectionError(f"{name}: not in the local Hub cache and the Hub cannot be reached (offline?); "
                                 f"download it where there is a connection, or pass a local folder") from None
    except OSError as e:                       # requests' ConnectionError, timeouts
        raise HubConnectionError(f"{name}: cannot reach the Hugging Face Hub ({type(e).__name__}); pass a local "
                                 f"folder, or set HF_HUB_OFFLINE=1 to use the cache") from None


def find_broken_file(folder: str | os.PathLike) -> tuple[Path, str] | None:
    """Return (file, what is wrong) for the first unreadable json/safetensors file under `folder`, else None.

    Reads only headers (safetensors) and parses json: used to name the file after a load failed.
    """
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                return path, f"not valid JSON ({e})"
        elif path.suffix == ".safetensors":
            try:
                _check_safetensors_size(path)
            except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
                return path, f"truncated or corrupt weights ({e})"
    return None


def _check_safetensors_size(path: Path) -> None:
    """Raise ValueError if the file is shorter than its header says (a copy cut short)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > path.stat().st_size:
            raise ValueError(f"its header claims {n} bytes, more than the file holds")
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if path.stat().st_size < 8 + n + end:
        raise ValueError(f"{path.stat().st_size} bytes, the header needs {8 + n + end}")
