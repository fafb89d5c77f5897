"""The image perceptron (paper §2.3, eq. 3): ViT → Q-Former with 32 learnable queries → LLM tokens.

    H_v = ViT(I)                       eq. (3), first line: patch features of the photo
    H_v = Q-Former(Q, H_v)             eq. (3), second line: 32 queries cross-attend to the patches

followed by a linear projection into the LLM's embedding space, so a photo of *any* size or mode
becomes exactly ``num_query_tokens`` (= 32) visual tokens that are spliced into the LLM input where
the photo stands in the dialogue.

The module is built from transformers' BLIP-2 classes with BLIP-2's own attribute names
(``vision_model``, ``query_tokens``, ``qformer``, ``language_projection``), so the vision and Q-Former
weights of ``Salesforce/blip2-opt-2.7b-coco`` load into it with ``from_pretrained``; the OPT language
model in that checkpoint is ignored, and ``language_projection`` is re-initialised when the LLM's
width differs from OPT's (it always does for Llama-2: 4096 vs 2560).
"""
from __future__ import annotations

import os

import torch
from PIL import Image
from torch import nn
from transformers import Blip2Config, Blip2PreTrainedModel, Blip2QFormerModel, Blip2VisionModel

from photochat_lib.data.images import Blip2ImageTransform, blip2_image_processor, image_transform


class ImagePerceptron(Blip2PreTrainedModel):
    """ViT + Q-Former + projection: returns (N, num_query_tokens, llm_hidden) visual tokens."""

    config_class = Blip2Config
    main_input_name = "pixel_values"
    # The BLIP-2 checkpoint also holds an OPT model; we never build it, so its keys are expected extras.
    _keys_to_ignore_on_load_unexpected = [r"language_model\..*"]
    image_processor = None   # BLIP-2's image processor, from the checkpoint's preprocessor_config.json; None: toy

    def __init__(self, config: Blip2Config):
        super().__init__(config)
        self.vision_model = Blip2VisionModel(config.vision_config)
        self.query_tokens = nn.Parameter(
            torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))  # (1, 32, Dq)
        self.qformer = Blip2QFormerModel(config.qformer_config)
        # text_config.hidden_size is set to the *LLM's* width by `build_image_perceptron`.
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)
        self.post_init()

    @property
    def image_size(self) -> int:
        """Side of the square image the ViT expects."""
        return self.config.vision_config.image_size

    @property
    def num_query_tokens(self) -> int:
        """Number of visual tokens per photo (32 in BLIP-2)."""
        return self.config.num_query_tokens

    def forward(self, pixel_values: torch.Tensor, output_attentions: bool = False):
        """Return visual tokens (N, Q, D_llm); with output_attentions also the Q-Former cross-attentions."""
        features, cross_attentions = self.query_features(pixel_values, output_attentions)  # (N, 32, Dq)
        visual = self.language_projection(features)                                  # (N, 32, D_llm)
        if output_attentions:
            return visual, cross_attentions
        return visual

    def query_features(self, pixel_values: torch.Tensor, output_attentions: bool = False):
        """Return (the Q-Former's outputs at the 32 queries (N, 32, Dq), cross-attentions or None): eq. (3)."""
        if output_attentions and self.qformer.config._attn_implementation != "eager":
            self.qformer.set_attn_implementation("eager")   # SDPA kernels do not return attention maps
        patches = self.vision_model(pixel_values=pixel_values).last_hidden_state   # eq. (3) ViT: (N, P+1, Dv)
        patch_mask = torch.ones(patches.shape[:-1], dtype=torch.long, device=patches.device)  # (N, P+1)
        queries = self.query_tokens.expand(patches.shape[0], -1, -1)                # Q: (N, 32, Dq)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=patches,
                           encoder_attention_mask=patch_mask,
                           output_attentions=output_attentions)                      # eq. (3) Q-Former
        return out.last_hidden_state[:, : queries.shape[1]], out.cross_attentions if output_attentions else None

    @property
    def transform(self):
        """PIL image -> (3, S, S): BLIP-2's own image processor when the checkpoint ships one (every BLIP-2
        repo does), else the hand-written toy transform (`data.images.image_transform`)."""
        if self.image_processor is not None:
            return Blip2ImageTransform(self.image_processor)
        return image_transform(self.image_size)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as transformers does, plus preprocessor_config.json when there is an image processor."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(save_directory)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Return (N, 3, S, S) pixel values for PIL images of any size and mode (RGB, RGBA, L, P…)."""
        transform = self.transform
        if not images:
            return torch.zeros(0, 3, self.image_size, self.image_size, device=self.device, dtype=self.dtype)
        return torch.stack([transform(img) for img in images]).to(self.device, self.dtype)


def build_image_perceptron(source: str | os.PathLike | Blip2Config, llm_hidden_size: int,
                           token: str | None = None, dtype: torch.dtype | None = None) -> ImagePerceptron:
    """Return an ImagePerceptron: from a Blip2Config (random init) or a hub id / local BLIP-2 folder."""
    if isinstance(source, Blip2Config):
        config = source
        config.text_config.hidden_size = llm_hidden_size
        return ImagePerceptron(config)
    config = Blip2Config.from_pretrained(source, token=token)
    projection_reused = config.text_config.hidden_size == llm_hidden_size
    config.text_config.hidden_size = llm_hidden_size
    kwargs = {"dtype": dtype} if dtype is not None else {}
    # ignore_mismatched_sizes: BLIP-2's projection maps into OPT (2560-d); ours maps into the LLM.
    model = ImagePerceptron.from_pretrained(source, config=config, token=token,
                                            ignore_mismatched_sizes=not projection_reused, **kwargs)
    model.image_processor = _image_processor(source, token)
    return model


def _image_processor(source: str | os.PathLike, token: str | None):
    """Return the checkpoint's BLIP-2 image processor (its preprocessor_config.json); a local folder without one (the
    toy perceptron's) gets None, a Hub repo whose file cannot be read the shipped copy of blip2-opt-2.7b-coco's."""
    from transformers import BlipImageProcessor
    try:
        return BlipImageProcessor.from_pretrained(source, token=token)
    except OSError:
        return None if os.path.isdir(source) else blip2_image_processor()


def init_from_scratch(perceptron) -> None:
    """Re-draw the ViT, Q-Former and queries Q for training from scratch (when there is no pretrained BLIP-2).

    transformers initialises BLIP-2 for *loading* pretrained weights: the vision tower with
    initializer_range 1e-10 (a constant ViT output: every patch alike) and Q with zeros (32 identical
    queries), so a perceptron built from a config cannot learn. We draw the ViT's matrices from
    N(0, 0.02²), its position embeddings from N(0, 0.5²) (so patch features say *where* they are: the
    Q-Former's cross-attention is blind to patch order), the Q-Former's matrices from N(0, 1/fan_in)
    (attention that can become peaked within a few hundred steps) and Q from N(0, 1).
    Used by `pretrain_perceptron` and by every random-weight build of the real architectures
    (`presets.build_config_components`), whose zero queries would otherwise meet LayerNorm's
    eps = 1e-12 with gradients of ~1e35.
    """
    with torch.no_grad():
        _redraw(perceptron)


def _redraw(perceptron) -> None:
    for module in perceptron.vision_model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            torch.nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                module.bias.zero_()
    embeddings = perceptron.vision_model.embeddings
    torch.nn.init.trunc_normal_(embeddings.class_embedding, std=0.02)
    embeddings.position_embedding.normal_(0.0, 0.5)
    for module in perceptron.qformer.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.normal_(0.0, module.in_features ** -0.5)
    perceptron.query_tokens.normal_(0.0, 1.0)
