"""book/sync_notebooks.py: the copies it makes of the notebooks render their display math in MyST.

Fast (no build, no browser). The notebooks in notebooks/ are never modified: only the copies are.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sync_notebooks", BOOK / "sync_notebooks.py")
sync_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_notebooks)
separate = sync_notebooks.separate_display_math


@pytest.mark.parametrize("before, after", [
    ("text:\n$$x$$\nmore", "text:\n\n$$x$$\n\nmore"),                        # one line, run into text
    ("text:\n$$\nx = 1\n$$\nmore", "text:\n\n$$\nx = 1\n$$\n\nmore"),        # several lines
    ("text:\n$$x$$ (eq-label)", "text:\n\n$$x$$ (eq-label)"),                # a labelled equation
    ("text:\n\\begin{align}\nx &= 1\n\\end{align}\nmore",
     "text:\n\n\\begin{align}\nx &= 1\n\\end{align}\n\nmore"),               # amsmath environment
    ("- item\n  $$x$$", "- item\n\n  $$x$$"),                                # in a list item
])
def test_display_math_is_separated_from_text(before, after):
    assert separate(before) == after
    assert separate(after) == after                                          # idempotent


@pytest.mark.parametrize("text", [
    "text\n\n$$x$$\n\nmore",                  # already separated
    "inline $x$ and $$y$$ in a sentence",      # not a block
    "```python\ns = 'a'\n$$x$$\n```",          # inside a code fence
    "~~~~\n```\n$$x$$\n~~~~",                  # a longer fence is closed only by a fence as long
    "text\n$$ never closed",                   # unclosed: left to MyST
])
def test_everything_else_is_unchanged(text):
    assert separate(text) == text


def test_sync_normalises_the_copy_and_never_the_source(tmp_path):
    src, dest = tmp_path / "notebooks", tmp_path / "book_notebooks"
    src.mkdir()
    cells = [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["Eq. (4):\n", "$$g = -\\log u$$\n", "where"]},
             {"cell_type": "code", "id": "b", "metadata": {}, "execution_count": None, "outputs": [],
              "source": ["x = 1\n", "$$\n"]}]
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (src / "03_x.ipynb").write_text(json.dumps(nb, indent=1))
    (src / "04_y.ipynb").write_text(json.dumps({**nb, "cells": cells[1:]}, indent=1))
    original = (src / "03_x.ipynb").read_bytes()
    copies = sync_notebooks.sync(src, dest)
    assert [c.name for c in copies] == ["03_x.ipynb", "04_y.ipynb"]
    assert (src / "03_x.ipynb").read_bytes() == original                    # the source is untouched
    copy = json.loads((dest / "03_x.ipynb").read_text())
    assert "".join(copy["cells"][0]["source"]) == "Eq. (4):\n\n$$g = -\\log u$$\n\nwhere"
    assert copy["cells"][1]["source"] == cells[1]["source"]                  # code cells are not touched
    assert (dest / "04_y.ipynb").read_bytes() == (src / "04_y.ipynb").read_bytes()  # nothing to change: same bytes
    assert not list(dest.glob(".*"))                                         # no temporary files left
