"""The package is a top-down stack: each layer imports only itself and the layers below it.

    apps        the `photochat` command line, chat, demo, pretrain      photochat_lib/apps/ (+ the lazy public API)
    training    Trainer, LoRA, run folder, checkpoints, GPU budget      photochat_lib/training/
    evaluation  evaluate, metrics, FID/IS                               photochat_lib/evaluation/
    presets     which foundation models and which hyperparameters       photochat_lib/presets.py, recipe.py
    toy         the toy stand-ins for Llama / BLIP-2 / SD, pretraining  photochat_lib/toy/
    model       the paper's components, one module each; inference      photochat_lib/model/
    data        datasets, the toy world, the special tokens, collation  photochat_lib/data/
    utils       atomic writes, CLI helpers, the GPU check               photochat_lib/utils/

Two checks: every import written in the code (module level and inside functions) is read from the source,
and each layer is imported in a fresh interpreter to see which modules it really loads.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "photochat_lib"
LAYERS = [  # bottom to top: (name, module prefixes)
    ("utils", ["photochat_lib.utils"]),
    ("data", ["photochat_lib.data"]),
    ("model", ["photochat_lib.model"]),
    ("toy", ["photochat_lib.toy"]),
    ("presets", ["photochat_lib.presets", "photochat_lib.recipe"]),
    ("evaluation", ["photochat_lib.evaluation"]),
    ("training", ["photochat_lib.training"]),
    ("apps", ["photochat_lib.apps", "photochat_lib"]),
]
# Imports inside a function that reach up a layer, each for a reason; nothing else may.
# (importing module, imported module) -> why
REACHES_UP: dict = {}   # none left: the toy captioner and the checkpoint loader are handed down (utils/handed_down.py)


def layer_of(module: str) -> int:
    """Return the index in LAYERS of a photochat_lib module (the longest matching prefix)."""
    best = max(((len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
                if module == p or module.startswith(p + ".")), default=None)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in tests/test_layers.py")
    return best[1]


def modules() -> dict[str, Path]:
    """Return {dotted module name: file} for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """Return [(imported photochat_lib module, inside a function?)] of one file."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            deeper = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module or ""
                if name.startswith("photochat_lib"):
                    for alias in child.names:       # `from photochat_lib.x import y`: y may be a module
                        sub = f"{name}.{alias.name}"
                        found.append((sub if sub in ALL else name, deeper))
            elif isinstance(child, ast.Import):
                found.extend((a.name, deeper) for a in child.names if a.name.startswith("photochat_lib"))
            visit(child, deeper)

    visit(ast.parse(path.read_text()), False)
    return found


ALL = modules()


def test_every_module_sits_in_a_layer():
    for module in ALL:
        layer_of(module)


def test_no_module_level_import_reaches_up_a_layer():
    wrong = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {i} ({LAYERS[layer_of(i)][0]})"
             for m, path in ALL.items() for i, deferred in imports(m, path)
             if not deferred and layer_of(i) > layer_of(m)]
    assert not wrong, "\n".join(wrong)


def test_imports_inside_functions_reach_up_only_where_listed():
    up = {(m, i) for m, path in ALL.items() for i, deferred in imports(m, path)
          if deferred and layer_of(i) > layer_of(m)}
    assert up == set(REACHES_UP), (f"new: {sorted(up - set(REACHES_UP))}; "
                                   f"listed but gone: {sorted(set(REACHES_UP) - up)}")


def assert_no_cycle(graph: dict[str, set[str]]) -> None:
    """Raise AssertionError naming the first import cycle of a {module: imported modules} graph (depth first)."""
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_module_level_imports_have_no_cycle():
    assert_no_cycle({m: {i for i, deferred in imports(m, p) if not deferred and i in ALL and i != m}
                     for m, p in ALL.items()})


def test_no_cycle_even_through_imports_inside_functions():
    """Issue 24: followed as data, every route through the package is a straight walk down: the graph of all
    imports, deferred ones included, has no cycle (training/memory <-> steptime was one; model -> training another)."""
    assert_no_cycle({m: {i for i, _ in imports(m, p) if i in ALL and i != m} for m, p in ALL.items()})


@pytest.mark.parametrize("layer", range(len(LAYERS)), ids=[name for name, _ in LAYERS])
def test_importing_a_layer_loads_no_higher_layer(layer):
    """Import every module of a layer in a fresh interpreter; list the photochat_lib modules that got loaded."""
    mine = [m for m in ALL if layer_of(m) == layer]
    code = ("import importlib, json, sys\n"
            f"for m in {mine!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('photochat_lib'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    loaded = json.loads(res.stdout.strip().splitlines()[-1])
    # the root package is every module's parent; its public names load on first use (PEP 562), so it loads nothing
    higher = [m for m in loaded if m in ALL and m != "photochat_lib" and layer_of(m) > layer]
    assert not higher, f"importing the {LAYERS[layer][0]} layer loads {higher}"


def test_the_package_folders_name_the_layers():
    """`ls photochat_lib` shows the parts: one folder (or module) per layer, the data it ships (configs/, and
    reports/: the committed results the course shows, with their reader), nothing else at the top (py.typed,
    PEP 561's marker that the package has type hints, is not code)."""
    top = sorted(p.name for p in PACKAGE.iterdir()
                 if (not p.name.startswith(("_", ".")) or p.name == "__init__.py") and p.name != "py.typed")
    assert top == ["__init__.py", "apps", "configs", "data", "evaluation", "model", "presets.py", "recipe.py",
                   "reports", "toy", "training", "utils"]
