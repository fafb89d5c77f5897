"""``photochat pretrain``: the toy preset's foundation models, pretrained from scratch on a CPU.

The paper starts from Llama-2-7b-chat, BLIP-2's ViT + Q-Former and Stable Diffusion 2.1 (§3.1.2). Nothing can
be downloaded for the toy preset, so this command makes tiny stand-ins of all of them (`photochat_lib/toy/`) in
the folder layouts the hub presets use: llm/, perceptron/ (BLIP-2's two stages, simplified), sd/, classifier/
(the toy judge) and photochat.json, so ``PhotoChatModel.from_pretrained(out_dir)`` loads the whole toy model;
then toy-end2end/ beside it, that foundation trained end to end (what notebooks 06-08 and ``photochat chat``
load). Every component folder is built in a temporary sibling and renamed into place.
"""
from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch

from photochat_lib.data.collate import Collator
from photochat_lib.toy.foundation import (IMAGE_SIZE, SHIPPED_SHARD, TOY_CHECKPOINT, TOY_END2END, build_toy_components,
                                          load_shipped_llm, save_shipped, toy_blip2_config)
from photochat_lib.toy.pretrain_llm import LLMPretrainConfig, example_stream, lm_batch, lm_loss, pretrain_llm
from photochat_lib.toy.pretrain_perceptron import PerceptronPretrainConfig, pretrain_perceptron
from photochat_lib.utils.atomic import replace_dir, write_json, write_text
from photochat_lib.utils.cliutil import at_least

DEFAULT_OUT = TOY_CHECKPOINT                                    # where the shipped toy checkpoints live
STAGES = ("llm", "perceptron", "sd", "classifier", "end2end")  # in the order they run
HUB_PRESETS = {"colab": "TinyLlama-1.1B-Chat + BLIP-2 + SD-2.1-base", "paper": "Llama-2-7b-chat + BLIP-2 + SD-2.1-base"}


def _save_llm(llm, tokenizer, metrics: dict):
    """Return a writer of llm/: model (float16, sharded: `save_shipped`), tokenizer and pretrain_metrics.json."""
    def write(d: Path) -> None:
        save_shipped(llm, d)
        tokenizer.save_pretrained(d)
        write_json(d / "pretrain_metrics.json", metrics)
    return write


def _save_perceptron(perceptron, metrics: dict):
    """Return a writer of perceptron/: BLIP-2-layout config + weights (float16) and pretrain_metrics.json."""
    def write(d: Path) -> None:
        save_shipped(perceptron, d)
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    stages = STAGES if only is None else (only,)
    llm, tokenizer, perceptron, _ = build_toy_components(seed)
    results: dict = {}
    if "llm" in stages:
        results["llm"] = pretrain_llm(llm, tokenizer, llm_config, seed, progress)
        replace_dir(out / "llm", _save_llm(llm, tokenizer, {"seed": seed, **results}))
        _report("llm", results["llm"])
        if "perceptron" not in stages:
            print("[pretrain] note: OUT/perceptron (if any) was trained to feed another LLM; rerun --only perceptron")
    if "perceptron" in stages:
        pc = perceptron_config or PerceptronPretrainConfig()
        if not (out / "llm" / "config.json").exists():
            raise FileNotFoundError(f"{out / 'llm'} is missing: run `photochat pretrain --only llm` first")
        # BLIP-2 style: the perceptron learns to feed the LLM as shipped (read back: float16-rounded weights)
        llm, tokenizer = load_shipped_llm(out / "llm")
        perceptron = _perceptron_for(llm, seed)   # the same start whether or not the LLM stage ran now
        replay = None
        if pc.llm_lr > 0:                        # the LLM trains too: keep its language with a replayed LM loss
            stream = example_stream(random.Random(f"photochat-pretrain-llm-replay:{seed}"),
                                    Collator(tokenizer, None, None, None, max_length=384), LLMPretrainConfig())
            replay = lambda: lm_loss(llm, lm_batch([next(stream) for _ in range(24)], tokenizer.pad_token_id))  # noqa: E731
        results["perceptron"] = pretrain_perceptron(llm, tokenizer, perceptron, pc, seed, progress, replay=replay)
        replace_dir(out / "perceptron", _save_perceptron(perceptron, {"seed": seed, **results["perceptron"]}))
        if pc.llm_lr > 0:
            replace_dir(out / "llm", _save_llm(llm, tokenizer, {"seed": seed, **results}))
        _report("perceptron", results["perceptron"])
    if "sd" in stages:
        results["sd"] = _pretrain_sd(out / "sd", seed, sd_vae_steps, sd_unet_steps)
        _report("sd", results["sd"])
    if "classifier" in stages:
        from photochat_lib.toy.classifier import train_toy_classifier
        kwargs = {"steps": classifier_steps} if classifier_steps is not None else {}
        replace_dir(out / "classifier",
                    lambda d: results.__setitem__("classifier", train_toy_classifier(d, seed, threads=threads,
                                                                                     **kwargs)[1]))
        _report("classifier", results["classifier"])
    write_photochat_json(out)                    # no model card: the foundation is documented by PRETRAIN.md
    if "end2end" in stages:                      # last: it trains the foundation written above
        results["end2end"] = train_end2end(TOY_END2END if out == DEFAULT_OUT else out.with_name(out.name + "-end2end"),
                                           out, seed, progress=progress)
        _report("end2end", results["end2end"])
    return results


