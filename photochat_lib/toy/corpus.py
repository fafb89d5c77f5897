"""The toy foundation LLM's pretraining text: language, world knowledge, copying and looking up — and probes of each.

Llama-2 arrives at the paper's joint training (§2.5) already able to do what the photo-sharing task leans on:
it *copies* what the dialogue names ("a red ball") into what it writes next, it *knows* the world (a ball is
round), it *looks things up* in what it was told (where is the red ball?), and it does all of this whatever the
wording. The toy LLM must arrive with the same abilities, or the toy world cannot stand in for the paper. So its
causal-LM corpus mixes four kinds of plain text, each in many wordings:

* **dialogue** — toy-world dialogues (training phrasings only, `data.toy_phrasings`) in the collate step's chat
  layout; the shared photo's turn is written as its description in words ("(photo) A gray background with a big
  red circle on the left."), so the remarks after it are always *true* of it: the LLM learns to read a photo's
  content before it remarks, never to guess;
* **scene** — a toy scene in words, then questions and remarks about it (where is the red ball? how big is
  it? the background?): looking up one object's attributes by its colour and noun;
* **knowledge** — "A kite is a triangle.", "Coins, balls and plates are all circles.", "What shape is a box? A
  square." in many wordings;
* **copying** — short narratives that name a few objects and repeat them, as they are or as shapes, or pick
  one of them out: "Leo got a red ball and a green kite. In shapes, that is a red circle and a green triangle."

None of it contains ``[IMG]``, ``[/IMG]``, ``<image>`` or the PhotoChat caption format ("Objects in the
photo: ..."): *when* to share and *what* a caption looks like are left to the joint training.

The probes (`probe_llm`) measure the abilities on a held-out random stream of objects with greedy decoding:
``copy`` (repeat the objects a sentence named), ``shapes`` (repeat them as shapes, in order), ``knowledge``
(name a noun's shape), ``lookup`` (where is an object of a described scene) and ``shapes_new_wording``
(``shapes`` after prompts worded as no pretraining text is: `NEW_WORDING_PROBES`; how far it generalises) and
``shapes_unseen_wording`` (four more such prompts, `UNSEEN_WORDING_PROBES`, that never guided the corpus).
"""
from __future__ import annotations

import random

import torch

from photochat_lib.data.toy_phrasings import WHERE
from photochat_lib.data.toy_world import COLOURS, NAMES, NOUNS, PLACES, SHAPES, WHEN, ToyObject

SHAPE_OF = {noun: shape for shape, nouns in NOUNS.items() for noun in nouns}   # ball -> circle, ...
SHAPE_FACTS = {"circle": ["A circle is round.", "A circle has no corners.", "Circles are round."],
               "square": ["A square has four equal sides.", "A square has four corners.", "Squares have corners."],
               "triangle": ["A triangle has three sides.", "A triangle has three corners.", "Triangles are pointy."]}
KNOWLEDGE = [  # one fact about one noun; {noun}, {shape}
    "A {noun} is a {shape}.", "A {noun} has the shape of a {shape}.", "Every {noun} is shaped like a {shape}.",
    "If you draw a {noun}, you draw a {shape}.", "What shape is a {noun}? A {shape}.",
    "Think of a {noun}: it looks like a {shape}.", "The shape of a {noun} is a {shape}.",
    "Seen from the front, a {noun} is a {shape}.", "A {noun}? That is a {shape}.", "Picture a {noun}: a {shape}.",
    "Q: which shape is a {noun}? A: a {shape}.", "A {noun} always looks like a {shape}.",
    "Sketch a {noun} and you get a {shape}.", "As a shape, a {noun} is a {shape}.",
]
GROUP_KNOWLEDGE = ["{nouns} are all {shape}s.", "A {shape} can be {nouns}.",  # {nouns}: "a ball, a coin or a plate"
                   "Things shaped like a {shape}: {nouns}.", "{nouns}: each of them is a {shape}."]
