"""A training run's ``checkpoint-N/`` as a model: rebuilt from the run's config.json as training built it,
given the checkpoint's weights, with LoRA merged (what `PhotoChatModel.from_pretrained` does with such a folder).
"""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

from photochat_lib.model.hub import CHECKPOINT_WEIGHTS, find_broken_file


def load_training_checkpoint(folder: str | os.PathLike, **overrides):
    """Return the PhotoChatModel of a training run's checkpoint-N/ folder (the weights `final/` would hold).

    The run's config.json (in the checkpoint's parent folder) says how training built the model: the same
    `train.build_training_model` and `finetune.apply_recipe` rebuild it (LoRA adapters included), the
    checkpoint's weights are loaded into it strictly, and the adapters are merged, as `Trainer` does when it
    writes final/. overrides: PhotoChatConfig fields, as for `PhotoChatModel.from_pretrained`.
    """
    import torch

    from photochat_lib.training.finetune import apply_recipe, merge_lora_
    from photochat_lib.training.train import build_training_model
    folder = Path(folder)
    cfg, recipe = run_settings(folder.parent, checkpoint=folder)
    # frozen parts in the dtype training kept them in (its mixed precision ran on CUDA only)
    precision = recipe.mixed_precision if torch.cuda.is_available() else "no"
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    model = build_training_model(cfg, recipe)
    apply_recipe(model, recipe, weight_dtype)
    _load_checkpoint_weights(model, folder)
    merge_lora_(model)                           # back to the plain architecture final/ holds
    _inference_ready(model)
    if overrides:
        from dataclasses import replace
        model.config = replace(model.config, **overrides)
    return model


def run_settings(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None):
    """Return (TrainConfig, TrainingRecipe) of a training run from its config.json.

    The recipe is the one the run recorded (what built the checkpoint's model, even if the preset's recipe
    in the code changed since, or a test swapped it); a config.json without one gets `train.resolve`'s.
    Settings this version no longer knows are ignored.
    """
    from photochat_lib.training.train import TrainConfig, resolve
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        what = f"{checkpoint} is a training checkpoint, but " if checkpoint else ""
        raise FileNotFoundError(f"{what}{path} is missing: the run's settings, needed to rebuild its model")
    try:
        saved = json.loads(path.read_text())
        cfg = TrainConfig(**_known_fields(TrainConfig, saved["train"]))
        return cfg, (_recipe_from_dict(saved["recipe"]) if saved.get("recipe") else resolve(cfg))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is broken: {type(e).__name__}: {e}") from None


def _known_fields(cls, values: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _recipe_from_dict(values: dict):
    """Return the TrainingRecipe of `TrainingRecipe.to_dict()` output (JSON lists back to tuples)."""
    from photochat_lib.recipe import LoraSpec, TrainingRecipe
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in _known_fields(TrainingRecipe, values).items()}
    for name, value in kw.items():
        if isinstance(value, dict):              # llm_lora, text_encoder_lora, unet_lora
            kw[name] = LoraSpec(**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in _known_fields(LoraSpec, value).items()})
    return TrainingRecipe(**kw)


def _load_checkpoint_weights(model, folder: Path) -> None:
    """Load the model weights accelerate's save_state wrote; every tensor of the rebuilt model must be there."""
    import torch
    safe = folder / CHECKPOINT_WEIGHTS[0]
    try:
        if safe.is_file():
            from safetensors import safe_open
            from safetensors.torch import load_model
            with safe_open(safe, "pt") as f:
                ddp = all(k.startswith("module.") for k in f.keys())   # saved from a DDP wrapper
            target = model
            if ddp:
                target = torch.nn.Module()
                target.module = model
            load_model(target, safe, strict=True)   # as accelerate loads it: tied tensors were saved once
        else:
            state = torch.load(folder / CHECKPOINT_WEIGHTS[1], map_location="cpu", weights_only=True)
            model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    except Exception as e:
        broken = find_broken_file(folder)        # a copy cut short: name the file
        if broken is not None:
            raise ValueError(f"{broken[0]}: {broken[1]}") from e
        import pickle
        if isinstance(e, (pickle.UnpicklingError, EOFError)):   # weights_only refused it: nothing of it ran
            raise ValueError(f"{folder / CHECKPOINT_WEIGHTS[1]}: not a weights file torch loads safely "
                             f"({' '.join(str(e).split())[:160]})") from None
        if not isinstance(e, RuntimeError):
            raise
        raise ValueError(f"{folder}: its weights do not fit the model its run's config.json builds "
                         f"({str(e).splitlines()[0]})") from e


def _inference_ready(model) -> None:
    """Undo what only training wants (activation checkpointing, no KV cache, frozen flags), so the model is
    as `from_pretrained` returns one."""
    for part in (model.llm, model.image_generator.text_encoder):   # newer transformers 5's names, else 5.6's
        on = getattr(part, "is_activation_checkpointing", None)
        if on if on is not None else getattr(part, "is_gradient_checkpointing", False):
            (getattr(part, "activation_checkpointing_disable", None) or part.gradient_checkpointing_disable)()
    if model.image_generator.unet.is_gradient_checkpointing:
        model.image_generator.unet.disable_gradient_checkpointing()
    model.llm.config.use_cache = True
    model.requires_grad_(True)
    model.image_generator.vae.requires_grad_(False)
