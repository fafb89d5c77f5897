"""The toy foundation LLM's pretraining text: language, world knowledge and copying — and probes of each.

Llama-2 arrives at the paper's joint training (§2.5) already able to do two things the photo-sharing
task leans on: it *copies* what the dialogue names ("a red ball") into what it writes next, and it
*knows* the world (a ball is round). The toy LLM must arrive with the same two abilities, or the toy
world cannot stand in for the paper. So its causal-LM corpus mixes four kinds of plain text:

* **dialogue** — toy-world dialogues in the collate step's chat layout, their photo turns removed;
* **description** — a toy scene described in words, half of the time after a terse record of it
  (data-to-text: the record's words are copied into the description);
* **knowledge** — "world knowledge" sentences about the toy world's nouns: "A kite is a triangle.",
  "Coins, balls and plates are all circles.", "What shape is a box? A square.";
* **copying** — short narratives that name a few objects and then repeat them, as they are or as
  shapes: "Leo got a red ball and a green kite. In shapes, that is a red circle and a green triangle."

None of it contains ``[IMG]``, ``[/IMG]``, ``<image>`` or the PhotoChat caption format ("Objects in
the photo: ..."): *when* to share and *what* a caption looks like are left to the joint training.

The probes (`probe_llm`) measure the two abilities on a held-out random stream of objects with greedy
decoding: ``copy`` (repeat the objects a sentence named), ``shapes`` (repeat them as shapes, in order),
``knowledge`` (name a noun's shape) and ``shapes_new_wording`` (``shapes`` after a prompt worded as no
pretraining text is: how far the ability generalises).
"""
from __future__ import annotations

import random

import torch

from photochat_lib.data.toy_world import COLOURS, NAMES, NOUNS, PLACES, SHAPES, WHEN, ToyObject

SHAPE_OF = {noun: shape for shape, nouns in NOUNS.items() for noun in nouns}   # ball -> circle, ...
SHAPE_FACTS = {"circle": ["A circle is round.", "A circle has no corners."],
               "square": ["A square has four equal sides.", "A square has four corners."],
               "triangle": ["A triangle has three sides.", "A triangle has three corners."]}
KNOWLEDGE = [  # one fact about one noun; {noun}, {shape}
    "A {noun} is a {shape}.", "A {noun} has the shape of a {shape}.", "Every {noun} is shaped like a {shape}.",
    "If you draw a {noun}, you draw a {shape}.", "What shape is a {noun}? A {shape}.",
    "Think of a {noun}: it looks like a {shape}.", "The shape of a {noun} is a {shape}.",
]
GROUP_KNOWLEDGE = ["{nouns} are all {shape}s.", "A {shape} can be {nouns}."]  # {nouns}: "a ball, a coin or a plate"
COPY = [  # a narrative names {items} and repeats them: {again} (the same words) or {shapes} (as shapes)
    "{name} got {items} at the {place}. So {name} has {again}.",
    "{name} bought {items} {when}. Later {name} showed me {again}.",
    "{name} has {items}. In shapes, that is {shapes}.",
    "{name} found {items}. Drawn as shapes: {shapes}.",
    "At the {place}, {name} picked up {items}; as shapes that makes {shapes}.",
    "Things: {list}. Shapes: {shape_list}.",
    "{name} talked about {items}. To draw them, draw {shapes}.",
]
PROBES = {  # kind -> prompt; the expected continuation is the objects as named, or as shapes, or the shape
    "copy": "{name} bought {items} {when}. Later {name} showed me",            # a pretraining wording
    "shapes": "{name} has {items}. In shapes, that is",                        # a pretraining wording
    "shapes_new_wording": "{name} got {items}. Their shapes, in the same order:",  # never seen in pretraining
    "knowledge": "The shape of a {noun} is a",
}
MIX = {"dialogue": 0.3, "description": 0.1, "knowledge": 0.1, "copying": 0.5}   # share of sequences (see PRETRAIN.md)


