"""Pretraining the toy Stable Diffusion from scratch so that it draws what its caption asks for.

The toy preset's image generator (`toy.foundation.toy_image_generator`) starts random; the paper's starts
from stable-diffusion-2-1-base, which already draws captions. This module gives the toy one that
ability on the toy world's photos (data/toy_world.py), in two stages, like latent diffusion:

1. **VAE** (AutoencoderKL): reconstruction + a small KL to N(0, I). The background covers ~95% of a
   toy photo, so the squared error on object pixels is weighted up (`object_weight`); without it the
   decoder learns the background first and renders red shapes orange for hundreds of steps. Pixels on
   an object's outline weigh more still (`edge_weight`, `pixel_weights`): the outline is the shape. Then
   ``scaling_factor`` is set to 1/std of the latents, as SD's 0.18215 was.
2. **UNet + CLIP text encoder** on caption → image with L_v = `ImageGenerator.image_loss` (eq. 12
   as the noise-prediction MSE), the captions fed as exact one-hots through `encode_onehot` — the
   same path the dialogue model's gradient takes. ~10% of captions become "" (classifier-free-guidance
   dropout) so that `generate` has an unconditional branch. An EMA of the weights is what is saved.

Training photos are drawn on the fly with `draw_photo` from random object sets sampled like the toy
world's dialogues (1–3 objects, distinct colour–shape kinds, random positions, sizes, background),
from a `random.Random` seeded by the seed alone; torch is seeded too, so the same seed gives the same
weights on the same machine. Each stage has its own streams, so stage 2 alone on a saved VAE
(``--vae-from DIR``) gives the weights of the full run. ``python -m photochat_lib.toy.pretrain_sd --out DIR``
runs both stages.

**Left to right** (`left_to_right`, stage 2 only). The toy world's captions list the objects in
*mention* order while their columns are random, so the UNet would have to learn to put each named
object in exactly one free column. Stage 2 instead pairs each photo with its objects named left to
right. The photos are the same (same sets, sizes, columns, backgrounds: the kinds are drawn in random
order anyway) and so are the captions; only which caption slot names which column changes, so FID/IS
see the same image distribution. Sampling still takes any caption.

**How the recipe was found** — the VAE sweeps that led to the outline weight, the Min-SNR-γ learning curves and
the guidance sweep behind the default sampler — is measured and recorded in ``checkpoints/toy/PRETRAIN.md`` (sd/).

**The defaults are sized to a 2-core CPU.** 1 thread (on the machine shared with other jobs, at load
4–6, one UNet step took 1.1 s with 1 thread and 16 s with 2, spin-waiting), 3000 VAE steps (603 s) and
8000 UNet steps (about 62 min quiet, longer when shared; peak RSS 1.2 GB). The shipped sd/ is stage 2
run alone on the VAE of the previous full run (``--vae-from``; the VAE code is unchanged, so a full
run regenerates both).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel

from photochat_lib.utils.atomic import replace_dir
from photochat_lib.data.toy_world import BACKGROUNDS, COLOURS, NOUNS, POSITIONS, SHAPES, SIZES, ToyObject, caption, draw_photo
from photochat_lib.model.image_generator import ImageGenerator
from photochat_lib.model.sampling import GUIDANCE_SCALE, SAMPLER_STEPS

KINDS = [(c, s) for c in COLOURS for s in SHAPES]  # the 15 colour–shape kinds of the toy world


@dataclass
class PretrainSDConfig:
    """Hyper-parameters of both stages (the defaults made the shipped toy checkpoint)."""
    seed: int = 0                 # seeds torch and the photo stream: same seed -> same weights
    resolution: int = 32          # side of the toy photos (the toy preset's sd_resolution)
    vae_steps: int = 3000         # stage 1 optimiser steps
    vae_batch: int = 16           # photos per VAE step
    vae_lr: float = 4e-3          # peak AdamW learning rate of the VAE (one-cycle schedule)
    kl_weight: float = 1e-6       # weight of the per-element KL(q(z|x) || N(0, I)) in stage 1
    object_weight: float = 10.0   # squared-error weight of object pixels (background pixels weigh 1)
    edge_weight: float = 20.0     # extra squared-error weight of pixels on an object's outline (inside or out)
    l1_weight: float = 0.0        # weight of an absolute-error term beside the squared error (sharpens edges)
    unet_steps: int = 8000        # stage 2 optimiser steps
    unet_batch: int = 32          # captioned photos per UNet step
    unet_lr: float = 2e-3         # peak AdamW learning rate of UNet + text encoder (one-cycle schedule)
    left_to_right: bool = True    # stage 2 captions name the objects left to right (see the module docstring)
    uncond_prob: float = 0.1      # classifier-free-guidance dropout: share of captions replaced by ""
    snr_gamma: float | None = 5.0  # Min-SNR-γ loss weighting in stage 2 (None = plain L_v)
    prediction_type: str = "epsilon"  # the UNet's target: "epsilon" (as SD 2.1 base), "v_prediction", "sample"
    ema_decay: float = 0.995      # decay of the weight EMA that is saved (0 = save the raw weights)
    threads: int = 1              # torch CPU threads
    log_every: int = 100          # print the losses every this many steps (0 = silent)
    eval_every: int = 0           # judge the EMA weights on `eval_n` fresh captions every this many UNet steps
    eval_n: int = 100             # captions per intermediate judgement


def sample_objects(rng: random.Random, left_to_right: bool = False) -> tuple[list[ToyObject], str]:
    """Return (objects, background) drawn like a toy-world dialogue's photo (mention order = left to right if asked)."""
    n = rng.randint(1, 3)
    positions = rng.sample(POSITIONS, n)
    if left_to_right:  # same photos, same captions; only which caption slot names which column changes
        positions.sort(key=POSITIONS.index)
    kinds = rng.sample(KINDS, n)  # no two alike in one photo
    objects = [ToyObject(c, s, rng.choice(NOUNS[s]), rng.choice(SIZES), p) for (c, s), p in zip(kinds, positions)]
    return objects, rng.choice(list(BACKGROUNDS))


