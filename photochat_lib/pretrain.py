"""``photochat pretrain``: the toy preset's foundation models, pretrained from scratch on a CPU.

The paper starts from pretrained checkpoints (§3.1.2): Llama-2-7b-chat, BLIP-2's ViT + Q-Former and
Stable Diffusion 2.1. Nothing can be downloaded for the toy preset, so this module makes tiny
stand-ins of all of them (minutes on 2 cores), in the same folder layouts the hub presets use:

1. **llm/** — the text dialogue generator's language ability (Llama-2-chat's stand-in): a causal-LM
   objective, eq. (2) over *every* token, on toy-world dialogues in the chat layout of
   ``data/collate.py`` and on plain sentences that describe toy scenes. The dialogues come from a
   random stream of their own (never the train/dev/test dialogues) and their photo turns are dropped:
   the LLM never sees ``[IMG]``/``[/IMG]``/``<image>`` nor a PhotoChat-style caption, so *when* to share
   and *what* caption to write are left to the joint training (§2.5), as they are for Llama-2.
2. **perceptron/** — BLIP-2 style, a description of the photo generated from its visual tokens
   (``pretrain_perceptron.py``). The toy LLM is too small to be steered while frozen, so it trains
   too (with its language-model loss replayed); llm/ holds the LLM after both stages.
3. **sd/** — the image generator (``pretrain_sd.py``, another module).
4. **classifier/** — the toy judge / Inception stand-in (``toy_classifier.py``).

plus ``photochat.json``, so ``PhotoChatModel.from_pretrained(out_dir)`` loads the whole toy model.
Every component folder is built in a temporary sibling and renamed into place.
"""
from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .atomic import replace_dir, write_json
from .data.collate import Collator
from .data.samples import Sample
from .data.schema import Turn
from .data.toy_world import sample_dialogue
from .pretrain_perceptron import (PerceptronPretrainConfig, adamw, describe_scene, pretrain_perceptron, random_scene,
                                  warmup_cosine)

DEFAULT_OUT = Path(__file__).parent / "checkpoints" / "toy"   # where the shipped toy checkpoints live
STAGES = ("llm", "perceptron", "sd", "classifier")             # in the order they run
HUB_PRESETS = {"colab": "TinyLlama-1.1B-Chat + BLIP-2 + SD-2.1-base", "paper": "Llama-2-7b-chat + BLIP-2 + SD-2.1-base"}


# ----- stage 1: the LLM's language -----
@dataclass
class LLMPretrainConfig:
    steps: int = 300                   # optimizer steps
    batch_size: int = 24               # blocks per step
    block_size: int = 128              # tokens per block: sequences are packed end to end (GPT-style)
    lr: float = 3e-3                   # AdamW peak learning rate (the toy LLM starts from scratch)
    weight_decay: float = 0.01         # AdamW weight decay on weight matrices
    warmup_steps: int = 30             # linear warm-up, then cosine decay to 10 % of lr
    description_fraction: float = 0.25  # share of sequences that describe a scene (half after its record)
    max_length: int = 384              # longest single sequence (the toy preset's max_length)
    n_eval: int = 16                   # held-out blocks for the final loss


def dialogue_turns(rng: random.Random) -> list[Turn]:
    """Return one freshly sampled toy dialogue's text turns; its photo turn is dropped (no [IMG] ever)."""
    turns, _, _ = sample_dialogue(rng)
    return [Turn(speaker=str(t["user_id"]), text=t["message"]) for t in turns if not t["share_photo"]]


def chat_ids(collator: Collator, turns: list[Turn]) -> list[int]:
    """Return the ids of a text-only dialogue in the collate step's chat layout: <s> A: ...\\n B: ... </s>."""
    speakers = tuple(dict.fromkeys(t.speaker for t in turns))
    sample = Sample(id="pretrain", dialogue_id="pretrain", context=turns[:-1], response=turns[-1:],
                    speakers=speakers)
    return collator.encode(sample)["input_ids"]


