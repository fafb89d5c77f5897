"""photochat_lib: end-to-end photo-sharing dialogue — an LLM that sees photos through a BLIP-2 Q-Former and
draws them through Stable Diffusion, trained jointly (L = Lt + α·Lv).

    from photochat_lib import PhotoChatModel, generate, load_toy_model
    model = load_toy_model(which="end2end")      # or PhotoChatModel.from_pretrained(a folder or a Hub id)
    reply = generate(model, [("A", "Can you show me a photo?")], speaker="B")   # reply.text, reply.images

The public names below are imported on first use (PEP 562 ``__getattr__``), so ``import photochat_lib.data``
or a CLI's ``--help`` does not pay for torch, transformers and diffusers.
"""
from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version as _version
from typing import TYPE_CHECKING

from photochat_lib.utils import handed_down as _handed_down

try:
    __version__ = _version("photochat_lib")   # pyproject.toml's [project] version, the one place it is kept
except PackageNotFoundError:                  # imported from a source tree that was never installed
    __version__ = "0+unknown"

# public name -> the submodule that defines it
_EXPORTS = {
    "PhotoChatModel": "model.photochat_model",
    "PhotoChatConfig": "model.photochat_model",
    "generate": "model.generation",
    "generate_batch": "model.generation",
    "Reply": "model.generation",
    "load_toy_model": "presets",
    "build_model": "presets",
    "TrainConfig": "training.train",
    "Trainer": "training.train",
    "evaluate_model": "evaluation.evaluate",
    "model_card": "model.hub",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import a public name's submodule when the name is first used, and keep the name here."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value                  # later lookups skip __getattr__
    return value


def _load_training_checkpoint(folder, **overrides):
    """A training run's checkpoint-N/ as a model: training's loader, imported when a checkpoint is loaded."""
    from photochat_lib.training.checkpoints import load_training_checkpoint
    return load_training_checkpoint(folder, **overrides)


# PhotoChatModel.from_pretrained (model layer) loads checkpoint-N/ through this, handed down, not imported upward
_handed_down.set_checkpoint_loader(_load_training_checkpoint)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:                            # what static tools and IDEs see
    from photochat_lib.evaluation.evaluate import evaluate_model
    from photochat_lib.model.generation import Reply, generate, generate_batch
    from photochat_lib.model.hub import model_card
    from photochat_lib.model.photochat_model import PhotoChatConfig, PhotoChatModel
    from photochat_lib.presets import build_model, load_toy_model
    from photochat_lib.training.train import TrainConfig, Trainer
