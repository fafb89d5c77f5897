"""The built book in a real browser: every chapter renders, with its figures and its math.

Run by `make book-test` after `make book`. It serves book/_build/html on 127.0.0.1, opens every
chapter of the table of contents in headless Chromium (Debian's `chromium`; nothing is downloaded),
reads the rendered DOM, and checks the chapter's title is there and every figure the notebook stores
is rendered as an image that decodes, and that its math is typeset by the local MathJax — with no TeX
left in the visible text (a stray `$$`, a raw `\\mathbf{…}`). One screenshot per chapter goes to
book/_build/screenshots/ (a build artifact, not in git).

Also checked: the built HTML has no TeX outside the math containers MathJax reads; the paper-to-code
map links every function to its API reference entry and every test to its source; and at a
1280-px-wide viewport no table is wider than its container (measured in Chromium).
"""
from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

BOOK = Path(__file__).resolve().parents[1]
HTML = BOOK / "_build" / "html"
SHOTS = BOOK / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=5000"]


# Chromium measures a page's tables from this helper page (served by the test server, not in the site):
# it loads the page in a 1280-px-wide iframe, waits for MathJax, and writes the widths into #result.
PROBE = """<!doctype html><html><head><meta charset="utf-8"></head><body style="margin:0">
<pre id="result">pending</pre>
<iframe id="page" style="border:0;width:1280px;height:1600px"></iframe>
<script>
const frame = document.getElementById("page");
frame.onload = async () => {
  const w = frame.contentWindow, d = frame.contentDocument;
  try { if (w.MathJax && w.MathJax.startup) await w.MathJax.startup.promise; } catch (e) {}
  await new Promise(r => setTimeout(r, 500));
  const tables = Array.from(d.querySelectorAll("article table")).map(t => {
    const box = t.getBoundingClientRect(), c = t.parentElement;
    return {table_width: box.width, table_right: box.right, container: c.className,
            container_width: c.clientWidth, container_scroll_width: c.scrollWidth};
  });
  document.getElementById("result").textContent = JSON.stringify({viewport: w.innerWidth, tables});
};
frame.src = new URLSearchParams(location.search).get("page");
</script></body></html>"""


