"""The held-out wording set: toy-world dialogues written by hand in phrasings the generator never produces.

The toy world's test split is worded from a held-out pool of the generator's own phrasings
(`toy_phrasings`); people word things in ways no pool lists ("Mind sending me a picture?", "two boxes, a
green one and a yellow one", small talk, a friend who shares a photo unasked). ``wording/wording_test.json``
holds such dialogues, written by hand for evaluation only: no training and no tuning reads it (a test
checks that no line of it is a phrasing the generator can produce). ``wording/wording_dev.json`` is a
smaller set of the same kind, written at the same time, for development.

Source format (one JSON list per file)::

    {"dialogue_id": "wording-test-000",
     "turns": [["0", "Hey! What did you get up to today?"], ["1", "..."], ["1", "<photo>"], ...],
     "photo": {"background": "gray",
               "objects": [{"colour": "purple", "shape": "triangle", "size": "big", "position": "left"}, ...]}}

Objects are listed in the order the dialogue first mentions them, which is the caption's order (as in the
toy world). `write_wording_dataset` draws each photo from its labels and writes the toy world's layout
(``test/test_00.json``, ``dev/dev_00.json``, ``<split>/images/``, ``labels.json``), so every reader,
`photochat evaluate` and the grounded-remark metric work on it unchanged.
"""
from __future__ import annotations

import json
from pathlib import Path

from photochat_lib.data.schema import DataError
from photochat_lib.data.toy_world import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, ToyObject, caption, draw_photo
from photochat_lib.utils.atomic import replace_dir

SOURCE = Path(__file__).parent / "wording"           # wording_test.json, wording_dev.json
SPLITS = ("test", "dev")
PHOTO = "<photo>"                                     # the photo turn's text in the source files
STAMP = "wording_dataset.json"


def read_source(split: str = "test", path: str | Path | None = None) -> list[dict]:
    """Return the hand-written dialogues of a split, checked (DataError naming the file and dialogue)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    file = Path(path) if path is not None else SOURCE / f"wording_{split}.json"
    dialogues = json.loads(file.read_text(encoding="utf-8"))
    for d in dialogues:
        _check(d, str(file))
    return dialogues


def _check(d: dict, file: str) -> None:
    """Raise DataError unless a source dialogue is a valid toy-world dialogue with one photo."""
    did = d.get("dialogue_id")
    fail = lambda msg, field=None: DataError("bad_wording_dialogue", msg, file=file, dialogue_id=did, field=field)  # noqa: E731
    turns, photo = d.get("turns"), d.get("photo")
    if not isinstance(did, str) or not isinstance(turns, list) or not isinstance(photo, dict):
        raise fail("needs dialogue_id (str), turns (list) and photo (object)")
    if [t[1] for t in turns].count(PHOTO) != 1:
        raise fail(f"needs exactly one {PHOTO!r} turn", "turns")
    if any(not (isinstance(t, list) and len(t) == 2 and t[0] in ("0", "1") and isinstance(t[1], str)) for t in turns):
        raise fail('every turn must be ["0" or "1", text]', "turns")
    objects = photo.get("objects", [])
    if photo.get("background") not in BACKGROUNDS or not 1 <= len(objects) <= 3:
        raise fail(f"photo needs a background in {sorted(BACKGROUNDS)} and 1-3 objects", "photo")
    for o in objects:
        if (o.get("colour") not in COLOURS or o.get("shape") not in SHAPES or o.get("size") not in SIZES
                or o.get("position") not in POSITIONS):
            raise fail(f"bad object {o}", "photo.objects")
    if len({o["position"] for o in objects}) < len(objects) or len({(o["colour"], o["shape"]) for o in objects}) < len(objects):
        raise fail("two objects share a place or a (colour, shape)", "photo.objects")


def _objects(d: dict) -> list[ToyObject]:
    return [ToyObject(o["colour"], o["shape"], o["shape"], o["size"], o["position"]) for o in d["photo"]["objects"]]


def write_wording_dataset(out: str | Path, image_size: int = 32) -> Path:
    """Write the wording set in the toy world's layout under `out` (atomically); return `out`."""
    from photochat_lib.data.toy_world import _write_json
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / STAMP).exists():
        raise ValueError(f"{out} is not empty and is not a wording dataset; refusing to replace it: choose another --out")

    def write(tmp: Path) -> None:
        labels = {}
        for split in SPLITS:
            (tmp / split / "images").mkdir(parents=True)
            rows = []
            for d in read_source(split):
                did, objects = d["dialogue_id"], _objects(d)
                url = f"images/{did}.png"
                draw_photo(objects, d["photo"]["background"], image_size).save(tmp / split / url, format="PNG")
                rows.append({"dialogue_id": did, "photo_description": caption(objects), "photo_url": url,
                             "dialogue": [{"message": "" if text == PHOTO else text, "share_photo": text == PHOTO,
                                           "user_id": int(who)} for who, text in d["turns"]]})
                labels[did] = {"background": d["photo"]["background"], "split": split, "objects": d["photo"]["objects"]}
            _write_json(tmp / split / f"{split}_00.json", rows)
        _write_json(tmp / "labels.json", labels)
        _write_json(tmp / STAMP, {"written_by": "photochat_lib.data.wording.write_wording_dataset",
                                  "image_size": image_size})

    return replace_dir(out, write)
