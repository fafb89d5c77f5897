"""A small CNN that reads toy-world photos: which (colour, shape) objects are present, and the background.

It is the toy preset's stand-in for two things the paper relies on and a CPU cannot have offline:

* the **judge** of generated photos: does the photo show exactly the objects its caption names?
  (:func:`judge`, :func:`attribute_accuracy`);
* the **Inception network** of IS and FID (§3.1.3): ``photochat_lib.evaluation.fidelity`` registers it as a
  torch-fidelity feature extractor, using :meth:`ToyClassifier.features` (128-d) for FID and
  :meth:`ToyClassifier.class_logits` for IS.

**Class distribution for IS.** IS needs p(y|x) over classes. A toy photo holds 1-3 objects, so there is
no single label; we use the *normalised presence* distribution over the 15 (colour, shape) classes,
``p(k|x) = sigmoid(z_k) / sum_j sigmoid(z_j)``. :meth:`ToyClassifier.class_logits` returns
``logsigmoid(z)``, whose softmax is exactly that distribution (torch-fidelity applies the softmax).
A photo of one object gives a peaked p(y|x); IS is at most 15 (every photo one object, all 15 equally
often) and 1 for a set of identical photos. The background is left out of IS (FID sees it).

Trained on photos drawn with :func:`~photochat_lib.data.toy_world.draw_photo` from random object sets
(same distribution as the toy dialogues); no augmentation (1-pixel shifts and pixel noise slowed
learning of the small circle/square difference, 4 corner pixels, several-fold). Weights ship in
``photochat_lib/toy/checkpoints/toy/classifier``; regenerate with ``photochat pretrain --preset toy --only classifier``.
"""
from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision.transforms.functional import pil_to_tensor

from photochat_lib.utils.atomic import write_file, write_json
from photochat_lib.data.toy_world import (BACKGROUNDS, COLOURS, NOUNS, POSITIONS, SHAPES, SIZES, ToyObject,
                                          draw_photo)

CLASSES = [(c, s) for c in COLOURS for s in SHAPES]  # the 15 (colour, shape) presence classes
BACKGROUND_NAMES = list(BACKGROUNDS)                  # the 3 background classes
IMAGE_SIZE = 32                                       # the classifier's input side, pixels
DEFAULT_DIR = Path(__file__).parent / "checkpoints" / "toy" / "classifier"
REGENERATE = "photochat pretrain --preset toy --only classifier"


@dataclass
class ToyClassifierConfig:
    """Shape of the classifier (stored as config.json next to the weights)."""
    width: int = 32          # channels after the first stride (w/2 before; then 2w, 2w, 4w = 128-d features)
    num_classes: int = 15    # (colour, shape) presence classes, see CLASSES
    num_backgrounds: int = 3  # background classes, see BACKGROUND_NAMES
    image_size: int = IMAGE_SIZE  # input side; other sizes are resized to it


