"""The toy world: deterministic bytes, PhotoChat format, and a dialogue structure that needs every part."""
import json
import random
import re

import numpy as np
import pytest
from PIL import Image

import argparse

from photochat_lib.data import cli as data_cli
from photochat_lib.data.photochat import read_photochat
from photochat_lib.data.samples import make_samples
from photochat_lib.data.photo_facts import grounded, stated_facts
from photochat_lib.data.toy_phrasings import ACTS
from photochat_lib.data.toy_world import FRIEND_ACTS, SHARER_ACTS, act_of
from photochat_lib.data.toy_world import (BACKGROUNDS, COLOURS, NOUNS, ToyObject, caption, draw_photo,
                                         make_split, phrasing_of, sample_dialogue, write_toy_dataset)

SMALL = dict(n_train=12, n_dev=4, n_test=4)


def cli_main(argv):
    """Run `photochat data ...` through data/cli.py's register (as photochat_lib/apps/cli.py does)."""
    parser = argparse.ArgumentParser(prog="photochat")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _all_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_byte_identical_other_seed_differs(tmp_path):
    a = write_toy_dataset(tmp_path / "a", seed=3, **SMALL)
    b = write_toy_dataset(tmp_path / "b", seed=3, **SMALL)
    c = write_toy_dataset(tmp_path / "c", seed=4, **SMALL)
    files_a = _all_bytes(a)
    assert files_a == _all_bytes(b)
    assert files_a != _all_bytes(c)
    assert {"train/train_00.json", "dev/dev_00.json", "test/test_00.json", "labels.json",
            "train/images/train-00000.png"} <= set(files_a)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_rewrite_replaces_atomically(tmp_path):
    out = write_toy_dataset(tmp_path / "toy", seed=0, **SMALL)
    write_toy_dataset(out, seed=0, n_train=2, n_dev=1, n_test=1)
    assert len(json.loads((out / "train/train_00.json").read_text())) == 2
    assert not (out / "train/images/train-00005.png").exists()  # old files gone, not mixed


def test_reader_finds_images_and_labels_match(tmp_path):
    out = write_toy_dataset(tmp_path / "toy", seed=0, image_size=16, **SMALL)
    dialogues = read_photochat(out / "train", check_images=True)
    assert len(dialogues) == 12
    labels = json.loads((out / "labels.json").read_text())
    for d in dialogues:
        (photo,) = d.photos
        assert photo.path.endswith(f"train/images/{d.dialogue_id}.png")
        img = Image.open(photo.path)
        assert img.mode == "RGB" and img.size == (16, 16)
        lab = labels[d.dialogue_id]
        assert photo.caption == "Objects in the photo: " + ", ".join(
            f"{o['colour']} {o['shape']}" for o in lab["objects"])
        corner = np.asarray(img)[0, 0]  # the background colour shows in the corner
        assert tuple(corner) == BACKGROUNDS[lab["background"]]


@pytest.mark.parametrize("phrasing", ["train", "test"])
def test_dialogue_structure_makes_every_part_matter(phrasing):
    for i in range(200):
        turns, objects, bg = sample_dialogue(random.Random(i), phrasing)
        k = next(j for j, t in enumerate(turns) if t["share_photo"])
        sharer = turns[k]["user_id"]
        acts = [act_of(t["message"]) for t in turns]
        assert None not in acts[:k] + acts[k + 1:]                       # every line is one of the acts
        # when: the photo follows the friend's request or accepted offer, or the sharer's announcement
        trigger = [a for a in acts[:k] if a != "before_photo"][-1]
        assert trigger in ("ask", "accept", "announce")
        # what: every object is named before the photo, in caption order (colours in order, nouns present)
        got = next(t["message"] for t, a in zip(turns, acts) if a == "got")
        colours = [m.group(1) for m in re.finditer(r"\b(" + "|".join(COLOURS) + r")\b", got)]
        assert colours == [o.colour for o in objects] and all(o.noun in got for o in objects)
        # perception: no photo-only fact before the photo; after it, the friend states true ones
        before = " ".join(t["message"] for t in turns[:k])
        assert not stated_facts(before), before
        label = {"background": bg, "objects": [vars(o) for o in objects]}
        remark = next(t["message"] for t in turns[k + 1:] if t["user_id"] != sharer)
        assert grounded(remark, label), remark
        # who says what: the sharer's acts are the sharer's, the friend's the friend's
        for t, a in zip(turns, acts):
            assert a not in (FRIEND_ACTS if t["user_id"] == sharer else SHARER_ACTS), (t, a)


