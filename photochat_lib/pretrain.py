"""``photochat pretrain``: the toy preset's foundation models, pretrained from scratch on a CPU.

The paper starts from pretrained checkpoints (§3.1.2): Llama-2-7b-chat, BLIP-2's ViT + Q-Former and
Stable Diffusion 2.1. Nothing can be downloaded for the toy preset, so this module makes tiny
stand-ins of all of them, in the same folder layouts the hub presets use:

1. **llm/** — the text dialogue generator (Llama-2-chat's stand-in, 4 layers, 256 wide): a causal-LM
   objective, eq. (2) over *every* token, on the corpus of ``pretrain_corpus.py``: toy-world dialogues
   in the chat layout of ``data/collate.py`` (photo turns dropped), scene descriptions, world knowledge
   ("a kite is a triangle") and copying narratives, so that like Llama it can copy what a dialogue
   names and knows what shape a ball is. It never sees ``[IMG]``/``[/IMG]``/``<image>`` nor a
   PhotoChat-style caption: *when* to share and *what* caption to write are left to joint training.
2. **perceptron/** — BLIP-2's two stages, simplified (``pretrain_perceptron.py``): ViT + Q-Former learn
   to name what a photo shows, then, with the LLM frozen, the Q-Former and projection learn to make the
   LLM describe it.
3. **sd/** — the image generator (``pretrain_sd.py``, another module).
4. **classifier/** — the toy judge / Inception stand-in (``toy_classifier.py``).
5. **toy-end2end/** (next to the foundation) — the foundation trained end to end on the toy world
   (`train_end2end`): what notebooks 06-08 and ``photochat chat`` load.

plus ``photochat.json``, so ``PhotoChatModel.from_pretrained(out_dir)`` loads the whole toy model.
Every component folder is built in a temporary sibling and renamed into place.
"""
from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .atomic import replace_dir, write_json
from .cliutil import at_least, progress_bar
from .data.collate import Collator
from .tokens import IGNORE_INDEX
from .data.samples import Sample
from .data.schema import Turn
from .data.toy_world import sample_dialogue
from .pretrain_corpus import MIX, copying_text, knowledge_text, probe_llm
from .pretrain_perceptron import (PerceptronPretrainConfig, adamw, describe_scene, pretrain_perceptron, random_scene,
                                  warmup_cosine)

DEFAULT_OUT = Path(__file__).parent / "checkpoints" / "toy"   # where the shipped toy checkpoints live
STAGES = ("llm", "perceptron", "sd", "classifier", "end2end")  # in the order they run
HUB_PRESETS = {"colab": "TinyLlama-1.1B-Chat + BLIP-2 + SD-2.1-base", "paper": "Llama-2-7b-chat + BLIP-2 + SD-2.1-base"}


# ----- stage 1: the LLM's language -----
@dataclass
class LLMPretrainConfig:
    steps: int = 2000                  # optimizer steps (copying is learnt last: 52 % at 400, 88 % at 1200, 100 % at 1800)
    batch_size: int = 64               # sequences per step (one document per row, right-padded)
    chunk_size: int = 16               # sequences per forward pass, grouped by length (less padding)
    lr: float = 2e-3                   # AdamW peak learning rate (the toy LLM starts from scratch)
    weight_decay: float = 0.01         # AdamW weight decay on weight matrices
    warmup_steps: int = 50             # linear warm-up, then cosine decay to 10 % of lr
    mix: dict = field(default_factory=lambda: dict(MIX))  # share of each kind of text (pretrain_corpus.MIX)
    max_length: int = 384              # longest single sequence (the toy preset's max_length)
    n_eval: int = 64                   # held-out sequences for the final loss
    n_probe: int = 100                 # held-out prompts per probe (pretrain_corpus.probe_llm); 0: none


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


