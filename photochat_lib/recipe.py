"""Training recipes: what each preset trains, freezes or LoRA-adapts, and with which hyper-parameters.

The paper (§3.1.2) fixes the optimisation: AdamW, lr 5e-5, batch size 32, weight decay 0.01, linear
warm-up over 1,000 steps, tau annealed 1 → 0.01 over the first three epochs, alpha = 1 (eq. 13),
early stopping after 4 epochs without a better dev BLEU-2 / FID, three seeds, V100 GPUs. It does not
say which parameters are trained beyond "we fine-tune stable-diffusion-2-1-base", nor the per-GPU
batch, nor the precision. Those choices are ours, made so the whole model trains on ONE 32 GB V100
(no bf16 on Volta → fp16 autocast with gradient scaling). `photochat estimate-memory --preset paper`
prints the numbers behind them (GB = GiB); rounded:

  component        params   paper mode                         why / memory
  LLM Llama-2-7b   6.74 B   frozen fp16 + LoRA r=16 on q/k/v/o  a full fine-tune needs 16 B/param (fp32
                            (16.8 M, peft) + the 3 new token    weights + grads + AdamW) = 100 GB; frozen
                            rows of embed/lm_head               fp16 weights are 12.6 GB, LoRA states 0.25
  ViT-g (BLIP-2)   0.99 B   frozen fp16                         pretrained; nothing upstream of it trains,
                                                                so it runs under no_grad: 1.8 GB
  Q-Former+queries 105 M    trained, fp32 master weights        the vision-language bridge (§2.3): 1.6 GB
  projection       3.1 M    trained, fp32                       new: Q-Former 768-d → LLM 4096-d
  CLIP text enc.   0.34 B   frozen fp16                         0.6 GB; gradient still flows THROUGH it
                                                                (one-hot @ token embedding) to the LLM
  UNet SD-2.1      0.87 B   frozen fp16 + LoRA r=64 on          1.7 GB + 13.3 M LoRA params. A full
                            to_q/to_k/to_v/to_out.0             fine-tune costs 0.87 B × 16 B = 12.9 GB
                                                                (3.2 weights + 3.2 grads + 6.5 AdamW) +
                                                                1.7 GB of autocast fp16 weight copies
  VAE              84 M     frozen fp16                         only encodes the target photos: 0.16 GB

With gradient checkpointing on the LLM and the UNet, micro-batch 4 × 8 accumulation steps = the
paper's batch of 32, the estimate is 18.9 GB static + 2.8 GB activations → 24.8 GB with the 10 %
fragmentation margin and 1 GB CUDA context: it fits 31.75 usable GB with ~7 GB to spare (micro-batch 8
would be 27.6 GB; we keep 4 because the activation numbers are estimates). The same recipe with a
fully trained UNet is 39 GB and does not fit, even with the LLM entirely frozen (38.7 GB).

Honest caveat: the paper says it fine-tunes SD; on one 32 GB V100 we adapt the UNet with LoRA instead.
Set ``unet="train"`` on a larger GPU (or shard with DeepSpeed ZeRO across several V100s) for a full
fine-tune; `estimate(..., recipe)` shows what any variant costs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

MODES = ("train", "freeze", "lora")          # what happens to a component's weights
PRECISIONS = ("no", "fp16", "bf16")          # accelerate's mixed_precision values
COMPONENTS = ("llm", "vision", "qformer", "projection", "text_encoder", "unet", "vae")
LLAMA_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")            # Llama attention Linears
SD_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")                   # diffusers Attention Linears
CLIP_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")           # CLIP text attention Linears


@dataclass(frozen=True)
class LoraSpec:
    """LoRA hyper-parameters of one component (used only when its mode is "lora")."""

    rank: int = 16                                   # r: width of the low-rank update B·A
    alpha: int = 32                                  # scaling numerator: update is (alpha / r)·B·A
    dropout: float = 0.05                            # dropout on the LoRA branch's input
    target_modules: tuple[str, ...] = LLAMA_ATTENTION  # Linear names (suffix match, as peft does)

    def peft_kwargs(self) -> dict:
        """Return keyword arguments for ``peft.LoraConfig``."""
        return {"r": self.rank, "lora_alpha": self.alpha, "lora_dropout": self.dropout,
                "target_modules": list(self.target_modules)}


@dataclass
class TrainingRecipe:
    """Everything that decides what is trained and how; one instance per preset in `RECIPES`."""

    preset: str                                      # architectures: "toy" | "colab" | "paper"
    mixed_precision: str = "fp16"                    # "no" | "fp16" | "bf16" (V100 / T4: fp16 + grad scaling)
    # --- per component: "train" (fp32 master weights + AdamW), "freeze", or "lora" (frozen + adapters)
    llm: str = "lora"                                # the text dialogue generator (§2.2)
    vision: str = "freeze"                           # BLIP-2 ViT encoder (eq. 3, first line)
    qformer: str = "train"                           # Q-Former body + its 32 learnable query tokens Q
    projection: str = "train"                        # Linear Q-Former hidden → LLM hidden
    text_encoder: str = "freeze"                     # SD's CLIP text encoder; gradients pass through it
    unet: str = "lora"                               # SD's denoising UNet (§2.4.3)
    vae: str = "freeze"                              # always frozen: it only encodes target photos
    llm_lora: LoraSpec = LoraSpec()                  # LoRA of the LLM (peft)
    text_encoder_lora: LoraSpec = LoraSpec(target_modules=CLIP_ATTENTION)  # LoRA of the text encoder
    unet_lora: LoraSpec = LoraSpec(rank=64, alpha=64, dropout=0.0, target_modules=SD_ATTENTION)  # of the UNet
    train_new_token_rows: bool = True                # train the 3 new tokens' embed/lm_head rows (peft trainable_token_indices)
    # --- gradient checkpointing: recompute a layer's activations in backward instead of storing them
    llm_gradient_checkpointing: bool = True          # per decoder layer (transformers)
    text_encoder_gradient_checkpointing: bool = False  # per CLIP layer; 77 tokens are cheap to keep
    unet_gradient_checkpointing: bool = True         # per resnet / transformer block (diffusers)
    memory_efficient_attention: bool = True          # SDPA mem-efficient/flash kernel: no s×s scores kept
    # --- batch and sequence sizes
    micro_batch_size: int = 4                        # dialogues per forward/backward
    grad_accum_steps: int = 8                        # micro-batches per optimizer step
    max_text_length: int = 512                       # LLM tokens, incl. 32 visual tokens per context photo
    max_context_images: int = 2                      # context photos per dialogue (DialogCC: 1.55 on average)
    image_resolution: int = 512                      # SD training resolution (SD-2.1-base is a 512² model)
    sd_max_length: int = 77                          # CLIP text encoder tokens per caption
    # --- optimisation (paper §3.1.2)
    lr: float = 5e-5                                 # AdamW learning rate
    sd_lr: float | None = None                       # lr of the UNet + CLIP text encoder; None = lr (the paper: one lr)
    weight_decay: float = 0.01                       # AdamW weight decay
    warmup_steps: int = 1000                         # linear warm-up, in optimizer steps
    lr_decay: str = "constant"                       # after warm-up: "constant" (the paper names no decay) | "cosine"
    alpha: float = 1.0                               # weight of the image loss: L = Lt + alpha·Lv (eq. 13)
    tau_start: float = 1.0                           # Gumbel-softmax temperature at step 0 (eq. 6)
    tau_end: float = 0.01                            # temperature after annealing, kept afterwards
    tau_anneal_epochs: float = 3                     # epochs over which tau goes tau_start → tau_end
    max_epochs: int = 20                             # upper bound; early stopping usually ends sooner
    max_steps: int | None = None                     # a fixed budget of optimizer steps (toy); None: epochs decide
    photo_repeats: int = 1                           # photo-sharing samples count this many times per epoch
    remark_repeats: int = 1                          # first replies to a photo another speaker shared (the
                                                     # samples that need the perceptron) count this many times
    early_stopping_patience: int = 4                 # epochs without a better dev BLEU-2 and FID
    seeds: tuple[int, ...] = (0, 1, 2)               # the paper averages three seeds

    def __post_init__(self):
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"recipe {self.preset!r}: mixed_precision={self.mixed_precision!r}, "
                             f"expected one of {PRECISIONS}")
        for name in COMPONENTS:
            if getattr(self, name) not in MODES:
                raise ValueError(f"recipe {self.preset!r}: {name}={getattr(self, name)!r}, expected one of {MODES}")
        if self.lr_decay not in ("constant", "cosine"):
            raise ValueError(f"recipe {self.preset!r}: lr_decay={self.lr_decay!r}, expected 'constant' or 'cosine'")
        if self.vae != "freeze":
            raise ValueError(f"recipe {self.preset!r}: vae={self.vae!r}; the VAE only encodes targets and must be 'freeze'")
        for name in ("vision", "qformer", "projection"):
            if getattr(self, name) == "lora":
                raise ValueError(f"recipe {self.preset!r}: {name}='lora' is not supported; use 'train' or 'freeze'")
        for name in ("micro_batch_size", "grad_accum_steps", "max_text_length", "image_resolution", "sd_max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"recipe {self.preset!r}: {name}={getattr(self, name)} must be >= 1")
        if self.image_resolution % 8:
            raise ValueError(f"recipe {self.preset!r}: image_resolution={self.image_resolution} must be a "
                             "multiple of 8 (the VAE downsamples by 8)")

    @property
    def effective_batch_size(self) -> int:
        """Return dialogues per optimizer step (micro-batch × accumulation)."""
        return self.micro_batch_size * self.grad_accum_steps

    @property
    def frozen_weight_bytes(self) -> int:
        """Return bytes per frozen parameter: 2 under fp16/bf16 (weights cast down), else 4."""
        return 2 if self.mixed_precision in ("fp16", "bf16") else 4

    def modes(self) -> dict[str, str]:
        """Return {component: mode} for every component."""
        return {name: getattr(self, name) for name in COMPONENTS}

    def lora_spec(self, component: str) -> LoraSpec:
        """Return the LoRA spec of a component that supports LoRA (llm, text_encoder, unet)."""
        specs = {"llm": self.llm_lora, "text_encoder": self.text_encoder_lora, "unet": self.unet_lora}
        if component not in specs:
            raise KeyError(f"component {component!r} has no LoRA spec")
        return specs[component]

    def to_dict(self) -> dict:
        """Return the recipe as plain JSON-able data."""
        return asdict(self)


RECIPES: dict[str, TrainingRecipe] = {
    # toy: tiny model on CPU, starting from the shipped toy foundation (checkpoints/toy: LLM, perceptron
    # and SD pretrained by `photochat pretrain`). fp32 (CPU autocast would only slow it down); everything
    # trained (no memory limit calls for freezing or LoRA on 4 M parameters). A fixed budget of 500 steps
    # of 8 (the demo runs 6 of them in ~12 min), so, measured on seeds 0-2 (caption exact match / attr.
    # acc. of the drawn photos, 60 photo-sharing test samples; PRETRAIN.md has the table):
    # * lr 5e-4 with a cosine decay after warm-up: 90-93 % / 87-90 %. Constant lr 3e-4: 83 % (seed 0);
    #   1e-3 (cosine): 83 %; the old 1e-3 constant with 300 steps: 32 %.
    # * photo_repeats 8: a photo-sharing sample is 1 in 9 of the toy train split, so without repeats a run
    #   sees ~400 captions; 8 repeats (~40 % of samples share a photo): 80 % at 300 steps, vs 55 % (1), 73 % (4).
    # * sd_lr 1e-5 keeps the pretrained toy SD drawing what it is told (at 1e-4 it fell from 95.5 % to 63.5 %).
    # * remark_repeats 4: first replies to a photo the other speaker shared (what the perceptron is for) are
    #   ~1 in 9 samples too; 4 repeats (issue 19, on the new foundation): 67 % of test-split replies to a photo
    #   grounded (chance 29 %). On the previous foundation 8 repeats moved it only from 28 % to 37 %.
    # * tau anneals 1 -> 0.01 over the first 0.3 epochs (~350 steps): the paper's "first three epochs" would
    #   be ~3,500 steps here, 7x the budget; tau only shapes L_v's gradient, never the forward pass.
    "toy": TrainingRecipe(
        preset="toy", mixed_precision="no", llm="train", vision="train", qformer="train",
        projection="train", text_encoder="train", unet="train", vae="freeze",
        llm_gradient_checkpointing=False, unet_gradient_checkpointing=False,
        memory_efficient_attention=False,
        micro_batch_size=8, grad_accum_steps=1, max_text_length=256, max_context_images=2,
        image_resolution=32, sd_max_length=32, lr=5e-4, sd_lr=1e-5, lr_decay="cosine", warmup_steps=20,
        tau_anneal_epochs=0.3, max_steps=500, photo_repeats=8, remark_repeats=4, max_epochs=30, seeds=(0,)),
    # colab: one 16 GB T4 (fp16, no bf16). TinyLlama-1.1B-Chat instead of Llama-2-7b, same ViT,
    # Q-Former and SD-2.1-base; same trainable split as paper, micro-batch 1 × 32 accumulation.
    "colab": TrainingRecipe(
        preset="colab", mixed_precision="fp16", micro_batch_size=1, grad_accum_steps=32, seeds=(0,)),
    # paper: one 32 GB V100, see the module docstring for the split and `estimate-memory` for numbers.
    "paper": TrainingRecipe(preset="paper", mixed_precision="fp16", micro_batch_size=4, grad_accum_steps=8),
}


def get_recipe(preset: str) -> TrainingRecipe:
    """Return a copy of the preset's recipe (edit it freely; `RECIPES` is left untouched)."""
    if preset not in RECIPES:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(RECIPES)}")
    return replace(RECIPES[preset])


__all__ = ["TrainingRecipe", "LoraSpec", "RECIPES", "get_recipe", "MODES", "COMPONENTS", "PRECISIONS",
           "LLAMA_ATTENTION", "SD_ATTENTION", "CLIP_ATTENTION"]
