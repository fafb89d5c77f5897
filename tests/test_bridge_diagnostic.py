"""The colour-swap diagnostic (evaluation/bridge_diagnostic.py): swaps, intervals, and what each bridge can say."""
import random
from pathlib import Path

import pytest
import torch

from photochat_lib.data.photochat import read_photochat
from photochat_lib.data.samples import make_samples
from photochat_lib.data.toy_world import COLOURS, write_toy_dataset
from photochat_lib.evaluation.bridge_diagnostic import ARMS, diagnose, swap_one_colour, wilson
from photochat_lib.presets import build_model, collator_for


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = write_toy_dataset(tmp_path_factory.mktemp("diag") / "toy", seed=0, n_train=8, n_dev=2, n_test=12)
    return [s for s in make_samples(read_photochat(root / "test")) if s.shares_photo]


def test_one_colour_word_is_swapped_for_one_the_caption_does_not_name(shared):
    rng = random.Random(0)
    for s in shared:
        sw = swap_one_colour(s, rng)
        before = s.target_photos()[0].caption.split(" ")
        after = sw.sample.target_photos()[0].caption.split(" ")
        changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
        assert changed == [sw.word_index] and len(before) == len(after)
        assert sw.right in before[sw.word_index] and sw.wrong in after[sw.word_index]
        assert sw.wrong in COLOURS and sw.wrong not in s.target_photos()[0].caption
        assert sw.sample.context == s.context and sw.sample.id == s.id           # only the caption changed


def test_wilson_interval():
    lo, hi = wilson(30, 40)
    assert lo == pytest.approx(0.5981, abs=1e-3) and hi == pytest.approx(0.8581, abs=1e-3)
    assert wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12)


def test_every_arm_is_measured_with_its_interval(shared):
    torch.manual_seed(0)
    model = build_model("toy", seed=0)
    r = diagnose(model, shared[:4], collator_for(model, "toy"), n_gumbel=2, n_diffusion=2, batch_size=4)
    assert set(r["arms"]) == {f"{b}/{s}" for b, s in ARMS}
    for arm in r["arms"].values():
        assert arm["n"] == 4 and 0 <= arm["wins"] <= 4 and arm["ci95"][0] <= arm["share"] <= arm["ci95"][1]
        assert arm["mean_gap"] == arm["mean_gap"]                                # measured, not NaN
        assert 0 <= arm["right_first"] <= arm["wins"] and arm["right_first_chance"] == pytest.approx(0.25)


def test_the_control_redraws_the_photo_in_the_captions_colour(shared, tmp_path):
    """The control keeps the swapped caption and redraws the photo so the swapped object shows the caption's colour."""
    from photochat_lib.data.images import load_image
    from photochat_lib.evaluation.bridge_diagnostic import recolour_photo
    from photochat_lib.evaluation.grounding import read_labels
    from photochat_lib.toy.classifier import attribute_accuracy
    root = Path(shared[0].target_photos()[0].path).parents[2]
    labels = read_labels(root)
    rng = random.Random(1)
    for s in shared[:4]:
        sw = swap_one_colour(s, rng)
        ctl = recolour_photo(sw, labels[s.dialogue_id], tmp_path)
        photo = ctl.sample.target_photos()[0]
        assert photo.caption == sw.sample.target_photos()[0].caption and Path(photo.path).parent == tmp_path
        label = labels[s.dialogue_id]
        objects = [dict(o) for o in label["objects"]]
        objects[sw.object_index]["colour"] = sw.wrong
        assert attribute_accuracy([load_image(photo.path)], [{**label, "objects": objects}]) == 1.0
