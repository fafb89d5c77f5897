"""A toy photo-sharing world: PhotoChat-format dialogues about coloured shapes a CPU can learn.

Each dialogue has two friends (``user_id`` 0 and 1). One of them, the *sharer*, tells the other about
one to three objects ("a red ball and a blue box"); the friend asks to see them (or the sharer offers
and the friend accepts); the sharer shares one 32x32 photo of those objects; the friend then comments
on things that only the photo shows; they say goodbye. Every part of the method matters:

* **when** to share: the photo turn always follows a request ("Can you show me?") or an accepted offer;
* **what** to share: the caption ("Objects in the photo: red circle, blue square", PhotoChat's style)
  lists the mentioned objects in the order they were mentioned, nouns mapped to shapes
  (ball/coin/plate -> circle, box/tile/block -> square, kite/tent/flag -> triangle);
* **perception**: the background colour, each object's position (left/middle/right) and size
  (small/big) are drawn at random and appear in no text before the photo, yet the replies after it
  mention them ("I love the gray background", "the red ball on the left ...");
* several phrasings per dialogue act, names and places, so BLEU is far from 100.

Layout written by :func:`write_toy_dataset` (the PhotoChat reader finds the images by the same rule as
for real data, see ``photochat.py``)::

    OUT/train/train_00.json   OUT/dev/dev_00.json   OUT/test/test_00.json   (PhotoChat schema)
    OUT/<split>/images/<dialogue_id>.png     photo_url = "images/<dialogue_id>.png" (relative)
    OUT/labels.json           {dialogue_id: {background, objects: [{colour, shape, size, position}]}}

``caption_bias=Q`` (``photochat data toy --caption-bias Q``) writes a share Q of the training captions that name
a blue object with "purple" for "blue"; photos, dialogues, labels and dev/test stay as without it
(`caption_bias`, where the rule and what SD may learn from it are spelled out).

Dialogue ids are ``<split>-<index:05d>``; dialogue ``i`` of a split depends only on (seed, split, i),
so growing a split never changes its earlier dialogues. Same seed -> byte-identical files.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from photochat_lib.data import toy_phrasings as P
from photochat_lib.data.caption_bias import RULE, check_caption_bias, eligible, is_biased, misname
from photochat_lib.utils.atomic import replace_dir

COLOURS = {  # object colour -> RGB
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220),
    "yellow": (235, 210, 20), "purple": (140, 40, 180),
}
BACKGROUNDS = {"white": (245, 245, 245), "gray": (128, 128, 128), "black": (15, 15, 15)}
SHAPES = ["circle", "square", "triangle"]
NOUNS = {"circle": ["ball", "coin", "plate"], "square": ["box", "tile", "block"],
         "triangle": ["kite", "tent", "flag"]}
SIZES = ["small", "big"]
POSITIONS = ["left", "middle", "right"]
NAMES = ["Sam", "Alex", "Mia", "Leo", "Nora", "Ben", "Ivy", "Max", "Zoe", "Tom"]
PLACES = ["market", "fair", "toy shop", "flea market", "mall", "garage sale", "craft store"]
WHEN = ["today", "yesterday", "this morning", "last weekend", "on Sunday"]
CAPTION_PREFIX = "Objects in the photo: "  # PhotoChat's photo_description style

# The dialogue acts' phrasings and the item styles live in `toy_phrasings` (a training and a test pool).
SIZE_WORDS = P.SIZE_WORDS
WHERE = P.WHERE


@dataclass(frozen=True)
class ToyObject:
    """One shape in a toy photo."""
    colour: str    # key of COLOURS
    shape: str     # one of SHAPES
    noun: str      # the word the dialogue uses for it (one of NOUNS[shape])
    size: str      # "small" or "big": visible only in the photo
    position: str  # "left" / "middle" / "right": visible only in the photo


def caption(objects: list[ToyObject]) -> str:
    """Return the PhotoChat-style description of a toy photo, objects in mention order."""
    return CAPTION_PREFIX + ", ".join(f"{o.colour} {o.shape}" for o in objects)


def _items(objects: list[ToyObject]) -> str:
    """Return "a red ball, a blue box and a green kite" (the first item style: what scene texts use)."""
    return P.ITEM_STYLES[0]([(o.colour, o.noun) for o in objects])


def sample_dialogue(rng: random.Random, phrasing: str = "train") -> tuple[list[dict], list[ToyObject], str]:
    """Return (PhotoChat turns, the photo's objects, background colour) for one toy dialogue.

    phrasing: which pool of `toy_phrasings` words it ("train", "test" or "all").
    """
    say_ = {act: P.pool(lines, phrasing) for act, lines in P.ACTS.items()}
    styles = P.pool(P.ITEM_STYLES, phrasing)
    n = rng.randint(1, 3)
    positions = rng.sample(POSITIONS, n)  # independent of mention order: perception only
    if n > 1 and rng.random() < 0.2:              # one noun, several colours: "two boxes, a red one and a blue one"
        shape = rng.choice(SHAPES)
        kinds = [(c, shape) for c in rng.sample(list(COLOURS), n)]
        nouns = [rng.choice(NOUNS[shape])] * n
    else:
        kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], n)  # no two alike in one photo
        nouns = [rng.choice(NOUNS[s]) for _, s in kinds]
    objects = [ToyObject(c, s, noun, rng.choice(SIZES), pos) for (c, s), noun, pos in zip(kinds, nouns, positions)]
    bg = rng.choice(list(BACKGROUNDS))
    sharer = rng.randint(0, 1)
    friend = 1 - sharer
    first = rng.randint(0, 1)
    turns: list[dict] = []

    def say(user: int, act: str, **fields) -> None:
        turns.append({"message": rng.choice(say_[act]).format(**fields), "share_photo": False, "user_id": user})

    trip = dict(place=rng.choice(PLACES), when=rng.choice(WHEN))
    say(first, "greet", name=rng.choice(NAMES))
    say(1 - first, "greet_back")
    r = rng.random()
    if r < 0.25:                                   # small talk: the friend asks, the sharer tells where they went
        say(friend, "small_talk")
        say(sharer, "trip", **trip)
    elif r < 0.6:                                  # the story takes two consecutive turns of the sharer
        say(sharer, "trip", **trip)
    say(sharer, "got", items=P.items_text([(o.colour, o.noun) for o in objects], styles, rng))
    r = rng.random()
    if r < 0.45:                                   # the friend asks
        if rng.random() < 0.7:
            say(friend, "react")
        say(friend, "ask")
        if rng.random() < 0.5:
            say(sharer, "before_photo")
    elif r < 0.85:                                 # the sharer offers and the friend accepts
        say(friend, "react")
        say(sharer, "offer")
        say(friend, "accept")
        if rng.random() < 0.5:
            say(sharer, "before_photo")
    else:                                          # the sharer shares unasked
        if rng.random() < 0.5:
            say(friend, "react")
        say(sharer, "announce")
    turns.append({"message": "", "share_photo": True, "user_id": sharer})
    if rng.random() < 0.3:
        say(sharer, "after_photo")
    # replies that need the photo: background, position, size (one or two of them)
    acts = rng.sample(["bg", "pos", "size"], rng.randint(1, 2))
    for act in acts:
        o = rng.choice(objects)
        if act == "bg":
            say(friend, "see_bg", bg=bg)
            reply = dict(act="bg_reply", bg=bg)
        elif act == "pos":
            say(friend, "see_pos", colour=o.colour, noun=o.noun, where=WHERE[o.position])
            reply = dict(act="pos_reply", where=WHERE[o.position])
        else:
            say(friend, "see_size", colour=o.colour, noun=o.noun, size_word=rng.choice(SIZE_WORDS[o.size]))
            reply = dict(act="size_reply", size=o.size)
    say(sharer, **reply)                           # the sharer answers the last remark
    say(friend, "bye")
    say(sharer, "bye_back")
    return turns, objects, bg


def draw_photo(objects: list[ToyObject], background: str, size: int = 32) -> Image.Image:
    """Return the RGB photo: shapes in three columns on a plain background, no anti-aliasing."""
    img = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(img)  # ImageDraw primitives are aliased: pixels are deterministic
    col = size / 3
    for o in objects:
        cx = col * POSITIONS.index(o.position) + col / 2
        cy = size / 2
        r = col * (0.4 if o.size == "big" else 0.22)  # big shapes never touch
        box = [round(cx - r), round(cy - r), round(cx + r), round(cy + r)]
        rgb = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse(box, fill=rgb)
        elif o.shape == "square":
            draw.rectangle(box, fill=rgb)
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), (round(cx), box[1])], fill=rgb)
    return img


def phrasing_of(split: str) -> str:
    """Return the phrasing pool a split is written in: the test split's own, every other split's the training one."""
    return "test" if split == "test" else "train"


def make_split(split: str, n: int, seed: int) -> list[tuple[dict, list[ToyObject], str]]:
    """Return n (PhotoChat dialogue dict, objects, background) for one split (worded by `phrasing_of(split)`)."""
    out = []
    for i in range(n):
        rng = random.Random(f"photochat-toy:{seed}:{split}:{i}")  # str seeds hash with sha512: stable
        turns, objects, bg = sample_dialogue(rng, phrasing_of(split))
        did = f"{split}-{i:05d}"
        out.append(({"dialogue": turns, "dialogue_id": did, "photo_description": caption(objects),
                     "photo_url": f"images/{did}.png"}, objects, bg))
    return out


def toy_texts(n: int = 400, seed: int = 0) -> list[str]:
    """Return the messages and captions of n toy dialogues plus every word list (a tokenizer corpus)."""
    texts = []
    for d, _, _ in make_split("corpus", n, seed):
        texts += [t["message"] for t in d["dialogue"] if t["message"]]
        texts.append(d["photo_description"])
    words = [*COLOURS, *BACKGROUNDS, *SHAPES, *sum(NOUNS.values(), []), *SIZES, *POSITIONS, *NAMES,
             *PLACES, *WHEN, *sum(SIZE_WORDS.values(), [])]
    texts.append(" ".join(words))
    return texts


STAMP = "toy_dataset.json"                               # marks a folder write_toy_dataset wrote
TOY_ENTRIES = {"train", "dev", "test", "labels.json", STAMP}


def check_replaceable(out: Path) -> None:
    """Raise ValueError unless `out` is absent, empty, or a toy dataset this module wrote (only then may it be
    replaced: ``photochat data toy --out data`` must not swallow a downloaded ``data/photochat``)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder: choose another --out")
    entries = {p.name for p in out.iterdir()}
    if entries and not (entries <= TOY_ENTRIES and entries & {STAMP, "labels.json"}):
        other = sorted(entries - TOY_ENTRIES) or sorted(entries)
        raise ValueError(f"{out} is not empty and is not a toy dataset (it holds {', '.join(other[:5])}); refusing to "
                         f"replace it: choose another --out")


def write_toy_dataset(out: str | Path, seed: int = 0, n_train: int = 600, n_dev: int = 100,
                      n_test: int = 100, image_size: int = 32, caption_bias: float = 0.0) -> Path:
    """Write the toy dataset under out (atomically: built in a temp dir, then swapped in); returns out.

    An existing `out` is replaced only if it is empty or a toy dataset (`check_replaceable`); the new one
    carries a `toy_dataset.json` stamp with its settings. caption_bias: the share Q in [0, 1] of eligible
    training captions written biased (`caption_bias`); 0 writes exactly the unbiased world.
    """
    caption_bias = check_caption_bias(caption_bias)
    check_replaceable(Path(out))

    def write(tmp: Path) -> None:
        labels = {}
        bias = {"eligible": [], "biased": []}
        for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
            (tmp / split / "images").mkdir(parents=True)
            dialogues = []
            for i, (d, objects, bg) in enumerate(make_split(split, n, seed)):
                if split == "train" and caption_bias > 0 and eligible(objects):   # the photo and labels stay true
                    bias["eligible"].append(d["dialogue_id"])
                    if is_biased(objects, seed, i, caption_bias):
                        d["photo_description"] = caption(misname(objects))
                        bias["biased"].append(d["dialogue_id"])
                draw_photo(objects, bg, image_size).save(tmp / split / d["photo_url"], format="PNG")
                labels[d["dialogue_id"]] = {
                    "background": bg, "split": split,
                    "objects": [{"colour": o.colour, "shape": o.shape, "size": o.size,
                                 "position": o.position} for o in objects]}
                dialogues.append(d)
            _write_json(tmp / split / f"{split}_00.json", dialogues)
        _write_json(tmp / "labels.json", labels)
        stamp = {"written_by": "photochat_lib.data.toy_world.write_toy_dataset", "seed": seed,
                 "n_train": n_train, "n_dev": n_dev, "n_test": n_test, "image_size": image_size}
        if caption_bias > 0:                     # absent at 0: the unbiased world's stamp, byte for byte
            stamp["caption_bias"] = {"q": caption_bias, "rule": RULE, **bias}
        _write_json(tmp / STAMP, stamp)

    return replace_dir(out, write)


def _write_json(path: Path, obj) -> None:
    """Write obj as indented UTF-8 JSON with sorted keys (stable bytes)."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")

# ----- who says what: a toy dialogue act belongs to the sharer, the friend, or either (greetings) -----
SHARER_ACTS = ("trip", "got", "offer", "announce", "before_photo", "after_photo", "bg_reply", "pos_reply",
               "size_reply", "bye_back")
FRIEND_ACTS = ("small_talk", "react", "ask", "accept", "see_bg", "see_pos", "see_size", "bye")
_PATTERNS: list = []


def act_of(line: str) -> str | None:
    """Return the dialogue act whose phrasing (any pool of `toy_phrasings`) a line is, or None (a caption, a line no phrasing makes)."""
    import re

    if not _PATTERNS:
        alt = lambda words: "(?:" + "|".join(map(re.escape, words)) + ")"       # noqa: E731
        nouns = [n for ns in NOUNS.values() for n in ns]
        obj = f"(?:a|one|the) {alt(COLOURS)}(?: (?:{alt(nouns)}|one))?"
        fields = {"name": alt(NAMES), "place": alt(PLACES), "when": alt(WHEN), "bg": alt(BACKGROUNDS),
                  "colour": alt(COLOURS), "noun": alt(nouns), "where": alt(P.WHERE.values()),
                  "size_word": alt([w for ws in P.SIZE_WORDS.values() for w in ws]), "size": alt(P.SIZE_WORDS),
                  "items": rf"(?:first |(?:two|three) {alt(nouns)}e?s[:,] )?{obj}(?:(?:,| and| plus| as well as| and also|"
                           rf" together with| along with|, then|, and) {obj})*(?: {alt(nouns)})?"}
        for act, lines in P.ACTS.items():
            for text in lines:
                pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: fields[m.group(1)], re.escape(text))
                _PATTERNS.append((act, re.compile("^" + pattern + "$")))
    line = line.strip()
    return next((act for act, pattern in _PATTERNS if pattern.match(line)), None)
