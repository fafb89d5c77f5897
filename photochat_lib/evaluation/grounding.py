"""Grounded remarks: when a reply speaks about a photo someone else shared, is what it says true of that photo?

The input end of the paper (§2.3, eq. 3) lets the LLM *see* a photo in its context. Text metrics cannot tell
whether it does: "I love the gray background" and "I love the black background" are one word apart. On the toy
world every photo has labels, so the photo-only facts a reply states (background, an object's position or
size: `data.photo_facts`) can be checked against them.

**Which responses count** (`is_remark`): a sample whose context holds a photo shared by *another* speaker,
and whose reference states at least one photo-only fact: a reply that should say something only the photo
shows. The sharer's own answers are left out (they can copy the question: "Is it on the left?" "Yes").
A remark is *grounded* when the model's reply states at least one photo-only fact and every one is true.

**Chance and oracle.** Chance: a reply that states the reference's kinds of fact about the reference's
objects with each value guessed uniformly (1/3 for a background or a position, 1/2 for a size; their
product when it states several). Oracle: the reference replies themselves, which the toy world wrote from
the labels: 100 % unless the parser misses a phrasing or a hand-written label disagrees with its text.
Real data (PhotoChat, DialogCC) has no labels: the metric needs toy labels and is left out there.
"""
from __future__ import annotations

import json
from pathlib import Path

from photochat_lib.data.photo_facts import Fact, fact_true, grounded, stated_facts  # noqa: F401  (re-exported)
from photochat_lib.data.toy_world import BACKGROUNDS

CHANCE = {"background": 1 / len(BACKGROUNDS), "position": 1 / 3, "size": 1 / 2}   # one value guessed uniformly


def chance(reference: str) -> float:
    """Return the chance that a reply stating the reference's kinds of fact, values guessed uniformly, is grounded."""
    p = 1.0
    for f in stated_facts(reference):
        p *= CHANCE[f.kind]
    return p


def read_labels(data: str | Path) -> dict | None:
    """Return {dialogue_id: label} from a toy dataset's labels.json, or None when the dataset has none (real data)."""
    path = Path(data) / "labels.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def is_remark(sample, labels: dict | None) -> bool:
    """Return whether a sample answers a photo another speaker shared with a photo-only fact (see the module)."""
    if not labels or sample.dialogue_id not in labels or sample.shares_photo:
        return False
    photos = [t for t in sample.context if t.photo is not None]
    return bool(photos) and photos[-1].speaker != sample.speaker and bool(stated_facts(sample.response_text()))


def grounded_remarks(records: list[dict], labels: dict) -> dict:
    """Return the metric over prediction records of remark samples (``id``, ``prediction``, ``reference``).

    Keys: ``grounded_remarks`` (% of remarks whose reply is grounded), ``grounded_n`` (remarks scored),
    ``grounded_states_fact`` (% that state any photo-only fact), ``grounded_chance`` and ``grounded_oracle`` (%).
    """
    if not records:
        return {"grounded_n": 0}
    label = lambda r: labels[r["id"].rsplit(":", 1)[0]]             # noqa: E731  (sample id = dialogue:run)
    n = len(records)
    return {"grounded_remarks": 100.0 * sum(grounded(r["prediction"], label(r)) for r in records) / n,
            "grounded_n": n,
            "grounded_states_fact": 100.0 * sum(bool(stated_facts(r["prediction"])) for r in records) / n,
            "grounded_chance": 100.0 * sum(chance(r["reference"]) for r in records) / n,
            "grounded_oracle": 100.0 * sum(grounded(r["reference"], label(r)) for r in records) / n}
