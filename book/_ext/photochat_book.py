"""Sphinx extension of the photochat book (loaded through ``sphinx: local_extensions`` in _config.yml).

Four things, all offline:

* ``.. photochat-modules::`` — the API reference. Its content lists ``photochat_lib`` modules; each one gets a
  section with its ``automodule`` (members, from the docstrings). With the ``:rest:`` flag it documents
  every public module of the package that no other ``photochat-modules`` block in the same folder lists,
  so a module added to the package appears in the reference without editing the book.
* ``.. photochat-tests::`` — the test suite as a page: every ``def test_*`` of ``tests/test_*.py`` as a
  ``py:function`` object (``tests.test_stgs.test_noise_statistics``) showing its source, with the file's
  line numbers, and (through ``sphinx.ext.viewcode``, fed from the file: test modules are never imported)
  a "[source]" link to the whole file. The paper-to-code map links its test names here (the site is
  offline, so the source is shown in the book rather than linked on the repository host).
* Docstrings that are plain text rather than reStructuredText (a ``|V_SD|`` that reST reads as an
  undefined substitution, an aligned table under a paragraph) would be build errors under
  ``--warningiserror``. At build time — the package's files are never edited — ``|name|`` is escaped, and
  in a docstring that still does not parse cleanly, each paragraph that does not is shown as written, in
  a preformatted block.
* Strict links: a ``py`` cross-reference that does not resolve in one of ``photochat_strict_ref_docs``
  (the paper-to-code map) is a warning — an error under ``--warningiserror`` — while the docstrings'
  own references stay lenient (``nitpicky`` is off).

Nothing here edits the package or its docstrings: autodoc imports ``photochat_lib`` as installed.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import io
import os
import pkgutil
import re
from pathlib import Path

from docutils import nodes
from docutils.frontend import get_default_settings
from docutils.parsers.rst import Parser, directives
from docutils.utils import new_document
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

# autodoc imports the package, which imports transformers/diffusers: never let that reach the network
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

PACKAGE = "photochat_lib"
REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
logger = logging.getLogger(__name__)

_BLOCK = re.compile(r"^\.\. photochat-modules::[^\n]*\n((?:[ \t]+[^\n]*\n|[ \t]*\n)*)", re.M)


def public_modules(package: str = PACKAGE) -> list[str]:
    """Return every importable module of package whose dotted name has no part starting with "_"."""
    pkg = importlib.import_module(package)
    names = [m.name for m in pkgutil.walk_packages(pkg.__path__, f"{package}.")]
    return sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")))


def listed_modules(folder: Path) -> set[str]:
    """Return the modules that the photochat-modules blocks of the .rst files in folder list."""
    listed: set[str] = set()
    for rst in folder.glob("*.rst"):
        for block in _BLOCK.findall(rst.read_text(encoding="utf-8")):
            for line in block.splitlines():
                line = line.strip()
                if line and not line.startswith(":"):
                    listed.add(line)
    return listed


def _heading(text: str, char: str = "-") -> list[str]:
    return [text, char * len(text), ""]


class ModulesDirective(SphinxDirective):
    """Document the listed modules (or, with :rest:, the ones no other page lists), one section each."""

    has_content = True
    option_spec = {"rest": directives.flag}

    def run(self) -> list[nodes.Node]:
        if "rest" in self.options:
            folder = Path(self.env.doc2path(self.env.docname)).parent
            pkg_dirs = {Path(importlib.import_module(m).__file__).parent for m in [PACKAGE, *public_modules()]}
            for dep in [*sorted(pkg_dirs), *sorted(folder.glob("*.rst"))]:   # re-read when a module
                self.env.note_dependency(str(dep))                           # or a page's list changes
            listed = listed_modules(folder)
            modules = [m for m in public_modules() if m not in listed]
        else:
            modules = [line.strip() for line in self.content if line.strip()]
        if not modules:
            para = nodes.paragraph(text="Every public module of photochat_lib is documented on the pages above.")
            return [para]
        lines: list[str] = []
        for mod in modules:
            lines += _heading(f"``{mod}``")
            lines += [f".. automodule:: {mod}", ""]
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=self.get_source_info()[0]), container)
        return container.children


def _test_objects(path: Path) -> list[tuple[str, str, int, int]]:
    """Return (name, signature arguments, first line, last line) of each top-level test function of path."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            found.append((node.name, ast.unparse(node.args), first, node.end_lineno))
    return found


