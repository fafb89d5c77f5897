"""Toy pretraining: each stage learns, runs are deterministic, the folders load, the shipped weights work."""
from __future__ import annotations

import argparse
import json
import random
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from photochat_lib.data.collate import Collator
from photochat_lib.data.images import image_transform
from photochat_lib.data.toy_world import ToyObject, draw_photo
from photochat_lib.model.image_perceptron import build_image_perceptron
from photochat_lib.model.photochat_model import PhotoChatModel
from photochat_lib.toy.foundation import build_toy_components, load_shipped_llm
from photochat_lib.apps.pretrain import DEFAULT_OUT, pretrain_toy, register
from photochat_lib.toy.pretrain_llm import LLMPretrainConfig, chat_ids, dialogue_turns, heldout_lm_loss, pretrain_llm
from photochat_lib.toy.pretrain_perceptron import (PerceptronPretrainConfig, describe_photos, describe_scene,
                                               description_batch, description_scores, parse_description,
                                               pretrain_perceptron, random_scene, scene_batch)
from photochat_lib.model.text_generator import text_loss
from photochat_lib.data.tokens import SPECIAL_TOKENS

TINY_LLM = LLMPretrainConfig(steps=2, batch_size=2, warmup_steps=1, n_eval=0)
TINY_PERCEPTRON = PerceptronPretrainConfig(representation_steps=2, steps=2, batch_size=4, warmup_steps=1, n_eval=0)


@pytest.fixture(autouse=True)
def one_thread():
    """Pin torch to one thread (the shipped weights were made so) and restore it afterwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_pretraining_text_is_the_chat_layout_without_photo_tokens():
    _, tok, _, _ = build_toy_components(0)
    collator = Collator(tok, None, None, None, max_length=384)
    text = tok.decode(chat_ids(collator, dialogue_turns(random.Random(3))))
    assert text.startswith("<s> A: ") and text.endswith("</s>") and "\nB: " in text
    assert not any(t in text for t in SPECIAL_TOKENS) and "Objects in the photo" not in text


def test_description_round_trip_and_scores():
    scene = random_scene(random.Random(0))
    text = describe_scene(*scene)
    bg, objects = parse_description(text)
    assert bg == scene[1] and set(objects) == {o.position for o in scene[0]}
    assert description_scores([text], [scene])["exact_match"] == 1.0
    wrong = text.replace(scene[0][0].colour, "nocolour")
    assert description_scores([wrong], [scene])["colour_accuracy"] < 1.0


def test_llm_stage_lowers_the_loss():
    llm, tok, _, _ = build_toy_components(0)
    cfg = LLMPretrainConfig(steps=8, batch_size=8, warmup_steps=1, n_eval=8)
    before = heldout_lm_loss(llm, tok, cfg)
    metrics = pretrain_llm(llm, tok, cfg, progress=False)
    assert metrics["heldout_loss"] < before - 0.5


@pytest.mark.parametrize("llm_lr", [0.0, 1e-3])
def test_perceptron_stage_lowers_the_loss(llm_lr):
    llm, tok, perceptron, _ = build_toy_components(0)
    pixels, texts, _ = scene_batch(random.Random("held-out"), 8)
    llm_before = {k: v.clone() for k, v in llm.state_dict().items()}

    def loss() -> float:
        with torch.no_grad():
            embeds, mask, labels = description_batch(llm, tok, perceptron(pixels), texts)
            return text_loss(llm(inputs_embeds=embeds, attention_mask=mask).logits, labels).item()

    before = loss()
    cfg = PerceptronPretrainConfig(steps=6, batch_size=8, warmup_steps=1, n_eval=0, llm_lr=llm_lr)
    pretrain_perceptron(llm, tok, perceptron, cfg, progress=False)
    assert loss() < before - 0.2
    frozen = all(torch.equal(v, llm.state_dict()[k]) for k, v in llm_before.items())
    assert frozen == (llm_lr == 0.0)  # llm_lr = 0 is BLIP-2's stage 2: the LLM stays frozen


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """Return the state dict stored in folder's *.safetensors (shipped folders are float16, maybe sharded)."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    assert out and all(v.dtype == torch.float16 for v in out.values())
    return out


