"""Apply a `TrainingRecipe` to a PhotoChatModel: what trains, what is frozen, what gets LoRA.

The recipe names seven components (see `photochat_lib.recipe`); this module maps each name to the
modules it means, freezes or unfreezes them, injects peft LoRA adapters in place (the module keeps
its class, so `generate`, `save_pretrained` and our one-hot text encoder path work unchanged), casts
frozen weights to the mixed-precision dtype (trainable ones stay fp32, as in diffusers' training
scripts), and turns on gradient checkpointing. `merge_lora_` folds adapters back into plain Linear
layers so a trained model saves in the upstream layouts and loads with `PhotoChatModel.from_pretrained`.
"""
from __future__ import annotations

import torch
from torch import nn

from .recipe import COMPONENTS, TrainingRecipe


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
            if mode != "train" and weight_dtype != torch.float32:  # frozen: half-precision weights
                if isinstance(part, nn.Parameter):
                    part.data = part.data.to(weight_dtype)
                else:
                    part.to(weight_dtype)
            if mode == "lora":
                _inject_lora(part, recipe.lora_spec(name))      # adapters stay fp32 and trainable
    if recipe.llm != "train" and recipe.train_new_token_rows:
        _train_new_token_rows(model)
    if recipe.llm_gradient_checkpointing:
        model.llm.gradient_checkpointing_enable()
        model.llm.config.use_cache = False
    if recipe.unet_gradient_checkpointing:
        model.image_generator.unet.enable_gradient_checkpointing()
    if recipe.text_encoder_gradient_checkpointing:
        model.image_generator.text_encoder.gradient_checkpointing_enable()
    return {name: sum(x.numel() for part in parts[name] for x in _params(part) if x.requires_grad)
            for name in COMPONENTS}


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

    A gradient hook zeroes every other row; the caller puts these two matrices in a parameter
    group without weight decay, so AdamW leaves the zero-gradient rows exactly unchanged.
    """
    from .tokens import SPECIAL_TOKENS
    ids = torch.tensor(model.tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS))
    for weight in {model.llm.get_input_embeddings().weight, model.llm.get_output_embeddings().weight}:
        weight.data = weight.data.float()
        weight.requires_grad_(True)
        keep = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
        keep[ids.to(weight.device)] = 1
        weight.register_hook(lambda grad, keep=keep: grad * keep.to(grad.dtype))
        weight._photochat_rows_only = True                      # no weight decay: see `param_groups`


def param_groups(model, weight_decay: float) -> list[dict]:
    """Return AdamW groups: trainable weights with decay; biases, norms, row-masked tables without."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        rows_only = getattr(p, "_photochat_rows_only", False)
        (no_decay if rows_only or p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def merge_lora_(module: nn.Module) -> nn.Module:
    """Merge every LoRA adapter into its base Linear and put the plain Linear back (in place)."""
    from peft.tuners.lora import LoraLayer
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
    return module