def lm_example(rng: random.Random, collator: Collator, mix: dict[str, float] = MIX) -> list[int]:
    """Return one pretraining sequence of a kind drawn from `mix` (see `pretrain_corpus`): a chat-layout
    dialogue, or <s> text </s> with a scene description, world knowledge or a copying narrative."""
    tok = collator.llm
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    if kind == "dialogue":
        return chat_ids(collator, dialogue_turns(rng))
    if kind == "description":
        objects, bg = random_scene(rng)
        text = describe_scene(objects, bg)
        if rng.random() < 0.5:  # data-to-text: verbalise a record given earlier in the context
            text = scene_record(objects, bg) + "\n" + text
    elif kind == "knowledge":
        text = knowledge_text(rng)
    else:
        text = copying_text(rng)
    return [tok.bos_token_id] + tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]


def example_stream(rng: random.Random, collator: Collator, cfg: "LLMPretrainConfig"):
    """Yield pretraining sequences one by one (each cut to cfg.max_length tokens).

    Sequences are not packed end to end: in a packed block the copying texts of other documents
    (more "a red ...", "a blue ...") sit in the same attention window, and copying the right colour
    then needs the model to learn document boundaries first; padded batches keep one document per row.
    """
    while True:
        yield lm_example(rng, collator, cfg.mix)[: cfg.max_length]


def lm_batch(sequences: list[list[int]], pad_token_id: int) -> dict:
    """Return input_ids (B, T) right-padded, attention_mask and labels (padding never scored)."""
    T = max(map(len, sequences))
    input_ids = torch.full((len(sequences), T), pad_token_id, dtype=torch.long)    # (B, T)
    attention_mask = torch.zeros_like(input_ids)                                   # (B, T)
    for b, seq in enumerate(sequences):
        input_ids[b, : len(seq)] = torch.tensor(seq)
        attention_mask[b, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "labels": input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)}


def lm_loss(llm, batch: dict) -> torch.Tensor:
    """Return eq. (2) over all tokens of the batch (next-token NLL, mean over real tokens)."""
    from .text_generator import text_loss
    logits = llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V) eq. (1)
    return text_loss(logits, batch["labels"])                                                  # eq. (2)


