"""Presets: which LLM, which BLIP-2, which Stable Diffusion — and one loader for all of them.

* ``toy``   — tiny architectures built from the configs below with the package's own two toy
  tokenizers (a Llama-style and a CLIP-style BPE with genuinely different vocabularies); runs on
  any CPU in seconds, offline. If trained toy checkpoints are present they are loaded instead.
* ``colab`` — fits a 16 GB T4: TinyLlama-1.1B-Chat (a Llama, so the same code path), BLIP-2's ViT +
  Q-Former, Stable Diffusion 2.1 base, fp16.
* ``paper`` — the paper's recipe (§3.1.2): Llama-2-7b-chat-hf, the vision encoder and Q-Former of
  blip2-opt-2.7b-coco, stable-diffusion-2-1-base; a V100 (32 GB).

Every source may be a hub id or a local folder in the upstream layout. An HF token is read from
``HF_TOKEN`` (or ``HUGGING_FACE_HUB_TOKEN``) and passed to ``from_pretrained``; it is never printed
or saved. ``load_components`` is *the* loading path: tests exercise it offline by saving tiny models
in the same layouts to a temporary folder.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import torch
from transformers import LlamaConfig

from photochat_lib.data.collate import Collator
from photochat_lib.data.images import blip2_image_processor, sd_image_transform
from photochat_lib.data.tokens import NUM_VISUAL_TOKENS, SPECIAL_TOKENS
from photochat_lib.model.hub import HUB_MODELS
from photochat_lib.model.image_generator import ImageGenerator
from photochat_lib.model.image_perceptron import build_image_perceptron, init_from_scratch
from photochat_lib.model.photochat_model import PhotoChatConfig, PhotoChatModel, load_components
from photochat_lib.model.text_generator import load_llm
from photochat_lib.recipe import TrainingRecipe, get_recipe
from photochat_lib.toy.foundation import (IMAGE_SIZE, TOY_CHECKPOINT, TOY_END2END, build_toy_components,
                                          shipped_toy_checkpoint)
from photochat_lib.toy.tokenizers import build_llm_tokenizer, build_sd_tokenizer


@dataclass(frozen=True)
class Preset:
    name: str                       # "toy" | "colab" | "paper"
    llm: str | None                 # hub id / folder of a Llama-family chat LLM; None = toy config
    perceptron: str | None          # hub id / folder of a BLIP-2 checkpoint; None = toy config
    sd: str | None                  # hub id / folder of a Stable Diffusion repo; None = toy config
    dtype: str = "float32"          # weight dtype of frozen parts when loading ("float16" on GPUs)
    image_size: int = 224           # side of the photos the ViT sees
    sd_resolution: int = 512        # side of the photos SD draws and is trained on

    @property
    def max_length(self) -> int:
        """LLM tokens per training sample (context + response, visual tokens included): the recipe's
        ``max_text_length``, the one number the collator enforces and `estimate-memory` assumes."""
        return get_recipe(self.name).max_text_length


PRESETS = {
    "toy": Preset("toy", *HUB_MODELS["toy"], image_size=IMAGE_SIZE, sd_resolution=IMAGE_SIZE),
    "colab": Preset("colab", *HUB_MODELS["colab"], dtype="float16"),
    "paper": Preset("paper", *HUB_MODELS["paper"], dtype="float16"),
}


def get_preset(name: str, **overrides) -> Preset:
    """Return the named preset, with any of its fields (e.g. llm='/path/to/llama') overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


def collator_for(model, preset: str = "toy", recipe: TrainingRecipe | None = None) -> Collator:
    """Return the collate step for a PhotoChatModel: its perceptron's image transform, the preset's SD resolution and
    the training recipe's limits (default: the preset's recipe): ``max_text_length`` and ``max_context_images``."""
    p, r = get_preset(preset), recipe or get_recipe(preset)
    return Collator(model.tokenizer, model.image_generator.tokenizer, model.perceptron.transform,
                    sd_image_transform(p.sd_resolution), max_length=r.max_text_length,
                    context_photos=model.context_photos, max_context_images=r.max_context_images)


