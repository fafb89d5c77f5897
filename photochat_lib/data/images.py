"""Image loading and the image transforms: the perceptron's input (BLIP-2's own image processor for a
real checkpoint, a hand-written one for the toy) and the diffusion target.

Every photo the project reads goes through :func:`load_image`, so training, evaluation, chat and the
up-front check (``data stats --check-images``, ``train``) agree on what a good image is: a file PIL can
fully decode, of at most ``MAX_DECODE_PIXELS``. Larger photos than ``LARGE_PIXELS`` are downscaled on
load (the models see 224² and 512² at most), not rejected.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from photochat_lib.data.schema import Photo

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # BLIP-2's ViT (EVA-CLIP) normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(img: Image.Image) -> Image.Image:
    """Return img as RGB; transparent pixels (RGBA, LA, P with transparency) become white; more than 8 bits per
    channel (16-bit TIFF or PNG, 32-bit float) are scaled down to 8, not clipped (PIL's convert clips, so a
    16-bit photo came out 99.6 % white)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":       # I;16, I;16B, I (16-bit PNG), F: one channel, wide
        import numpy as np
        a = np.asarray(img, dtype=np.float64)
        full = 1.0 if img.mode == "F" and a.size and a.max() <= 1.0 else 255.0 if img.mode == "F" else 65535.0
        gray = np.clip(np.round(a * (255.0 / full)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


MAX_DECODE_PIXELS = 16384 * 16384   # larger files are refused (a decompression bomb, not a photo)
LARGE_PIXELS = 2048 * 2048          # photos above this are downscaled on load, keeping the aspect ratio


class ImageError(ValueError):
    """A file that is not a usable photo (unreadable, truncated or too large); the message names it."""


def load_image(photo: Photo | str) -> Image.Image:
    """Return the RGB pixels of a photo's local file (or of a path), at most ``LARGE_PIXELS`` of them.

    Raises FileNotFoundError for a missing file and ImageError (one line naming the path) for a file
    PIL cannot decode or one above ``MAX_DECODE_PIXELS``.
    """
    path = photo.path if isinstance(photo, Photo) else photo
    if path is None:
        raise FileNotFoundError(f"photo has no local file (url {photo.url!r}); download it first")
    old_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None   # our own limit replaces PIL's bomb check
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            w, h = im.size                       # read from the header: nothing decoded yet
            if w * h > MAX_DECODE_PIXELS:
                raise ImageError(f"{path}: {w}x{h} pixels is over the {MAX_DECODE_PIXELS:,}-pixel limit")
            if w * h > LARGE_PIXELS:
                scale = (LARGE_PIXELS / (w * h)) ** 0.5
                im.draft("RGB", (int(w * scale), int(h * scale)))  # JPEG: decode at a reduced scale (cheap)
            im.load()
            rgb = to_rgb(im)
            rgb = rgb.copy() if rgb is im else rgb  # detached from the closed file
    except (FileNotFoundError, ImageError):
        raise
    except (OSError, ValueError, SyntaxError) as e:   # truncated, corrupt, not an image
        raise ImageError(f"{path}: cannot decode ({e})") from e
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if rgb.width * rgb.height > LARGE_PIXELS:    # downscale, keeping the aspect ratio
        scale = (LARGE_PIXELS / (rgb.width * rgb.height)) ** 0.5
        rgb = rgb.resize((max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale))), Image.BICUBIC)
    return rgb


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Return a size x size RGB image: shorter side resized to size (bicubic), then centre-cropped."""
    img = to_rgb(img)
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


@dataclass
class ImageTransform:
    """PIL image (any mode) -> normalised FloatTensor (3, size, size): the toy perceptron's input, and the diffusion
    target (mean = std = 0.5). Kept by hand: torchvision's v2 Resize + CenterCrop + ToDtype + Normalize, which
    diffusers' examples use, differs by float rounding (<= 4.8e-7, measured), enough to move the toy demo."""
    size: int = 224                                  # output side (BLIP-2: 224; toy: 32)
    mean: tuple[float, float, float] = CLIP_MEAN    # per-channel mean subtracted after scaling to [0, 1]
    std: tuple[float, float, float] = CLIP_STD      # per-channel std divided by

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Return the normalised tensor (3, size, size)."""
        x = torch.from_numpy(np.asarray(resize_center_crop(img, self.size), dtype=np.float32) / 255.0)
        x = x.permute(2, 0, 1)  # (3, H, W)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std


def image_transform(size: int = 224) -> ImageTransform:
    """Return the hand-written perceptron transform (resize, centre crop, CLIP normalisation).

    Kept for the toy perceptron, which was pretrained on it: toy photos are square, where BLIP-2's processor
    differs from it only by float rounding (2.4e-7, measured), yet that moved the end-to-end demo within seed
    noise and would stale the committed reports. A real BLIP-2 checkpoint uses `Blip2ImageTransform`.
    """
    return ImageTransform(size=size)


BLIP2_PREPROCESSOR = "blip2_preprocessor"   # photochat_lib/configs/: a copy of blip2-opt-2.7b-coco's preprocessor_config.json


def blip2_image_processor(size: int = 224):
    """Return BLIP-2's image processor as Salesforce/blip2-opt-2.7b-coco configures it (shipped copy of its
    preprocessor_config.json): for the real architectures built without a download (random weights)."""
    import json
    from importlib import resources

    from transformers import BlipImageProcessor
    config = json.loads((resources.files("photochat_lib") / "configs" / f"{BLIP2_PREPROCESSOR}.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_") and k not in ("image_processor_type",
                                                                                   "processor_class")}
    return BlipImageProcessor(**{**config, "size": {"height": size, "width": size}})


class Blip2ImageTransform:
    """PIL image (any mode) -> (3, S, S): exactly what BLIP-2's own image processor gives its ViT (resized
    straight to the square, no centre crop; transparency onto white; CLIP's mean and std)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.processor(images=img, return_tensors="pt")["pixel_values"][0]   # (3, S, S)


def sd_image_transform(size: int = 512) -> ImageTransform:
    """Return the diffusion target transform: pixels in [-1, 1], as Stable Diffusion's VAE expects."""
    return ImageTransform(size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
