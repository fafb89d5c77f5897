"""Pretraining the toy image perceptron, BLIP-2 style (simplified): describe a photo through the LLM.

The paper starts from BLIP-2's ViT and Q-Former (§2.3, §3.1.2). BLIP-2's second stage keeps the LLM
frozen and trains the Q-Former, its 32 query tokens and a projection so that the LLM, given the 32
visual tokens as a soft prefix, generates the photo's caption. The toy preset has no BLIP-2, so this
module does the same from scratch on photos of the toy world, drawn on the fly:

    H_v = Q-Former(Q, ViT(I))                      eq. (3): 32 visual tokens, prefix of the LLM input
    L   = -sum_i log p(d_i | H_v, <s>, d_<i)       eq. (2) on the description d

where d is a rich description that names everything the photo shows, objects left to right:
"A gray background with a big red circle on the left and a small blue square on the right."
Unlike BLIP-2 the ViT trains too (there is no pretrained one). The objective never sees a dialogue,
a caption of the PhotoChat style, or the ``[IMG]`` tokens: when to share, and what to write between
``[IMG]`` and ``[/IMG]``, are left to the joint training (§2.5).

**Deviation from BLIP-2 (measured, not assumed).** With the toy LLM frozen (``llm_lr=0``) the LLM
learns the background from the prefix but nothing about the objects: after 300 steps colour accuracy
was 21-23 % (chance: 20 %), with or without an auxiliary attribute loss on the visual tokens. The
2-layer, 128-wide LLM, pretrained for ~1.5 min, has no in-context read-out to steer (it cannot even
copy a scene written out as text into its description). So by default the LLM trains too, at
``llm_lr``, LLaVA-style, while a replayed causal-LM loss on its pretraining dialogues keeps its
language; ``photochat pretrain`` then ships that LLM in llm/.
"""
from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .data.images import image_transform
from .data.toy_world import BACKGROUNDS, COLOURS, NOUNS, POSITIONS, SHAPES, SIZES, ToyObject, draw_photo
from .image_perceptron import init_from_scratch
from .text_generator import text_loss
from .tokens import IGNORE_INDEX

WHERE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}  # position phrases
_OBJECT = re.compile(r"(small|big) (\w+) (circle|square|triangle) (on the left|in the middle|on the right)")


# ----- the toy world described in full -----
def random_scene(rng: random.Random) -> tuple[list[ToyObject], str]:
    """Return (objects, background) drawn like a toy dialogue's photo: 1-3 distinct objects, distinct places."""
    n = rng.randint(1, 3)
    positions = rng.sample(POSITIONS, n)
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], n)
    objects = [ToyObject(c, s, rng.choice(NOUNS[s]), rng.choice(SIZES), p) for (c, s), p in zip(kinds, positions)]
    return objects, rng.choice(list(BACKGROUNDS))


def describe_scene(objects: list[ToyObject], background: str) -> str:
    """Return the rich description: background, then every object left to right (size, colour, shape, place)."""
    ordered = sorted(objects, key=lambda o: POSITIONS.index(o.position))
    parts = [f"a {o.size} {o.colour} {o.shape} {WHERE[o.position]}" for o in ordered]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"A {background} background with {listed}."


def parse_description(text: str) -> tuple[str | None, dict[str, tuple[str, str, str]]]:
    """Return (background or None, {position: (size, colour, shape)}) read from a description."""
    bg = re.match(r"\s*A (\w+) background", text)
    objects = {}
    for size, colour, shape, where in _OBJECT.findall(text):
        objects.setdefault(where.split()[-1], (size, colour, shape))
    return (bg.group(1) if bg else None), objects


