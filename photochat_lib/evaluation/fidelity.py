"""Inception Score and FID through torch-fidelity, as in §3.1.3, for real photos and for the toy world.

One function, :func:`image_metrics`, calls ``torch_fidelity.calculate_metrics(isc=True, fid=True)`` on
two in-memory datasets (torch-fidelity's input contract: a ``Dataset`` whose items are uint8 tensors
(3, H, W); every image of a batch must have the same size, see :class:`UInt8Images`). The network that
turns images into features is chosen by ``extractor``:

* ``"inception-v3-compat"`` — torch-fidelity's InceptionV3 (the paper's setting: FID on the 2048-d
  pool features, IS on the 1008-way ``logits_unbiased``). We register it again as
  ``"inception-v3-compat-safe"``, which loads the weights with ``weights_only=True`` (torch-fidelity's
  own loader does not); ``weights_path`` is a local copy of
  ``weights-inception-2015-12-05-6726825d.pth``, else torch-fidelity downloads it once.
* ``"toy"`` — the toy-world classifier (:mod:`photochat_lib.toy.classifier`), registered as
  ``"toy-world"``: FID on its 128-d max-pooled features ``"toy-128"``, IS on ``"toy-logits-15"``, whose
  softmax is the normalised (colour, shape) presence distribution. Nothing is downloaded: the weights
  are the shipped ones, or ``weights_path`` (a folder with model.safetensors + config.json).

torch-fidelity's on-disk cache is switched off (in-memory datasets have no stable name) and its
DataLoader runs in the main process (``save_cpu_ram=True``).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from photochat_lib.toy.classifier import IMAGE_SIZE, load_toy_classifier

TOY_EXTRACTOR = "toy-world"                     # torch-fidelity name of the toy-world classifier
INCEPTION_EXTRACTOR = "inception-v3-compat-safe"  # InceptionV3 loaded with weights_only=True
TOY_FEATURES, TOY_LOGITS = "toy-128", "toy-logits-15"
EXTRACTORS = {"toy": TOY_EXTRACTOR, "inception-v3-compat": INCEPTION_EXTRACTOR}
DEFAULT_SIZE = {"toy": IMAGE_SIZE, "inception-v3-compat": 299}  # common size when input sizes differ


class ToyFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor backed by the toy-world classifier (uint8 (B,3,H,W) in)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.classifier = load_toy_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return TOY_FEATURES, TOY_LOGITS

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": TOY_LOGITS, "fid": TOY_FEATURES, "kid": TOY_FEATURES, "prc": TOY_FEATURES}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the requested features, in the order of features_list, of uint8 images x (B, 3, H, W)."""
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise ValueError(f"toy feature extractor expects uint8 (B, 3, H, W), got {getattr(x, 'shape', x)}")
        x = x.float() / 255  # (B, 3, H, W) in [0, 1]; the classifier resizes to 32x32
        c = self.classifier
        feats = c.features(x)  # (B, 128)
        out = {TOY_FEATURES: feats, TOY_LOGITS: F.logsigmoid(c.presence(feats))}  # (B, 15): softmax = p(y|x)
        return tuple(out[name].float() for name in self.features_list)


class SafeInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's InceptionV3 with its state dict loaded by torch.load(weights_only=True)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        path = feature_extractor_weights_path

        def load(url, progress=False, **_):
            if path is not None:
                if not Path(path).is_file():
                    raise FileNotFoundError(f"InceptionV3 weights file {path} not found")
                return torch.load(path, map_location="cpu", weights_only=True)
            return torch.hub.load_state_dict_from_url(url, progress=progress, map_location="cpu", weights_only=True)

        # the parent loads from a local path with weights_only=False: route every load through `load`
        with _patched(tf_inception, "load_state_dict_from_url", load):
            super().__init__(name, features_list, feature_extractor_weights_path=None, **kwargs)


