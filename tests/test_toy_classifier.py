"""The shipped toy-world classifier, the caption judge, and IS/FID through torch-fidelity."""
import json
import random
import socket

import pytest
import torch

from photochat_lib.evaluation import fidelity
from photochat_lib.data.toy_world import ToyObject, caption, draw_photo
from photochat_lib.toy.classifier import (CLASSES, ToyClassifier, attribute_accuracy, evaluate, judge,
                                          load_toy_classifier, make_images, parse_caption, random_scene,
                                          train_toy_classifier)


@pytest.fixture(scope="module")
def model():
    return load_toy_classifier()


def test_parse_caption_is_robust():
    assert parse_caption("Objects in the photo: red circle, blue square") == {("red", "circle"), ("blue", "square")}
    assert parse_caption("  objects IN the photo:Green  TRIANGLE ,purple square") == {
        ("green", "triangle"), ("purple", "square")}
    assert parse_caption("[IMG] a yellow ball and a shiny red kite[/IMG]") == {("yellow", "circle"), ("red", "triangle")}
    assert parse_caption("a circle, orange square, nothing") == set()


def test_shipped_weights_load_and_config_is_small(model):
    d = fidelity.load_toy_classifier.__globals__["DEFAULT_DIR"]
    assert (d / "model.safetensors").stat().st_size < 1_000_000
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["heldout"]["exact_set_accuracy"] >= 0.99
    assert isinstance(model, ToyClassifier) and not model.training
    x = torch.rand(2, 3, 32, 32)
    assert model.features(x).shape == (2, model.feature_dim) and model.class_logits(x).shape == (2, len(CLASSES))


def test_heldout_exact_set_accuracy(model):
    metrics = evaluate(model, n=400, seed=123)  # a seed the shipped weights never saw
    assert metrics["exact_set_accuracy"] >= 0.99 and metrics["background_accuracy"] >= 0.99


def test_judge_reads_pil_images_captions_and_labels(model):
    rng = random.Random(7)
    scenes = [random_scene(rng) for _ in range(40)]
    images = [draw_photo(objs, bg) for objs, bg in scenes]
    captions = [caption(objs) for objs, _ in scenes]
    assert attribute_accuracy(images, captions, model) >= 0.95
    out = judge(images, [objs for objs, _ in scenes], model)
    assert out["exact_match"] == attribute_accuracy(images, captions, model)
    assert out["backgrounds"] == [bg for _, bg in scenes]
    # a wrong caption is caught; colour right but shape wrong keeps colour accuracy
    img = draw_photo([ToyObject("red", "circle", "ball", "big", "left")], "white")
    wrong = judge([img], ["Objects in the photo: red square"], model)
    assert wrong["exact"] == [False] and wrong["colour_accuracy"] == 1.0 and wrong["shape_accuracy"] == 0.0
    # larger images are resized; tensors in [0, 1] work too
    big = draw_photo([ToyObject("blue", "triangle", "kite", "big", "middle")], "gray", size=96)
    assert judge([big], ["blue triangle"], model)["exact"] == [True]
    x, _, _ = make_images(4, seed=5, stream="t")
    assert judge(x, [[("red", "circle")]] * 4, model)["predicted"] == judge(list(map(_pil, x)), ["red circle"] * 4,
                                                                                 model)["predicted"]
    with pytest.raises(ValueError, match="2 images but 1"):
        judge(images[:2], captions[:1], model)


def _pil(t):
    from torchvision.transforms.functional import to_pil_image
    return to_pil_image(t)


def test_training_is_deterministic(tmp_path):
    a, _ = train_toy_classifier(tmp_path / "a", seed=3, n_images=64, steps=3, n_eval=0, log_every=0)
    b, _ = train_toy_classifier(None, seed=3, n_images=64, steps=3, n_eval=0, log_every=0)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    loaded = load_toy_classifier(tmp_path / "a")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in a.state_dict().items())


def test_missing_weights_say_how_to_regenerate(tmp_path):
    with pytest.raises(FileNotFoundError, match="photochat pretrain --preset toy --only classifier"):
        load_toy_classifier(tmp_path)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 3x faster than 2 threads on a shared 2-core machine
    yield
    torch.set_num_threads(before)


def test_toy_fid_and_is_sanity(one_thread):
    real_a = fidelity.toy_reference_images(200, seed=0, stream="a")
    real_b = fidelity.toy_reference_images(200, seed=1, stream="b")
    noise = torch.rand(200, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    same = fidelity.image_metrics(real_a, real_b, extractor="toy")
    far = fidelity.image_metrics(noise, real_b, extractor="toy")
    print(f"toy FID real/real {same['FID']:.1f}, noise/real {far['FID']:.1f}; IS real {same['IS_mean']:.2f}")
    assert same["FID"] * 5 < far["FID"]
    constant = real_a[:1].repeat(200, 1, 1, 1)
    const = fidelity.image_metrics(constant, real_b, extractor="toy")
    assert const["IS_mean"] == pytest.approx(1.0, abs=1e-6)
    assert same["IS_mean"] > 3 * const["IS_mean"]
    assert set(same) == {"IS_mean", "IS_std", "FID"}


def test_image_metrics_accepts_mixed_sizes_and_pil(monkeypatch):
    def offline(*a, **k):
        raise AssertionError("toy metrics must not touch the network")
    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    imgs = [draw_photo(*random_scene(random.Random(i)), size=32 if i % 2 else 64) for i in range(60)]
    out = fidelity.image_metrics(imgs, imgs, extractor="toy", isc_splits=2)
    assert out["FID"] == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="unknown extractor"):
        fidelity.image_metrics(imgs, imgs, extractor="inception")


def test_inception_path_loads_local_weights_safely(tmp_path, monkeypatch):
    # random InceptionV3 weights saved locally: checks the wiring (weights_only load, no download), not the values
    def no_download(*a, **k):
        raise AssertionError("tried to download")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with fidelity._patched(fidelity.tf_inception, "load_state_dict_from_url", lambda *a, **k: None), \
            fidelity._patched(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        state = fidelity.FeatureExtractorInceptionV3("x", ["2048"]).state_dict()
    torch.save(state, tmp_path / "inception.pth")
    ext = fidelity.SafeInceptionV3(fidelity.INCEPTION_EXTRACTOR, ["2048", "logits_unbiased"],
                                   feature_extractor_weights_path=str(tmp_path / "inception.pth"))
    assert all(torch.equal(v, ext.state_dict()[k]) for k, v in state.items())
    feats = ext.convert_features_tuple_to_dict(ext(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)))
    assert feats["2048"].shape == (2, 2048) and feats["logits_unbiased"].shape == (2, 1008)
    assert torch_fidelity_registry()[fidelity.INCEPTION_EXTRACTOR] is fidelity.SafeInceptionV3
    with pytest.raises(FileNotFoundError, match="not found"):
        fidelity.SafeInceptionV3("x", ["2048"], feature_extractor_weights_path=str(tmp_path / "missing.pth"))


def torch_fidelity_registry():
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    return FEATURE_EXTRACTORS_REGISTRY