class ToyClassifier(nn.Module):
    """Conv net: 32x32 RGB in [0,1] -> 15 presence logits (multi-label) + 3 background logits."""

    def __init__(self, config: ToyClassifierConfig | None = None):
        super().__init__()
        self.config = c = config or ToyClassifierConfig()
        w = c.width

        def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, k, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(  # two full-resolution convs (small circle vs square: 4 corner pixels)
            *conv(3, w // 2),             # (B, w/2, 32, 32)
            *conv(w // 2, w // 2),        # (B, w/2, 32, 32)
            *conv(w // 2, w, 3, 2),       # (B, w, 16, 16)
            *conv(w, 2 * w, 3, 2),        # (B, 2w, 8, 8)
            *conv(2 * w, 2 * w),          # (B, 2w, 8, 8)
            *conv(2 * w, 4 * w, 3, 2))    # (B, 4w, 4, 4)
        self.feature_dim = 4 * w
        self.presence = nn.Linear(self.feature_dim, c.num_classes)
        self.background = nn.Linear(self.feature_dim, c.num_backgrounds)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the penultimate feature vectors (B, feature_dim) of images x (B, 3, H, W) in [0, 1]."""
        x = resize(x, self.config.image_size)
        h = self.body(x * 2 - 1)  # (B, 4w, 4, 4)
        return h.amax(dim=(2, 3))  # (B, 4w): global max pool = "is this pattern anywhere?"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (presence logits (B, 15), background logits (B, 3))."""
        f = self.features(x)
        return self.presence(f), self.background(f)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Return logsigmoid(presence logits) (B, 15): their softmax is the normalised presence p(y|x) of IS."""
        return F.logsigmoid(self.forward(x)[0])  # (B, 15)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[list[set[tuple[str, str]]], list[str]]:
        """Return the predicted (colour, shape) set and background of each image."""
        presence, bg = self.forward(x)
        sets = [{CLASSES[k] for k in row.nonzero().flatten().tolist()} for row in presence > 0]
        return sets, [BACKGROUND_NAMES[i] for i in bg.argmax(-1).tolist()]


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Return x (B, 3, H, W) resized to (B, 3, size, size) (unchanged when already that size)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def to_tensor(images) -> torch.Tensor:
    """Return images (PIL list, uint8 or float tensor (N,3,H,W)/(3,H,W)) as float (N, 3, 32, 32) in [0, 1]."""
    if isinstance(images, torch.Tensor):
        x = images.unsqueeze(0) if images.dim() == 3 else images
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images tensor must be (N, 3, H, W), got {tuple(images.shape)}")
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    else:
        images = list(images)
        if not all(isinstance(im, Image.Image) for im in images):
            raise ValueError("images must be a tensor (N, 3, H, W) or a list of PIL images")
        if not images:
            return torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE)
        x = torch.stack([resize(_pil_to_tensor(im).unsqueeze(0), IMAGE_SIZE)[0] for im in images])
    return resize(x, IMAGE_SIZE).clamp(0, 1)  # (N, 3, 32, 32)


def _pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """Return a PIL image as float (3, H, W) in [0, 1]."""
    return pil_to_tensor(im.convert("RGB")).float() / 255  # (3, H, W)


# ---------------------------------------------------------------------------------------------- data

def random_scene(rng: random.Random) -> tuple[list[ToyObject], str]:
    """Return (objects, background) drawn like a toy dialogue's photo (1-3 distinct objects)."""
    n = rng.randint(1, 3)
    positions = rng.sample(POSITIONS, n)
    kinds = rng.sample(CLASSES, n)
    objects = [ToyObject(c, s, NOUNS[s][0], rng.choice(SIZES), p) for (c, s), p in zip(kinds, positions)]
    return objects, rng.choice(BACKGROUND_NAMES)


def make_images(n: int, seed: int, stream: str = "train") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (images (n,3,32,32) in [0,1], presence targets (n,15), background ids (n,)) for random scenes."""
    rng = random.Random(f"photochat-toy-classifier:{seed}:{stream}")
    xs, ys, bgs = [], torch.zeros(n, len(CLASSES)), torch.zeros(n, dtype=torch.long)
    for i in range(n):
        objects, bg = random_scene(rng)
        xs.append(_pil_to_tensor(draw_photo(objects, bg, IMAGE_SIZE)))
        for o in objects:
            ys[i, CLASSES.index((o.colour, o.shape))] = 1
        bgs[i] = BACKGROUND_NAMES.index(bg)
    return torch.stack(xs), ys, bgs


# ---------------------------------------------------------------------------------------------- train

@dataclass
class TrainConfig:
    """How :func:`train_toy_classifier` trains."""
    n_images: int = 12000   # distinct training photos drawn once
    steps: int = 600        # optimiser steps
    batch_size: int = 128   # photos per step
    lr: float = 2e-3        # AdamW peak learning rate (cosine decay, 50 warm-up steps)
    weight_decay: float = 0.0   # AdamW weight decay
    n_eval: int = 500       # freshly drawn held-out photos for the final accuracy check


def train_toy_classifier(out_dir: str | Path | None = None, seed: int = 0, n_images: int = 12000,
                         steps: int = 600, n_eval: int = 500, min_accuracy: float | None = None,
                         threads: int = 1, log_every: int = 250) -> tuple[ToyClassifier, dict]:
    """Train the classifier (deterministic given seed), save it to out_dir if given; returns (model, metrics)."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)  # a fixed thread count also fixes the float summation order
    try:
        return _train(out_dir, seed, TrainConfig(n_images=n_images, steps=steps, n_eval=n_eval),
                      min_accuracy, log_every)
    finally:
        torch.set_num_threads(threads_before)


def _train(out_dir, seed: int, tc: TrainConfig, min_accuracy: float | None,
           log_every: int) -> tuple[ToyClassifier, dict]:
    """Run the training loop of :func:`train_toy_classifier`."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    x, y, bg = make_images(tc.n_images, seed, "train")
    model = ToyClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, tc.steps) / tc.steps)))
    model.train()
    for step in range(tc.steps):
        idx = torch.randint(0, tc.n_images, (tc.batch_size,), generator=g)
        presence, bg_logits = model(x[idx])  # (B, 15), (B, 3)
        loss = F.binary_cross_entropy_with_logits(presence, y[idx]) + F.cross_entropy(bg_logits, bg[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{tc.steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    metrics = evaluate(model, tc.n_eval, seed) if tc.n_eval else {}
    metrics["train_seconds"] = round(time.time() - t0, 1)
    if min_accuracy is not None:
        assert metrics["exact_set_accuracy"] >= min_accuracy, f"classifier too weak: {metrics}"
    if out_dir is not None:
        save_toy_classifier(model, out_dir, extra={"seed": seed, "train": asdict(tc), "heldout": metrics})
    return model, metrics


@torch.no_grad()
def evaluate(model: ToyClassifier, n: int = 500, seed: int = 0) -> dict:
    """Return exact-set and background accuracy on n freshly drawn photos (a stream training never sees)."""
    x, y, bg = make_images(n, seed, "heldout")
    presence, bg_logits = model(x)
    exact = ((presence > 0).float() == y).all(dim=1).float().mean().item()
    return {"exact_set_accuracy": exact, "background_accuracy": (bg_logits.argmax(-1) == bg).float().mean().item(),
            "n_eval": n}


def save_toy_classifier(model: ToyClassifier, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write model.safetensors + config.json into out_dir, each atomically; returns out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_file(out / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    config = {**asdict(model.config), "classes": [f"{c} {s}" for c, s in CLASSES],
              "backgrounds": BACKGROUND_NAMES, **(extra or {})}
    write_json(out / "config.json", config)
    return out


def load_toy_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> ToyClassifier:
    """Return the classifier saved in path (default: the shipped weights), in eval mode."""
    d = Path(path) if path is not None else DEFAULT_DIR
    weights, cfg_file = d / "model.safetensors", d / "config.json"
    for f in (weights, cfg_file):
        if not f.is_file():
            raise FileNotFoundError(f"toy classifier: {f} not found; regenerate it with: {REGENERATE}")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"toy classifier: {cfg_file} is not valid JSON ({e})") from e
    fields = ToyClassifierConfig.__dataclass_fields__
    model = ToyClassifier(ToyClassifierConfig(**{k: v for k, v in raw.items() if k in fields}))
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as e:
        raise ValueError(f"toy classifier: {weights} does not match {cfg_file}: {e}") from e
    return model.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------- judge

_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{n: s for s, ns in NOUNS.items() for n in ns},
                **{n + "s": s for s, ns in NOUNS.items() for n in ns}, **{s + "s": s for s in SHAPES}}


def parse_caption(caption: str) -> set[tuple[str, str]]:
    """Return the (colour, shape) pairs a caption names: a colour word then a shape word (or noun)."""
    caption = re.sub(r"\[/?img\]", " ", caption.lower())
    caption = caption.split(":", 1)[1] if caption.strip().startswith("objects in the photo") else caption
    out, colour = set(), None
    for word in re.findall(r"[a-z]+", caption):
        if word in COLOURS:
            colour = word
        elif word in _SHAPE_WORDS and colour is not None:
            out.add((colour, _SHAPE_WORDS[word]))
            colour = None
    return out


def _expected(item) -> set[tuple[str, str]]:
    """Return the (colour, shape) set of a caption, ToyObject list, labels.json dict/list, or pair set."""
    if isinstance(item, str):
        return parse_caption(item)
    if isinstance(item, dict):  # a labels.json entry
        item = item.get("objects", [])
    out = set()
    for o in item:
        if isinstance(o, ToyObject):
            out.add((o.colour, o.shape))
        elif isinstance(o, dict) and "colour" in o and "shape" in o:
            out.add((o["colour"], o["shape"]))
        elif isinstance(o, (tuple, list)) and len(o) == 2:
            out.add((o[0], o[1]))
        else:
            raise ValueError(f"cannot read an object from {o!r}: expected ToyObject, "
                             "{'colour','shape'} dict or (colour, shape) pair")
    return out


@torch.no_grad()
def judge(images, captions_or_objects: Sequence, model: ToyClassifier | None = None,
          batch_size: int = 256) -> dict:
    """Return per-image exact matches and predictions, plus exact/colour/shape accuracy and object F1."""
    expected = [_expected(c) for c in captions_or_objects]
    x = to_tensor(images)
    if x.shape[0] != len(expected):
        raise ValueError(f"judge: {x.shape[0]} images but {len(expected)} captions/object lists")
    model = model or load_toy_classifier()
    predicted, backgrounds = [], []
    for i in range(0, x.shape[0], batch_size):
        sets, bgs = model.predict(x[i:i + batch_size].to(next(model.parameters()).device))
        predicted += sets
        backgrounds += bgs
    n = max(1, len(expected))
    exact = [p == e for p, e in zip(predicted, expected)]
    colour = [{c for c, _ in p} == {c for c, _ in e} for p, e in zip(predicted, expected)]
    shape = [{s for _, s in p} == {s for _, s in e} for p, e in zip(predicted, expected)]
    tp = sum(len(p & e) for p, e in zip(predicted, expected))
    n_pred, n_ref = sum(map(len, predicted)), sum(map(len, expected))
    return {"exact": exact, "predicted": predicted, "expected": expected, "backgrounds": backgrounds,
            "exact_match": sum(exact) / n,        # share of images whose object set equals the caption's
            "colour_accuracy": sum(colour) / n,   # share whose set of colours equals the caption's
            "shape_accuracy": sum(shape) / n,     # share whose set of shapes equals the caption's
            "object_f1": 2 * tp / (n_pred + n_ref) if n_pred + n_ref else 1.0}  # micro F1 over objects


def caption_image(image: Image.Image) -> str:
    """Return the toy world's caption of a photo: the (colour, shape) objects the shipped classifier sees, in the
    dataset's caption style (the toy pipeline's caption model, `presets.captioner_for("toy")`)."""
    from photochat_lib.data.toy_world import CAPTION_PREFIX, COLOURS, SHAPES
    objects, _ = load_toy_classifier().predict(to_tensor([image]))
    order = sorted(objects[0], key=lambda cs: (list(COLOURS).index(cs[0]), SHAPES.index(cs[1])))
    return CAPTION_PREFIX + ", ".join(f"{c} {s}" for c, s in order)


def attribute_accuracy(images, captions: Sequence, model: ToyClassifier | None = None) -> float:
    """Return the share of images whose predicted (colour, shape) set equals their caption's."""
    return judge(images, captions, model)["exact_match"]
