"""Fast checks that the course teaches and that its stored outputs are clean (nothing is executed).

* **Exercises.** Every notebook in ``EXERCISES`` has 3-5 ``### Exercise N.k — title`` markdown cells, numbered
  N.1, N.2, … with N the notebook's number. Each is followed directly by its solution, collapsed in the book:
  cells tagged ``hide-cell`` (and ``jupyter.source_hidden``, so JupyterLab collapses them too). A solution holds
  at least one code cell whose first line is ``# Solution N.k`` and which asserts: nbval runs every notebook in
  ``make test``, so a solution that stops being true fails the suite. A derivation may come first, as a markdown
  cell that opens a dropdown admonition titled ``Solution N.k``.
* **Pitfalls, summary, references.** Every notebook in ``PITFALLS`` has a ``## Pitfalls`` section with at least
  one ``### Pitfall`` (a failure shown, then its fix); every notebook in ``SUMMARIES`` ends with ``## Summary``
  and then ``## References``, the last two sections of the notebook.
* **Figures.** In ``FIGURES``, a code cell that only draws (it calls ``plt.show()`` and neither prints nor
  asserts) is tagged ``hide-input`` (or ``hide-cell``), so the book shows the figure, not the plotting code.
* **Clean outputs, every notebook.** No stored output shows an absolute path of the machine that ran it, a
  progress bar or a Python warning, and nothing is stored from stderr at all: that is where warnings, library
  log messages (diffusers' "should be kept in float32") and progress bars go, and a clean run writes none.

The lists name the notebooks that are done; a notebook joins them when it gets its exercises.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXERCISES = ["01", "02", "03", "04", "05", "06", "07", "09"]            # 3-5 exercises with asserting, collapsed solutions
PITFALLS = ["02", "03", "04", "05", "06", "07", "08", "09"]                   # a "## Pitfalls" section
SUMMARIES = ["00", "01", "02", "03", "04", "05", "06", "07", "08", "09"]      # ends with "## Summary" and "## References"
FIGURES = ["00", "01", "02", "03", "04", "05", "06", "07", "08", "09"]        # figure-only code cells hidden in the book

EXERCISE = re.compile(r"^### Exercise (\d+)\.(\d+) — \S")
SOLUTION_MD = re.compile(r"^:::\{(?:admonition|dropdown)\} Solution (\d+)\.(\d+)\b")
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/-])(/tmp/|/work/|/home/|/root/|/Users/|/private/|/var/folders/|/mnt/)"
                           r"|\b[A-Za-z]:\\\\?[A-Za-z]")
PROGRESS_BAR = re.compile(r"\d+%\|.*\||\d+(\.\d+)?\s?(it/s|s/it)\]")
WARNING = re.compile(r"\b\w*Warning:|^\s*warnings\.warn\(", re.M)


def _read(number: str):
    path = next((p for p in NOTEBOOKS if p.name.startswith(f"{number}_")), None)
    assert path is not None, f"notebooks/{number}_*.ipynb is missing"
    return path, nbformat.read(path, as_version=4)


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def _headings(nb, level: str) -> list[tuple[int, str]]:
    """Return (cell index, heading text) of every markdown heading of the given level ('##', '###')."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        in_fence = False
        for line in cell.source.splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                in_fence = not in_fence
            elif not in_fence and line.startswith(level + " "):
                out.append((i, line[len(level) + 1:].strip()))
    return out


@pytest.mark.parametrize("number", EXERCISES)
def test_exercises_have_collapsed_asserting_solutions(number):
    path, nb = _read(number)
    cells = nb.cells
    found = [(i, EXERCISE.match(c.source)) for i, c in enumerate(cells) if c.cell_type == "markdown"]
    found = [(i, m) for i, m in found if m]
    stray = [c.source.splitlines()[0] for c in cells
             if c.cell_type == "markdown" and "### Exercise" in c.source and not EXERCISE.match(c.source)]
    assert not stray, f"{path.name}: exercise headings must read '### Exercise N.k — title' at a cell's start: {stray}"
    assert 3 <= len(found) <= 5, f"{path.name}: {len(found)} exercises, want 3-5"
    want_n = int(number)
    assert [(int(m.group(1)), int(m.group(2))) for _, m in found] == [(want_n, k) for k in range(1, len(found) + 1)], \
        f"{path.name}: exercises must be numbered {want_n}.1, {want_n}.2, … in order"

    for i, m in found:
        label = f"{m.group(1)}.{m.group(2)}"
        block = []
        for cell in cells[i + 1:]:
            if "hide-cell" not in _tags(cell):
                break
            block.append(cell)
        assert block, f"{path.name}: Exercise {label} is not followed by a solution cell tagged 'hide-cell'"
        code_cells = [c for c in block if c.cell_type == "code"]
        assert code_cells, f"{path.name}: Exercise {label} has no solution code cell (asserts keep a solution true)"
        for cell in block:
            first = cell.source.splitlines()[0] if cell.source else ""
            assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, \
                f"{path.name}: a solution cell of Exercise {label} lacks metadata jupyter.source_hidden = true"
            if cell.cell_type == "code":
                assert re.match(rf"# Solution {re.escape(label)}\b", first), \
                    f"{path.name}: solution code of Exercise {label} must start with '# Solution {label}', not {first!r}"
                assert re.search(r"^\s*assert\b", cell.source, re.M), \
                    f"{path.name}: solution code of Exercise {label} does not assert its result"
            else:
                sm = SOLUTION_MD.match(first)
                assert sm and f"{sm.group(1)}.{sm.group(2)}" == label, \
                    f"{path.name}: a markdown solution of Exercise {label} must open a dropdown titled 'Solution {label}'"
                assert ":class: dropdown" in cell.source or first.startswith(":::{dropdown}"), \
                    f"{path.name}: the markdown solution of Exercise {label} must be a dropdown (collapsed in the book)"