def test_same_seed_same_weights_and_the_folder_loads(tmp_path):
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        for stage in ("llm", "perceptron"):     # the perceptron stage feeds the LLM in out/llm, frozen
            pretrain_toy(out, seed=0, only=stage, llm_config=TINY_LLM, perceptron_config=TINY_PERCEPTRON,
                         threads=1, progress=False)
        outs.append(out)
    for part in ("llm", "perceptron"):
        a, b = _weights(outs[0] / part), _weights(outs[1] / part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((outs[0] / "photochat.json").read_text()) == {
        "mode": "end2end", "alpha": 1.0, "dvtm_impl": "batched", "sd_caption_source": "gold",
        "pipeline_context": "caption", "bridge": "sentence", "loss_reduction": "mean", "preset": "toy", "extra": {}}
    assert not [p.name for p in outs[0].iterdir() if p.name.startswith(".")]  # no temp folders left
    # the whole toy model loads through the hub loaders once an sd/ folder sits beside them
    _, _, _, generator = build_toy_components(0)
    generator.save_pretrained(outs[0] / "sd")
    model = PhotoChatModel.from_pretrained(outs[0])
    llm_weights = _weights(outs[0] / "llm")
    assert all(torch.equal(model.llm.state_dict()[k], v.float()) for k, v in llm_weights.items())
    perceptron_weights = _weights(outs[0] / "perceptron")
    assert all(torch.equal(model.perceptron.state_dict()[k], v.float()) for k, v in perceptron_weights.items())


def test_all_stages_run_in_order_and_replace_folders(tmp_path, monkeypatch):
    calls = []

    def fake_sd(out, seed=0, vae_steps=None, unet_steps=None):
        calls.append(("sd", seed))
        Path(out).mkdir()  # the real one writes out atomically itself
        Path(out, "marker").write_text("sd")
        return None, {"unet_last": 0.5}

    def fake_classifier(out_dir, seed=0, **kwargs):
        calls.append(("classifier", seed))
        Path(out_dir, "marker").write_text("classifier")
        return None, {"exact_set_accuracy": 1.0}

    monkeypatch.setitem(sys.modules, "photochat_lib.toy.pretrain_sd",
                        types.SimpleNamespace(pretrain_image_generator=fake_sd))
    import photochat_lib.toy.classifier as toy_classifier
    monkeypatch.setattr(toy_classifier, "train_toy_classifier", fake_classifier)
    import photochat_lib.apps.pretrain as P
    monkeypatch.setattr(P, "train_end2end", lambda final, foundation, seed=0, **kw: calls.append(
        ("end2end", Path(final).name, Path(foundation).name, seed)) or {"caption_exact": 100.0})
    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "stale").write_text("old")
    results = pretrain_toy(tmp_path, seed=3, llm_config=TINY_LLM, perceptron_config=TINY_PERCEPTRON,
                           threads=1, progress=False)
    assert list(results) == ["llm", "perceptron", "sd", "classifier", "end2end"]
    assert calls == [("sd", 3), ("classifier", 3), ("end2end", tmp_path.name + "-end2end", tmp_path.name, 3)]
    assert (tmp_path / "sd" / "marker").read_text() == "sd" and (tmp_path / "photochat.json").is_file()
    assert (tmp_path / "classifier" / "marker").is_file() and not (tmp_path / "classifier" / "stale").exists()


def test_cli_refuses_hub_presets(capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["pretrain", "--preset", "paper"])
    assert args.func(args) == 2 and "hub checkpoints" in capsys.readouterr().out
    for action in parser._subparsers._group_actions[0].choices["pretrain"]._actions:
        assert action.help, f"option {action.option_strings} has no help"