def chapters() -> list[str]:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """The built site, plus the table-measuring probe at /__probe__.html."""

    def do_GET(self):
        if self.path.split("?")[0] == "/__probe__.html":
            body = PROBE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    assert (HTML / "index.html").exists(), "build the book first: make book"
    assert CHROMIUM, "Debian's chromium is needed (apt-get install chromium); .ci/run installs it"
    handler = functools.partial(_Handler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def chromium(args: list[str], tmp_path: Path) -> str:
    res = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


# TeX in visible text: a dollar sign, a control word (\mathbf, \partial, \frac, \tau …) or \( \) \[ \]
TEX = re.compile(r"\$|\\[A-Za-z]+|\\[()\[\]]")
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_NOT_PROSE = {"head", "script", "style", "pre", "code", "kbd", "samp", "textarea", "svg", "math",
              "mjx-container"}                  # code, and math MathJax has typeset
_NOT_PROSE_CLASSES = {"pre", "sig", "highlight"}  # Sphinx's literals and API signatures


class _ProseText(HTMLParser):
    """Collect the text of an HTML page that a reader sees as prose (not code, not typeset math)."""

    def __init__(self, skip_math_containers: bool):
        super().__init__(convert_charrefs=True)
        self.skip_classes = _NOT_PROSE_CLASSES | ({"math"} if skip_math_containers else set())
        self.stack: list[tuple[str, bool]] = []
        self.skipping = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            return
        classes = set((dict(attrs).get("class") or "").split())
        skip = tag in _NOT_PROSE or bool(classes & self.skip_classes)
        self.stack.append((tag, skip))
        self.skipping += skip

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        while self.stack:                        # tolerate unclosed tags
            open_tag, skip = self.stack.pop()
            self.skipping -= skip
            if open_tag == tag:
                break

    def handle_data(self, data):
        if not self.skipping:
            self.text.append(data)


def stray_tex(html: str, typeset: bool) -> list[str]:
    """Return excerpts of the page's prose that contain TeX left outside math.

    typeset=False reads the built HTML: TeX belongs only inside Sphinx's math containers (class "math"),
    which MathJax reads, so those are skipped. typeset=True reads Chromium's DOM after MathJax ran: a math
    container then holds an <mjx-container>, and any TeX still visible anywhere is an error.
    """
    parser = _ProseText(skip_math_containers=not typeset)
    parser.feed(html)
    text = re.sub(r"\s+", " ", " ".join(parser.text))
    return [text[max(0, m.start() - 60):m.end() + 60] for m in TEX.finditer(text)]


def has_math(chapter: str) -> bool:
    """Return whether the chapter's source has LaTeX math ($…$ or \\(…\\))."""
    for ext in (".ipynb", ".md"):
        src = BOOK / f"{chapter}{ext}"
        if src.exists():
            text = src.read_text()
            if ext == ".ipynb":
                text = "".join("".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "markdown")
            return bool(re.search(r"\$[^$\n]+\$|\\\(", text))
    return False


def stored_figures(chapter: str) -> int:
    """Return how many image outputs the chapter's notebook stores (0 for markdown pages)."""
    nb = BOOK / f"{chapter}.ipynb"
    if not nb.exists():
        return 0
    cells = json.loads(nb.read_text())["cells"]
    return sum("image/png" in out.get("data", {}) for c in cells for out in c.get("outputs", []))


def test_every_toc_chapter_was_built():
    missing = [c for c in chapters() if not (HTML / f"{c}.html").exists()]
    assert not missing, f"chapters without a page: {missing}"


@pytest.mark.parametrize("chapter", chapters())
def test_chapter_renders_with_its_figures(chapter, server, tmp_path):
    url = f"{server}/{chapter}.html"
    dom = chromium(["--dump-dom", url], tmp_path)
    assert "<h1" in dom, f"{chapter}: no title rendered"
    assert "Traceback" not in dom, f"{chapter}: a stored error output is rendered"
    if has_math(chapter):                                            # MathJax (local copy) typeset it
        assert "<mjx-container" in dom, f"{chapter}: math was not rendered"
    stray = stray_tex(dom, typeset=True)                             # and left no TeX in the text
    assert not stray, f"{chapter}: TeX outside math after MathJax ran: {stray[:5]}"
    images = re.findall(r'<img[^>]+src="([^"]+)"', dom)
    local = [src for src in images if not src.startswith("http")]   # the Colab badge is remote
    want = stored_figures(chapter)
    assert len(local) >= want, f"{chapter}: {len(local)} images rendered, the notebook stores {want} figures"
    for src in local:                                                # every figure decodes
        if src.startswith("data:image/png;base64,"):
            Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
        else:
            path = (HTML / chapter).parent / src.split("?")[0]
            assert path.exists(), f"{chapter}: broken image {src}"
            if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
                Image.open(path).verify()
    shot = SHOTS / f"{chapter.replace('/', '_')}.png"
    chromium([f"--screenshot={shot}", "--window-size=1280,1600", url], tmp_path)
    assert shot.exists() and Image.open(shot).size == (1280, 1600)


@pytest.mark.parametrize("chapter", chapters())
def test_no_tex_outside_math_in_built_html(chapter):
    """A `$$` block run into a paragraph becomes stray `$` and raw TeX that MathJax never sees."""
    page = HTML / f"{chapter}.html"
    assert page.exists(), "build the book first: make book"
    stray = stray_tex(page.read_text(encoding="utf-8"), typeset=False)
    assert not stray, f"{chapter}: TeX outside the math containers: {stray[:5]}"


class _Links(HTMLParser):
    """The code literals of a page's table cells (<td>), each with the href of the link around it."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.td = 0
        self.hrefs: list[str | None] = []
        self.code: list[tuple[str, str | None, str]] = []   # (classes, href, text)
        self._open: list | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td":
            self.td += 1
        elif tag == "a":
            self.hrefs.append(a.get("href"))
        elif tag == "code" and self.td:
            self._open = [a.get("class") or "", self.hrefs[-1] if self.hrefs else None, ""]

    def handle_endtag(self, tag):
        if tag == "td":
            self.td -= 1
        elif tag == "a" and self.hrefs:
            self.hrefs.pop()
        elif tag == "code" and self._open is not None:
            self.code.append(tuple(self._open))
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._open[2] += data


def test_paper_to_code_links_every_function_and_test():
    """Every function name links to its API entry, every test name to its source (tests page)."""
    source = (BOOK / "paper_to_code.md").read_text(encoding="utf-8")
    named = re.findall(r"\{py:obj\}`[^`<]*<([^>`]+)>`", source)
    assert len(named) >= 40, f"the map names only {len(named)} functions and tests"
    bare = re.findall(r"`((?:photochat_lib\.|tests/)[^`]+)`", source)
    assert not bare, f"names in the map that are not links: {bare}"
    page = HTML / "paper_to_code.html"
    assert page.exists(), "build the book first: make book"
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    xrefs = [(href, text) for classes, href, text in parser.code if "xref" in classes.split()]
    assert len(xrefs) == len(named), f"{len(named)} names in the map, {len(xrefs)} rendered as references"
    unlinked = [text for href, text in xrefs if not href]
    assert not unlinked, f"names that did not resolve to a reference entry: {unlinked}"
    for (href, text), target in zip(xrefs, named):
        file, _, anchor = href.partition("#")
        assert anchor == target, f"{text} links to {href}, not to {target}"
        want = "api/tests.html" if target.startswith("tests.") else "api/"
        assert file.startswith(want), f"{text} links to {href}"
        html = (HTML / file).read_text(encoding="utf-8")
        assert f'id="{anchor}"' in html, f"{text}: no entry {anchor} in {file}"
        if target.startswith("tests."):                              # the entry shows the test's code
            entry = re.sub(r"<[^>]+>", "", html[html.index(f'id="{anchor}"'):][:20000])
            name = target.rsplit(".", 1)[1]
            assert f"def {name}(" in entry, f"{target}: the tests page does not show its source"


@pytest.mark.parametrize("page", ["paper_to_code", "intro"])
def test_tables_fit_the_page_width_at_1280px(page, server, tmp_path):
    """At a 1280-px viewport no table is wider than its container (nothing hidden behind a scroll)."""
    dom = chromium(["--window-size=1400,1800", "--dump-dom",
                    f"{server}/__probe__.html?page={page}.html"], tmp_path)
    found = re.search(r'<pre id="result">([^<]*)</pre>', dom)
    assert found and found.group(1) != "pending", f"{page}: the table probe did not run"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["viewport"] == 1280
    assert result["tables"], f"{page}: no table found"
    for i, t in enumerate(result["tables"]):
        where = f"{page}: table {i + 1} ({t})"
        assert t["table_width"] <= t["container_width"] + 1, f"{where} is wider than its container"
        assert t["container_scroll_width"] <= t["container_width"] + 1, f"{where} scrolls sideways"
        assert t["table_right"] <= result["viewport"], f"{where} runs off the page"