def random_objects(rng: random.Random, n: int | None = None) -> list[ToyObject]:
    """Return 1-3 (or n) objects of distinct colour-shape kinds, each with a random noun (no size/place)."""
    n = n or rng.randint(1, 3)
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], n)
    return [ToyObject(c, s, rng.choice(NOUNS[s]), "small", "left") for c, s in kinds]


def join(words: list[str]) -> str:
    """Return "x", "x and y" or "x, y and z"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def items(objects: list[ToyObject]) -> str:
    """Return "a red ball and a blue box" (the dialogue's own wording)."""
    return join([f"a {o.colour} {o.noun}" for o in objects])


def shapes(objects: list[ToyObject]) -> str:
    """Return "a red circle and a blue square" (each noun replaced by its shape, order kept)."""
    return join([f"a {o.colour} {SHAPE_OF[o.noun]}" for o in objects])


def knowledge_text(rng: random.Random) -> str:
    """Return 1-3 world-knowledge sentences about the toy world's nouns and shapes."""
    out = []
    for _ in range(rng.randint(1, 3)):
        shape = rng.choice(SHAPES)
        r = rng.random()
        if r < 0.6:
            noun = rng.choice(NOUNS[shape])
            out.append(rng.choice(KNOWLEDGE).format(noun=noun, shape=shape))
        elif r < 0.85:
            nouns = rng.sample(NOUNS[shape], 3)
            text = rng.choice(GROUP_KNOWLEDGE).format(nouns=join([f"a {n}" for n in nouns]), shape=shape)
            out.append(text[0].upper() + text[1:])
        else:
            out.append(rng.choice(SHAPE_FACTS[shape]))
    return " ".join(out)


def copying_text(rng: random.Random) -> str:
    """Return one narrative that names 1-5 objects and repeats them, as they are or as shapes."""
    objects = random_objects(rng, rng.randint(1, 5))
    return rng.choice(COPY).format(
        name=rng.choice(NAMES), place=rng.choice(PLACES), when=rng.choice(WHEN), items=items(objects),
        again=items(objects).replace("a ", "the ", 1) if rng.random() < 0.3 else items(objects),
        shapes=shapes(objects), list=", ".join(f"{o.colour} {o.noun}" for o in objects),
        shape_list=", ".join(f"{o.colour} {SHAPE_OF[o.noun]}" for o in objects))


# ----- probes: greedy continuations on a held-out stream -----
def probe_examples(kind: str, rng: random.Random) -> tuple[str, str]:
    """Return (prompt, expected continuation) of one probe of `kind` (a key of PROBES)."""
    if kind == "knowledge":
        noun = rng.choice(list(SHAPE_OF))
        return PROBES[kind].format(noun=noun), f" {SHAPE_OF[noun]}"
    objects = random_objects(rng)
    prompt = PROBES[kind].format(name=rng.choice(NAMES), items=items(objects), when=rng.choice(WHEN))
    return prompt, items(objects) if kind == "copy" else shapes(objects)


@torch.no_grad()
def probe_llm(llm, tokenizer, n: int = 100, seed: int = 0, kinds=tuple(PROBES)) -> dict:
    """Return {kind: share of n held-out prompts whose greedy continuation starts with the expected text}."""
    llm.eval()
    out = {}
    for kind in kinds:
        rng = random.Random(f"photochat-llm-probe:{kind}:{seed}")
        pairs = [probe_examples(kind, rng) for _ in range(n)]
        hits = 0
        for prompt, want in pairs:
            ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False).input_ids])
            n_new = len(tokenizer(want, add_special_tokens=False).input_ids) + 2
            gen = llm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                               do_sample=False, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:]
            text = tokenizer.decode(gen.tolist(), skip_special_tokens=True)
            hits += " ".join(text.split()).startswith(" ".join(want.split()))
        out[kind] = hits / n
    return out
