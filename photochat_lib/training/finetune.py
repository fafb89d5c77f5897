"""Apply a `TrainingRecipe` to a PhotoChatModel: what trains, what is frozen, what gets LoRA.

The recipe names seven components (see `photochat_lib.recipe`); this module maps each name to the
modules it means, freezes or unfreezes them, injects peft LoRA adapters in place (the module keeps
its class, so `generate`, `save_pretrained` and our one-hot text encoder path work unchanged), casts
frozen weights to the mixed-precision dtype (trainable ones stay fp32, as in diffusers' training
scripts), and turns on gradient checkpointing. `merge_lora_` folds adapters (LoRA, trainable token rows)
back into their plain layers so a trained model saves in the upstream layouts and loads with
`PhotoChatModel.from_pretrained`.
"""
from __future__ import annotations

import torch
from torch import nn

from photochat_lib.recipe import COMPONENTS, TrainingRecipe


def component_modules(model) -> dict[str, list[nn.Module | nn.Parameter]]:
    """Return {component name: the modules / parameters it covers}."""
    p, g = model.perceptron, model.image_generator
    return {
        "llm": [model.llm],
        "vision": [p.vision_model],
        "qformer": [p.qformer, p.query_tokens],
        "projection": [p.language_projection],
        "text_encoder": [g.text_encoder],
        "unet": [g.unet],
        "vae": [g.vae],
    }


def apply_recipe(model, recipe: TrainingRecipe, weight_dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Freeze / train / LoRA-adapt each component per the recipe; return {component: #trainable}."""
    parts = component_modules(model)
    for name in COMPONENTS:
        mode = getattr(recipe, name)
        for part in parts[name]:
            part.requires_grad_(mode == "train")
            # trained: fp32 master weights, whatever dtype they were loaded in (the presets load fp16;
            # GradScaler refuses fp16 gradients). Frozen / LoRA base: the mixed-precision dtype.
            dtype = torch.float32 if mode == "train" else weight_dtype
            for x in _params(part):              # tensor by tensor: diffusers' ModelMixin.to(dtype) warns about
                if x.dtype != dtype:             # "modules that should be kept in float32" even when there are none
                    x.data = x.data.to(dtype)
            if mode == "lora":
                _inject_lora(part, recipe.lora_spec(name))      # adapters stay fp32 and trainable
    if recipe.llm != "train" and recipe.train_new_token_rows:
        _train_new_token_rows(model)
    if recipe.llm_gradient_checkpointing:
        _checkpoint_activations(model.llm)
        model.llm.config.use_cache = False
    if recipe.unet_gradient_checkpointing:
        model.image_generator.unet.enable_gradient_checkpointing()
    if recipe.text_encoder_gradient_checkpointing:
        _checkpoint_activations(model.image_generator.text_encoder)
    return {name: sum(x.numel() for part in parts[name] for x in _params(part) if x.requires_grad)
            for name in COMPONENTS}


def _checkpoint_activations(model) -> None:
    """Turn on activation (gradient) checkpointing: newer transformers 5's name, else 5.6's (later ones warn on it)."""
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()


def _params(part):
    return [part] if isinstance(part, nn.Parameter) else list(part.parameters())


def _inject_lora(module: nn.Module, spec) -> None:
    from peft import LoraConfig, inject_adapter_in_model
    inject_adapter_in_model(LoraConfig(**spec.peft_kwargs()), module)
    for name, param in module.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)


def _train_new_token_rows(model) -> None:
    """Let only the [IMG], [/IMG], <image> rows of the (frozen) embedding and LM head learn.

    peft's trainable tokens: each of the two tables keeps its frozen (fp16) weight and gains a small
    fp32 (3, D) parameter holding just those rows, spliced in at forward time; gradients and AdamW
    states exist for 3·D numbers per table, not for the 32,003 × 4,096 tables (what the memory
    estimator counts). `merge_lora_` writes the rows back into the tables on save.
    """
    from peft import TrainableTokensConfig, inject_adapter_in_model

    from photochat_lib.data.tokens import SPECIAL_TOKENS
    llm = model.llm
    ids = model.tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    tables = {llm.get_input_embeddings(), llm.get_output_embeddings()}
    targets = [name for name, module in llm.named_modules() if module in tables]
    trainable = {name for name, p in llm.named_parameters() if p.requires_grad}   # e.g. LoRA: peft would freeze it
    inject_adapter_in_model(TrainableTokensConfig(target_modules=targets, token_indices=ids), llm)
    for name, param in llm.named_parameters():
        if "trainable_tokens_" in name:
            param.data = param.data.float()
        param.requires_grad_(name in trainable or "trainable_tokens_" in name)


def param_groups(model, weight_decay: float, lr: float, sd_lr: float | None = None) -> list[dict]:
    """Return AdamW groups: trainable weights with decay; biases, norms, trainable token rows without.

    Every group names its ``side``: "image" for the image generator's parameters (UNet, text encoder),
    "dialogue" for the rest (LLM, perceptron), so the pipeline can clip, schedule and stop each side on
    its own. With `sd_lr`, the image side learns at that lr.
    """
    groups: dict[tuple[str, bool], list] = {}
    sd = {id(p) for p in model.image_generator.parameters()}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        rows = "trainable_tokens_" in name                # whole embedding rows: no decay towards 0
        decays = not (rows or p.ndim < 2 or "norm" in name.lower())
        groups.setdefault(("image" if id(p) in sd else "dialogue", decays), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decays else 0.0, "side": side,
             "lr": sd_lr if side == "image" and sd_lr is not None else lr}
            for (side, decays), ps in sorted(groups.items())]


def merge_lora_(module: nn.Module) -> nn.Module:
    """Merge every peft adapter (LoRA, trainable token rows) into its base layer and put that back (in place)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
    return module