# ----- the shipped checkpoints are really trained -----
def test_shipped_llm_speaks_the_toy_world():
    llm, tok = load_shipped_llm(DEFAULT_OUT / "llm")
    assert heldout_lm_loss(llm, tok, LLMPretrainConfig(n_eval=16)) < 0.6


def test_shipped_llm_copies_what_is_named_and_knows_the_shapes():
    """A foundation's abilities (corpus.py), on prompts of a stream pretraining never drew: copy, shapes, knowledge,
    lookup, and shapes in wordings no pretraining text uses. The floors sit a few points under what the shipped LLM
    measures on this stream (85, 100, 100, 55, 92.5, 70 %; PRETRAIN.md quotes the 100-prompt seed-0 stream);
    lookup's chance is 33 %."""
    from photochat_lib.toy.corpus import probe_llm
    llm, tok = load_shipped_llm(DEFAULT_OUT / "llm")
    scores = probe_llm(llm, tok, n=40, seed=123)
    floors = {"copy": 0.8, "shapes": 0.9, "knowledge": 0.9, "lookup": 0.45,
              "shapes_new_wording": 0.9,            # issue 19's target: >= 90 %
              "shapes_unseen_wording": 0.6}         # wordings that never guided the corpus
    assert all(scores[k] >= f for k, f in floors.items()), scores


def test_shipped_perceptron_lets_the_llm_describe_fresh_photos():
    llm, tok = load_shipped_llm(DEFAULT_OUT / "llm")
    perceptron = build_image_perceptron(str(DEFAULT_OUT / "perceptron"), llm.config.hidden_size,
                                        dtype=torch.float32).eval()
    rng = random.Random("test-shipped-perceptron")  # neither the training nor the held-out stream
    scenes = [random_scene(rng) for _ in range(20)]
    pixels = perceptron.preprocess([draw_photo(objs, bg) for objs, bg in scenes])
    assert torch.equal(pixels, torch.stack([image_transform(32)(draw_photo(o, b)) for o, b in scenes]))
    scores = description_scores(describe_photos(llm, tok, perceptron, pixels), scenes)
    # measured on these 20 photos: background 100 %, colour 89 %, size 86 %, shape 65 % (chance 33, 20, 50, 33 %).
    # The previous perceptron, made for the previous LLM, read >= 99.5 % of each; PRETRAIN.md says why this one
    # does not, and these floors only keep it from getting worse.
    floors = {"background": 0.95, "colour": 0.8, "size": 0.75, "shape": 0.55}
    assert all(scores[f"{what}_accuracy"] >= f for what, f in floors.items()), scores


# ----- the LLM's corpus: language, world knowledge and copying, never the caption format -----
def test_corpus_holds_every_kind_and_never_the_photo_format():
    from photochat_lib.toy.pretrain_llm import lm_example
    from photochat_lib.toy.corpus import MIX
    _, tok, _, _ = build_toy_components(0)
    collator = Collator(tok, None, None, None, max_length=384)
    rng = random.Random(0)
    texts = [tok.decode(lm_example(rng, collator)) for _ in range(400)]
    assert not any(t in x for x in texts for t in SPECIAL_TOKENS)
    assert not any("Objects in the photo" in x for x in texts)
    assert sum(x.startswith("<s> A: ") for x in texts) / len(texts) == pytest.approx(MIX["dialogue"], abs=0.08)
    assert any("In shapes, that is" in x for x in texts) and any(" is a triangle." in x for x in texts)
    # a dialogue's photo is its description in words, so the remarks after it are about what it shows
    assert any("(photo: A " in x and " background with " in x for x in texts)