def description_scores(predicted: list[str], scenes: list[tuple[list[ToyObject], str]]) -> dict:
    """Return exact-match, attribute, colour and background accuracy of predicted descriptions.

    Attributes per photo: the background, and for every true object its position (an object is
    described at that place), colour, shape and size; an object described at the wrong place gets
    all four wrong. ``colour_accuracy`` counts only the objects' colours.
    """
    exact = attr = n_attr = colour = n_obj = bg_ok = 0
    for text, (objects, bg) in zip(predicted, scenes):
        exact += text.strip() == describe_scene(objects, bg)
        p_bg, p_obj = parse_description(text)
        bg_ok += p_bg == bg
        attr += p_bg == bg
        n_attr += 1 + 4 * len(objects)
        for o in objects:
            got = p_obj.get(o.position)
            n_obj += 1
            if got is not None:
                attr += 1 + (got[0] == o.size) + (got[1] == o.colour) + (got[2] == o.shape)
                colour += got[1] == o.colour
    n = max(1, len(predicted))
    return {"exact_match": exact / n, "attribute_accuracy": attr / max(1, n_attr),
            "colour_accuracy": colour / max(1, n_obj), "background_accuracy": bg_ok / n, "n_photos": len(predicted)}


# ----- training -----
@dataclass
class PerceptronPretrainConfig:
    steps: int = 500            # optimizer steps (one fresh batch of photos each)
    batch_size: int = 48        # photos per step
    lr: float = 2e-3            # AdamW peak learning rate (the perceptron starts from scratch)
    weight_decay: float = 0.01  # AdamW weight decay on weight matrices
    warmup_steps: int = 30      # linear warm-up, then cosine decay to 10 % of lr
    llm_lr: float = 1e-3        # > 0: the LLM trains too, at this lr (see the module docstring); 0: frozen
    n_eval: int = 200           # fresh photos (a stream training never sees) for the final greedy check
    image_size: int = 32        # side of the drawn photos (the toy preset's ViT input)


