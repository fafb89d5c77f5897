"""PhotoChat and DialogCC readers, bad input, samples (§2.1) and Table 1 statistics."""
import argparse
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from photochat_lib.data import cli as data_cli
from photochat_lib.data.dialogcc import read_dialogcc
from photochat_lib.data.photochat import read_photochat
from photochat_lib.data.samples import make_samples
from photochat_lib.data.schema import DataError, Photo, ReadReport, Turn
from photochat_lib.data.stats import dialogue_stats

FIX = Path(__file__).parent / "fixtures"


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="photochat")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def good(did="g1", **over):
    d = {"dialogue_id": did, "photo_description": "Objects in the photo: Dog", "photo_url": "http://x/d.jpg",
         "dialogue": [{"message": "hi", "share_photo": False, "user_id": 0},
                      {"message": "", "share_photo": True, "user_id": 1},
                      {"message": "cute", "share_photo": False, "user_id": 0}]}
    d.update(over)
    return d


def write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# ---- the real format --------------------------------------------------------------------------

def test_reads_real_photochat_excerpt():
    ds = read_photochat(FIX / "photochat_excerpt.json")
    assert [d.dialogue_id for d in ds] == ["0", "3", "4"]
    assert [len(d.turns) for d in ds] == [19, 18, 17]
    (p,) = ds[1].photos
    assert p.caption == "Objects in the photo: Pretzel, Bagel, Bread" and p.url.startswith("https://")
    assert p.path is None  # URL only, no local file
    assert ds[0].turns[11].photo is p or ds[0].turns[11].is_photo
    assert ds[0].turns[0] == Turn("1", text="How are you?")


def test_stats_on_real_excerpt():
    # Hand count (photo turns removed first, then runs of one speaker's text turns):
    # dialogue 0: 18 text turns; speakers 1 0 1 0 11 00 11 0(photo)|1 0 1 0 111 -> 13 runs
    # dialogue 3: 17 text turns; 1 0... -> 0 1 0 1 000000 1 0 11 0 11 -> 10 runs
    # dialogue 4: 16 text turns; 0 1 00 11 00 1 00 1 0[photo]0 1 0 -> 11 runs (the photo joins 0 and 0)
    s = dialogue_stats(read_photochat(FIX / "photochat_excerpt.json"), "excerpt")
    assert (s.dialogues, s.utterances, s.cutterances, s.images, s.distinct_images) == (3, 51, 34, 3, 3)
    assert s.u_per_d == pytest.approx(34 / 3)


