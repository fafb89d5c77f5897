"""The held-out wording set (data/wording.py): hand-written dialogues, checked, written in the toy world's layout."""
import json

import numpy as np
import pytest
from PIL import Image

from photochat_lib.data.photochat import read_photochat
from photochat_lib.data.samples import make_samples
from photochat_lib.data.schema import DataError
from photochat_lib.data.toy_world import BACKGROUNDS
from photochat_lib.data.wording import PHOTO, read_source, write_wording_dataset
from photochat_lib.evaluation.grounding import grounded_remarks, is_remark, read_labels


def test_the_set_is_written_in_the_toy_layout_and_every_reference_remark_is_grounded(tmp_path):
    out = write_wording_dataset(tmp_path / "wording")
    labels = read_labels(out)
    for split, n in (("test", len(read_source("test"))), ("dev", len(read_source("dev")))):
        dialogues = read_photochat(out / split, check_images=True)
        assert len(dialogues) == n
        for d in dialogues:
            (photo,) = d.photos
            objects = labels[d.dialogue_id]["objects"]
            assert photo.caption == "Objects in the photo: " + ", ".join(f"{o['colour']} {o['shape']}" for o in objects)
            corner = np.asarray(Image.open(photo.path))[0, 0]
            assert tuple(corner) == BACKGROUNDS[labels[d.dialogue_id]["background"]]
        remarks = [s for s in make_samples(dialogues) if is_remark(s, labels)]
        assert len({s.dialogue_id for s in remarks}) == n          # every dialogue has a remark on its photo
        records = [{"id": s.id, "prediction": s.response_text(), "reference": s.response_text()} for s in remarks]
        assert grounded_remarks(records, labels)["grounded_oracle"] == 100.0
    shares = [s for s in make_samples(read_photochat(out / "test")) if s.shares_photo]
    def in_opening_run(d):                                          # a photo in the opening run is no target
        k = next(i for i, (_, text) in enumerate(d["turns"]) if text == PHOTO)
        return all(who == d["turns"][k][0] for who, _ in d["turns"][:k])
    after_first_run = [d for d in read_source("test") if not in_opening_run(d)]
    assert len(shares) == len(after_first_run) >= 60


def test_a_bad_source_dialogue_is_named(tmp_path):
    bad = [{"dialogue_id": "wording-test-x", "turns": [["0", "hi"], ["1", "<photo>"]],
            "photo": {"background": "pink", "objects": [{"colour": "red", "shape": "circle", "size": "big",
                                                         "position": "left"}]}}]
    path = tmp_path / "w.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match="wording-test-x"):
        read_source("test", path)


def test_write_refuses_a_folder_that_is_not_a_wording_set(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a wording dataset"):
        write_wording_dataset(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep"