def draw_batch(rng: random.Random, n: int, size: int = 32, left_to_right: bool = False
               ) -> tuple[torch.Tensor, list[str]]:
    """Return (pixels in [-1, 1] (n, 3, size, size), captions) of n freshly drawn toy photos."""
    scenes = [sample_objects(rng, left_to_right) for _ in range(n)]
    arr = np.stack([np.asarray(draw_photo(objs, bg, size)) for objs, bg in scenes])  # (n, H, W, 3) uint8
    pixels = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1        # (n, 3, H, W)
    return pixels, [caption(objs) for objs, _ in scenes]


def _one_cycle(opt: torch.optim.Optimizer, lr: float, steps: int):
    """Return a warm-up-then-cosine learning-rate schedule over `steps` steps."""
    return torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(steps, 2), pct_start=0.1)


def pixel_weights(x: torch.Tensor, cfg: PretrainSDConfig) -> torch.Tensor:
    """Return the stage-1 squared-error weight (B, 1, H, W) of each pixel of toy photos x (B, 3, H, W).

    Background 1, object pixels `object_weight`, and every pixel within one pixel of an object's
    outline (inside or outside) `edge_weight` more: the outline is where a small circle and a small
    square differ.
    """
    background = x[:, :, :1, :1]                                              # corners are never covered
    is_object = ((x - background).abs().sum(1, keepdim=True) > 0.01).float()  # (B, 1, H, W)
    outline = F.max_pool2d(is_object, 3, 1, 1) + F.max_pool2d(-is_object, 3, 1, 1)  # dilated - eroded
    return 1 + (cfg.object_weight - 1) * is_object + cfg.edge_weight * outline


def train_vae(gen: ImageGenerator, cfg: PretrainSDConfig, rng: random.Random) -> dict:
    """Train gen.vae in place (stage 1), set its scaling_factor; return its losses."""
    vae = gen.vae.requires_grad_(True).train()
    opt = torch.optim.AdamW(vae.parameters(), cfg.vae_lr, weight_decay=0.0)
    sched = _one_cycle(opt, cfg.vae_lr, cfg.vae_steps)
    first = last = None
    window: list[tuple[float, float]] = []
    for step in range(cfg.vae_steps):
        x, _ = draw_batch(rng, cfg.vae_batch, cfg.resolution)                 # (B, 3, H, W)
        post = vae.encode(x).latent_dist
        z = post.sample()                                                     # (B, 4, h, w)
        rec = vae.decode(z).sample                                            # (B, 3, H, W)
        err = rec - x                                                         # (B, 3, H, W)
        recon = (pixel_weights(x, cfg) * (err ** 2 + cfg.l1_weight * err.abs())).mean()
        kl = post.kl().mean() / z[0].numel()                                  # per latent element
        loss = recon + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window = (window + [(recon.item(), kl.item())])[-(cfg.log_every or 50):]
        last = {"recon": sum(r for r, _ in window) / len(window), "kl": sum(k for _, k in window) / len(window)}
        first = first or last
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.vae_steps - 1):
            print(f"[vae] step {step:5d}  recon {last['recon']:.4f}  kl {last['kl']:.3f}", flush=True)
    vae.requires_grad_(False).eval()
    with torch.no_grad():                                                     # SD's scaling_factor rule
        x, _ = draw_batch(rng, 256, cfg.resolution)
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    return {"vae_first": first, "vae_last": last, "latent_std": std}


