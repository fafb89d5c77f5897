"""Pretraining the toy image perceptron, BLIP-2 style (simplified): two stages on photos drawn on the fly.

The paper starts from BLIP-2's ViT and Q-Former (§2.3, §3.1.2). BLIP-2 trains its Q-Former in two
stages: first *representation* learning against the image encoder (its queries learn to extract what
text can talk about), then *generative* learning with the LLM frozen (the Q-Former, its 32 query
tokens and a projection learn to make the LLM write the photo's caption). The toy preset has no
BLIP-2, so this module does the same from scratch on toy photos:

1. **representation** (`pretrain_representation`): ViT + Q-Former + queries, with an `AttributeHead`
   on the 32 query outputs that names, for each place, the object's colour, shape and size, and the
   background — a stand-in for BLIP-2's image-text contrastive / matching objectives. The ViT trains
   here (there is no pretrained one); the head is thrown away.
2. **generative** (`pretrain_perceptron`), the LLM frozen as in BLIP-2:

    H_v = Q-Former(Q, ViT(I))                      eq. (3): 32 visual tokens, prefix of the LLM input
    L   = -sum_i log p(d_i | H_v, <s>, d_<i)       eq. (2) on the description d

   where d names everything the photo shows, objects left to right: "A gray background with a big red
   circle on the left and a small blue square on the right." The Q-Former, queries and projection train.

The objective never sees a dialogue, a caption of the PhotoChat style, or the ``[IMG]`` tokens: when to
share, and what to write between ``[IMG]`` and ``[/IMG]``, are left to the joint training (§2.5).

**Measured.** The earlier toy LLM (2 layers, 128 wide) could not be steered while frozen (colour accuracy
at chance) and was trained along, LLaVA-style; and 8×8 patches left shapes and sizes at chance. With 4×4
patches, stage 1, and the 4-layer LLM that can copy (``corpus.py``), the frozen LLM reads every
attribute (``checkpoints/toy/PRETRAIN.md``). ``llm_lr > 0`` still trains the LLM too.
"""
from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass

import torch

from photochat_lib.utils.cliutil import progress_bar
from photochat_lib.data.images import image_transform
from photochat_lib.data.toy_world import BACKGROUNDS, COLOURS, NOUNS, POSITIONS, SHAPES, SIZES, ToyObject, draw_photo
from photochat_lib.model.image_perceptron import init_from_scratch
from photochat_lib.model.text_generator import text_loss
from photochat_lib.data.tokens import IGNORE_INDEX

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
    """Return exact-match, attribute, colour, shape, size and background accuracy of predicted descriptions.

    Attributes per photo: the background, and for every true object its position (an object is
    described at that place), colour, shape and size; an object described at the wrong place gets
    all four wrong. ``colour_accuracy``, ``shape_accuracy`` and ``size_accuracy`` count objects.
    """
    exact = attr = n_attr = n_obj = bg_ok = 0
    per_object = {"size": 0, "colour": 0, "shape": 0}
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
                hits = {"size": got[0] == o.size, "colour": got[1] == o.colour, "shape": got[2] == o.shape}
                attr += 1 + sum(hits.values())
                for k, v in hits.items():
                    per_object[k] += v
    n = max(1, len(predicted))
    return {"exact_match": exact / n, "attribute_accuracy": attr / max(1, n_attr),
            **{f"{k}_accuracy": v / max(1, n_obj) for k, v in per_object.items()},
            "background_accuracy": bg_ok / n, "n_photos": len(predicted)}