def test_knowledge_and_copying_texts_are_true_to_the_toy_world():
    """Every noun→shape fact is the toy world's (ball/coin/plate → circle, …); copies keep the named order."""
    from photochat_lib.data.toy_world import NOUNS
    from photochat_lib.toy.corpus import SHAPE_OF, copying_text, knowledge_text, probe_examples, shapes
    assert SHAPE_OF == {n: s for s, ns in NOUNS.items() for n in ns}
    rng = random.Random(1)
    for _ in range(200):
        for noun, shape in SHAPE_OF.items():
            text = knowledge_text(rng)
            for wrong in set(NOUNS) - {shape}:
                assert f"A {noun} is a {wrong}." not in text and f"a {noun} is a {wrong}" not in text.lower()
    text = copying_text(random.Random(4))
    assert text.count(".") >= 1 and "photo" not in text
    prompt, want = probe_examples("shapes_new_wording", random.Random(2))
    assert want.startswith("a ") and " ball" not in want and " coin" not in want
    prompt, want = probe_examples("lookup", random.Random(2))
    assert prompt.startswith("A ") and "background with" in prompt and want in (" on the left", " in the middle",
                                                                                 " on the right")
    objs = [ToyObject("red", "circle", "coin", "big", "left"), ToyObject("blue", "triangle", "tent", "small", "right")]
    assert shapes(objs) == "a red circle and a blue triangle"


def test_the_new_wording_probes_are_worded_as_no_pretraining_text_is():
    """The shapes_new_wording probe measures generalisation only if no pretraining text shares its wording: none of
    its prompts' fixed words (the template minus its slots) occurs in 2000 pretraining sequences or any template."""
    from photochat_lib.toy.corpus import COPY, NEW_WORDING_PROBES, PICK, UNSEEN_WORDING_PROBES
    from photochat_lib.toy.pretrain_llm import lm_example
    _, tok, _, _ = build_toy_components(0)
    collator = Collator(tok, None, None, None, max_length=384)
    rng = random.Random(5)
    corpus = " ".join(tok.decode(lm_example(rng, collator)) for _ in range(2000)) + " ".join(COPY + PICK)
    for template in NEW_WORDING_PROBES + UNSEEN_WORDING_PROBES:
        fixed = template.split("{items}.")[1].strip()         # e.g. "Their shapes, in the same order:"
        assert fixed not in corpus, fixed


def test_probe_scores_a_model_that_knows_the_answers():
    """probe_llm counts greedy continuations that start with the expected text (checked with a stub LLM)."""
    from photochat_lib.toy.corpus import probe_examples, probe_llm
    _, tok, _, _ = build_toy_components(0)

    class Oracle(torch.nn.Module):                  # answers every probe of its kind right, by lookup
        def __init__(self, kind, right):
            super().__init__()
            rng = random.Random(f"photochat-llm-probe:{kind}:0")
            self.answers = dict(probe_examples(kind, rng) for _ in range(10))
            self.right = right

        def eval(self):
            return self

        def generate(self, input_ids, **kw):
            prompt = tok.decode(input_ids[0, 1:].tolist())
            want = self.answers[prompt] if self.right else " the wrong answer"
            return torch.cat([input_ids, torch.tensor([tok(want, add_special_tokens=False).input_ids])], 1)

    assert probe_llm(Oracle("copy", True), tok, n=10, kinds=("copy",)) == {"copy": 1.0}
    assert probe_llm(Oracle("knowledge", False), tok, n=10, kinds=("knowledge",)) == {"knowledge": 0.0}


def test_attribute_head_targets_name_every_place():
    from photochat_lib.toy.pretrain_perceptron import AttributeHead, attribute_accuracy, attribute_loss, attribute_targets
    scene = ([ToyObject("red", "circle", "ball", "big", "right")], "gray")
    t = attribute_targets([scene])
    assert t["present"].tolist() == [[0, 0, 1]] and t["background"].tolist() == [1]
    assert t["colour"].tolist() == [[-100, -100, 0]] and t["size"].tolist() == [[-100, -100, 1]]
    head = AttributeHead(32, 64)
    logits = head(torch.randn(1, 32, 64))
    assert logits["colour"].shape == (1, 3, 5) and logits["background"].shape == (1, 3)
    assert attribute_loss(logits, t).item() > 0 and set(attribute_accuracy(logits, t)) == set(logits)
