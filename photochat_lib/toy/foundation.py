"""The toy foundation models: tiny stand-ins for Llama-2-chat, BLIP-2 and Stable Diffusion 2.1.

Their architectures are built here from configs in code (the toy preset, `presets.py`, loads them); the
shipped checkpoints they were pretrained into (`photochat pretrain`, PRETRAIN.md) live in ``checkpoints/``
next to this module: ``toy/`` the foundation, ``toy-end2end/`` that foundation trained end to end.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, CLIPTextConfig, CLIPTextModel, LlamaConfig

from photochat_lib.data.tokens import NUM_VISUAL_TOKENS
from photochat_lib.model.image_generator import ImageGenerator
from photochat_lib.model.image_perceptron import build_image_perceptron
from photochat_lib.model.text_generator import load_llm
from photochat_lib.toy.tokenizers import build_llm_tokenizer, build_sd_tokenizer

IMAGE_SIZE = 32     # side of a toy-world photo: what the toy ViT sees and the toy SD draws


# ----- the toy architectures (nanoGPT-small: seconds per step on a laptop CPU) -----
def toy_llm_config(vocab_size: int, pad_token_id: int, bos_token_id: int, eos_token_id: int) -> LlamaConfig:
    """Return a 4-layer, 256-wide Llama config (3 M parameters): deep enough to copy what a dialogue names
    (copying a list needs heads that compose across layers; the 2-layer, 128-wide one never learned it)."""
    return LlamaConfig(vocab_size=vocab_size, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                       tie_word_embeddings=False)


def toy_blip2_config(image_size: int = IMAGE_SIZE) -> Blip2Config:
    """Return a BLIP-2 config: 2-layer ViT on 4×4 patches, 2-layer Q-Former with 32 queries.

    4×4 patches (64 per photo): with 8×8 ones a 5-pixel circle and square fall into the same patch features
    and the perceptron read shapes at chance (see checkpoints/toy/PRETRAIN.md)."""
    vision = Blip2VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, image_size=image_size, patch_size=4)
    qformer = Blip2QFormerConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, encoder_hidden_size=64, cross_attention_frequency=1,
                                 vocab_size=64, max_position_embeddings=64)
    return Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                       num_query_tokens=NUM_VISUAL_TOKENS)


def toy_image_generator(sd_tokenizer, resolution: int = IMAGE_SIZE) -> ImageGenerator:
    """Return a tiny SD: 2-layer CLIP text encoder, 3-level UNet on 16×16 latents, 2-level VAE (÷2)."""
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(sd_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=sd_tokenizer.model_max_length,
        bos_token_id=sd_tokenizer.bos_token_id, eos_token_id=sd_tokenizer.eos_token_id,
        pad_token_id=sd_tokenizer.pad_token_id))
    # ÷2, not SD's ÷8: a 5-pixel shape must survive the latent (see pretrain_sd.py for the measurements)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=resolution,
                        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        mid_block_add_attention=False)
    unet = UNet2DConditionModel(sample_size=resolution // 2, in_channels=4, out_channels=4,
                                block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=64, attention_head_dim=16)
    # The same noise schedule as stable-diffusion-2-1-base (scaled-linear betas, ε-prediction).
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, prediction_type="epsilon", clip_sample=False)
    return ImageGenerator(text_encoder, sd_tokenizer, unet, vae, scheduler)


def build_toy_components(seed: int = 0):
    """Return (llm, llm_tokenizer, perceptron, image_generator) of the toy preset, randomly initialised."""
    tokenizer, sd_tokenizer = build_llm_tokenizer(), build_sd_tokenizer()
    torch.manual_seed(seed)
    llm, tokenizer = load_llm(toy_llm_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id,
                                             tokenizer.eos_token_id), tokenizer)
    perceptron = build_image_perceptron(toy_blip2_config(IMAGE_SIZE), llm.config.hidden_size)
    generator = toy_image_generator(sd_tokenizer, IMAGE_SIZE)
    return llm, tokenizer, perceptron, generator


SHIPPED_DTYPE = torch.float16  # shipped toy weights are stored in half precision (half the bytes; the toy preset
                               # loads them in float32: `PhotoChatModel.from_pretrained`, `load_shipped_llm`)
SHIPPED_SHARD = "4MB"          # the largest weights file a shipped folder holds (every tracked file stays under 5 MB)


def save_shipped(module, folder: str | Path) -> None:
    """Save a float16 copy of a component (a transformers model or an `ImageGenerator`) as a shipped folder: weights
    in shards of at most SHIPPED_SHARD (transformers' `max_shard_size`; the toy UNet fits one shard)."""
    from copy import deepcopy
    half = deepcopy(module).to(SHIPPED_DTYPE)
    if isinstance(half, ImageGenerator):
        from diffusers.configuration_utils import FrozenDict
        for part in (half.unet, half.vae):        # a loaded component remembers its folder: no local paths shipped
            part._internal_dict = FrozenDict({k: v for k, v in part.config.items() if k != "_name_or_path"})
        half.save_pretrained(folder)
    else:
        half.save_pretrained(folder, max_shard_size=SHIPPED_SHARD)


def load_shipped_llm(folder: str | Path):
    """Return (llm, tokenizer) of a shipped toy LLM folder in float32 (it is stored in float16)."""
    return load_llm(str(folder), dtype=torch.float32)


TOY_CHECKPOINT = Path(__file__).parent / "checkpoints" / "toy"             # the toy foundation (Llama/BLIP-2/SD)
TOY_END2END = Path(__file__).parent / "checkpoints" / "toy-end2end"        # trained end to end on the toy world


def shipped_toy_checkpoint(which: str = "foundation") -> Path | None:
    """Return a shipped toy model folder if it is complete, else None.

    which: "foundation" (the pretrained stand-ins joint training starts from) or "end2end" (that
    foundation trained end to end on the toy world by `photochat pretrain --only end2end`).
    """
    folders = {"foundation": TOY_CHECKPOINT, "end2end": TOY_END2END}
    if which not in folders:
        raise ValueError(f"which must be one of {sorted(folders)}, got {which!r}")
    need = ["photochat.json", "llm/config.json", "perceptron/config.json", "sd/unet/config.json"]
    return folders[which] if all((folders[which] / n).exists() for n in need) else None