def train_unet(gen: ImageGenerator, cfg: PretrainSDConfig, rng: random.Random) -> dict:
    """Train gen.unet and gen.text_encoder in place with L_v (stage 2); return their losses."""
    params = [*gen.unet.parameters(), *gen.text_encoder.parameters()]
    gen.unet.train()
    gen.text_encoder.train()
    opt = torch.optim.AdamW(params, cfg.unet_lr, weight_decay=0.0)
    sched = _one_cycle(opt, cfg.unet_lr, cfg.unet_steps)
    # diffusers' EMAModel: decay min(ema_decay, (1 + k)/(10 + k)) at update k, the warm-up this module used by hand
    ema = EMAModel(params, decay=cfg.ema_decay, foreach=True) if cfg.ema_decay > 0 else None
    noise_gen = torch.Generator().manual_seed(cfg.seed)                      # VAE sample, ε and t draws
    first = last = None
    window: list[float] = []
    curve: list[dict] = []
    for step in range(cfg.unet_steps):
        x, captions = draw_batch(rng, cfg.unet_batch, cfg.resolution, cfg.left_to_right)  # (B, 3, H, W)
        captions = ["" if rng.random() < cfg.uncond_prob else c for c in captions]   # CFG dropout
        r_sd = gen.one_hot(gen.tokenize(captions))                            # (B, n, |V_SD|)
        loss = gen.image_loss(r_sd, x, generator=noise_gen, snr_gamma=cfg.snr_gamma)  # eq. (12)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema.step(params)
        window = (window + [loss.item()])[-(cfg.log_every or 50):]
        first = first if first is not None else loss.item()
        last = sum(window) / len(window)
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.unet_steps - 1):
            print(f"[unet] step {step:5d}  L_v {last:.4f}  lr {sched.get_last_lr()[0]:.2e}", flush=True)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.unet_steps:
            curve.append(_judge_midway(gen, params, ema, cfg, step + 1))
    if ema is not None:
        ema.copy_to(params)                                                  # what is saved: the EMA weights
    gen.unet.eval()
    gen.text_encoder.eval()
    return {"unet_first": first, "unet_last": last, **({"unet_curve": curve} if curve else {})}


def _judge_midway(gen: ImageGenerator, params, ema, cfg: PretrainSDConfig, step: int) -> dict:
    """Return and print the judge's verdict on the (EMA) weights after `step` UNet steps; training state is kept."""
    if ema is not None:                          # judge the EMA weights, then resume training from the raw ones
        ema.store(params)
        ema.copy_to(params)
    gen.unet.eval()
    gen.text_encoder.eval()
    threads = torch.get_num_threads()
    try:
        e = evaluate_generator(gen, n=cfg.eval_n)
    finally:
        torch.set_num_threads(threads)
        if ema is not None:
            ema.restore(params)
        gen.unet.train()
        gen.text_encoder.train()
    row = {"step": step, "exact_match": e["exact_match"], "colour_accuracy": e["colour_accuracy"],
           "shape_accuracy": e["shape_accuracy"]}
    print(f"[unet] step {step:5d}  judged on {cfg.eval_n} captions: exact {row['exact_match']:.3f}  colours "
          f"{row['colour_accuracy']:.3f}  shapes {row['shape_accuracy']:.3f}", flush=True)
    return row


def save_atomic(gen: ImageGenerator, out: str | os.PathLike) -> None:
    """Write gen as a shipped folder (float16: `foundation.save_shipped`) into a temp folder beside `out`, then swap
    it in as `out`."""
    from photochat_lib.toy.foundation import save_shipped
    replace_dir(out, lambda d: save_shipped(gen, d))


