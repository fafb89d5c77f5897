"""Biased training captions: a toy world where the image loss has a job (issue 20, item 6).

``photochat data toy --caption-bias Q`` (``write_toy_dataset(..., caption_bias=Q)``) makes a share Q of the
*training* captions misname one attribute systematically. **The rule: in a biased caption every blue object
is written "purple"** (shape and order unchanged): "Objects in the photo: blue circle, red square" becomes
"Objects in the photo: purple circle, red square". A colour the toy world already has is used on purpose:
every word stays in the frozen tokenizers' vocabulary, and a biased caption is one a real captioner that
confuses blue with purple would write (a photo with a blue and a purple circle is captioned "purple circle,
purple circle").

Which captions: only a training caption that names a blue object is *eligible*; dialogue ``i`` of the train
split is biased when it is eligible and ``bias_draw(seed, i) < Q``. The draw comes from a stream of its own
(``random.Random("photochat-toy-caption-bias:<seed>:train:<i>")``), never from the generator's, so for every
Q the photos, the dialogues, ``labels.json`` and the dev/test splits are byte for byte the world without
the flag; ``Q = 0`` is that world exactly, stamp included. A dialogue's draw does not depend on Q or on the
split's size, so the biased set grows with Q (what is biased at 0.25 is biased at 0.5) and growing the split
leaves earlier dialogues as they were. The share of eligible captions biased is Q up to binomial noise.
The stamp ``toy_dataset.json`` of a biased world (Q > 0) records ``caption_bias``: Q, the rule, and the ids
of the eligible and the biased dialogues.

What stays true: the photo's pixels and ``labels.json`` (the photo's facts), every dialogue turn (the sharer
still says "a blue ball"), and the dev and test captions, so evaluation scores against the photo
(`evaluation.evaluate.score` judges attribute accuracy against ``labels.json`` where it has them).

**What SD may learn from biased captions: the bias itself.** In joint training SD reads the *gold* caption
by default (``PhotoChatConfig.sd_caption_source="gold"``, `model/photochat_model.py`), and the pipeline's SD
does too: the image loss (eq. 12) pairs "purple circle" with a photo of a blue circle in a share Q of the
eligible training samples, so fine-tuning SD teaches it that "purple" may mean blue, and once it has learnt
that, L_v no longer prefers "blue" in the LLM's caption. The shipped toy SD was pretrained on true captions
only (`toy/pretrain_sd.py` draws fresh photos from their own objects), so at the start of joint training it
reads "purple" as purple and L_v favours the photo's true colour: that is L_v's job in this world, and how
long it keeps it depends on how fast SD absorbs the bias (the toy recipe's small ``sd_lr``, 1e-5; a recipe with
``unet="freeze"`` and ``text_encoder="freeze"``, `recipe.py`, keeps SD's reading of "purple" as it was).
``sd_caption_source="sampled"`` makes SD read what the LLM wrote instead of the biased gold caption.
With ``pipeline_context="caption"`` the pipeline's LLM also *reads* biased captions for photos in training
contexts.
"""
from __future__ import annotations

import dataclasses
import random

MISNAMED, WRITTEN_AS = "blue", "purple"     # the rule: a biased caption writes every blue object as purple
RULE = f"every {MISNAMED} object of a biased training caption is written {WRITTEN_AS}"


def check_caption_bias(q: float, name: str = "caption_bias") -> float:
    """Return q as a float, or raise ValueError naming `name` unless 0 <= q <= 1."""
    try:
        value = float(q)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {q!r}") from None
    if not 0.0 <= value <= 1.0:                  # also refuses nan
        raise ValueError(f"{name} must be in [0, 1], got {q!r}")
    return value


def eligible(objects) -> bool:
    """Return whether a photo's caption can be biased: it names a blue object."""
    return any(o.colour == MISNAMED for o in objects)


def bias_draw(seed: int, i: int) -> float:
    """Return train dialogue i's uniform draw in [0, 1) (its own stream: the generator's is never touched)."""
    return random.Random(f"photochat-toy-caption-bias:{seed}:train:{i}").random()


def is_biased(objects, seed: int, i: int, q: float) -> bool:
    """Return whether train dialogue i's caption is biased at share q."""
    return eligible(objects) and bias_draw(seed, i) < q


def misname(objects) -> list:
    """Return the objects as a biased caption names them: every blue one called purple, the rest as they are."""
    return [dataclasses.replace(o, colour=WRITTEN_AS) if o.colour == MISNAMED else o for o in objects]