# ----- the real architectures from the shipped configs, with random weights (no download) -----
PRESET_CONFIGS = {  # component -> config file (without .json) in photochat_lib/configs/
    "paper": {"llm": "paper_llm", "vision": "blip2_vision", "qformer": "blip2_qformer",
              "text_encoder": "sd21base_text_encoder", "unet": "sd21base_unet", "vae": "sd21base_vae",
              "scheduler": "sd21base_scheduler"},
    "colab": {"llm": "colab_llm", "vision": "blip2_vision", "qformer": "blip2_qformer",
              "text_encoder": "sd21base_text_encoder", "unet": "sd21base_unet", "vae": "sd21base_vae",
              "scheduler": "sd21base_scheduler"},
}


def load_config(name: str) -> dict:
    """Return the shipped config `name` (e.g. "paper_llm") as a dict, "_source" included."""
    import json
    from importlib import resources
    path = resources.files("photochat_lib") / "configs" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no shipped config {name!r} (looked for {path})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from err


def model_kwargs(config: dict) -> dict:
    """Return the config without metadata keys (those starting with "_", e.g. "_source")."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


# `smoke=True`: every width and depth cut down, every code path of the real preset kept (LoRA targets,
# 224² ViT patches, 512² VAE, 77-token CLIP captions, the full vocabularies): a CPU trains it in seconds.
SMOKE_SIZES = {
    "paper_llm": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4),
    "colab_llm": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2),
    "blip2_vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
    "blip2_qformer": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          encoder_hidden_size=32),
    "sd21base_text_encoder": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, projection_dim=32),
    "sd21base_unet": dict(block_out_channels=[8, 16, 16, 16], attention_head_dim=[2, 2, 2, 2], norm_num_groups=8,
                          cross_attention_dim=32, layers_per_block=1),
    "sd21base_vae": dict(block_out_channels=[8, 8, 8, 8], norm_num_groups=4, layers_per_block=1),
}


class _default_dtype:
    """Context manager: build modules directly in `dtype` (a 7B model never exists in fp32)."""

    def __init__(self, dtype: torch.dtype | None):
        self.dtype, self.saved = dtype, None

    def __enter__(self):
        self.saved = torch.get_default_dtype()
        if self.dtype is not None:
            torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.saved)


def build_config_components(preset: str, seed: int = 0, device: str | torch.device = "cpu",
                            dtype: torch.dtype | None = None, smoke: bool = False):
    """Return (llm, tokenizer, perceptron, image_generator): a preset's REAL architectures, RANDOM weights.

    Nothing is downloaded: the architectures come from the configs shipped in photochat_lib/configs/
    (each names its hub "_source"), and the toy tokenizers stand in for Llama's and CLIP's (their ids
    fit the real vocabularies, which keep their full sizes: 32,000 + 3 LLM rows, 49,408 CLIP rows; SD
    captions are padded to the real 77 tokens). Every shape, FLOP and byte of a training step is the
    real recipe's; only the values of the weights are not. Used by `photochat estimate-memory`
    (device="meta"), `photochat train --random-init` and benchmarks/paper_step_gpu.py. Modules are
    created on `device` directly, in `dtype` (default fp32), so no fp32 copy of a 7B model is made.
    ``smoke=True`` applies `SMOKE_SIZES` (tiny widths, same code paths) for CPU checks.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import Blip2Config, CLIPTextConfig, CLIPTextModel

    if preset not in PRESET_CONFIGS:
        raise ValueError(f"no shipped configs for preset {preset!r}; expected one of {sorted(PRESET_CONFIGS)}")
    cfg = {k: {**load_config(v), **(SMOKE_SIZES.get(v, {}) if smoke else {})}
           for k, v in PRESET_CONFIGS[preset].items()}
    text_cfg = CLIPTextConfig.from_dict(model_kwargs(cfg["text_encoder"]))
    tokenizer = build_llm_tokenizer()
    sd_tokenizer = build_sd_tokenizer(model_max_length=text_cfg.max_position_embeddings)   # 77, as SD
    llm_cfg = LlamaConfig.from_dict(model_kwargs(cfg["llm"]))
    llm_cfg.vocab_size += len(SPECIAL_TOKENS)             # the rows add_special_tokens adds to a real Llama
    blip2_cfg = Blip2Config(vision_config=model_kwargs(cfg["vision"]), qformer_config=model_kwargs(cfg["qformer"]),
                            num_query_tokens=cfg["qformer"].get("_num_query_tokens", NUM_VISUAL_TOKENS))
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        llm, tokenizer = load_llm(llm_cfg, tokenizer)
        perceptron = build_image_perceptron(blip2_cfg, llm_cfg.hidden_size)
        init_from_scratch(perceptron)                 # not transformers' load-oriented init (zero queries)
        perceptron.image_processor = blip2_image_processor(blip2_cfg.vision_config.image_size)
        generator = ImageGenerator(CLIPTextModel(text_cfg), sd_tokenizer,
                                   UNet2DConditionModel.from_config(model_kwargs(cfg["unet"])),
                                   AutoencoderKL.from_config(model_kwargs(cfg["vae"])),
                                   DDPMScheduler.from_config(model_kwargs(cfg["scheduler"])))
    return llm, tokenizer, perceptron, generator


