"""The photo-only facts a text states about a toy photo, and whether the photo's labels make them true.

On the toy world every photo has labels (``labels.json``: background, and each object's colour, shape, size
and position). Three kinds of fact can only come from looking at the photo:

* **background** — a background colour (white, gray/grey, black; objects are never those colours);
* **position** — an object said to be on the left / in the middle / on the right;
* **size** — an object said to be small (tiny, little) or big (huge, large).

An object is named by a colour and a noun or shape ("the red ball", "the purple square", "the yellow one",
"the kite"); a fact is true when some object of the photo fits the name and has the stated value. A size
word right before a name belongs to that object ("the little green ball"); any other fact belongs to the
object named last before it in its clause, else the first one after it, else the last object the text named
("it is tiny"), else to any object of the photo. Used by the grounded-remark metric
(`evaluation/grounding.py`) and by the perceptron's pretraining check (`toy/pretrain_perceptron.py`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from photochat_lib.data.tokens import IMG_END, IMG_START
from photochat_lib.data.toy_world import BACKGROUNDS, COLOURS, NOUNS, SHAPES

BACKGROUND_WORDS = {**{b: b for b in BACKGROUNDS}, "grey": "gray"}
SIZE_WORDS = {"small": "small", "tiny": "small", "little": "small", "mini": "small",
              "big": "big", "huge": "big", "large": "big", "giant": "big", "massive": "big", "enormous": "big"}
POSITION_WORDS = {"left": "left", "middle": "middle", "centre": "middle", "center": "middle", "right": "right"}
SHAPE_OF = {noun: shape for shape, nouns in NOUNS.items() for noun in nouns} | {s: s for s in SHAPES}

_COLOUR = "|".join(COLOURS)
_NOUN = "|".join(sorted(SHAPE_OF, key=len, reverse=True))
# "the red ball", "red balls", "the yellow one", "the kite": (colour or None, noun, "one", or None)
_OBJECT = re.compile(rf"\b(?:({_COLOUR})\s+(?:(?:small|tiny|little|big|huge|large)\s+)?(?:({_NOUN})(?:e?s)?|(ones?))"
                     rf"|({_NOUN})(?:e?s)?)\b")
_POSITION = re.compile(r"\b(?:(?:on|to|at|in|from) the (?:far |very )?(left|right|middle|centre|center)\b"
                       r"|(left|right)[- ](?:hand|side)\b|(left|right)most\b|in the (middle|centre|center)\b)")
_SIZE = re.compile(rf"\b({'|'.join(SIZE_WORDS)})\b(?! bit\b)")
_BACKGROUND = re.compile(r"\b(white|gray|grey|black)\b")
_CLAUSE = re.compile(r"[.!?;\n]+")
_PHOTO = re.compile(re.escape(IMG_START) + r".*?(?:" + re.escape(IMG_END) + "|$)", re.S)   # a shared photo's caption


@dataclass(frozen=True)
class Fact:
    """One photo-only fact a text states."""
    kind: str                                   # "background" | "position" | "size"
    value: str                                  # a background colour, left/middle/right, small/big
    colour: str | None = None                   # the object it is about (position, size); None: not named
    shape: str | None = None


def stated_facts(text: str) -> list[Fact]:
    """Return the photo-only facts a reply states, in order (photos' captions are not part of it)."""
    facts, last = [], None
    for clause in _CLAUSE.split(_PHOTO.sub(" ", text).lower()):
        objects = [(m.start(), m.group(1), SHAPE_OF.get(m.group(2) or m.group(4) or "")) for m in _OBJECT.finditer(clause)]
        for m in _BACKGROUND.finditer(clause):
            facts.append(Fact("background", BACKGROUND_WORDS[m.group(1)]))
        found = [("position", POSITION_WORDS[next(g for g in m.groups() if g)], m.start())
                 for m in _POSITION.finditer(clause)]
        found += [("size", SIZE_WORDS[m.group(1)], m.start()) for m in _SIZE.finditer(clause)
                  if _names_object(clause, objects, m.start())]
        for kind, value, at in sorted(found, key=lambda f: f[2]):
            before = [o for o in objects if o[0] < at]
            right_after = [o for o in objects if at < o[0] <= clause.find(" ", at) + 1]   # "the little green ball"
            obj = (right_after or before[-1:] or objects[:1] or [last])[0] if kind == "size" else \
                (before[-1] if before else (objects[0] if objects else last))
            facts.append(Fact(kind, value, *(obj[1:] if obj else (None, None))))
        if objects:
            last = objects[-1]
    return facts


def _names_object(clause: str, objects: list, at: int) -> bool:
    """Return whether a size word belongs to an object: one named in its clause, or a pronoun/one ("it is tiny")."""
    return bool(objects) or re.search(r"\b(it|it's|its|that|this|one|they|them)\b", clause) is not None


def fact_true(fact: Fact, label: dict) -> bool:
    """Return whether a fact holds in a photo's labels ({"background", "objects": [{colour, shape, size, position}]})."""
    if fact.kind == "background":
        return fact.value == label["background"]
    fits = [o for o in label["objects"] if fact.colour in (None, o["colour"]) and fact.shape in (None, o["shape"])]
    return any(o[fact.kind] == fact.value for o in fits)


def grounded(text: str, label: dict) -> bool:
    """Return whether a reply states at least one photo-only fact and every one is true of the labels."""
    facts = stated_facts(text)
    return bool(facts) and all(fact_true(f, label) for f in facts)