COPY = [  # a narrative names {items} and repeats them: {again} (the same words) or {shapes} (as shapes)
    "{name} got {items} at the {place}. So {name} has {again}.",
    "{name} bought {items} {when}. Later {name} showed me {again}.",
    "{name} has {items}. In shapes, that is {shapes}.",
    "{name} found {items}. Drawn as shapes: {shapes}.",
    "At the {place}, {name} picked up {items}; as shapes that makes {shapes}.",
    "Things: {list}. Shapes: {shape_list}.",
    "{name} talked about {items}. To draw them, draw {shapes}.",
    "{name} owns {items}. Their shapes are {shapes}.",
    "{name} brought {items}. As shapes, those are {shapes}.",
    "{name} keeps {items} on a shelf. Shape-wise: {shapes}.",
    "{name} won {items}. If you sketch them, you sketch {shapes}.",
    "{name} wants {items}. In terms of shapes, {shapes}.",
    "{name} lost {items}. Turned into shapes, that gives {shapes}.",
    "{name} gave me {items}; the shapes are {shapes}.",
    "I saw {items} at {name}'s place. Seen as shapes: {shapes}.",
    "{name} ordered {items}. So we need {again}.",
    "{name} mentioned {items}, that is, {again}.",
    "You said {items}. I heard {again}.",
    "{name} listed {items}. Repeat after me: {again}.",
    "{name} packed {items}. Each as a shape: {shapes}.",
    "My list: {items}. Shapes only: {shapes}.",
    "{name} painted {items}. The painting shows {shapes}.",
]
# Shape lists cued in many wordings: a lead and a link composed at random ("Shape by shape" + " would be"), so
# the LLM learns that a cue about shapes, however worded, asks for the list as shapes (PRETRAIN.md)
VERBS = ["got", "has", "bought", "found", "owns", "brought", "won", "wants", "lost", "packed", "painted", "keeps",
         "mentioned", "ordered", "carried", "saw", "drew", "picked", "sold", "liked"]
SHAPE_LEADS = ["In shapes", "As shapes", "Shape by shape", "Drawn as shapes", "Seen as shapes", "In terms of shapes",
               "Turned into shapes", "Sketched as shapes", "Written as shapes", "Shape-wise", "By shape",
               "Counting only shapes", "Their shapes", "The shapes", "All the shapes", "Each one's shape",
               "The shapes, one by one", "Only the shapes", "If we list shapes", "Shapes, please", "Their outlines",
               "Boiled down to shapes", "As plain shapes", "Looking only at shapes", "In outline", "Shape for shape",
               "Listed by shape", "What shapes? Simple", "Their forms", "Their geometric shapes", "Seen as outlines"]
SHAPE_LINKS = [", that is", ":", " are", ", that makes", " would be", ", in order:", " give", " come out as",
               ", we get", " read", " then:", " look like", " become", " turn into", " make", " form", " amount to",
               " give us", " end up as", " are basically", ", namely", " - ", ", i.e."]
COPY_LEADS = ["So {name} has", "Later {name} showed me", "Again:", "Once more:", "In other words,", "That means",
              "To repeat,", "I wrote down", "The list says", "We counted", "{name} still has", "Now I know about"]
PICK = [  # a narrative names {items} and picks one of them out by its colour and noun: {one}
    "{name} has {items}. The {one} is the favourite.", "{name} got {items}, and likes the {one} best.",
    "Of {items}, {name} kept the {one}.", "{name} bought {items}. The {one} was the cheapest.",
    "Among {items}, I would pick the {one}.", "{name} showed me {items}; the {one} stood out.",
    "{name} found {items}. Only the {one} was new.",
]
PROBES = {  # kind -> prompt; the expected continuation is the objects as named, or as shapes, or the shape
    "copy": "{name} bought {items} {when}. Later {name} showed me",            # a pretraining wording
    "shapes": "{name} has {items}. In shapes, that is",                        # a pretraining wording
    "knowledge": "The shape of a {noun} is a",
}
NEW_WORDING_PROBES = [   # `shapes` in wordings no pretraining text uses (tests/test_pretrain.py checks it)
    "{name} got {items}. Their shapes, in the same order:",
    "{name} carried home {items}. Reduced to plain shapes, they become",
    "{name} saw {items}. Name only the shapes, please:",
    "{name} mailed me {items}. Which shapes are those? Answer:",
]
UNSEEN_WORDING_PROBES = [   # four more, written after the first four had guided the corpus: never used to change it
    "{name} sold {items}. Described by shape alone, that is",
    "{name} needs {items}. The matching shapes would be",
    "{name} photographed {items}. Shape of each one:",
    "{name} owns {items}. Spelled out as shapes:",
]
QUESTIONS = {  # lookup in a described scene: a question about one object (or the background) and its answer
    "position": ["Where is the {colour} {noun}?", "Where did the {colour} {noun} go?", "Which side is the {colour} {noun} on?"],
    "size": ["How big is the {colour} {noun}?", "Is the {colour} {noun} big or small?", "What size is the {colour} {noun}?"],
    "background": ["What colour is the background?", "Which background is it?", "And the background?"],
}
ANSWERS = {"position": ["It is {where}.", "{Where}.", "The {colour} {noun} is {where}."],
           "size": ["It is {size}.", "{Size}.", "The {colour} {noun} is {size}."],
           "background": ["It is {bg}.", "{Bg}.", "The background is {bg}."]}