def pretrain_image_generator(out: str | os.PathLike | None = None, seed: int = 0, vae_steps: int | None = None,
                             unet_steps: int | None = None, config: PretrainSDConfig | None = None,
                             generator: ImageGenerator | None = None,
                             vae_from: str | os.PathLike | None = None) -> tuple[ImageGenerator, dict]:
    """Return (trained toy ImageGenerator, stats); saves it SD-layout to `out` when given.

    vae_from: an SD folder whose trained VAE is reused, skipping stage 1. Each stage draws from its own
    seeded streams, so stage 2 on the VAE a full run made gives the same weights as that full run.
    """
    from photochat_lib.toy.foundation import IMAGE_SIZE, SHIPPED_DTYPE, toy_image_generator
    from photochat_lib.toy.tokenizers import build_sd_tokenizer
    cfg = PretrainSDConfig(**{**asdict(config or PretrainSDConfig()), "seed": seed,
                              **({"vae_steps": vae_steps} if vae_steps is not None else {}),
                              **({"unet_steps": unet_steps} if unet_steps is not None else {})})
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        gen = generator or toy_image_generator(build_sd_tokenizer(), IMAGE_SIZE)
        gen.scheduler = DDPMScheduler.from_config(gen.scheduler.config, prediction_type=cfg.prediction_type)
        t0 = time.perf_counter()
        if vae_from is None:
            stats = {"config": asdict(cfg), **train_vae(gen, cfg, random.Random(f"photochat-pretrain-sd:{cfg.seed}"))}
            gen.vae.to(SHIPPED_DTYPE).to(torch.float32)     # as saved: stage 2 on a saved VAE is this run's stage 2
        else:
            gen.vae = _load_vae(vae_from)
            stats = {"config": asdict(cfg), "vae_from": str(vae_from)}
        t1 = time.perf_counter()
        torch.manual_seed(cfg.seed + 1)                                       # stage 2 stands on its own
        stats.update(train_unet(gen, cfg, random.Random(f"photochat-pretrain-sd:{cfg.seed}:unet")))
        t2 = time.perf_counter()
        stats.update(vae_seconds=round(t1 - t0, 1), unet_seconds=round(t2 - t1, 1),
                     params={name: sum(p.numel() for p in m.parameters())
                             for name, m in (("text_encoder", gen.text_encoder), ("unet", gen.unet),
                                             ("vae", gen.vae))})
        if out is not None:
            save_atomic(gen, out)
        return gen, stats
    finally:
        torch.set_num_threads(threads)


def _load_vae(source: str | os.PathLike):
    """Return the frozen AutoencoderKL of an SD folder (its vae/ subfolder), with a clear error if absent."""
    from diffusers import AutoencoderKL
    from diffusers.configuration_utils import FrozenDict
    folder = os.path.join(source, "vae")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"--vae-from {source}: no {folder}/config.json (expected an SD folder with vae/)")
    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32).requires_grad_(False).eval()
    # loading records where it came from; drop that so the saved vae/config.json equals a full run's
    vae._internal_dict = FrozenDict({k: v for k, v in vae.config.items() if k != "_name_or_path"})
    return vae


# ----- judging: does it draw what it is told? (the toy-world classifier of classifier.py) -----
# the default sampler (SAMPLER_STEPS, GUIDANCE_SCALE) lives in sampling.py, chosen on the judge's verdicts
TARGET_EXACT_MATCH = 0.95  # the bar: share of generated photos showing exactly the asked objects


@torch.no_grad()
def evaluate_generator(gen: ImageGenerator, n: int = 200, seed: int = 1, num_inference_steps: int = SAMPLER_STEPS,
                       guidance_scale: float = GUIDANCE_SCALE, batch_size: int = 100) -> dict:
    """Return the toy classifier's exact-match rate (overall and per object count) on n fresh captions."""
    from photochat_lib.toy.classifier import judge, load_toy_classifier
    rng = random.Random(f"photochat-eval-sd:{seed}")
    scenes = [sample_objects(rng) for _ in range(n)]
    captions = [caption(objs) for objs, _ in scenes]
    images = torch.cat([gen.generate(gen.one_hot(gen.tokenize(captions[i:i + batch_size])), num_inference_steps,
                                     guidance_scale, generator=torch.Generator().manual_seed(seed + i))
                        for i in range(0, n, batch_size)])                   # (n, 3, H, W) in [0, 1]
    verdict = judge(images, captions, load_toy_classifier())
    by_count = {}
    for k in (1, 2, 3):
        hits = [ok for ok, (objs, _) in zip(verdict["exact"], scenes) if len(objs) == k]
        by_count[k] = sum(hits) / len(hits) if hits else float("nan")
    return {"n": n, "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
            "exact_match": verdict["exact_match"], "colour_accuracy": verdict["colour_accuracy"],
            "shape_accuracy": verdict["shape_accuracy"], "object_f1": verdict["object_f1"],
            "exact_match_by_objects": by_count}


