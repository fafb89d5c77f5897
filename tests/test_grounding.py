"""Grounded remarks (evaluation/grounding.py): the photo-only facts a reply states, checked against toy labels."""
import json

import pytest

from photochat_lib.data.photochat import read_photochat
from photochat_lib.data.samples import make_samples
from photochat_lib.data.toy_world import write_toy_dataset
from photochat_lib.evaluation.grounding import (Fact, chance, fact_true, grounded, grounded_remarks, is_remark,
                                                read_labels, stated_facts)

LABEL = {"background": "gray", "objects": [
    {"colour": "red", "shape": "circle", "size": "big", "position": "left"},
    {"colour": "blue", "shape": "square", "size": "small", "position": "right"}]}


@pytest.mark.parametrize("text, facts", [
    ("I love the gray background.", [Fact("background", "gray")]),
    ("Nice photo, the background is so grey!", [Fact("background", "gray")]),
    ("The red ball on the left is my favourite.", [Fact("position", "left", "red", "circle")]),
    ("Is that the blue tile in the middle?", [Fact("position", "middle", "blue", "square")]),
    ("Wow, the blue box is so tiny!", [Fact("size", "small", "blue", "square")]),
    ("The red one looks huge.", [Fact("size", "big", "red", None)]),
    ("two boxes, and the kite is on the right side", [Fact("position", "right", None, "triangle")]),
    ("The red ball is on the left and the blue box on the right.",
     [Fact("position", "left", "red", "circle"), Fact("position", "right", "blue", "square")]),
    ("Oh, it is tiny!", [Fact("size", "small")]),
    # not photo facts: a size word with no object, "right" not as a place, words before the photo's objects
    ("I had a big day, you're right.", []),
    ("I got a red ball and a blue box. Right?", []),
    ("Hi! What did you do today?", []),
    ("See you later! [IMG] Objects in the photo: red circle[/IMG]", []),
])
def test_stated_facts(text, facts):
    assert stated_facts(text) == facts


@pytest.mark.parametrize("text, ok", [
    ("I love the gray background.", True),
    ("I love the black background.", False),              # the "black background" on a gray photo
    ("The red ball on the left is my favourite.", True),
    ("Is that the red ball on the right?", False),
    ("The red kite on the left is my favourite.", False),  # no red triangle in the photo
    ("The blue box looks small. The background is gray.", True),
    ("The blue box looks small. The background is white.", False),   # one false fact spoils the remark
    ("This is the photo.", False),                          # states no photo-only fact: not grounded
    ("It is so big!", True),                                # about some object: the red ball is big
])
def test_grounded(text, ok):
    assert grounded(text, LABEL) is ok


def test_fact_true_needs_an_object_that_fits_the_name():
    assert fact_true(Fact("size", "small", "blue", None), LABEL)
    assert not fact_true(Fact("size", "small", "green", None), LABEL)     # no green object at all
    assert fact_true(Fact("position", "left"), LABEL)                     # some object is on the left
    assert not fact_true(Fact("position", "middle"), LABEL)


def test_chance_multiplies_the_guesses_of_each_fact():
    assert chance("I love the gray background.") == pytest.approx(1 / 3)
    assert chance("Wow, the red ball is so big!") == pytest.approx(1 / 2)
    assert chance("The red ball on the left looks big.") == pytest.approx(1 / 6)


def test_remarks_of_the_toy_world_are_found_and_the_references_are_grounded(tmp_path):
    """Every toy dialogue has one reply to the photo that states what only the photo shows; the parser reads the
    reference of every one as grounded (the oracle), in both phrasing pools (train/dev and test)."""
    data = write_toy_dataset(tmp_path / "toy", seed=3, n_train=60, n_dev=0, n_test=60)
    labels = read_labels(data)
    for split in ("train", "test"):
        dialogues = read_photochat(data / split)
        remarks = [s for s in make_samples(dialogues) if is_remark(s, labels)]
        assert len(remarks) == len(dialogues)              # exactly the friend's first reply after each photo
        assert all(s.answers_photo for s in remarks)
        records = [{"id": s.id, "prediction": s.response_text(), "reference": s.response_text()} for s in remarks]
        m = grounded_remarks(records, labels)
        assert m["grounded_oracle"] == m["grounded_remarks"] == 100.0 and m["grounded_n"] == 60
        assert 20 < m["grounded_chance"] < 45              # 1/3 or 1/2 per fact, their product for two
        blind = [{**r, "prediction": "This is the photo."} for r in records]
        assert grounded_remarks(blind, labels)["grounded_remarks"] == 0.0


def test_real_data_has_no_labels(tmp_path):
    (tmp_path / "test").mkdir()
    assert read_labels(tmp_path) is None
    assert json.dumps(grounded_remarks([], {})) == '{"grounded_n": 0}'


def test_a_size_word_before_a_name_belongs_to_that_object():
    facts = stated_facts("The red ball is enormous, and the little blue box is cute.")
    assert facts == [Fact("size", "big", "red", "circle"), Fact("size", "small", "blue", "square")]