MIX = {"dialogue": 0.3, "scene": 0.2, "knowledge": 0.08, "copying": 0.42}   # share of sequences (see PRETRAIN.md)


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
    """Return one narrative that names 1-5 objects and repeats them, as they are or as shapes, or picks one out."""
    objects = random_objects(rng, rng.randint(1, 5))
    fields = dict(name=rng.choice(NAMES), place=rng.choice(PLACES), when=rng.choice(WHEN), items=items(objects))
    r = rng.random()
    if len(objects) > 1 and r < 0.2:
        o = rng.choice(objects)
        return rng.choice(PICK).format(one=f"{o.colour} {o.noun}", **fields)
    if r < 0.45:                                   # a composed cue: shapes (2/3) or the objects again (1/3)
        head = f"{fields['name']} {rng.choice(VERBS)} {fields['items']}."
        if rng.random() < 2 / 3:
            return f"{head} {rng.choice(SHAPE_LEADS)}{rng.choice(SHAPE_LINKS)} {shapes(objects)}."
        return f"{head} {rng.choice(COPY_LEADS).format(**fields)} {items(objects)}."
    return rng.choice(COPY).format(
        again=items(objects).replace("a ", "the ", 1) if rng.random() < 0.3 else items(objects),
        shapes=shapes(objects), list=", ".join(f"{o.colour} {o.noun}" for o in objects),
        shape_list=", ".join(f"{o.colour} {SHAPE_OF[o.noun]}" for o in objects), **fields)


def scene_record(objects, background: str) -> str:
    """Return a terse record of a scene, objects in their (random) drawing order: "Scene: left big red circle; ..."."""
    return "Scene: " + "; ".join(f"{o.position} {o.size} {o.colour} {o.shape}" for o in objects) + \
        f"; background {background}."


def scene_text(rng: random.Random) -> str:
    """Return a described scene (`describe_scene`), then 1-3 questions about it with their answers, or remarks."""
    from photochat_lib.data.toy_phrasings import SEE_BG, SEE_POS, SEE_SIZE, SIZE_WORDS, pool
    from photochat_lib.toy.pretrain_perceptron import describe_scene, random_scene
    objects, bg = random_scene(rng)
    lines = [describe_scene(objects, bg)]
    if rng.random() < 0.5:          # data-to-text: a terse record, then the scene in words (what a photo's visual
        lines.insert(0, scene_record(objects, bg))   # tokens stand in for: something the LLM can read and verbalise)
    for _ in range(rng.randint(1, 3)):
        kind, o = rng.choice(list(QUESTIONS)), rng.choice(objects)
        f = dict(colour=o.colour, noun=o.noun, where=WHERE[o.position], size=o.size, bg=bg,
                 size_word=rng.choice(SIZE_WORDS[o.size]))
        f.update(Where=f["where"].capitalize(), Size=o.size.capitalize(), Bg=bg.capitalize())
        if rng.random() < 2 / 3:
            lines.append(rng.choice(QUESTIONS[kind]).format(**f) + " " + rng.choice(ANSWERS[kind]).format(**f))
        else:            # a remark in the dialogue's words, true of the scene
            remark = {"position": SEE_POS, "size": SEE_SIZE, "background": SEE_BG}[kind]
            lines.append(rng.choice(pool(remark, "train")).format(**f))
    return "\n".join(lines)


# ----- probes: greedy continuations on a held-out stream -----
def probe_examples(kind: str, rng: random.Random) -> tuple[str, str]:
    """Return (prompt, expected continuation) of one probe of `kind` (a key of PROBES, "shapes_new_wording" or
    "lookup")."""
    from photochat_lib.toy.pretrain_perceptron import describe_scene, random_scene
    if kind == "knowledge":
        noun = rng.choice(list(SHAPE_OF))
        return PROBES[kind].format(noun=noun), f" {SHAPE_OF[noun]}"
    if kind == "lookup":
        objects, bg = random_scene(rng)
        o = rng.choice(objects)
        return f"{describe_scene(objects, bg)}\nWhere is the {o.colour} {o.noun}? It is", f" {WHERE[o.position]}"
    objects = random_objects(rng)
    template = {"shapes_new_wording": rng.choice(NEW_WORDING_PROBES),
                "shapes_unseen_wording": rng.choice(UNSEEN_WORDING_PROBES)}.get(kind) or PROBES[kind]
    prompt = template.format(name=rng.choice(NAMES), items=items(objects), when=rng.choice(WHEN))
    return prompt, items(objects) if kind == "copy" else shapes(objects)


PROBE_KINDS = ("copy", "shapes", "knowledge", "lookup", "shapes_new_wording", "shapes_unseen_wording")


@torch.no_grad()
def probe_llm(llm, tokenizer, n: int = 100, seed: int = 0, kinds=PROBE_KINDS) -> dict:
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