def warmup_cosine(opt: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Return a scheduler: linear warm-up over `warmup` steps, then cosine decay to 10 % of the peak."""
    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, steps - warmup))))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def adamw(module: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """Return AdamW over the trainable parameters; decay on matrices only (not norms, biases, embeddings)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def description_batch(llm, tokenizer, visual: torch.Tensor, texts: list[str]):
    """Return (inputs_embeds (B, Q+L, D), attention_mask, labels): [visual tokens][<s> text </s>], text scored."""
    ids = [[tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
           for t in texts]
    B, Q, L = len(ids), visual.shape[1], max(map(len, ids))
    input_ids = torch.full((B, L), tokenizer.pad_token_id, dtype=torch.long)       # (B, L)
    text_mask = torch.zeros(B, L, dtype=torch.long)                                # (B, L)
    for b, row in enumerate(ids):
        input_ids[b, : len(row)] = torch.tensor(row)
        text_mask[b, : len(row)] = 1
    labels = input_ids.masked_fill(text_mask == 0, IGNORE_INDEX)
    labels[:, 0] = IGNORE_INDEX                                                    # <s> is given, not predicted
    embeds = torch.cat([visual, llm.get_input_embeddings()(input_ids)], dim=1)     # (B, Q+L, D)
    mask = torch.cat([torch.ones(B, Q, dtype=torch.long), text_mask], dim=1)       # (B, Q+L)
    labels = torch.cat([torch.full((B, Q), IGNORE_INDEX, dtype=torch.long), labels], dim=1)  # (B, Q+L)
    return embeds, mask, labels


def scene_batch(rng: random.Random, n: int, image_size: int = 32):
    """Return (pixel values (n, 3, S, S), descriptions, scenes) of n freshly drawn toy photos."""
    scenes = [random_scene(rng) for _ in range(n)]
    transform = image_transform(image_size)
    pixels = torch.stack([transform(draw_photo(objs, bg, image_size)) for objs, bg in scenes])  # (n, 3, S, S)
    return pixels, [describe_scene(objs, bg) for objs, bg in scenes], scenes


def pretrain_perceptron(llm, tokenizer, perceptron, config: PerceptronPretrainConfig | None = None,
                        seed: int = 0, progress: bool = True, replay=None) -> dict:
    """Train the perceptron in place (and the LLM if cfg.llm_lr > 0); return losses, accuracies and seconds.

    replay: a callable returning an LM loss on text (added each step while the LLM trains).
    """
    cfg = config or PerceptronPretrainConfig()
    torch.manual_seed(seed)
    rng = random.Random(f"photochat-pretrain-perceptron:{seed}")  # photos never drawn by the toy splits
    llm.requires_grad_(cfg.llm_lr > 0).eval()                      # frozen as in BLIP-2 stage 2 when llm_lr = 0
    init_from_scratch(perceptron)
    perceptron.requires_grad_(True).train()
    opt = adamw(perceptron, cfg.lr, cfg.weight_decay)
    if cfg.llm_lr > 0:
        opt.add_param_group({"params": [p for p in llm.parameters()], "lr": cfg.llm_lr, "weight_decay": 0.0})
    sched = warmup_cosine(opt, cfg.warmup_steps, cfg.steps)
    losses, t0 = [], time.time()
    bar = tqdm(range(cfg.steps), desc="perceptron", disable=not progress, leave=False)
    for _ in bar:
        pixels, texts, _ = scene_batch(rng, cfg.batch_size, cfg.image_size)
        visual = perceptron(pixels)                                                # eq. (3): (B, 32, D)
        embeds, mask, labels = description_batch(llm, tokenizer, visual, texts)
        logits = llm(inputs_embeds=embeds, attention_mask=mask).logits             # (B, Q+L, V) eq. (1)
        loss = text_loss(logits, labels)                                           # eq. (2)
        opt.zero_grad(set_to_none=True)
        if replay is not None and cfg.llm_lr > 0:
            loss_keep = replay()                       # eq. (2) on dialogue text, so the LLM keeps its language
            (loss + loss_keep).backward()
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    perceptron.eval()
    seconds = time.time() - t0
    metrics = {"steps": cfg.steps, "first_loss": losses[0] if losses else None,
               "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "train_seconds": round(seconds, 1)}
    if cfg.n_eval:
        metrics["heldout"] = evaluate_perceptron(llm, tokenizer, perceptron, cfg.n_eval, seed, cfg.image_size)
    return metrics


# ----- greedy description of fresh photos -----
@torch.no_grad()
def describe_photos(llm, tokenizer, perceptron, pixels: torch.Tensor, max_new_tokens: int = 40) -> list[str]:
    """Return the LLM's greedy description of each photo from its 32 visual tokens (N photos → N strings)."""
    visual = perceptron(pixels.to(perceptron.device, perceptron.dtype))           # (N, 32, D)
    bos = torch.full((visual.shape[0], 1), tokenizer.bos_token_id, dtype=torch.long, device=visual.device)
    embeds = torch.cat([visual.to(llm.dtype), llm.get_input_embeddings()(bos)], dim=1)  # (N, 33, D)
    out = llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                       max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id)                        # (N, <= max_new) new tokens
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out.tolist()]


def evaluate_perceptron(llm, tokenizer, perceptron, n: int = 200, seed: int = 0, image_size: int = 32) -> dict:
    """Return `description_scores` of greedy descriptions of n photos from a held-out stream."""
    rng = random.Random(f"photochat-pretrain-perceptron-heldout:{seed}")
    pixels, _, scenes = scene_batch(rng, n, image_size)
    was_training = perceptron.training
    perceptron.eval()
    predicted = []
    for i in range(0, n, 100):
        predicted += describe_photos(llm, tokenizer, perceptron, pixels[i:i + 100])
    perceptron.train(was_training)
    scores = description_scores(predicted, scenes)
    scores["examples"] = [{"predicted": p, "gold": describe_scene(*s)} for p, s in zip(predicted[:3], scenes[:3])]
    return scores