def scene_record(objects, background: str) -> str:
    """Return a terse record of a scene, objects in their (random) drawing order: "Scene: left big red circle; ..."."""
    return "Scene: " + "; ".join(f"{o.position} {o.size} {o.colour} {o.shape}" for o in objects) + \
        f"; background {background}."


def lm_example(rng: random.Random, collator: Collator, description_fraction: float) -> list[int]:
    """Return one pretraining sequence: a chat-layout dialogue, or <s> scene description </s>."""
    tok = collator.llm
    if rng.random() < description_fraction:
        objects, bg = random_scene(rng)
        text = describe_scene(objects, bg)
        if rng.random() < 0.5:  # data-to-text: verbalise a record given earlier in the context
            text = scene_record(objects, bg) + "\n" + text
        return [tok.bos_token_id] + tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
    return chat_ids(collator, dialogue_turns(rng))


def packed_blocks(rng: random.Random, collator: Collator, cfg: "LLMPretrainConfig"):
    """Yield blocks of cfg.block_size ids cut from sequences packed end to end (no padding is trained on)."""
    buffer: list[int] = []
    while True:
        while len(buffer) < cfg.block_size:
            buffer += lm_example(rng, collator, cfg.description_fraction)
        yield buffer[: cfg.block_size]
        buffer = buffer[cfg.block_size:]


def lm_batch(blocks: list[list[int]]) -> dict:
    """Return input_ids (B, T), attention_mask and labels of equal-length blocks (every token scored)."""
    input_ids = torch.tensor(blocks, dtype=torch.long)                             # (B, T)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


def lm_loss(llm, batch: dict) -> torch.Tensor:
    """Return eq. (2) over all tokens of the batch (next-token NLL, mean over real tokens)."""
    from .text_generator import text_loss
    logits = llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V) eq. (1)
    return text_loss(logits, batch["labels"])                                                  # eq. (2)