def _perceptron_for(llm, seed: int):
    """Return a fresh toy perceptron whose projection feeds `llm` (seeded as in build_toy_components)."""
    from photochat_lib.model.image_perceptron import build_image_perceptron
    torch.manual_seed(seed)
    return build_image_perceptron(toy_blip2_config(IMAGE_SIZE), llm.config.hidden_size)


def _pretrain_sd(final: Path, seed: int, vae_steps: int | None, unet_steps: int | None) -> dict:
    """Run photochat_lib.toy.pretrain_sd.pretrain_image_generator (it writes final atomically); return its stats."""
    from photochat_lib.toy.pretrain_sd import pretrain_image_generator
    _, stats = pretrain_image_generator(final, seed=seed, vae_steps=vae_steps, unet_steps=unet_steps)
    return stats


def train_end2end(final: Path, foundation: Path, seed: int = 0, steps: int | None = None, progress: bool = True) -> dict:
    """Train `foundation` end to end (eq. 13, the toy recipe) on a fresh toy world and write it to `final`
    in float16 (half the bytes; `from_pretrained` loads the toy preset in float32) with its test metrics.

    Same data, seed and recipe as `photochat demo`'s end2end run of that seed, so the shipped model is
    that run (stored in fp16). Notebooks 06-08 and `photochat chat` load it.
    """
    import tempfile

    from photochat_lib.data.toy_world import write_toy_dataset
    from photochat_lib.evaluation.evaluate import evaluate_model
    from photochat_lib.model.photochat_model import PhotoChatModel
    from photochat_lib.training.train import TrainConfig, Trainer
    from photochat_lib.recipe import get_recipe
    steps = steps or get_recipe("toy").max_steps     # recorded in metrics.json
    with tempfile.TemporaryDirectory() as tmp:
        data = write_toy_dataset(Path(tmp) / "toy", seed=0)
        run = Path(tmp) / "run"
        Trainer(TrainConfig(data=str(data), output_dir=str(run), mode="end2end", seed=seed, max_steps=steps,
                            init=str(foundation), eval_every_epochs=0, checkpointing_steps=10 ** 9,
                            progress=progress)).train()
        model = PhotoChatModel.from_pretrained(run / "final").half()
        model = PhotoChatModel.from_pretrained(_saved(model, Path(tmp) / "fp16"))   # what users will load
        metrics = evaluate_model(model, data, "test", max_samples=120, seed=0)["metrics"]
        replace_dir(final, lambda d: (model.half().save_pretrained(d, max_shard_size=SHIPPED_SHARD),
                                      write_json(d / "metrics.json", {"seed": seed, "steps": steps, **metrics}),
                                      write_card(d)))
    return metrics


def _saved(model, path: Path) -> Path:
    model.save_pretrained(path, max_shard_size=SHIPPED_SHARD)
    return path


def write_card(folder: Path) -> None:
    """Write folder/README.md: the model card `push_to_hub` would upload (hub.model_card), shipped with the folder;
    a shipped folder's card loads it by its path in the repository."""
    from photochat_lib.model.hub import model_card
    write_text(folder / "README.md", model_card(folder, repo_id=card_source(folder)))


def card_source(folder: Path) -> str:
    """Return how a card tells users to load `folder`: photochat_lib/toy/checkpoints/NAME for a shipped one."""
    shipped = Path(TOY_CHECKPOINT).resolve().parent
    folder = Path(folder).resolve()
    return f"photochat_lib/toy/checkpoints/{folder.name}" if folder.parent == shipped else str(folder)


def write_photochat_json(out: Path) -> None:
    """Write out/photochat.json exactly as PhotoChatModel.save_pretrained does (toy preset, defaults)."""
    from photochat_lib.model.photochat_model import PhotoChatConfig
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
    p.add_argument("--only", choices=STAGES, default=None, help="Run one stage only; 'perceptron' feeds the "
                   "LLM already in OUT/llm (frozen, as BLIP-2's stage 2), 'end2end' trains OUT's foundation end to "
                   "end on the toy world and writes it next to OUT (default: all stages, in the order llm, "
                   "perceptron, sd, classifier, end2end).")
    p.add_argument("--llm-steps", type=at_least(1), default=LLMPretrainConfig.steps,
                   help=f"Optimizer steps of the LLM stage (default: {LLMPretrainConfig.steps}).")
    p.add_argument("--perceptron-steps", type=at_least(1), default=PerceptronPretrainConfig.steps,
                   help=f"Optimizer steps of the perceptron stage (default: {PerceptronPretrainConfig.steps}).")
    p.add_argument("--sd-vae-steps", type=at_least(1), default=None, help="Optimizer steps of the image generator's "
                   "VAE (default: pretrain_sd's own default).")
    p.add_argument("--sd-unet-steps", type=at_least(1), default=None, help="Optimizer steps of the image generator's "
                   "UNet (default: pretrain_sd's own default).")
    p.add_argument("--classifier-steps", type=at_least(1), default=None, help="Optimizer steps of the toy classifier "
                   "(default: toy_classifier's own default).")
    p.add_argument("--threads", type=at_least(1), default=1, help="torch CPU threads of the llm/perceptron/classifier "
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
    t0 = time.time()
    pretrain_toy(args.out, seed=args.seed, only=args.only, llm_config=LLMPretrainConfig(steps=args.llm_steps),
                 perceptron_config=PerceptronPretrainConfig(steps=args.perceptron_steps),
                 sd_vae_steps=args.sd_vae_steps, sd_unet_steps=args.sd_unet_steps,
                 classifier_steps=args.classifier_steps, threads=args.threads, progress=not args.no_progress)
    print(f"[pretrain] wrote {args.out} in {time.time() - t0:.0f}s")
    return 0