def pretrain_llm(llm, tokenizer, config: LLMPretrainConfig | None = None, seed: int = 0,
                 progress: bool = True, on_step=None) -> dict:
    """Train the LLM in place with the causal-LM objective; return losses and seconds.

    on_step(step, loss): called after every optimizer step (e.g. to probe the model as it learns).
    """
    cfg = config or LLMPretrainConfig()
    torch.manual_seed(seed)
    collator = Collator(tokenizer, None, None, None, max_length=cfg.max_length)
    rng = random.Random(f"photochat-pretrain-llm:{seed}")   # a stream the toy splits never use
    llm.requires_grad_(True).train()
    opt = adamw(llm, cfg.lr, cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.warmup_steps, cfg.steps)
    losses, t0 = [], time.time()
    bar = progress_bar(range(cfg.steps), desc="llm", disable=not progress, leave=False)
    stream = example_stream(rng, collator, cfg)
    for _ in bar:
        sequences = sorted((next(stream) for _ in range(cfg.batch_size)), key=len)
        n_tokens = sum(len(x) - 1 for x in sequences)                           # predicted tokens
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for k in range(0, len(sequences), cfg.chunk_size):   # similar lengths together: little padding
            chunk = sequences[k:k + cfg.chunk_size]
            part = lm_loss(llm, lm_batch(chunk, tokenizer.pad_token_id)) * sum(len(x) - 1 for x in chunk) / n_tokens
            part.backward()                                  # = the mean NLL over the whole step's tokens
            loss += part.detach()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_step is not None:
            on_step(len(losses), losses[-1])
    llm.eval()
    metrics = {"steps": cfg.steps, "first_loss": losses[0] if losses else None,
               "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "train_seconds": round(time.time() - t0, 1)}
    if cfg.n_eval:
        metrics["heldout_loss"] = heldout_lm_loss(llm, tokenizer, cfg, seed)
    if cfg.n_probe:
        metrics["probes"] = probe_llm(llm, tokenizer, n=cfg.n_probe, seed=seed)
    return metrics


@torch.no_grad()
def heldout_lm_loss(llm, tokenizer, cfg: LLMPretrainConfig, seed: int = 0) -> float:
    """Return the LM loss on n_eval blocks of a held-out stream."""
    collator = Collator(tokenizer, None, None, None, max_length=cfg.max_length)
    stream = example_stream(random.Random(f"photochat-pretrain-llm-heldout:{seed}"), collator, cfg)
    batch = lm_batch([next(stream) for _ in range(cfg.n_eval)], tokenizer.pad_token_id)
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
    if "llm" in stages:
        results["llm"] = pretrain_llm(llm, tokenizer, llm_config, seed, progress)
        replace_dir(out / "llm", _save_llm(llm, tokenizer, {"seed": seed, **results}))
        _report("llm", results["llm"])
        if "perceptron" not in stages:
            print("[pretrain] note: OUT/perceptron (if any) was trained to feed another LLM; rerun --only perceptron")
    if "perceptron" in stages:
        pc = perceptron_config or PerceptronPretrainConfig()
        if "llm" not in stages:                  # BLIP-2 style: the perceptron learns to feed the shipped LLM
            if not (out / "llm" / "config.json").exists():
                raise FileNotFoundError(f"{out / 'llm'} is missing: run `photochat pretrain --only llm` first")
            from .text_generator import load_llm
            llm, tokenizer = load_llm(str(out / "llm"), dtype=torch.float32)
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
        from .toy_classifier import train_toy_classifier
        kwargs = {"steps": classifier_steps} if classifier_steps is not None else {}
        replace_dir(out / "classifier",
                    lambda d: results.__setitem__("classifier", train_toy_classifier(d, seed, threads=threads,
                                                                                     **kwargs)[1]))
        _report("classifier", results["classifier"])
    write_photochat_json(out)
    if "end2end" in stages:                      # last: it trains the foundation written above
        from .presets import TOY_END2END
        results["end2end"] = train_end2end(TOY_END2END if out == DEFAULT_OUT else out.with_name(out.name + "-end2end"),
                                           out, seed, progress=progress)
        _report("end2end", results["end2end"])
    return results


def _perceptron_for(llm, seed: int):
    """Return a fresh toy perceptron whose projection feeds `llm` (seeded as in build_toy_components)."""
    from .image_perceptron import build_image_perceptron
    from .presets import PRESETS, toy_blip2_config
    torch.manual_seed(seed)
    return build_image_perceptron(toy_blip2_config(PRESETS["toy"].image_size), llm.config.hidden_size)


def _pretrain_sd(final: Path, seed: int, vae_steps: int | None, unet_steps: int | None) -> dict:
    """Run photochat_lib.pretrain_sd.pretrain_image_generator (it writes final atomically); return its stats."""
    from .pretrain_sd import pretrain_image_generator
    _, stats = pretrain_image_generator(final, seed=seed, vae_steps=vae_steps, unet_steps=unet_steps)
    return stats


def train_end2end(final: Path, foundation: Path, seed: int = 0, steps: int | None = None, progress: bool = True) -> dict:
    """Train `foundation` end to end (eq. 13, the toy recipe) on a fresh toy world and write it to `final`
    in float16 (half the bytes; `from_pretrained` loads the toy preset in float32) with its test metrics.

    Same data, seed and recipe as `photochat demo`'s end2end run of that seed, so the shipped model is
    that run (stored in fp16). Notebooks 06-08 and `photochat chat` load it.
    """
    import tempfile

    from .data.toy_world import write_toy_dataset
    from .evaluate import evaluate_model
    from .model import PhotoChatModel
    from .train import TrainConfig, Trainer
    from .recipe import get_recipe
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
        replace_dir(final, lambda d: (model.half().save_pretrained(d),
                                      write_json(d / "metrics.json", {"seed": seed, "steps": steps, **metrics})))
    return metrics


def _saved(model, path: Path) -> Path:
    model.save_pretrained(path)
    return path


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
