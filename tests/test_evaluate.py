"""Evaluation: predictions.jsonl + metrics.json; an oracle gets perfect text and timing scores."""
import json

import pytest

import photochat_lib.model.generation as G
from photochat_lib.data.photochat import read_photochat
from photochat_lib.data.samples import make_samples
from photochat_lib.data.toy_world import write_toy_dataset
from photochat_lib.evaluation.evaluate import evaluate_model, select_samples
from photochat_lib.presets import build_model


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    write_toy_dataset(out, seed=3, n_train=4, n_dev=4, n_test=6)
    return out


@pytest.fixture(scope="module")
def model():
    return build_model("toy", seed=0)


def test_oracle_replies_score_perfectly_and_files_are_written(toy, model, tmp_path, monkeypatch):
    samples = make_samples(read_photochat(toy / "test"))
    answer = {}  # context -> the references in order (two dialogues may open with the same turn)
    for s in samples:
        answer.setdefault(tuple(s.context), []).append(s.response_text())
    real = G.generate_batch

    def oracle(model, contexts, speakers=None, **kw):
        replies = [G.parse_reply(answer[tuple(c)].pop(0)) for c in contexts]
        if kw.get("draw_images", True):
            G.draw_photos(model, replies, num_inference_steps=2)
        return replies

    monkeypatch.setattr(G, "generate_batch", oracle)
    res = evaluate_model(model, toy, "test", out_dir=tmp_path / "eval", num_inference_steps=2)
    m = res["metrics"]
    assert m["BLEU-1"] == pytest.approx(100) and m["BLEU-2"] == pytest.approx(100)
    assert m["Rouge-L"] == pytest.approx(100)
    assert m["share F1"] == pytest.approx(100) and m["caption_exact"] == pytest.approx(100)
    assert m["image_coverage"] == pytest.approx(100) and m["n_drawn"] == 6
    assert {"IS_mean", "IS_std", "FID", "attr_acc"} <= set(m)
    rows = [json.loads(ln) for ln in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len(samples)
    assert {"id", "context", "reference", "prediction", "reference_images", "prediction_images"} <= set(rows[0])
    photo_rows = [r for r in rows if r["reference_shares"]]
    assert all(len(r["prediction_images"]) == 1 and (tmp_path / "eval" / "images").exists() for r in photo_rows)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["BLEU-2"] == pytest.approx(100)
    assert real is not G.generate_batch
    # the input end: the oracle's remarks are the references, grounded in every dialogue
    assert m["grounded_remarks"] == m["grounded_oracle"] == 100.0 and m["grounded_n"] == 6
    assert 20 < m["grounded_chance"] < 60 and m["grounded_states_fact"] == 100.0
    remarks = [json.loads(ln) for ln in (tmp_path / "eval" / "remarks.jsonl").read_text().splitlines()]
    assert len(remarks) == 6 and all(r["grounded"] and r["facts"] and all(f["true"] for f in r["facts"])
                                     for r in remarks)


def test_remarks_outside_the_subset_are_scored_too_and_real_data_says_why_not(toy, model, tmp_path, monkeypatch):
    """grounded_n counts every remark of the split, not only those the seeded subset picked; a dataset without
    labels.json (PhotoChat, DialogCC) gets a note instead of a number."""
    import shutil
    m = evaluate_model(model, toy, "test", max_samples=2, num_inference_steps=2, max_new_tokens=4)["metrics"]
    assert m["n_samples"] == 2 and m["grounded_n"] == 6 and 0 <= m["grounded_remarks"] <= 100
    real = tmp_path / "real"
    shutil.copytree(toy / "test", real / "test")                  # the same dialogues, no labels.json
    m = evaluate_model(model, real, "test", max_samples=2, num_inference_steps=2, max_new_tokens=4)["metrics"]
    assert "grounded_remarks" not in m and "labels.json" in m["grounded_note"]


def test_untrained_model_is_scored_without_crashing(toy, model, tmp_path):
    res = evaluate_model(model, toy, "test", max_samples=4, num_inference_steps=2, max_new_tokens=6)
    m = res["metrics"]
    assert m["n_samples"] == 4 and 0 <= m["BLEU-1"] <= 100 and 0 <= m["share F1"] <= 100


def test_select_samples_balances_photo_and_text_responses(toy):
    samples = make_samples(read_photochat(toy / "test"))
    chosen = select_samples(samples, 6, seed=0)
    assert len(chosen) == 6 and sum(s.shares_photo for s in chosen) == 3
    assert chosen == select_samples(samples, 6, seed=0)


def test_oracle_rows_anchor_the_table(toy, model):
    """The demo's anchor rows: reference photos against themselves (FID 0, the judge sees their objects),
    and the image generator on reference and on random captions, on the same photo-sharing subset."""
    from photochat_lib.evaluation.evaluate import oracle_metrics
    rows = oracle_metrics(model.image_generator, toy, "test", num_inference_steps=2)
    n = sum(s.shares_photo for s in make_samples(read_photochat(toy / "test")))
    assert set(rows) == {"reference", "sd_reference_captions", "random_captions"}
    assert all(r["n_photos"] == n for r in rows.values())
    assert abs(rows["reference"]["FID"]) < 1e-3 and rows["reference"]["attr_acc"] == 100.0
    assert rows["random_captions"]["FID"] > 1.0          # an untrained generator's drawings are not the photos


def test_unclosed_captions_are_counted(toy, model, monkeypatch):
    """`unclosed`: the share of replies that shared a photo but never closed its [IMG]."""
    replies = iter(["Sure! [IMG] Objects in the photo: red circle", "[IMG] Objects in the photo: blue square[/IMG]",
                    "Nice."] * 10)
    monkeypatch.setattr(G, "generate_batch", lambda model, contexts, speakers=None, **kw:
                        [G.parse_reply(next(replies)) for _ in contexts])
    m = evaluate_model(model, toy, "test", max_samples=3)["metrics"]
    assert m["unclosed"] == pytest.approx(50.0)


def test_image_names_from_hostile_dialogue_ids_stay_inside_out(tmp_path):
    """A dialogue id is data: '../../x', '/abs/x' or 'a/b' once wrote outside --out or crashed after all the
    generation work. Every generated photo now lands in out/images under a plain name."""
    from pathlib import Path

    from photochat_lib.utils.atomic import safe_name
    from photochat_lib.data.toy_world import write_toy_dataset
    from photochat_lib.presets import load_toy_model
    assert [safe_name(x) for x in ("../../x", "/abs/x", "a/b", "test-00019:3", "..")] == \
        ["_.._x", "_abs_x", "a_b", "test-00019_3", "_"]
    data = write_toy_dataset(tmp_path / "toy", seed=0, n_train=4, n_dev=2, n_test=3)
    split = tmp_path / "toy" / "test" / "test_00.json"
    dialogues = json.loads(split.read_text())
    for d, bad in zip(dialogues, ("../../x", "/abs/x", "a/b")):
        d["dialogue_id"] = bad
    split.write_text(json.dumps(dialogues))
    out = tmp_path / "run" / "eval"
    result = evaluate_model(load_toy_model(which="end2end"), data, "test", preset="toy", max_samples=30, seed=0,
                            out_dir=out, num_inference_steps=2)
    drawn = [p for r in result["records"] for p in r["prediction_images"]]
    assert drawn and all(Path(p).parent == out / "images" and Path(p).exists() for p in drawn)
    assert (out / "predictions.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "toy"]       # nothing written beside them


def test_a_wrong_model_folder_is_one_line_with_the_final_hint(tmp_path, capsys):
    """`evaluate --model runs/x` (the run, not its final/) once raised a bare FileNotFoundError traceback."""
    from photochat_lib.apps.cli import main
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "photochat.json").write_text("{}")
    rc = main(["evaluate", "--model", str(tmp_path / "run"), "--data", str(tmp_path), "--out", str(tmp_path / "e")])
    said = capsys.readouterr().err
    assert rc == 2 and "has no photochat.json" in said and str(tmp_path / "run" / "final") in said, said
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "photochat.json").write_text("{not json")
    rc = main(["evaluate", "--model", str(tmp_path / "broken"), "--data", str(tmp_path), "--out", str(tmp_path / "e")])
    said = capsys.readouterr().err
    assert rc == 2 and "photochat.json is broken" in said, said


def test_chat_with_a_wrong_model_folder_says_so_in_one_line(tmp_path):
    import argparse
    import io

    from photochat_lib.apps.chat import register
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["chat", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "photos")])
    stdout = io.StringIO()
    assert args.func(args, stdin=io.StringIO("hi\n"), stdout=stdout) == 2
    assert stdout.getvalue().strip() == f"error: {tmp_path / 'nowhere'}: no such model folder"
    (tmp_path / "empty").mkdir()
    args = parser.parse_args(["chat", "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "photos")])
    stdout = io.StringIO()
    assert args.func(args, stdin=io.StringIO("hi\n"), stdout=stdout) == 2
    assert stdout.getvalue().strip() == f"error: {tmp_path / 'empty'} is not a PhotoChatModel folder: it has no photochat.json"