def test_the_test_split_is_worded_from_its_own_pool(tmp_path):
    """Train and dev use training phrasings only, test only held-out ones: no line of one is a phrasing of the other."""
    def pools_of(line):
        found = set()
        for lines in ACTS.values():
            for k, text in enumerate(lines):
                parts = re.split(r"\{\w+\}", text)
                if re.fullmatch("(.+?)".join(map(re.escape, parts)), line):
                    found.add("test" if k % 4 == 3 else "train")
        return found
    for split, pool in (("train", "train"), ("dev", "train"), ("test", "test")):
        lines = [t["message"] for d, _, _ in make_split(split, 60, 0) for t in d["dialogue"] if t["message"]]
        assert all(pool in pools_of(line) for line in lines), split
        assert phrasing_of(split) == pool
    # the test split's item styles are its own too ("a red and a blue box" appears only there)
    test_text = " ".join(t["message"] for d, _, _ in make_split("test", 300, 0) for t in d["dialogue"])
    train_text = " ".join(t["message"] for d, _, _ in make_split("train", 300, 0) for t in d["dialogue"])
    assert " as well as " in test_text and " as well as " not in train_text
    assert " plus " in train_text and " plus " not in test_text


def test_no_hand_written_line_is_a_phrasing_of_the_generator():
    """The held-out wording set (data/wording.py) is worded by people, not by the generator's pools."""
    from photochat_lib.data.wording import PHOTO, read_source
    for split in ("test", "dev"):
        dialogues = read_source(split)
        assert len(dialogues) >= (60 if split == "test" else 30)
        generated = [(d["dialogue_id"], text) for d in dialogues for _, text in d["turns"]
                     if text != PHOTO and act_of(text) is not None]
        assert not generated, generated


def test_draw_photo_shapes_and_positions():
    objs = [ToyObject("red", "square", "box", "big", "left"),
            ToyObject("blue", "circle", "ball", "small", "right")]
    a = np.asarray(draw_photo(objs, "white", 32))
    assert tuple(a[16, 5]) == COLOURS["red"] and tuple(a[16, 26]) == COLOURS["blue"]
    assert tuple(a[16, 16]) == BACKGROUNDS["white"]  # the middle column is empty
    assert caption(objs) == "Objects in the photo: red square, blue circle"


def test_toy_samples_include_photo_and_text_targets():
    dialogues_raw = [d for d, _, _ in make_split("train", 20, 0)]
    assert all(d["dialogue_id"].startswith("train-") for d in dialogues_raw)
    nouns = {n for v in NOUNS.values() for n in v}
    assert any(n in dialogues_raw[0]["dialogue"][2]["message"] + dialogues_raw[0]["dialogue"][3]["message"]
               for n in nouns)


def test_cli_toy_and_stats(tmp_path, capsys):
    out = tmp_path / "toy"
    assert cli_main(["data", "toy", "--out", str(out), "--seed", "1", "--n-train", "5", "--n-dev", "2",
                     "--n-test", "2", "--image-size", "16"]) == 0
    dialogues = read_photochat(out / "train")
    samples = make_samples(dialogues)
    assert any(s.shares_photo for s in samples) and any(not s.shares_photo for s in samples)
    capsys.readouterr()
    assert cli_main(["data", "stats", str(out / "train"), str(out / "dev")]) == 0
    table = capsys.readouterr().out
    assert re.search(r"total\s+7\s", table), table


def test_data_toy_refuses_a_folder_that_is_not_a_toy_dataset(tmp_path):
    """`photochat data toy --out data` once replaced data/ whole, downloaded PhotoChat included."""
    import subprocess
    import sys
    data = tmp_path / "data"
    (data / "photochat" / "train").mkdir(parents=True)
    (data / "photochat" / "manifest.json").write_text("{}")
    res = subprocess.run([sys.executable, "-m", "photochat_lib.apps.cli", "data", "toy", "--out", str(data), "--n-train", "2",
                          "--n-dev", "1", "--n-test", "1"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "not a toy dataset" in res.stderr and "photochat" in res.stderr, res.stderr
    assert (data / "photochat" / "manifest.json").exists()
    with pytest.raises(ValueError, match="manifest.json"):
        write_toy_dataset(data / "photochat", n_train=2, n_dev=1, n_test=1)
    toy = write_toy_dataset(data / "toy", n_train=2, n_dev=1, n_test=1)     # a fresh folder: written, stamped
    assert json.loads((toy / "toy_dataset.json").read_text())["n_train"] == 2
    write_toy_dataset(toy, seed=1, n_train=3, n_dev=1, n_test=1)           # a toy dataset: replaced
    assert json.loads((toy / "toy_dataset.json").read_text())["seed"] == 1
    (toy / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        write_toy_dataset(toy, n_train=2, n_dev=1, n_test=1)
    assert (toy / "notes.txt").read_text() == "mine"
