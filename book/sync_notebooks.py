"""Copy the course notebooks into book/notebooks/ so Jupyter Book 1.x can render them.

Jupyter Book 1.x only reads files inside the book folder, and the notebooks live in ``notebooks/`` at the
repository root (where nbval tests them and Colab opens them). Run before every build::

    python book/sync_notebooks.py && jupyter-book build book/

Copies ``notebooks/NN_*.ipynb`` (atomically: temp file, then rename), removes copies whose source is
gone, and checks that every chapter in ``_toc.yml`` exists. Exit status 1 (with the missing names)
otherwise. ``book/notebooks/`` is git-ignored.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

BOOK = Path(__file__).resolve().parent
SOURCE = BOOK.parent / "notebooks"
DEST = BOOK / "notebooks"


def sync(source: Path = SOURCE, dest: Path = DEST) -> list[Path]:
    """Copy every numbered notebook from source into dest; return the copies."""
    dest.mkdir(parents=True, exist_ok=True)
    notebooks = sorted(source.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks/NN_*.ipynb found in {source}")
    copies = []
    for nb in notebooks:
        target = dest / nb.name
        fd, tmp = tempfile.mkstemp(prefix=f".{nb.name}.", dir=dest)
        os.close(fd)
        try:
            shutil.copyfile(nb, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        copies.append(target)
    for stale in dest.glob("*.ipynb"):
        if not (source / stale.name).exists():
            stale.unlink()
    return copies


def missing_toc_files(book: Path = BOOK) -> list[str]:
    """Return the _toc.yml entries that have no .md or .ipynb file in the book."""
    entries = re.findall(r"^\s*(?:-\s*)?(?:file|root):\s*(\S+)", (book / "_toc.yml").read_text(), re.M)
    return [e for e in entries if not any((book / f"{e}{ext}").exists() for ext in (".md", ".ipynb"))]


def main() -> int:
    """Sync the notebooks and check the table of contents; return the exit status."""
    copies = sync()
    print(f"copied {len(copies)} notebooks into {DEST.relative_to(BOOK.parent)}/")
    missing = missing_toc_files()
    if missing:
        print(f"_toc.yml names files that do not exist: {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
