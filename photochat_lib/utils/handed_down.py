"""What an upper layer hands down to a lower one, so the lower one never imports upward.

`PhotoChatModel.from_pretrained` (model layer) also loads a training run's ``checkpoint-N/``; rebuilding that
model is training's job (`training.checkpoints.load_training_checkpoint`: the run's config.json, its recipe, LoRA
merged). The package root registers that loader here when ``photochat_lib`` is first imported — which any import
of a submodule does first — so the model layer calls it without knowing where it lives.
"""
from __future__ import annotations

from typing import Callable

_checkpoint_loader: Callable | None = None


def set_checkpoint_loader(fn: Callable) -> None:
    """Register fn(folder, **overrides) -> PhotoChatModel, the loader of a training run's checkpoint folder."""
    global _checkpoint_loader
    _checkpoint_loader = fn


def checkpoint_loader() -> Callable:
    """Return the registered checkpoint loader; an error names what to import when none is."""
    if _checkpoint_loader is None:
        raise RuntimeError("no loader for training checkpoints is registered: import photochat_lib (its root "
                           "registers training.checkpoints.load_training_checkpoint)")
    return _checkpoint_loader