def pretrain_llm(llm, tokenizer, config: LLMPretrainConfig | None = None, seed: int = 0,
                 progress: bool = True) -> dict:
    """Train the LLM in place with the causal-LM objective; return losses and seconds."""
    cfg = config or LLMPretrainConfig()
    torch.manual_seed(seed)
    collator = Collator(tokenizer, None, None, None, max_length=cfg.max_length)
    rng = random.Random(f"photochat-pretrain-llm:{seed}")   # a stream the toy splits never use
    llm.requires_grad_(True).train()
    opt = adamw(llm, cfg.lr, cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.warmup_steps, cfg.steps)
    losses, t0 = [], time.time()
    bar = tqdm(range(cfg.steps), desc="llm", disable=not progress, leave=False)
    stream = packed_blocks(rng, collator, cfg)
    for _ in bar:
        batch = lm_batch([next(stream) for _ in range(cfg.batch_size)])
        loss = lm_loss(llm, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    llm.eval()
    metrics = {"steps": cfg.steps, "first_loss": losses[0] if losses else None,
               "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "train_seconds": round(time.time() - t0, 1)}
    if cfg.n_eval:
        metrics["heldout_loss"] = heldout_lm_loss(llm, tokenizer, cfg, seed)
    return metrics


@torch.no_grad()
def heldout_lm_loss(llm, tokenizer, cfg: LLMPretrainConfig, seed: int = 0) -> float:
    """Return the LM loss on n_eval blocks of a held-out stream."""
    collator = Collator(tokenizer, None, None, None, max_length=cfg.max_length)
    stream = packed_blocks(random.Random(f"photochat-pretrain-llm-heldout:{seed}"), collator, cfg)
    batch = lm_batch([next(stream) for _ in range(cfg.n_eval)])
    return lm_loss(llm.eval(), batch).item()


def _save_llm(llm, tokenizer, metrics: dict):
    """Return a writer of llm/: model, tokenizer and pretrain_metrics.json."""
    def write(d: Path) -> None:
        llm.save_pretrained(d)
        tokenizer.save_pretrained(d)
        write_json(d / "pretrain_metrics.json", metrics)
    return write


def _save_perceptron(perceptron, metrics: dict):
    """Return a writer of perceptron/: BLIP-2-layout config + weights and pretrain_metrics.json."""
    def write(d: Path) -> None:
        perceptron.save_pretrained(d)
        write_json(d / "pretrain_metrics.json", metrics)
    return write


# ----- orchestration -----
def pretrain_toy(out_dir: str | os.PathLike = DEFAULT_OUT, seed: int = 0, only: str | None = None,
                 llm_config: LLMPretrainConfig | None = None,
                 perceptron_config: PerceptronPretrainConfig | None = None,
                 sd_vae_steps: int | None = None, sd_unet_steps: int | None = None,
                 classifier_steps: int | None = None,
                 threads: int = 1, progress: bool = True) -> dict:
    """Run the toy pretraining stages (all, or `only` one), write out_dir/{llm,perceptron,sd,classifier}
    and photochat.json; return {stage: metrics}."""
    if only is not None and only not in STAGES:
        raise ValueError(f"only must be one of {STAGES} or None, got {only!r}")
    from .presets import build_toy_components
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    stages = STAGES if only is None else (only,)
    llm, tokenizer, perceptron, _ = build_toy_components(seed)
    results: dict = {}
    if "llm" in stages or "perceptron" in stages:  # the perceptron stage needs (and updates) the LLM
        results["llm"] = pretrain_llm(llm, tokenizer, llm_config, seed, progress)
        _report("llm", results["llm"])
        if "perceptron" not in stages:
            print("[pretrain] note: OUT/perceptron (if any) was trained with another LLM; rerun --only perceptron")
    if "perceptron" in stages:
        stream = packed_blocks(random.Random(f"photochat-pretrain-llm-replay:{seed}"),
                               Collator(tokenizer, None, None, None, max_length=384), LLMPretrainConfig())
        replay = lambda: lm_loss(llm, lm_batch([next(stream) for _ in range(12)]))  # noqa: E731
        results["perceptron"] = pretrain_perceptron(llm, tokenizer, perceptron, perceptron_config, seed, progress,
                                                    replay=replay)
        replace_dir(out / "perceptron", _save_perceptron(perceptron, {"seed": seed, **results["perceptron"]}))
        _report("perceptron", results["perceptron"])
    if "llm" in results:
        replace_dir(out / "llm", _save_llm(llm, tokenizer, {"seed": seed, **results}))
    if "sd" in stages:
        results["sd"] = _pretrain_sd(out / "sd", seed, sd_vae_steps, sd_unet_steps)
        _report("sd", results["sd"])
    if "classifier" in stages:
        from .toy_classifier import train_toy_classifier
        kwargs = {"steps": classifier_steps} if classifier_steps is not None else {}
        replace_dir(out / "classifier",
                    lambda d: results.__setitem__("classifier", train_toy_classifier(d, seed, threads=threads,
                                                                                     **kwargs)[1]))
        _report("classifier", results["classifier"])
    write_photochat_json(out)
    return results


def _pretrain_sd(final: Path, seed: int, vae_steps: int | None, unet_steps: int | None) -> dict:
    """Run photochat_lib.pretrain_sd.pretrain_image_generator (it writes final atomically); return its stats."""
    from .pretrain_sd import pretrain_image_generator
    _, stats = pretrain_image_generator(final, seed=seed, vae_steps=vae_steps, unet_steps=unet_steps)
    return stats


def write_photochat_json(out: Path) -> None:
    """Write out/photochat.json exactly as PhotoChatModel.save_pretrained does (toy preset, defaults)."""
    from .model import PhotoChatConfig
    write_json(out / "photochat.json", asdict(PhotoChatConfig(preset="toy")))


def _report(stage: str, metrics: dict) -> None:
    """Print one stage's headline numbers."""
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()
             if not isinstance(v, (dict, list))}
    print(f"[pretrain] {stage}: {shown}", flush=True)
    for k, v in metrics.items():
        if isinstance(v, dict):
            print(f"[pretrain] {stage} {k}: " + ", ".join(f"{a}={b:.3f}" if isinstance(b, float) else f"{a}={b}"
                                                       for a, b in v.items() if not isinstance(b, list)), flush=True)


# ----- command line -----
def register(subparsers) -> None:
    """Add the `pretrain` sub-command."""
    p = subparsers.add_parser(
        "pretrain", help="Pretrain the toy preset's LLM, image perceptron, image generator and classifier.",
        description="Pretrain tiny stand-ins for Llama-2-chat, BLIP-2 and Stable Diffusion on the toy world "
                    "(CPU, minutes), and write a folder that PhotoChatModel.from_pretrained loads.")
    p.add_argument("--preset", default="toy", help="Which preset to pretrain. Only 'toy' is supported: the "
                   "'colab' and 'paper' presets start from pretrained hub checkpoints (default: toy).")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="Output folder; each component folder in it is "
                   f"replaced atomically (default: the package's shipped checkpoints, {DEFAULT_OUT}).")
    p.add_argument("--seed", type=int, default=0, help="Random seed of initialisation and data; the same seed "
                   "on the same machine gives the same weights (default: 0).")
    p.add_argument("--only", choices=STAGES, default=None, help="Run one stage only; 'perceptron' runs the "
                   "LLM stage first, since it trains the LLM further (default: all stages, in the order llm, "
                   "perceptron, sd, classifier).")
    p.add_argument("--llm-steps", type=int, default=LLMPretrainConfig.steps,
                   help=f"Optimizer steps of the LLM stage (default: {LLMPretrainConfig.steps}).")
    p.add_argument("--perceptron-steps", type=int, default=PerceptronPretrainConfig.steps,
                   help=f"Optimizer steps of the perceptron stage (default: {PerceptronPretrainConfig.steps}).")
    p.add_argument("--sd-vae-steps", type=int, default=None, help="Optimizer steps of the image generator's "
                   "VAE (default: pretrain_sd's own default).")
    p.add_argument("--sd-unet-steps", type=int, default=None, help="Optimizer steps of the image generator's "
                   "UNet (default: pretrain_sd's own default).")
    p.add_argument("--classifier-steps", type=int, default=None, help="Optimizer steps of the toy classifier "
                   "(default: toy_classifier's own default).")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of the llm/perceptron/classifier "
                   "stages (default: 1: these tiny models gain little from more, and the thread count changes "
                   "float summation order, so the shipped weights are reproduced with 1).")
    p.add_argument("--no-progress", action="store_true", help="Hide the tqdm progress bars.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `photochat pretrain`; returns the exit status."""
    if args.preset in HUB_PRESETS:
        print(f"photochat pretrain: the {args.preset!r} preset starts from pretrained hub checkpoints "
              f"({HUB_PRESETS[args.preset]}); there is nothing to pretrain. Only --preset toy is supported.")
        return 2
    if args.preset != "toy":
        print(f"photochat pretrain: unknown preset {args.preset!r}; only 'toy' is supported.")
        return 2
    for name in ("llm_steps", "perceptron_steps", "sd_vae_steps", "sd_unet_steps", "classifier_steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"photochat pretrain: --{name.replace('_', '-')} must be >= 1, got {value}")
            return 2
    t0 = time.time()
    pretrain_toy(args.out, seed=args.seed, only=args.only, llm_config=LLMPretrainConfig(steps=args.llm_steps),
                 perceptron_config=PerceptronPretrainConfig(steps=args.perceptron_steps),
                 sd_vae_steps=args.sd_vae_steps, sd_unet_steps=args.sd_unet_steps,
                 classifier_steps=args.classifier_steps, threads=args.threads, progress=not args.no_progress)
    print(f"[pretrain] wrote {args.out} in {time.time() - t0:.0f}s")
    return 0