def test_stats_hand_counted_small_fixture(capsys):
    # photochat_small.json, counted by hand:
    # s1: hi(0) hello(1) look(0) [photo 0] cute?(0) so cute(1): 5 text turns; runs 0|1|0 0|1 = 4
    # s2: hey(1) what's up(1) [photo 0] nice pic(1) thanks(0): 4 text turns; the photo of speaker 0
    #     does not break speaker 1's run (photo turns are excluded before counting): 1 1 1|0 = 2
    # s3: morning(0) [photo 1] wow(0): 2 text turns, one run = 1
    # -> Dial 3, Utter 11, CUtter 7, U/D 7/3 = 2.33, Img 3, DImg 2 (s1 and s3 share dog.jpg), I/D 1.00
    s = dialogue_stats(read_photochat(FIX / "photochat_small.json"), "small")
    assert (s.dialogues, s.utterances, s.cutterances, s.images, s.distinct_images) == (3, 11, 7, 3, 2)
    assert run_cli(["data", "stats", str(FIX / "photochat_small.json"), str(FIX / "photochat_excerpt.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["split", "#", "Dial"]
    assert lines[2].split()[1:] == ["3", "11", "7", "2.33", "3", "2", "1.00"]
    assert lines[3].split()[1:] == ["3", "51", "34", "11.33", "3", "3", "1.00"]
    # total: # DImg adds the rows' (2 + 3), as Table 1's total rows do
    assert lines[4].split() == ["total", "6", "62", "41", "6.83", "6", "5", "1.00"]


def test_samples_every_run_after_the_first():
    ds = {d.dialogue_id: d for d in read_photochat(FIX / "photochat_small.json")}
    samples = make_samples([ds["s2"]])
    # s2 runs (photos included): [hey, what's up](1) | [photo](0) | [nice pic](1) | [thanks](0)
    assert [s.id for s in samples] == ["s2:1", "s2:2", "s2:3"]
    assert samples[0].response_text() == "[IMG] Objects in the photo: Cake[/IMG]"
    assert [t.text for t in samples[0].context] == ["hey", "what's up"]
    assert samples[1].context_photos()[0].caption == "Objects in the photo: Cake"
    assert samples[1].target_photos() == [] and not samples[1].shares_photo
    s1 = make_samples([ds["s1"]])
    assert s1[1].response_text() == "look at this\n[IMG] Objects in the photo: Dog, Ball[/IMG]\ncute, right?"
    assert [s.id for s in make_samples(ds.values(), photo_only=True)] == ["s1:2", "s2:1", "s3:1"]


# ---- DialogCC (assumed schema) ----------------------------------------------------------------

def test_dialogcc_adapter():
    ds = read_dialogcc(FIX / "dialogcc_small.json")
    assert [d.dialogue_id for d in ds] == ["bst-1", "daily-7"]
    bst = ds[0]
    assert [t.is_photo for t in bst.turns] == [False, False, False, True, True, False]
    assert [p.caption for p in bst.photos] == ["sunset over the sea", "the sun setting on a beach"]
    assert {t.speaker for t in bst.turns if t.is_photo} == {"Alice"}
    assert ds[1].photos[0].caption == "a cat sleeping on a sofa"  # no caption -> the description
    assert len(read_dialogcc(FIX / "dialogcc_small.json", max_images_per_utterance=1)[0].photos) == 1
    s = dialogue_stats(ds)
    assert (s.dialogues, s.utterances, s.cutterances, s.images, s.distinct_images) == (2, 6, 6, 3, 3)


def test_dialogcc_bad_image_field(tmp_path):
    bad = json.loads((FIX / "dialogcc_small.json").read_text())
    bad[1]["dialogue"][0]["shared_image"] = [42]
    with pytest.raises(DataError, match=r"daily-7.*dialogue\[0\]\.shared_image\[0\]"):
        read_dialogcc(write(tmp_path / "test.json", bad))


# ---- bad input ----------------------------------------------------------------------------------

BAD = {
    "missing_field": (good("b1", photo_description=None) | {}, "photo_description"),
    "bad_type": (good("b2", dialogue=[{"message": "hi", "share_photo": "yes", "user_id": 0}]),
                 r"dialogue\[0\]\.share_photo"),
    "photo_turn_with_text": (good("b3", dialogue=[{"message": "see", "share_photo": True, "user_id": 0}]),
                             r"dialogue\[0\]\.message"),
    "no_photo": (good("b4", dialogue=[{"message": "hi", "share_photo": False, "user_id": 0}]), "dialogue"),
    "empty_message": (good("b5", dialogue=[{"message": " ", "share_photo": False, "user_id": 0},
                                           {"message": "", "share_photo": True, "user_id": 1}]), "message"),
}
del BAD["missing_field"][0]["photo_description"]


@pytest.mark.parametrize("reason", sorted(BAD))
def test_bad_dialogue_strict_and_lenient(tmp_path, reason):
    entry, field = BAD[reason]
    path = write(tmp_path / "split.json", [good("ok1"), entry, good("ok2")])
    with pytest.raises(DataError) as e:
        read_photochat(path)
    assert e.value.reason == reason
    msg = str(e.value)
    assert "split.json" in msg and f"dialogue {entry['dialogue_id']}" in msg
    assert __import__("re").search(field, msg), msg
    report = ReadReport()
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = read_photochat(path, lenient=True, report=report)
    assert [d.dialogue_id for d in ds] == ["ok1", "ok2"]
    assert report.read == 2 and report.skipped == {reason: 1}


def test_bad_files(tmp_path):
    (tmp_path / "a.json").write_text('[{"dialogue_id": 1,', encoding="utf-8")
    (tmp_path / "b.json").write_bytes(b'[{"message": "caf\xe9"}]')
    write(tmp_path / "c.json", {"not": "a list"})
    write(tmp_path / "d.json", [good("x1")])
    write(tmp_path / "e.json", [good("x1")])  # the same id again, in another file
    for name, reason in [("a.json", "bad_json"), ("b.json", "not_utf8"), ("c.json", "bad_format")]:
        with pytest.raises(DataError, match=name) as e:
            read_photochat(tmp_path / name)
        assert e.value.reason == reason
    dup = tmp_path / "dup"
    dup.mkdir()
    for name in ("d.json", "e.json"):
        shutil.copy(tmp_path / name, dup / name)
    with pytest.raises(DataError, match=r"e\.json.*dialogue x1.*already read from .*d\.json"):
        read_photochat(dup)
    report = ReadReport()
    with pytest.warns(UserWarning):
        ds = read_photochat(tmp_path, lenient=True, report=report)
    assert [d.dialogue_id for d in ds] == ["x1"]
    assert report.skipped == {"bad_json": 1, "not_utf8": 1, "bad_format": 1, "duplicate_id": 1}
    with pytest.raises(DataError, match="no such file"):
        read_photochat(tmp_path / "missing.json")


def test_cli_stats_strict_error_and_lenient(tmp_path, capsys):
    path = write(tmp_path / "split.json", [good("ok1"), BAD["no_photo"][0]])
    assert run_cli(["data", "stats", str(path)]) == 2          # a fixable error: exit 2, as the README says
    assert "dialogue b4" in capsys.readouterr().err
    assert run_cli(["data", "stats", "--lenient", str(path)]) == 0
    out = capsys.readouterr()
    assert "no_photo: 1" in out.err and out.out.splitlines()[2].split()[1] == "1"


def test_images_found_checked_and_from_manifest(tmp_path):
    split = tmp_path / "train"
    split.mkdir()
    write(split / "train_00.json", [good("1"), good("2"), good("3"), good("4")])
    (split / "images").mkdir()
    Image.new("RGB", (4, 4)).save(split / "images" / "1.jpg")                  # DIR/images/<id>.jpg
    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "2.png")               # ROOT/images/<id>.png
    (tmp_path / "images" / "3.jpg").write_bytes(b"not an image")               # corrupt
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "gen4.png")
    write(tmp_path / "manifest.json", {"files": {"images/gen4": {
        "kind": "image", "split": "train", "dialogue_id": 4, "path": "images/gen4.png", "status": "generated"}}})
    ds = {d.dialogue_id: d.photos[0] for d in read_photochat(split)}
    assert ds["1"].path.endswith("train/images/1.jpg") and ds["2"].path.endswith("images/2.png")
    assert ds["4"].path.endswith("gen4.png") and ds["4"].generated and not ds["1"].generated
    with pytest.raises(DataError, match=r"dialogue 3.*unreadable image") as e:
        read_photochat(split, check_images=True)
    assert e.value.reason == "bad_image"
    (tmp_path / "images" / "3.jpg").unlink()
    with pytest.raises(DataError, match="dialogue 3") as e:
        read_photochat(split, check_images=True)
    assert e.value.reason == "missing_image"
    report = ReadReport()
    with pytest.warns(UserWarning):
        assert len(read_photochat(split, check_images=True, lenient=True, report=report)) == 3
    assert report.skipped == {"missing_image": 1}


def test_schema_validation():
    with pytest.raises(ValueError, match="exactly one"):
        Turn("a", text="hi", photo=Photo("c"))
    with pytest.raises(ValueError, match="exactly one"):
        Turn("a")
    with pytest.raises(ValueError, match="caption"):
        Photo("  ")
    assert Photo("c", url="u").key == "u" and Photo("c", path="p").key == "p" and Photo("c").key == "c"


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_sixteen_bit_photos_are_scaled_not_clipped(tmp_path, suffix):
    """Issue 22's probe: a 16-bit TIFF passed "every photo decoded", but 99.6 % of its pixels became 255
    (PIL's convert("RGB") clips I;16 values above 255). A ramp over the 16-bit range must stay a ramp."""
    import numpy as np
    from PIL import Image
    from photochat_lib.data.images import load_image
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / f"photo{suffix}")
    assert Image.open(tmp_path / f"photo{suffix}").mode.startswith("I")
    rgb = np.asarray(load_image(str(tmp_path / f"photo{suffix}")))
    assert rgb.shape == (64, 64, 3) and (rgb == 255).mean() < 0.01
    assert np.abs(rgb[..., 0].astype(float) - ramp / 257).max() <= 0.5 + 1e-9   # 65535 -> 255, linear
