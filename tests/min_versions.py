"""Print pip constraints that pin every dependency of pyproject.toml to its floor (`make test-min`).

    python tests/min_versions.py [--with pytest] > constraints.txt

Each ``name>=X`` becomes ``name==X``; torch and torchvision are left to the Makefile's pins (the floors of the
range are for Colab's own torch; the install step's pins are what runs here). `make test-min` installs the
package under these constraints in a venv of its own and runs tests/test_min_versions.py there, so the ranges
that pyproject.toml and environment.yml declare are proven, not hoped.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"torch", "torchvision"}                       # the Makefile's pins


def floors(also: list[str]) -> list[str]:
    try:
        import tomllib
    except ImportError:                                # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for group in project["optional-dependencies"].values():     # named optional ones (pytest for the smoke test)
        specs += [spec for spec in group if re.split(r"[<>=!~ ]", spec, maxsplit=1)[0] in also]
    out = []
    for spec in specs:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)(?:,.*)?", spec.strip())
        if m and m.group(1).lower() not in SKIP:
            out.append(f"{m.group(1)}=={m.group(2)}")
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--with", dest="also", action="append", default=[], help="an optional dependency to pin too")
    sys.stdout.write("".join(line + "\n" for line in floors(p.parse_args().also)))
