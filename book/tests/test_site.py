"""The built book in a real browser: every chapter renders, with its figures.

Run by `make book-test` after `make book`. It serves book/_build/html on 127.0.0.1, opens every
chapter of the table of contents in headless Chromium (Debian's `chromium`; nothing is downloaded),
reads the rendered DOM, and checks the chapter's title is there and every figure the notebook stores
is rendered as an image that decodes, and that its math is typeset by the local MathJax. One screenshot per chapter goes to book/_build/screenshots/
(a build artifact, not in git).
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


def chapters() -> list[str]:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]


@pytest.fixture(scope="module")
def server():
    assert (HTML / "index.html").exists(), "build the book first: make book"
    assert CHROMIUM, "Debian's chromium is needed (apt-get install chromium); .ci/run installs it"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
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