class TestsDirective(SphinxDirective):
    """Show every test function of tests/test_*.py, its source included, as a py:function object."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        docdir = Path(self.env.doc2path(self.env.docname)).parent
        lines: list[str] = []
        self.env.note_dependency(str(TESTS))                 # re-read when a test file is added or removed
        for path in sorted(TESTS.glob("test_*.py")):
            self.env.note_dependency(str(path))
            module = f"tests.{path.stem}"
            rel = os.path.relpath(path, docdir)
            lines += _heading(f"``tests/{path.name}``")
            for name, args, first, last in _test_objects(path):
                lines += [f".. py:function:: {name}({args})", f"   :module: {module}", "",
                          f"   .. literalinclude:: {rel}", "      :language: python",
                          f"      :lines: {first}-{last}", f"      :lineno-start: {first}", ""]
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source=self.get_source_info()[0]), container)
        return container.children


_SUBSTITUTION = re.compile(r"(?<![\\\w`|])\|([^\s|`](?:[^|`\n]*[^\s|`])?)\|(?![\w|])")
_INLINE_LITERAL = re.compile(r"(``.+?``)")


def escape_substitutions(line: str) -> str:
    """Return line with every ``|name|`` outside inline literals escaped: plain bars, not a substitution."""
    parts = _INLINE_LITERAL.split(line)
    return "".join(p if p.startswith("``") else _SUBSTITUTION.sub(r"\\|\1\\|", p) for p in parts)


def rst_problems(env, lines: list[str]) -> list[str]:
    """Return the warnings (and worse) that docutils reports for lines parsed as a standalone reST text."""
    settings = get_default_settings(Parser)
    settings.report_level, settings.halt_level = 5, 5    # report nothing, never stop: we collect below
    settings.warning_stream = io.StringIO()
    settings.env = env                                   # Sphinx roles (:func:, the default role) work
    document = new_document("<docstring>", settings)
    problems: list[str] = []
    document.reporter.attach_observer(
        lambda msg: problems.append(msg.astext()) if msg["level"] >= 2 else None)
    Parser().parse("\n".join(lines), document)
    return problems


def _chunks(lines: list[str]) -> list[tuple[int, int]]:
    """Return the (start, end) line ranges of the blank-line-separated chunks of lines."""
    chunks, start = [], None
    for i, line in enumerate(lines + [""]):
        if line.strip() and start is None:
            start = i
        elif not line.strip() and start is not None:
            chunks.append((start, i))
            start = None
    return chunks


def clean_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    """autodoc-process-docstring: make a docstring build cleanly as reST (see the module docstring).

    A docstring that parses cleanly (once ``|name|`` is escaped) is kept. Otherwise each of its
    paragraphs that parses cleanly on its own stays reST, and the others (aligned tables, indented
    formulas, lists run into a paragraph) are shown as written, in a preformatted text block.
    """
    if not lines:
        return
    if what == "class" and dataclasses.is_dataclass(obj) and (obj.__doc__ or "").startswith(f"{obj.__name__}("):
        lines[:] = []                      # the text dataclasses writes when a class has no docstring
        return
    escaped = [escape_substitutions(line) for line in lines]
    if not rst_problems(app.env, escaped):
        lines[:] = escaped
        return
    out: list[str] = []
    verbatim: list[str] = []

    def flush() -> None:
        if verbatim:
            out.extend([".. code-block:: text", ""] + ["   " + v if v.strip() else "" for v in verbatim] + [""])
            verbatim.clear()

    for start, end in _chunks(lines):
        if lines[start][:1].isspace() or rst_problems(app.env, escaped[start:end]):
            verbatim.extend(([""] if verbatim else []) + lines[start:end])
        else:
            flush()
            out.extend(escaped[start:end] + [""])
    flush()
    lines[:] = out


def _test_module_path(modname: str) -> Path | None:
    """Return tests/test_x.py for modname "tests.test_x", else None."""
    parts = modname.split(".")
    if len(parts) == 2 and parts[0] == "tests" and (TESTS / f"{parts[1]}.py").is_file():
        return TESTS / f"{parts[1]}.py"
    return None


def viewcode_follow_imported(app, modname, attribute):
    """viewcode: a test entry's module is its file (do not import the test module to find out)."""
    return modname if _test_module_path(modname) else None


def viewcode_find_source(app, modname):
    """viewcode: the source and tags of a test module, read from its file (never imported)."""
    path = _test_module_path(modname)
    if path is None:
        return None
    tags = {name: ("def", first, last) for name, _, first, last in _test_objects(path)}
    return path.read_text(encoding="utf-8"), tags


def strict_missing_reference(app, env, node, contnode):
    """Warn about an unresolved py reference in the documents that must link every name."""
    if node.get("refdomain") == "py" and node.get("refdoc") in app.config.photochat_strict_ref_docs:
        logger.warning("unresolved reference %r (%s): no such entry in the API or test reference",
                       node.get("reftarget"), node.get("reftype"), location=node,
                       type="photochat", subtype="ref")
    return None


def setup(app):
    app.add_config_value("photochat_strict_ref_docs", ["paper_to_code"], "env")
    app.add_directive("photochat-modules", ModulesDirective)
    app.add_directive("photochat-tests", TestsDirective)
    app.connect("missing-reference", strict_missing_reference)
    app.connect("autodoc-process-docstring", clean_docstring, priority=600)   # after napoleon (500)
    app.setup_extension("sphinx.ext.viewcode")
    app.connect("viewcode-follow-imported", viewcode_follow_imported)
    app.connect("viewcode-find-source", viewcode_find_source)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
