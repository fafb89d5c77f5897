"""The committed results the course shows, shipped with the package so a pip install (Colab) has them too.

``make demo`` (``photochat demo --reports photochat_lib/reports``) writes ``toy_results.{json,md,png}``;
``benchmarks/when_end2end_helps.py``, ``benchmarks/gradient_signal.py`` and ``benchmarks/bridge_diagnostic.py``
write theirs here too. Notebooks read them with :func:`report_path` / :func:`read_report`, never by a path
relative to a repository a pip install does not have.
"""
from __future__ import annotations

import json
from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def report_path(name: str) -> Path:
    """Return the path of a shipped report file (``"toy_results.json"``); FileNotFoundError names what exists."""
    path = FOLDER / name
    if not path.is_file():
        have = sorted(p.name for p in FOLDER.iterdir() if p.suffix in (".json", ".md", ".png"))
        raise FileNotFoundError(f"no report {name!r} in {FOLDER}; shipped: {', '.join(have) or 'none'}. The repository's "
                                f"`make demo` and benchmarks/ scripts write them")
    return path


def read_report(name: str):
    """Return a shipped report: parsed JSON for ``.json``, text for ``.md``."""
    text = report_path(name).read_text(encoding="utf-8")
    return json.loads(text) if name.endswith(".json") else text


__all__ = ["FOLDER", "read_report", "report_path"]