def load_toy_model(seed: int = 0, which: str = "foundation", **config):
    """Return a shipped toy model ("load if present": `which` as in `shipped_toy_checkpoint`), else the
    foundation, else a fresh random one."""
    path = shipped_toy_checkpoint(which) or shipped_toy_checkpoint("foundation")
    if path is not None:
        if which == "end2end" and path != TOY_END2END:
            warnings.warn(f"no end-to-end toy model in {TOY_END2END}; using the foundation, which never saw "
                          "[IMG] (run `photochat pretrain --preset toy --only end2end` to create it)")
        return with_captioner(PhotoChatModel.from_pretrained(path, **config))
    warnings.warn(f"no pretrained toy checkpoint in {TOY_CHECKPOINT}; using random weights "
                  "(run `photochat pretrain --preset toy` to create it)")
    return build_model("toy", seed=seed, model_config=PhotoChatConfig(**config) if config else None)


def build_model(preset: str | Preset = "toy", seed: int = 0, model_config=None, random_weights: bool = False,
                device: str | torch.device = "cpu", smoke: bool = False, **overrides):
    """Return a PhotoChatModel for a preset: toy from configs, colab/paper through `load_components`.

    ``random_weights=True`` builds colab/paper from the shipped configs instead (no download, random
    weights, created on `device`; ``smoke`` shrinks them; see `build_config_components`); the toy preset
    is always random here.
    """
    p = preset if isinstance(preset, Preset) else get_preset(preset, **overrides)
    config = model_config or PhotoChatConfig(preset=p.name)
    if p.llm is None and p.perceptron is None and p.sd is None:
        parts = build_toy_components(seed)
    elif random_weights:
        parts = build_config_components(p.name, seed, device=device, dtype=getattr(torch, p.dtype), smoke=smoke)
    elif None in (p.llm, p.perceptron, p.sd):
        raise ValueError(f"preset {p.name!r}: llm, perceptron and sd must all be given (or none, for toy)")
    else:
        parts = load_components(p.llm, p.perceptron, p.sd, dtype=getattr(torch, p.dtype))
    return with_captioner(PhotoChatModel(*parts, config=config))


def captioner_for(preset: str):
    """Return the preset's image caption model (image -> caption), or None: the toy classifier's for the toy
    preset; the real presets ship none (BLIP-2's OPT is not loaded)."""
    if preset != "toy":
        return None
    from photochat_lib.toy.classifier import caption_image
    return caption_image


def with_captioner(model: PhotoChatModel) -> PhotoChatModel:
    """Return `model` with its preset's caption model handed in (what a pipeline reads a sent photo through)."""
    model.captioner = captioner_for(model.config.preset)
    return model