# ----- training -----
@dataclass
class PerceptronPretrainConfig:
    representation_steps: int = 600  # stage 1: ViT + Q-Former + queries with an AttributeHead (0: skip)
    steps: int = 1000           # stage 2: optimizer steps of the description loss (one fresh batch each)
    vit_in_stage2: bool = False  # stage 2 trains the ViT too (BLIP-2 keeps its image encoder frozen)
    batch_size: int = 48        # photos per step
    lr: float = 2e-3            # AdamW peak learning rate (the perceptron starts from scratch)
    weight_decay: float = 0.01  # AdamW weight decay on weight matrices
    warmup_steps: int = 30      # linear warm-up, then cosine decay to 10 % of lr
    llm_lr: float = 0.0         # 0: the LLM is frozen, as in BLIP-2's stage 2; > 0: it trains too, at this lr
    dialogue_share: float = 0.5  # share of each stage-2 batch that is a dialogue cut after a shared photo, the
                                 # friend's reply to it scored (the photo read mid-dialogue); the rest descriptions
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


def remark_batch(llm, tokenizer, perceptron, rng: random.Random, n: int, image_size: int = 32):
    """Return (inputs_embeds, attention_mask, labels, labels of the photos) for n fresh toy dialogues cut after the
    friend's first reply to the shared photo: the photo's 32 visual tokens stand mid-dialogue where the collate
    step puts them (eq. 3) and only that reply is scored. In the LLM's pretraining dialogues the photo stood there
    as its description in words; here the perceptron must say the same through its visual tokens."""
    from photochat_lib.data.collate import Collator
    from photochat_lib.data.samples import make_samples
    from photochat_lib.data.schema import Dialogue, Photo, Turn
    from photochat_lib.data.toy_world import sample_dialogue
    from photochat_lib.model.text_generator import placeholder_id, splice_visual_tokens
    collator = Collator(tokenizer, None, None, None, max_length=384)
    encoded, pixels, labels_of_photos = [], [], []
    for _ in range(n):
        turns, objects, bg = sample_dialogue(rng, "train")
        dialogue = Dialogue("pretrain", [Turn(str(t["user_id"]), photo=Photo(caption="photo")) if t["share_photo"]
                                         else Turn(str(t["user_id"]), t["message"]) for t in turns], "pretrain")
        encoded.append(collator.encode(next(s for s in make_samples([dialogue]) if s.answers_photo)))
        pixels.append(image_transform(image_size)(draw_photo(objects, bg, image_size)))
        labels_of_photos.append({"background": bg, "objects": [vars(o) for o in objects]})
    T = max(len(e["input_ids"]) for e in encoded)
    input_ids = torch.full((n, T), tokenizer.pad_token_id, dtype=torch.long)      # (B, T)
    labels = torch.full((n, T), IGNORE_INDEX, dtype=torch.long)                   # (B, T)
    mask = torch.zeros(n, T, dtype=torch.long)                                    # (B, T)
    for b, e in enumerate(encoded):
        input_ids[b, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        labels[b, : len(e["labels"])] = torch.tensor(e["labels"])
        mask[b, : len(e["input_ids"])] = 1
    visual = perceptron(torch.stack(pixels).to(perceptron.device, perceptron.dtype))  # eq. (3): (B, 32, D)
    embeds = splice_visual_tokens(llm.get_input_embeddings()(input_ids), input_ids, placeholder_id(tokenizer),
                                  visual.to(llm.dtype), torch.arange(n))           # (B, T, D)
    return embeds, mask, labels, labels_of_photos


def scene_batch(rng: random.Random, n: int, image_size: int = 32):
    """Return (pixel values (n, 3, S, S), descriptions, scenes) of n freshly drawn toy photos."""
    scenes = [random_scene(rng) for _ in range(n)]
    transform = image_transform(image_size)
    pixels = torch.stack([transform(draw_photo(objs, bg, image_size)) for objs, bg in scenes])  # (n, 3, S, S)
    return pixels, [describe_scene(objs, bg) for objs, bg in scenes], scenes


# ----- stage 1: representation learning (BLIP-2's first stage, simplified) -----
class AttributeHead(torch.nn.Module):
    """Reads the Q-Former's 32 query outputs and names what the photo shows: for each place (left, middle,
    right) whether an object is there and its colour, shape and size, and the background colour.

    A stand-in for the objectives of BLIP-2's first stage (image-text contrastive, matching, grounded
    generation), which make the queries extract what text can talk about before any LLM is attached.
    Used only in pretraining; it is not saved."""

    SLOTS = {"present": 2, "colour": len(COLOURS), "shape": len(SHAPES), "size": len(SIZES)}  # per place

    def __init__(self, num_queries: int, dim: int):
        super().__init__()
        self.per_place = sum(self.SLOTS.values())
        self.linear = torch.nn.Linear(num_queries * dim, len(POSITIONS) * self.per_place + len(BACKGROUNDS))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return {slot: logits}: (N, 3, classes) per place for each SLOTS key, (N, 3) for background."""
        out = self.linear(features.flatten(1))                                     # (N, 3·per_place + 3)
        places = out[:, : len(POSITIONS) * self.per_place].view(-1, len(POSITIONS), self.per_place)
        logits, start = {}, 0
        for name, k in self.SLOTS.items():
            logits[name] = places[..., start:start + k]                            # (N, 3, k)
            start += k
        logits["background"] = out[:, len(POSITIONS) * self.per_place:]            # (N, 3)
        return logits


def attribute_targets(scenes: list[tuple[list[ToyObject], str]]) -> dict[str, torch.Tensor]:
    """Return the AttributeHead's targets: class ids (N, 3) per slot (-100 where no object), (N,) background."""
    n = len(scenes)
    t = {name: torch.full((n, len(POSITIONS)), IGNORE_INDEX, dtype=torch.long) for name in AttributeHead.SLOTS}
    t["present"].zero_()
    t["background"] = torch.tensor([list(BACKGROUNDS).index(bg) for _, bg in scenes])
    for b, (objects, _) in enumerate(scenes):
        for o in objects:
            p = POSITIONS.index(o.position)
            t["present"][b, p] = 1
            t["colour"][b, p], t["shape"][b, p] = list(COLOURS).index(o.colour), SHAPES.index(o.shape)
            t["size"][b, p] = SIZES.index(o.size)
    return t


def attribute_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return the summed cross-entropy of every slot (absent objects' colour/shape/size are ignored)."""
    ce = torch.nn.functional.cross_entropy
    return sum(ce(logits[k].reshape(-1, logits[k].shape[-1]), targets[k].flatten(), ignore_index=IGNORE_INDEX)
               for k in logits)


def attribute_accuracy(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """Return the accuracy of each slot over the objects (or places, for "present"; photos for background)."""
    acc = {}
    for k, lo in logits.items():
        y = targets[k]
        keep = y != IGNORE_INDEX
        acc[k] = (lo.argmax(-1)[keep] == y[keep]).float().mean().item()
    return acc


def pretrain_representation(perceptron, cfg: "PerceptronPretrainConfig", seed: int = 0,
                            progress: bool = True) -> dict:
    """Stage 1: train the ViT, Q-Former and queries with an AttributeHead on fresh photos; return metrics."""
    rng = random.Random(f"photochat-pretrain-representation:{seed}")
    head = AttributeHead(perceptron.num_query_tokens, perceptron.config.qformer_config.hidden_size)
    perceptron.requires_grad_(True).train()
    params = [p for n, p in perceptron.named_parameters() if not n.startswith("language_projection")]
    opt = torch.optim.AdamW([*params, *head.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.warmup_steps, cfg.representation_steps)
    losses, t0 = [], time.time()
    bar = progress_bar(range(cfg.representation_steps), desc="perceptron stage 1", disable=not progress, leave=False)
    for _ in bar:
        pixels, _, scenes = scene_batch(rng, cfg.batch_size, cfg.image_size)
        features, _ = perceptron.query_features(pixels)                            # eq. (3): (B, 32, Dq)
        loss = attribute_loss(head(features), attribute_targets(scenes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    perceptron.eval()
    metrics = {"steps": cfg.representation_steps, "first_loss": losses[0] if losses else None,
               "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "train_seconds": round(time.time() - t0, 1)}
    if cfg.n_eval:
        with torch.no_grad():
            pixels, _, scenes = scene_batch(random.Random(f"photochat-pretrain-perceptron-heldout:{seed}"),
                                            cfg.n_eval, cfg.image_size)
            metrics["heldout_head_accuracy"] = attribute_accuracy(head(perceptron.query_features(pixels)[0]),
                                                                  attribute_targets(scenes))
    return metrics


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
    stage1 = pretrain_representation(perceptron, cfg, seed, progress) if cfg.representation_steps else None
    perceptron.requires_grad_(True).train()
    perceptron.vision_model.requires_grad_(cfg.vit_in_stage2 or not cfg.representation_steps)
    opt = adamw(perceptron, cfg.lr, cfg.weight_decay)
    if cfg.llm_lr > 0:
        opt.add_param_group({"params": [p for p in llm.parameters()], "lr": cfg.llm_lr, "weight_decay": 0.0})
    sched = warmup_cosine(opt, cfg.warmup_steps, cfg.steps)
    losses, t0 = [], time.time()
    bar = progress_bar(range(cfg.steps), desc="perceptron", disable=not progress, leave=False)
    n_dialogue = round(cfg.batch_size * cfg.dialogue_share)
    for _ in bar:
        loss = 0.0
        if n_dialogue < cfg.batch_size:                                            # photos described in full
            pixels, texts, _ = scene_batch(rng, cfg.batch_size - n_dialogue, cfg.image_size)
            visual = perceptron(pixels)                                            # eq. (3): (B, 32, D)
            embeds, mask, labels = description_batch(llm, tokenizer, visual, texts)
            logits = llm(inputs_embeds=embeds, attention_mask=mask).logits         # (B, Q+L, V) eq. (1)
            loss = text_loss(logits, labels) * (1 - cfg.dialogue_share)            # eq. (2)
        if n_dialogue:                                                             # photos read mid-dialogue
            embeds, mask, labels, _ = remark_batch(llm, tokenizer, perceptron, rng, n_dialogue, cfg.image_size)
            logits = llm(inputs_embeds=embeds, attention_mask=mask).logits         # (B, T, V) eq. (1)
            loss = loss + text_loss(logits, labels) * cfg.dialogue_share           # eq. (2) on the reply
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
    if stage1 is not None:
        metrics["representation"] = stage1
    if cfg.n_eval:
        metrics["heldout"] = evaluate_perceptron(llm, tokenizer, perceptron, cfg.n_eval, seed, cfg.image_size)
        metrics["heldout_remarks"] = evaluate_remarks(llm, tokenizer, perceptron, cfg.n_eval, seed, cfg.image_size)
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


@torch.no_grad()
def evaluate_remarks(llm, tokenizer, perceptron, n: int = 200, seed: int = 0, image_size: int = 32) -> dict:
    """Return the share of n held-out toy dialogues whose greedy reply to the photo (the frozen LLM reading the
    photo mid-dialogue) states a photo-only fact and only true ones (`data.photo_facts.grounded`)."""
    from photochat_lib.data.photo_facts import grounded
    rng = random.Random(f"photochat-pretrain-remarks-heldout:{seed}")
    was_training = perceptron.training
    perceptron.eval()
    hits, examples = 0, []
    for _ in range(n):
        embeds, mask, labels, photo = remark_batch(llm, tokenizer, perceptron, rng, 1, image_size)
        start = int((labels[0] != IGNORE_INDEX).nonzero()[0])                     # the reply's first token
        out = llm.generate(inputs_embeds=embeds[:, :start], attention_mask=mask[:, :start], max_new_tokens=32,
                           do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        reply = tokenizer.decode(out[0].tolist(), skip_special_tokens=True).split("\n")[0].strip()
        hits += grounded(reply, photo[0])
        examples.append(reply)
    perceptron.train(was_training)
    return {"grounded": hits / max(1, n), "n_dialogues": n, "examples": examples[:3]}
