"""The course's published-repository URL lives in one setting ([tool.photochat.course] in pyproject.toml), and
the Colab install cell really installs the package — from the repository's branch, or from an uploaded copy —
checked here against a local clone (``book/course_links.py``)."""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("course_links", ROOT / "book" / "course_links.py")
course_links = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(course_links)


def test_every_badge_install_cell_and_book_link_follows_the_setting():
    assert course_links.check() == []
    s = course_links.settings()
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text())
        assert course_links.badge_url(s, path.name) in "".join(nb["cells"][0]["source"])
        assert course_links.requirement(s) in "".join(nb["cells"][2]["source"])


def test_the_setting_must_name_a_github_repository(tmp_path):
    bad = tmp_path / "pyproject.toml"
    bad.write_text('[tool.photochat.course]\nrepository = "https://example.org/x"\n')
    with pytest.raises(ValueError, match=r"pyproject.toml.*https://github.com/OWNER/NAME"):
        course_links.settings(bad)
    good = tmp_path / "good.toml"
    good.write_text('[tool.photochat.course]\nrepository = "https://github.com/me/course.git/"\nbranch = "v1"\n')
    assert course_links.settings(good) == {"repository": "https://github.com/me/course", "branch": "v1",
                                           "slug": "me/course"}


def _pip_targets(cell: str) -> list[str]:
    """Return the argument of every `!pip install -q -U ...` line of the install cell, in order (-U: issue 21, the
    preinstalled packages below the floors are upgraded)."""
    return [shlex.split(m)[0] for m in re.findall(r"^\s*!pip install -q -U (.+)$", cell, re.M)]


@pytest.mark.slow
@pytest.mark.parametrize("way", ["repository", "uploaded copy"])
def test_the_install_cell_installs_the_package_from_a_local_clone(tmp_path, way):
    """Run the cell's own pip command with the repository URL (or the upload folder) replaced by a local clone
    of this repository's HEAD; the package and its shipped toy checkpoints must land in the target."""
    s = course_links.settings()
    cell = "".join(json.loads((ROOT / "notebooks" / "00_overview_and_setup.ipynb").read_text())["cells"][2]["source"])
    uploaded, from_repo = _pip_targets(cell)
    assert uploaded == course_links.UPLOADED and from_repo == course_links.requirement(s)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", "-B", s["branch"]], check=True)
    target = (from_repo.replace(f"git+{s['repository']}.git", f"git+file://{clone}") if way == "repository"
              else uploaded.replace(course_links.UPLOADED, str(clone)))
    assert target != (from_repo if way == "repository" else uploaded)
    out = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(out), target], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "photochat_lib" / "__init__.py").exists()
    assert (out / "photochat_lib" / "toy" / "checkpoints" / "toy-end2end" / "photochat.json").exists()
