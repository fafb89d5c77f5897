"""Point every link to the published course at one setting: ``[tool.photochat.course]`` in pyproject.toml.

The notebooks' "Open in Colab" badges, their Colab install cells and the book's repository link all name
the repository the course is published at. That URL lives in one place::

    [tool.photochat.course]
    repository = "https://github.com/photochat/photochat"
    branch = "main"

To publish the course under another URL, change it there and run ``make course-links`` (this script): it
rewrites the badges, the install cells and ``book/_config.yml`` in place; ``--check`` only reports what
differs (``tests/test_course_links.py`` runs it, and installs the package the way the install cell does,
from a local clone).

The install cell, on Colab only, installs an uploaded copy of the repository when one sits at
``/content/photochat`` (upload the folder, or ``git clone`` it there), and otherwise the package from the
repository's branch with pip (``photochat_lib @ git+URL@BRANCH``; the shipped toy checkpoints are package
data, so they come with it).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

try:
    import tomllib                                   # Python >= 3.11
except ModuleNotFoundError:                          # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BOOK_CONFIG = ROOT / "book" / "_config.yml"
UPLOADED = "/content/photochat"                      # where a Colab user puts an uploaded copy
BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^)\s]+/notebooks/(\d\d_[\w-]+\.ipynb)")


def settings(pyproject: Path = ROOT / "pyproject.toml") -> dict:
    """Return {"repository": URL without a trailing slash, "branch": name, "slug": "owner/name"}."""
    course = tomllib.loads(pyproject.read_text())["tool"]["photochat"]["course"]
    url = course["repository"].rstrip("/").removesuffix(".git")
    m = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", url)
    if not m:
        raise ValueError(f"{pyproject}: [tool.photochat.course] repository must be https://github.com/OWNER/NAME, "
                         f"got {course['repository']!r}")
    return {"repository": url, "branch": course.get("branch", "main"), "slug": m.group(1)}


def badge_url(s: dict, notebook: str) -> str:
    """Return the "Open in Colab" link of one notebook."""
    return f"https://colab.research.google.com/github/{s['slug']}/blob/{s['branch']}/notebooks/{notebook}"


def requirement(s: dict) -> str:
    """Return the pip requirement the install cell uses: the package from the repository's branch."""
    return f"photochat_lib @ git+{s['repository']}.git@{s['branch']}"


def install_cell(s: dict) -> str:
    """Return the source of the Colab-only install cell (a no-op everywhere else)."""
    return (
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:  # on Colab only: install the library (a no-op everywhere else)\n'
        "    from pathlib import Path\n"
        "\n"
        "    # -U: reinstall the library, and upgrade what Colab preinstalled only where it is below pyproject.toml's\n"
        "    # floors (pip's only-if-needed strategy), so no preinstalled transformers or diffusers too old for it stays\n"
        f'    if Path("{UPLOADED}/pyproject.toml").exists():  # an uploaded copy of the repository\n'
        f"        !pip install -q -U {UPLOADED}\n"
        "    else:                                                # the published repository (pyproject.toml)\n"
        f'        !pip install -q -U "{requirement(s)}"\n')


def _notebook_changes(path: Path, s: dict) -> tuple[dict, list[str]]:
    """Return (the notebook with its links set, what differed)."""
    nb = json.loads(path.read_text())
    problems = []
    head = "".join(nb["cells"][0]["source"])
    fixed = BADGE.sub(lambda m: badge_url(s, m.group(1)), head)
    if badge_url(s, path.name) not in fixed:
        problems.append(f"{path.name}: no Colab badge linking to this notebook")
    elif fixed != head:
        problems.append(f"{path.name}: the Colab badge does not point at {s['slug']}@{s['branch']}")
        nb["cells"][0]["source"] = fixed.splitlines(keepends=True)
    cell = nb["cells"][2]
    if '"google.colab" in sys.modules' not in "".join(cell["source"]):
        problems.append(f"{path.name}: cell 3 is not the Colab install cell")
    elif "".join(cell["source"]) != install_cell(s):
        problems.append(f"{path.name}: the install cell differs from the one for {s['repository']}")
        cell["source"] = install_cell(s).splitlines(keepends=True)
    return nb, problems


def _config_changes(s: dict) -> tuple[str, list[str]]:
    text = BOOK_CONFIG.read_text()
    fixed = re.sub(r"(?m)^(  url: )\S+", lambda m: m.group(1) + s["repository"], text, count=1)
    fixed = re.sub(r"(?m)^(  branch: )\S+", lambda m: m.group(1) + s["branch"], fixed, count=1)
    return fixed, ([f"{BOOK_CONFIG.name}: repository url/branch differ from {s['repository']}@{s['branch']}"]
                   if fixed != text else [])


def check() -> list[str]:
    """Return what differs from the setting (empty when every link agrees)."""
    s = settings()
    problems = [p for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")) for p in _notebook_changes(nb, s)[1]]
    return problems + _config_changes(s)[1]


def apply() -> list[str]:
    """Rewrite every link that differs from the setting; return what changed."""
    from photochat_lib.utils.atomic import write_text   # a half-written notebook would lose the course's outputs
    s = settings()
    changed = []
    for path in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        nb, problems = _notebook_changes(path, s)
        if problems:
            write_text(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed += problems
    text, problems = _config_changes(s)
    if problems:
        write_text(BOOK_CONFIG, text)
        changed += problems
    return changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only report links that differ from the setting (exit 1)")
    args = p.parse_args(argv)
    problems = check() if args.check else apply()
    for line in problems:
        print(("differs: " if args.check else "updated: ") + line)
    if not problems:
        print(f"every course link points at {settings()['repository']}@{settings()['branch']}")
    return 1 if args.check and problems else 0


if __name__ == "__main__":
    sys.exit(main())
