"""A world where L_v has a job (issue 20, item 6): `photochat data toy --caption-bias Q` writes a share Q of the
training captions that name a blue object with "purple" for "blue"; everything else is the unbiased world, byte for
byte, and attribute accuracy is scored against the photo, not against a caption."""
import hashlib
import json
import math

import pytest
from PIL import Image

from photochat_lib.data.caption_bias import MISNAMED, RULE, WRITTEN_AS, bias_draw
from photochat_lib.data.toy_world import write_toy_dataset
from tests.test_data_toy_world import _all_bytes, cli_main

N = dict(n_train=600, n_dev=20, n_test=20)


def _digest(root):
    """Return a sha256 of a world's files: JSON as bytes, PNGs as their decoded pixels (zlib builds differ)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0")
            if p.suffix == ".png":
                with Image.open(p) as im:
                    h.update(f"{im.mode}{im.size}".encode() + im.tobytes())
            else:
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def unbiased(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("q0") / "toy", seed=0, **N)


@pytest.fixture(scope="module")
def biased(tmp_path_factory):
    return {q: write_toy_dataset(tmp_path_factory.mktemp(f"q{q}") / "toy", seed=0, caption_bias=q, **N)
            for q in (0.25, 0.5, 1.0)}


def test_no_bias_is_todays_world_byte_for_byte(tmp_path):
    """--caption-bias 0 and no flag write the same bytes, and both are the world before the flag existed (the
    digests were taken with the generator of commit a6d5670: the LLM was trained on that world)."""
    small = ["--n-train", "12", "--n-dev", "4", "--n-test", "4"]
    assert cli_main(["data", "toy", "--out", str(tmp_path / "a"), *small]) == 0
    assert cli_main(["data", "toy", "--out", str(tmp_path / "b"), *small, "--caption-bias", "0"]) == 0
    assert _all_bytes(tmp_path / "a") == _all_bytes(tmp_path / "b")
    assert _digest(tmp_path / "a") == "fcc82d654a9d8b90323b30bb687980fa9ea1e291272b615be1db9fd4d5c4979f"
    other = write_toy_dataset(tmp_path / "c", seed=7, n_train=40, n_dev=6, n_test=6, image_size=16, caption_bias=0.0)
    assert _digest(other) == "c30d34a4104a2ff9972aece35eb369643e4a69b30d9918d04be91184236bcac5"
    assert "caption_bias" not in json.loads((other / "toy_dataset.json").read_text())


def test_only_training_captions_change_each_in_the_documented_way(unbiased, biased):
    """Photos, labels, dev and test are the unbiased world's bytes; in train only photo_description changes, on
    exactly the eligible dialogues whose own draw is below Q, and only by writing every blue as purple."""
    before = _all_bytes(unbiased)
    train0 = json.loads((unbiased / "train/train_00.json").read_text())
    eligible = {d["dialogue_id"] for d in train0 if f"{MISNAMED} " in d["photo_description"]}
    assert 150 < len(eligible) < 300                       # about a third of the captions name a blue object
    sets = {}
    for q, root in biased.items():
        after = _all_bytes(root)
        assert set(after) == set(before)
        changed = {k for k in before if before[k] != after[k]}
        assert changed == {"train/train_00.json", "toy_dataset.json"}, changed   # photos, labels, dev, test: same
        train = json.loads((root / "train/train_00.json").read_text())
        assert [d["dialogue_id"] for d in train] == [d["dialogue_id"] for d in train0]
        done = set()
        for i, (d, d0) in enumerate(zip(train, train0)):
            assert {k: v for k, v in d.items() if k != "photo_description"} == \
                   {k: v for k, v in d0.items() if k != "photo_description"}   # the dialogue turns stay true
            if d["photo_description"] != d0["photo_description"]:
                assert d["photo_description"] == d0["photo_description"].replace(f"{MISNAMED} ", f"{WRITTEN_AS} ")
                assert MISNAMED not in d["photo_description"]
                done.add(d["dialogue_id"])
        assert done == {f"train-{i:05d}" for i in range(len(train0))
                        if f"train-{i:05d}" in eligible and bias_draw(0, i) < q}
        share, sd = len(done) / len(eligible), math.sqrt(q * (1 - q) / len(eligible))
        assert abs(share - q) <= 4 * sd + 1e-12, (q, share)               # Q up to binomial noise (Q=1: all)
        stamp = json.loads((root / "toy_dataset.json").read_text())["caption_bias"]
        assert stamp == {"q": q, "rule": RULE, "eligible": sorted(eligible), "biased": sorted(done)}
        sets[q] = done
    assert sets[0.25] <= sets[0.5] <= sets[1.0] == eligible                # a larger Q only adds biased captions


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "nan", "inf"])
def test_a_bad_share_is_one_line_naming_the_flag(tmp_path, capsys, bad):
    out = tmp_path / "toy"
    assert cli_main(["data", "toy", "--out", str(out), "--n-train", "2", "--caption-bias", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --caption-bias must be") and "\n" not in err and not out.exists()
    with pytest.raises(SystemExit):
        cli_main(["data", "toy", "--out", str(out), "--caption-bias", "lots"])
    assert "--caption-bias" in capsys.readouterr().err
    with pytest.raises(ValueError, match="caption_bias"):
        write_toy_dataset(out, caption_bias=float(bad))
    assert not out.exists()


def test_attribute_accuracy_is_scored_against_the_photo(biased):
    """A drawn photo that is the true photo scores 100 % against labels.json even where the reference caption is
    biased; without labels (real data) the caption is all there is, and the biased one marks it wrong."""
    from photochat_lib.evaluation.evaluate import score
    from photochat_lib.evaluation.grounding import read_labels
    root = biased[1.0]
    train = json.loads((root / "train/train_00.json").read_text())
    picked = [d for d in train if WRITTEN_AS in d["photo_description"]][:4]
    labels = read_labels(root)
    picked = [d for d in picked if not any(o["colour"] == WRITTEN_AS for o in labels[d["dialogue_id"]]["objects"])]
    assert len(picked) >= 2
    records, images = [], {}
    for d in picked:
        path = str(root / "train" / d["photo_url"])
        cap = d["photo_description"]
        text = f"[IMG] {cap}[/IMG]"
        records.append({"id": f"{d['dialogue_id']}:3", "prediction": text, "reference": text,
                        "prediction_shares": True, "reference_shares": True, "reference_captions": [cap],
                        "prediction_captions": [cap], "reference_images": [path], "notes": []})
        images[records[-1]["id"]] = [Image.open(path).convert("RGB")]
    assert score(records, images, "toy", labels=labels)["attr_acc"] == 100.0
    assert score(records, images, "toy")["attr_acc"] == 0.0
