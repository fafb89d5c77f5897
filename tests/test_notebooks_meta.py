"""Fast checks of the course notebooks' conventions (no execution: nbval does that).

* the same header in every notebook: title, "What you will learn", runtime, hardware, default preset and
  an "Open in Colab" badge pointing at the notebook itself;
* then a ``parameters`` cell (papermill), a Colab-only install cell and one setup cell (seeds, 2 threads,
  ``PHOTOCHAT_DATA`` / ``PHOTOCHAT_WORK`` paths) — and the notebook imports ``photochat_lib``;
* committed with real outputs: run top to bottom (execution counts 1..n), no errors, and every
  ``# NBVAL_CHECK_OUTPUT`` cell has stored output and no stderr;
* no library code copied into a notebook: no function shadows a library name, no function is a verbatim
  copy, no run of three substantive library lines appears outside a ``*_by_hand`` rebuild, and every
  ``X_by_hand`` rebuild is compared with the library's ``X`` in a cell that asserts.
"""
from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LIBRARY = sorted((ROOT / "photochat_lib").rglob("*.py"))
COLAB = "https://colab.research.google.com/github/photochat/photochat/blob/main/notebooks/{name}"
FIRST_HALF = ["00", "01", "02", "03", "04"]


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _python(cell) -> str:
    """Return a code cell's source as plain Python (IPython's !shell and %magic lines transformed)."""
    return TransformerManager().transform_cell(cell.source)


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _norm(line: str) -> str:
    """Return a line without its comment and with whitespace collapsed."""
    line = re.sub(r"\s+#.*$", "", line.rstrip()) if not line.lstrip().startswith("#") else ""
    return " ".join(line.split())


def _substantive(lines) -> list[str]:
    """Return the normalised lines long enough to count as code someone wrote (imports excluded)."""
    out = []
    for line in lines:
        n = _norm(line)
        if len(n) >= 16 and not n.startswith(("import ", "from ", '"""', "'''")):
            out.append(n)
    return out


def _library_index():
    """Return (names defined at module level, ast dumps of every function/class, 3-line windows)."""
    names, dumps, windows = set(), set(), set()
    for path in LIBRARY:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                dumps.add(_body_dump(node))
        lines = _substantive(text.splitlines())
        windows.update(tuple(lines[i:i + 3]) for i in range(len(lines) - 2))
    return names, dumps, windows