@torch.no_grad()
def evaluate_vae(gen: ImageGenerator, n: int = 300, seed: int = 1) -> dict:
    """Return the toy classifier's exact-match rate on the VAE's reconstructions of n real photos."""
    from photochat_lib.toy.classifier import judge, load_toy_classifier
    x, captions = draw_batch(random.Random(f"photochat-eval-vae:{seed}"), n)   # (n, 3, H, W) in [-1, 1]
    rec = gen.vae.decode(gen.vae.encode(x).latent_dist.mean).sample           # (n, 3, H, W)
    verdict = judge((rec / 2 + 0.5).clamp(0, 1), captions, load_toy_classifier())
    return {"n": n, "exact_match": verdict["exact_match"], "colour_accuracy": verdict["colour_accuracy"],
            "shape_accuracy": verdict["shape_accuracy"]}


def parse_args(argv=None) -> argparse.Namespace:
    """Return the command-line options of `python -m photochat_lib.toy.pretrain_sd`."""
    d = PretrainSDConfig()
    p = argparse.ArgumentParser(prog="python -m photochat_lib.toy.pretrain_sd", description=(
        "Pretrain the toy Stable Diffusion (VAE, then UNet + CLIP text encoder) from scratch on toy-world "
        "photos drawn on the fly, and save it in the diffusers SD layout."))
    p.add_argument("--out", required=True, help="output folder (text_encoder/, tokenizer/, unet/, vae/, "
                   "scheduler/); replaced atomically if it exists")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of torch and of the photo stream; the "
                   "same seed gives the same weights on the same machine")
    p.add_argument("--vae-steps", type=int, default=d.vae_steps, help="stage 1 (VAE) optimiser steps")
    p.add_argument("--unet-steps", type=int, default=d.unet_steps, help="stage 2 (UNet + text encoder) steps")
    p.add_argument("--vae-from", default=None, metavar="SD_DIR", help="reuse the trained VAE of this SD folder "
                   "and run stage 2 only (e.g. photochat_lib/toy/checkpoints/toy/sd)")
    p.add_argument("--snr-gamma", type=float, default=d.snr_gamma, help="Min-SNR-γ weighting of stage 2's "
                   "loss (default: %(default)s; 0 = plain L_v)")
    p.add_argument("--prediction-type", default=d.prediction_type, choices=["epsilon", "v_prediction", "sample"],
                   help="what the UNet predicts (default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, metavar="N", help="judge the EMA weights on "
                   "100 fresh captions every N UNet steps (0 = never)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (on a busy machine "
                   "1 can be faster than 2)")
    p.add_argument("--eval", type=int, default=0, metavar="N", help="after training, generate N images "
                   "for fresh captions and judge them with the toy classifier (0 = skip)")
    p.add_argument("--sampler-steps", type=int, default=SAMPLER_STEPS, help="DDIM steps used by --eval")
    p.add_argument("--guidance-scale", type=float, default=GUIDANCE_SCALE, help="classifier-free-guidance "
                   "scale used by --eval")
    p.add_argument("--log-every", type=int, default=d.log_every, help="print losses every N steps (0 = silent)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Pretrain, save, optionally judge; print the stats as JSON; return the exit status."""
    args = parse_args(argv)
    cfg = PretrainSDConfig(seed=args.seed, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
                           threads=args.threads, log_every=args.log_every, snr_gamma=args.snr_gamma or None,
                           prediction_type=args.prediction_type, eval_every=args.eval_every)
    gen, stats = pretrain_image_generator(args.out, seed=args.seed, config=cfg, vae_from=args.vae_from)
    if args.eval:
        torch.set_num_threads(args.threads)
        stats["vae_eval"] = evaluate_vae(gen)
        stats["eval"] = evaluate_generator(gen, args.eval, num_inference_steps=args.sampler_steps,
                                           guidance_scale=args.guidance_scale)
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