@pytest.mark.parametrize("number", PITFALLS)
def test_pitfalls_section(number):
    path, nb = _read(number)
    h2 = [text for _, text in _headings(nb, "##")]
    assert "Pitfalls" in h2, f"{path.name}: no '## Pitfalls' section"
    start = next(i for i, text in _headings(nb, "##") if text == "Pitfalls")
    following = [(i, t) for i, t in _headings(nb, "##") if i > start] + [(len(nb.cells), "")]
    end = following[0][0]
    pitfalls = [t for i, t in _headings(nb, "###") if start <= i <= end and t.startswith("Pitfall")]
    assert pitfalls, f"{path.name}: the Pitfalls section has no '### Pitfall …' subsection"
    shown = [c for c in nb.cells[start:end + 1] if c.cell_type == "code" and c.get("outputs")]
    assert shown, f"{path.name}: the Pitfalls section shows no numbers (no code cell with stored output)"


@pytest.mark.parametrize("number", SUMMARIES)
def test_ends_with_summary_and_references(number):
    path, nb = _read(number)
    h2 = [text for _, text in _headings(nb, "##")]
    assert h2[-2:] == ["Summary", "References"], \
        f"{path.name}: the last sections must be '## Summary' then '## References', got {h2[-2:]}"
    refs_at = _headings(nb, "##")[-1][0]
    refs = nb.cells[refs_at].source.split("## References", 1)[1]
    assert len(re.findall(r"^\s*[-*] \S", refs, re.M)) >= 2, f"{path.name}: References lists fewer than two works"
    assert "the paper" in refs.lower(), f"{path.name}: References must cite the paper the course implements"
    later_code = [c for c in nb.cells[refs_at + 1:] if c.cell_type == "code"]
    assert not later_code, f"{path.name}: code after References"


@pytest.mark.parametrize("number", FIGURES)
def test_figure_only_cells_hide_their_code(number):
    path, nb = _read(number)
    for k, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        src = cell.source
        draws_only = "plt.show()" in src and not re.search(r"\bprint\(|^\s*assert\b", src, re.M)
        if draws_only:
            assert {"hide-input", "hide-cell"} & set(_tags(cell)), \
                f"{path.name}: code cell {k + 1} only draws a figure; tag it 'hide-input' so the book shows the figure"


def _output_texts(cell):
    """Yield the text of every stored output of a code cell (streams, results, displays, errors)."""
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            yield out.get("text", "")
        elif out.output_type in ("execute_result", "display_data"):
            for mime in ("text/plain", "text/html", "text/markdown", "text/latex"):
                data = out.get("data", {}).get(mime)
                if data:
                    yield data if isinstance(data, str) else "".join(data)
        elif out.output_type == "error":
            yield "\n".join(out.get("traceback", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_are_clean(path):
    nb = nbformat.read(path, as_version=4)
    problems = []
    for k, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.get("name") == "stderr" and out.get("text", "").strip():
                problems.append(f"code cell {k + 1} stores stderr: {out['text'].strip().splitlines()[0][:120]!r}")
        for text in _output_texts(cell):
            for line in text.splitlines():
                for what, pattern in (("an absolute path", ABSOLUTE_PATH), ("a progress bar", PROGRESS_BAR),
                                      ("a warning", WARNING)):
                    if pattern.search(line):
                        problems.append(f"code cell {k + 1} stores {what}: {line.strip()[:120]!r}")
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems[:10])


def _claimed_seconds(text: str) -> float:
    """Return the seconds of the first 'about N s' / 'about N min' / '~N s' / '~N min' in text."""
    m = re.search(r"(?:about |~)(\d+(?:\.\d+)?) (s|min)\b", text)
    assert m, f"no runtime in {text[:80]!r}"
    return float(m.group(1)) * (60 if m.group(2) == "min" else 1)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runtime_in_the_header_matches_the_readme_and_the_stored_run(path):
    """The header's runtime, the README's course table and the stored run's own timestamps agree: the header
    and the README say the same, and the committed run's cells took between a third of it and three times it in
    all (the committing machine may have been busier or idler than the quiet 2 cores the prose assumes; the
    kernel's start and the time between cells are not counted)."""
    from datetime import datetime
    nb = nbformat.read(path, as_version=4)
    header = re.search(r"\*\*Runtime\*\* \|([^|\n]*)\|", nb.cells[0].source)
    assert header, f"{path.name}: no Runtime row in the header"
    claim = _claimed_seconds(header.group(1))
    readme = (ROOT / "README.md").read_text()
    row = re.search(rf"^\| {path.name[:2]} [^\n]*", readme, re.M)
    assert row, f"README.md: no course-table row for {path.name}"
    cells = row.group(0).split("|")
    assert _claimed_seconds(cells[3]) == claim, f"{path.name}: header says {claim:g} s, README {cells[3].strip()}"
    stamps = [c.metadata["execution"] for c in nb.cells if c.cell_type == "code" and "execution" in c.metadata]
    assert stamps, f"{path.name}: the stored run has no execution timestamps (re-run with make notebooks)"
    t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    took = sum((t(e["shell.execute_reply"]) - t(e["iopub.execute_input"])).total_seconds() for e in stamps)
    assert claim / 3 <= took <= 3 * claim, f"{path.name}: the stored run took {took:.0f} s, the header says {claim:g} s"
