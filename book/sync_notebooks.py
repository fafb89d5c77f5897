"""Copy the course notebooks into book/notebooks/ so Jupyter Book 1.x can render them.

Jupyter Book 1.x only reads files inside the book folder, and the notebooks live in ``notebooks/`` at the
repository root (where nbval tests them and Colab opens them). Run before every build::

    python book/sync_notebooks.py && jupyter-book build book/

Copies ``notebooks/NN_*.ipynb`` (atomically: temp file, then rename), removes copies whose source is
gone, and checks that every chapter in ``_toc.yml`` exists. Exit status 1 (with the missing names)
otherwise. ``book/notebooks/`` is git-ignored.

The copies are the notebooks as written, except for one normalisation of their markdown cells (the
notebooks themselves are never touched): every display-math block — ``$$ … $$`` (on one line or
several) or an amsmath environment ``\\begin{align} … \\end{align}`` — is separated from the text
around it by blank lines. Jupyter and Colab render ``text\\n$$x$$`` as display math, but in MyST (as
in CommonMark) a block cannot interrupt a paragraph, so the ``$$`` would become part of the
paragraph: stray ``$`` signs and raw TeX in the book. Code fences are left alone.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

BOOK = Path(__file__).resolve().parent
SOURCE = BOOK.parent / "notebooks"
DEST = BOOK / "notebooks"

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_DMATH_OPEN = re.compile(r"^[ \t]*\$\$")
_AMS_ENVS = ("equation|multline|gather|align|alignat|flalign|matrix|pmatrix|bmatrix|Bmatrix|vmatrix"
             "|Vmatrix|eqnarray")
_AMS_OPEN = re.compile(r"^[ \t]*\\begin\{(" + _AMS_ENVS + r")(\*?)\}")


def _display_math_end(lines: list[str], i: int) -> int | None:
    """Return the index of the last line of the display-math block starting at line i, or None."""
    line = lines[i]
    m = _DMATH_OPEN.match(line)
    if m:
        if "$$" in line[m.end():]:              # $$ … $$ on one line (possibly with a label after)
            return i
        for j in range(i + 1, len(lines)):      # $$ … newline … $$
            if "$$" in lines[j]:
                return j
        return None                             # unclosed: leave it to MyST
    m = _AMS_OPEN.match(line)
    if m:
        end = f"\\end{{{m.group(1)}{m.group(2)}}}"
        for j in range(i, len(lines)):
            if end in lines[j]:
                return j
    return None


def separate_display_math(markdown: str) -> str:
    """Return markdown with a blank line before and after every display-math block (not in code fences)."""
    lines = markdown.split("\n")
    out: list[str] = []
    fence = None            # the opening fence (```, ~~~~, …) while inside a fenced code block
    i = 0
    while i < len(lines):
        line = lines[i]
        if fence is not None:
            out.append(line)
            if line.strip().startswith(fence) and set(line.strip()) == {fence[0]}:
                fence = None
            i += 1
            continue
        m = _FENCE.match(line)
        if m:
            fence = m.group(1)
            out.append(line)
            i += 1
            continue
        end = _display_math_end(lines, i)
        if end is None:
            out.append(line)
            i += 1
            continue
        if out and out[-1].strip():
            out.append("")
        out.extend(lines[i:end + 1])
        if end + 1 < len(lines) and lines[end + 1].strip():
            out.append("")
        i = end + 1
    return "\n".join(out)


def normalise_notebook(nb: dict) -> bool:
    """Separate display math in every markdown cell of nb (in place); return whether anything changed."""
    changed = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else source
        new = separate_display_math(text)
        if new != text:
            cell["source"] = new.splitlines(keepends=True) if isinstance(source, list) else new
            changed = True
    return changed


def _write_copy(nb_path: Path, tmp: str) -> None:
    """Write the (normalised) copy of nb_path to tmp: the same bytes when nothing needs changing."""
    raw = nb_path.read_text(encoding="utf-8")
    try:
        nb = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{nb_path} is not valid notebook JSON: {e}") from e
    if normalise_notebook(nb):
        Path(tmp).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        shutil.copyfile(nb_path, tmp)


def sync(source: Path = SOURCE, dest: Path = DEST) -> list[Path]:
    """Copy every numbered notebook from source into dest (display math normalised); return the copies."""
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
            _write_copy(nb, tmp)
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
    """Return the _toc.yml entries that have no .md, .rst or .ipynb file in the book."""
    entries = re.findall(r"^\s*(?:-\s*)?(?:file|root):\s*(\S+)", (book / "_toc.yml").read_text(), re.M)
    return [e for e in entries if not any((book / f"{e}{ext}").exists() for ext in (".md", ".rst", ".ipynb"))]


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