def _body_dump(node) -> str:
    """Return an ast dump of a definition's body without its docstring (names of the def ignored)."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    return ast.dump(ast.Module(body=body, type_ignores=[]))


LIB_NAMES, LIB_DUMPS, LIB_WINDOWS = _library_index()


def test_the_first_half_of_the_course_is_there():
    prefixes = [p.name[:2] for p in NOTEBOOKS]
    for n in FIRST_HALF:
        assert n in prefixes, f"notebooks/{n}_*.ipynb is missing"
    assert len(prefixes) == len(set(prefixes)), f"two notebooks share a number: {prefixes}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_header(path):
    nb = _read(path)
    head = nb.cells[0]
    assert head.cell_type == "markdown", f"{path.name}: the first cell must be the markdown header"
    text = head.source
    assert re.match(rf"# {path.name[:2]} · \S", text), f"{path.name}: header must start with '# {path.name[:2]} · <title>'"
    assert COLAB.format(name=path.name) in text, f"{path.name}: the Colab badge must link to this notebook"
    assert "colab-badge.svg" in text, f"{path.name}: the Colab badge image is missing"
    for needle in ("What you will learn", "Runtime", "Hardware for the real preset", "Default preset",
                   "Checkpoints", "PRESET"):
        assert needle in text, f"{path.name}: header lacks {needle!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_colab_and_setup_cells(path):
    cells = _read(path).cells
    params, colab, setup = cells[1], cells[2], cells[3]
    assert params.cell_type == "code" and "parameters" in params.metadata.get("tags", []), \
        f"{path.name}: cell 2 must be the code cell tagged 'parameters'"
    assigned = {t.id for node in ast.parse(_python(params)).body if isinstance(node, ast.Assign)
                for t in ast.walk(node) if isinstance(t, ast.Name)}
    assert {"PRESET", "SEED"} <= assigned, f"{path.name}: the parameters cell must set PRESET and SEED"
    assert re.search(r'^PRESET = "toy"', params.source, re.M), f"{path.name}: the default preset must be toy"

    assert '"google.colab" in sys.modules' in colab.source and "pip install" in colab.source, \
        f"{path.name}: cell 3 must be the Colab-only install cell"
    tree = ast.parse(_python(colab))
    top_calls = [n for n in tree.body if isinstance(n, ast.Expr)]
    assert not top_calls, f"{path.name}: the install cell must do nothing outside Colab"

    src = setup.source
    for needle in ("torch.manual_seed(SEED)", "np.random.seed(SEED)", "random.seed(SEED)",
                   "torch.set_num_threads(2)", "PHOTOCHAT_DATA", "PHOTOCHAT_WORK", "DEVICE =",
                   "require_supported_gpu()"):   # a V100 under a torch build without sm_70: the fix, at once
        assert needle in src, f"{path.name}: the setup cell lacks {needle!r}"
    imports = "\n".join(c.source for c in _code_cells(_read(path)))
    assert re.search(r"^\s*(import photochat_lib|from photochat_lib[.\w]* import)", imports, re.M), \
        f"{path.name}: the notebook must import photochat_lib"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_with_outputs_from_a_clean_run(path):
    nb = _read(path)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernel must be python3"
    cells = _code_cells(nb)
    counts = [c.get("execution_count") for c in cells]
    assert counts == list(range(1, len(cells) + 1)), \
        f"{path.name}: execution counts {counts} — run it top to bottom (nbconvert --execute --inplace)"
    checked = 0
    for i, c in enumerate(cells, 1):
        for out in c.get("outputs", []):
            assert out.output_type != "error", f"{path.name}: code cell {i} stored an error"
        if "# NBVAL_CHECK_OUTPUT" in c.source:
            checked += 1
            assert c.outputs, f"{path.name}: checked code cell {i} has no stored output"
            stderr = [o for o in c.outputs if o.output_type == "stream" and o.name == "stderr"]
            assert not stderr, f"{path.name}: checked code cell {i} writes to stderr (nbval would compare it)"
    assert checked >= 2, f"{path.name}: mark the cells whose numbers matter with # NBVAL_CHECK_OUTPUT"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_library_code_copied(path):
    nb = _read(path)
    cells = [_python(c) for c in _code_cells(nb)]
    rebuilt: dict[str, int] = {}
    outside: list[str] = []
    for k, src in enumerate(cells):
        tree = ast.parse(src)
        lines = src.splitlines()
        hand_lines = set()
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                continue
            assert node.name not in LIB_NAMES, \
                f"{path.name}: defines {node.name!r}, a photochat_lib name — import it, or rebuild it as {node.name}_by_hand"
            assert _body_dump(node) not in LIB_DUMPS, f"{path.name}: {node.name!r} is a verbatim copy of library code"
            if node.name.endswith("_by_hand"):
                rebuilt[node.name] = k
                hand_lines.update(range(node.lineno - 1, node.end_lineno))
        outside += [line for i, line in enumerate(lines) if i not in hand_lines]
    sub = _substantive(outside)
    copied = [w for w in (tuple(sub[i:i + 3]) for i in range(len(sub) - 2)) if w in LIB_WINDOWS]
    assert not copied, f"{path.name}: library lines copied outside a *_by_hand rebuild: {copied[0]}"

    for name in rebuilt:
        lib_name = name[: -len("_by_hand")]
        assert lib_name in LIB_NAMES, f"{path.name}: {name} rebuilds {lib_name!r}, which photochat_lib lacks"
        compared = False
        for src in cells:
            tree = ast.parse(src)
            called = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", None)
                      for n in ast.walk(tree) if isinstance(n, ast.Call)}
            asserts = any(isinstance(n, ast.Assert) for n in ast.walk(tree))
            if {name, lib_name} <= called and asserts:
                compared = True
        assert compared, (f"{path.name}: {name} must be checked against photochat_lib's {lib_name} "
                          f"in a cell that calls both and asserts they agree")


def test_sanitize_file_parses_and_its_regexes_compile():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "notebooks" / "nbval_sanitize.cfg")
    assert cfg.sections(), "notebooks/nbval_sanitize.cfg has no sections"
    for section in cfg.sections():
        pattern = re.compile(cfg[section]["regex"])
        assert "replace" in cfg[section], f"nbval_sanitize.cfg [{section}] has no replace"
        if section == "temp_dirs":
            assert pattern.search("WORK_DIR=/tmp/photochat-ab12_x9")


def _defined(path: Path, dotted: list[str]) -> bool:
    """Return True when ``Name`` or ``Class.method`` is defined at the top level of a Python file."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    for part in dotted:
        found = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part), None)
        if found is None:
            return False
        body = found.body
    return True


def test_paper_to_code_names_real_functions_tests_and_notebooks():
    text = (ROOT / "book" / "paper_to_code.md").read_text(encoding="utf-8")
    for eq in range(1, 14):
        assert f"| ({eq}) |" in text, f"book/paper_to_code.md has no row for eq. ({eq})"
    for dotted in sorted(set(re.findall(r"`(photochat_lib(?:\.\w+)+)`", text))):
        parts = dotted.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # longest module path that exists
            module = ROOT.joinpath(*parts[:cut]).with_suffix(".py")
            if module.exists():
                assert _defined(module, parts[cut:]), f"paper_to_code.md: {dotted} is not defined in {module.name}"
                break
        else:
            raise AssertionError(f"paper_to_code.md: no module for {dotted}")
    for file, name in sorted(set(re.findall(r"`(tests/\w+\.py)::(\w+)`", text))):
        assert (ROOT / file).exists() and _defined(ROOT / file, [name]), f"paper_to_code.md: {file}::{name} does not exist"
    for link in set(re.findall(r"\]\((notebooks/[\w.]+\.ipynb)\)", text)):
        assert (ROOT / link).exists(), f"paper_to_code.md links to {link}, which does not exist"
