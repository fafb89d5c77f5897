"""How long one optimizer step of a preset's recipe takes on a GPU, before you have one: FLOPs counted, not guessed.

Each component's forward pass is run on the META device (no memory, no download) under torch's
``FlopCounterMode`` at the recipe's worst-case shapes — the same ones `photochat estimate-memory` budgets for
and the collator enforces: ``micro_batch_size`` samples of ``max_text_length`` tokens, each with
``max_context_images`` context photos and one photo to draw. Training costs more than the forward pass:

* a component on eq. (13)'s gradient path computes its input gradients (≈ 1× its forward) and, if trained,
  its weight gradients (≈ 1× more; LoRA's are negligible);
* activation checkpointing recomputes the forward once more in the backward pass;
* what lies before every trained part (the frozen ViT, the VAE encoding the target photo) runs forward only.

Time = FLOPs per optimizer step / (the GPU's dense fp16 tensor-core peak × a utilisation). Fine-tuning runs
reach roughly 25–50 % of peak; the band is printed, and ``benchmarks/paper_step_gpu.py`` measures the real
number on the GPU at hand.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from photochat_lib.recipe import TrainingRecipe, get_recipe

PEAK_TFLOPS = {            # dense tensor-core peak (fp16/bf16), and fp32 without tensor cores
    "V100 32GB": {"half": 125.0, "fp32": 15.7},
    "T4 16GB": {"half": 65.0, "fp32": 8.1},
}
UTILISATION = (0.25, 0.50)  # the band of achieved / peak FLOPs shown


@dataclass
class StepCost:
    """FLOPs of one optimizer step and the time band per known GPU."""
    preset: str
    forward_tflops: dict[str, float]     # per component, one micro-batch's forward pass
    multiplier: dict[str, int]           # forward + backward (+ recompute) passes per component
    step_tflops: float                   # per optimizer step: sum(forward × multiplier) × grad_accum_steps
    precision: str                       # "half" or "fp32" peak used

    def seconds(self, gpu: str) -> tuple[float, float]:
        """Return (fast, slow) seconds per optimizer step on `gpu` (at the high and low utilisation)."""
        peak = PEAK_TFLOPS[gpu][self.precision]
        return self.step_tflops / (peak * UTILISATION[1]), self.step_tflops / (peak * UTILISATION[0])

    def lines(self) -> list[str]:
        """Return the human-readable summary."""
        parts = ", ".join(f"{k} {v:.3g}×{self.multiplier[k]}" for k, v in self.forward_tflops.items())
        out = [f"compute: {self.step_tflops:.4g} TFLOPs per optimizer step (forward TFLOPs per micro-batch × "
               f"passes: {parts}; counted on the meta device)"]
        for gpu in PEAK_TFLOPS:
            fast, slow = self.seconds(gpu)
            out.append(f"{gpu:<16} ~{fast:.3g}–{slow:.3g} s per optimizer step (at {UTILISATION[1]:.0%}–"
                       f"{UTILISATION[0]:.0%} of its {PEAK_TFLOPS[gpu][self.precision]:g} TFLOPS "
                       f"{'fp16' if self.precision == 'half' else 'fp32'} peak; measure: benchmarks/paper_step_gpu.py)")
        return out


def _count(fn) -> float:
    """Return the TFLOPs of running fn() (on meta tensors: shapes only)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e12


def step_cost(preset: str, recipe: TrainingRecipe | None = None) -> StepCost:
    """Return the FLOPs of one optimizer step of `preset` under `recipe` (default: the preset's)."""
    from photochat_lib.training.memory import build_meta_components
    recipe = recipe or get_recipe(preset)
    parts = build_meta_components(preset)
    llm, vit, qf, te, unet, vae = (parts[k] for k in ("llm", "vision", "qformer", "text_encoder", "unet", "vae"))
    b, s, res = recipe.micro_batch_size, recipe.max_text_length, recipe.image_resolution
    m = min(recipe.sd_max_length, te.config.max_position_embeddings)   # caption tokens the text encoder takes
    n_ctx = b * recipe.max_context_images                            # context photos per micro-batch (worst case)
    meta = dict(device="meta")
    side = vit.config.image_size
    vit_out = torch.zeros((n_ctx, (side // vit.config.patch_size) ** 2 + 1, vit.config.hidden_size), **meta)
    queries = qf.query_tokens.expand(n_ctx, -1, -1) if n_ctx else None
    fwd = {
        "llm": _count(lambda: llm(input_ids=torch.zeros((b, s), dtype=torch.long, **meta))),
        "vision": _count(lambda: vit(pixel_values=torch.zeros((n_ctx, 3, side, side), **meta))) if n_ctx else 0.0,
        "qformer": _count(lambda: qf(query_embeds=queries, encoder_hidden_states=vit_out)) if n_ctx else 0.0,
        "text_encoder": _count(lambda: te(input_ids=torch.zeros((b, m), dtype=torch.long, **meta))),
        "unet": _count(lambda: unet(torch.zeros((b, 4, res // 8, res // 8), **meta),
                                    torch.zeros((b,), dtype=torch.long, **meta),
                                    encoder_hidden_states=torch.zeros((b, m, te.config.hidden_size), **meta))),
        "vae": _count(lambda: vae.encode(torch.zeros((b, 3, res, res), **meta))),
    }
    modes = recipe.modes()
    order = ["vision", "qformer", "llm", "text_encoder", "unet"]       # eq. (13)'s gradient path, input first
    trained = {n: modes[n] != "freeze" or (n == "llm" and recipe.train_new_token_rows) for n in order}
    on_path = {name: any(trained[n] for n in order[: i + 1]) for i, name in enumerate(order)}
    checkpointed = {"llm": recipe.llm_gradient_checkpointing, "unet": recipe.unet_gradient_checkpointing,
                    "text_encoder": recipe.text_encoder_gradient_checkpointing}
    mult = {}
    for name in fwd:
        if not on_path.get(name, False):                           # the VAE encoder, a frozen ViT before it all
            mult[name] = 1
            continue
        mult[name] = 2 + (modes[name] == "train") + checkpointed.get(name, False)
    step = sum(fwd[k] * mult[k] for k in fwd) * recipe.grad_accum_steps
    return StepCost(preset, fwd, mult, step, "fp32" if recipe.mixed_precision == "no" else "half")