@contextlib.contextmanager
def _patched(module, name: str, value):
    """Temporarily set module.name = value."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def register_extractors() -> None:
    """Register the toy-world and safe-Inception feature extractors with torch-fidelity (idempotent)."""
    for name, cls in ((TOY_EXTRACTOR, ToyFeatureExtractor), (INCEPTION_EXTRACTOR, SafeInceptionV3)):
        if FEATURE_EXTRACTORS_REGISTRY.get(name) is not cls:
            FEATURE_EXTRACTORS_REGISTRY.pop(name, None)  # a re-imported module brings new classes
            torch_fidelity.register_feature_extractor(name, cls)


register_extractors()


# ---------------------------------------------------------------------------------------------- inputs

def _to_uint8(image) -> torch.Tensor:
    """Return one image (PIL, path, or tensor (3,H,W) uint8 / float in [0,1]) as uint8 (3, H, W)."""
    if isinstance(image, (str, os.PathLike)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image file {image} not found")
        with Image.open(image) as im:
            image = im.convert("RGB")
    if isinstance(image, Image.Image):
        return pil_to_tensor(image.convert("RGB"))  # (3, H, W) uint8
    if torch.is_tensor(image):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W), got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.cpu()
        return (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    raise ValueError(f"unsupported image type {type(image).__name__}: use PIL, a path or a (3, H, W) tensor")


def _resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Return uint8 x (3, H, W) resized (shorter side = size) and centre-cropped to (3, size, size)."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    y = F.interpolate(x[None].float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return y[:, top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8)  # (3, size, size)


class UInt8Images(Dataset):
    """torch-fidelity input: items are uint8 (3, H, W), all one size (resized + centre-cropped if not)."""

    def __init__(self, images, size: int | None = None, default_size: int = 299):
        if torch.is_tensor(images):
            if images.dim() != 4:
                raise ValueError(f"images tensor must be (N, 3, H, W), got {tuple(images.shape)}")
            images = list(images)
        self.images = [_to_uint8(im) for im in images]
        if not self.images:
            raise ValueError("no images given")
        shapes = {tuple(im.shape[-2:]) for im in self.images}
        if size is None and len(shapes) > 1:
            size = default_size
        if size is not None:
            self.images = [_resize_center_crop(im, size) for im in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def default_isc_splits(n: int) -> int:
    """Return the IS split count: 10, or fewer so that every split holds at least 50 images."""
    return max(1, min(10, n // 50))


def image_metrics(generated, reference, extractor: str = "inception-v3-compat",
                  weights_path: str | Path | None = None, isc_splits: int | None = None,
                  device: str | torch.device = "cpu", image_size: int | None = None,
                  batch_size: int = 64) -> dict[str, float]:
    """Return {"IS_mean", "IS_std", "FID"}: IS of the generated images, FID between generated and reference."""
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown extractor {extractor!r}; choose one of {sorted(EXTRACTORS)}")
    default = DEFAULT_SIZE[extractor]
    gen = generated if isinstance(generated, Dataset) else UInt8Images(generated, image_size, default)
    ref = reference if isinstance(reference, Dataset) else UInt8Images(reference, image_size, default)
    if len(gen) < 2 or len(ref) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(gen)} generated and {len(ref)} reference")
    splits = isc_splits or default_isc_splits(len(gen))
    if splits > len(gen):
        raise ValueError(f"isc_splits={splits} is more than the {len(gen)} generated images")
    cuda = torch.device(device).type == "cuda"
    out = torch_fidelity.calculate_metrics(
        input1=gen, input2=ref, isc=True, fid=True, cuda=cuda, batch_size=batch_size,
        feature_extractor=EXTRACTORS[extractor],
        feature_extractor_weights_path=None if weights_path is None else str(weights_path),
        isc_splits=splits, cache=False, save_cpu_ram=True, verbose=False)
    return {"IS_mean": out["inception_score_mean"], "IS_std": out["inception_score_std"],
            "FID": out["frechet_inception_distance"]}


def toy_reference_images(n: int, seed: int = 0, stream: str = "reference") -> torch.Tensor:
    """Return n freshly drawn toy photos as float (n, 3, 32, 32) in [0, 1] (a reference set)."""
    from photochat_lib.toy.classifier import make_images
    return make_images(n, seed, stream)[0]
