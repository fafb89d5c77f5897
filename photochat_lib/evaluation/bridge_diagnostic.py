"""Can the image loss tell a wrong colour from the right one? A diagnostic before any training (issue 20).

Take photo-sharing test samples and swap one colour word of the caption the LLM is taught to write ("blue
circle" → "purple circle") while the photo stays blue. If L_v can correct a caption, its *expected* gradient at
the logit that predicts the swapped word must favour the right colour: a gradient step −∇ raises logit(right)
over logit(wrong) exactly when ∂L_v/∂o[right] < ∂L_v/∂o[wrong].

The expectation is over the Gumbel draws (eq. 4–7) and SD's draws (latent sample, noise, timestep; eq. 12). The
LLM's logits do not depend on either (the model is in eval mode), so they are computed once and a leaf tensor
stands in for them; each draw runs only the STGS, the bridge and SD. Four arms: the paper's sentence-level
bridge and the positional one (`model/bridge.py`), each with SD reading the gold (here: swapped) caption or the
caption the LLM sampled (`sd_caption_source`).

What to expect from the algebra: through the sentence bridge, the gradient at every caption position is c·a (a
the indicator of the caption's token set), so the right colour — absent from the swapped caption — gets exactly 0
and the wrong one c: it can only favour the right colour by pushing the whole caption's tokens down (c > 0). At
the logits, through the softmax, every colour the caption lacks then moves by −p_j·(Σ p g): in proportion to its
probability, not to the photo. So "raises right over wrong" can be won by "less purple" alone, and so can the
stricter ``right_first`` (the right colour above every other colour as well): through the sentence bridge it holds
exactly when c > 0 and the LLM's own probabilities rank the right colour first — which the dialogue, naming that
colour, teaches it. Its chance level is then the LLM's prior, not 1 in 4. The control (``labels=``: each photo
redrawn to show the swapped caption's colour) separates the photo's say from the prior: what the photo moves is
the difference between the two runs.
"""
from __future__ import annotations

import copy
import math
import random
import re
from dataclasses import dataclass, replace

import torch

from photochat_lib.data.samples import Sample
from photochat_lib.data.toy_world import COLOURS

ARMS = (("sentence", "gold"), ("sentence", "sampled"), ("positional", "gold"), ("positional", "sampled"))


@dataclass
class SwappedSample:
    sample: Sample        # the sample with its shared photo's caption swapped
    right: str            # the colour the photo shows
    wrong: str            # the colour the caption now says
    word_index: int       # which word of the caption was swapped
    object_index: int = 0  # which object of the caption (its colour words in order) that word names


def swap_one_colour(sample: Sample, rng: random.Random) -> SwappedSample | None:
    """Return the sample with one colour word of its (first) shared photo's caption replaced, or None if it names none."""
    turn_i = next(i for i, t in enumerate(sample.response) if t.photo is not None)
    turn = sample.response[turn_i]
    words = turn.photo.caption.split(" ")
    spots = [i for i, w in enumerate(words) if w.strip(",.").lower() in COLOURS]
    if not spots:
        return None
    i = rng.choice(spots)
    right = words[i].strip(",.").lower()
    named = {words[j].strip(",.").lower() for j in spots}
    unused = [c for c in COLOURS if c not in named]          # the wrong colour appears nowhere else in the caption
    if not unused:
        return None
    wrong = rng.choice(unused)
    words[i] = re.sub(right, wrong, words[i], flags=re.IGNORECASE)
    photo = replace(turn.photo, caption=" ".join(words))
    response = list(sample.response)
    response[turn_i] = replace(turn, photo=photo)
    return SwappedSample(replace(sample, response=response), right, wrong, i, spots.index(i))


def recolour_photo(swapped: SwappedSample, label: dict, folder) -> SwappedSample:
    """Return the control: the same swapped caption, with the photo redrawn so the swapped object IS the caption's
    (wrong) colour. Now only the dialogue still names the "right" colour; a gradient that follows the photo should
    stop favouring it, one that follows the LLM's prior (the dialogue) will not."""
    from pathlib import Path

    from photochat_lib.data.toy_world import ToyObject, draw_photo
    objects = [ToyObject(o["colour"], o["shape"], "", o["size"], o["position"]) for o in label["objects"]]
    k = swapped.object_index
    objects[k] = replace(objects[k], colour=swapped.wrong)
    path = Path(folder) / f"{swapped.sample.dialogue_id}.png"
    draw_photo(objects, label["background"]).save(path)
    s = swapped.sample
    turn_i = next(i for i, t in enumerate(s.response) if t.photo is not None)
    response = list(s.response)
    response[turn_i] = replace(s.response[turn_i], photo=replace(s.response[turn_i].photo, path=str(path)))
    return replace(swapped, sample=replace(s, response=response))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Return the 95 % Wilson score interval of a share k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def _colour_position(model, batch, c: int, wrong: str) -> int:
    """Return the row-local index (among caption c's positions) of the token that spells the swapped colour."""
    ids = batch["llm_caption_ids"][c].tolist()
    wrong_ids = set(model.tokenizer(" " + wrong, add_special_tokens=False).input_ids)
    hits = [k for k, i in enumerate(ids) if i in wrong_ids]
    if not hits:
        raise ValueError(f"caption {batch['captions'][c]!r}: no LLM token spells {wrong!r}")
    return hits[0]


def _colour_id(model, colour: str) -> int:
    """Return the LLM token id of a colour word (one token in the toy and Llama vocabularies)."""
    ids = model.tokenizer(" " + colour, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"the colour {colour!r} is {len(ids)} LLM tokens; the diagnostic compares single-token colours")
    return ids[0]


@torch.no_grad()
def _logits(model, batch):
    embeds = model.input_embeddings(batch["input_ids"], batch.get("context_pixel_values"),
                                    batch.get("context_image_batch_index"))
    return model.llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits      # (B, T, V1)


def expected_caption_gradient(model, batch, tau: float, n_gumbel: int, n_diffusion: int, seed: int = 0):
    """Return E[∂L_v/∂logits] (B, T, V1) over n_gumbel × n_diffusion draws, and the per-diffusion-draw means."""
    logits = _logits(model, batch).float()                                                    # (B, T, V1)
    per_draw = []
    for d in range(n_diffusion):
        acc = torch.zeros_like(logits)
        for g in range(n_gumbel):
            leaf = logits.clone().requires_grad_(True)
            lv, _ = model.image_loss(leaf, batch, tau, torch.Generator().manual_seed(seed * 100_003 + d),
                                     torch.Generator().manual_seed(seed * 100_003 + 10_000 + g))
            acc += torch.autograd.grad(lv, leaf)[0]                                           # (B, T, V1)
        per_draw.append(acc / n_gumbel)
    stacked = torch.stack(per_draw)                                                           # (n_diffusion, B, T, V1)
    return stacked.mean(0), stacked


def diagnose(model, samples: list[Sample], collator, n_gumbel: int = 16, n_diffusion: int = 8, tau: float = 1.0,
             batch_size: int = 8, seed: int = 0, labels: dict | None = None, arms=ARMS) -> dict:
    """Return, per arm, how many swapped captions' expected gradient raises the right colour over the wrong one.

    ``samples``: photo-sharing samples (each caption must name a colour; the others are skipped). ``labels`` (the
    toy world's labels.json): run the control instead, each photo redrawn to show the swapped caption's colour
    (`recolour_photo`), so "right" is only the dialogue's colour. For each arm:
    n, wins, ties (the two partial derivatives equal, e.g. both 0), right_first (the right colour raised above the
    wrong one AND every other colour; "less purple" plus an LLM that already prefers the right colour wins it too,
    see the module docstring; right_first_chance is the 1-in-k of a gradient blind to both), clear wins (the gap above twice its standard
    error over the diffusion draws), the share won with its 95 % Wilson interval, and the mean gap
    ∂L_v/∂o[wrong] − ∂L_v/∂o[right] over captions with its standard error.
    """
    from photochat_lib.data.collate import PhotoChatDataset
    rng = random.Random(f"photochat-bridge-diagnostic:{seed}")
    swapped = [s for s in (swap_one_colour(x, rng) for x in samples) if s is not None]
    model.eval()
    out = {}
    if labels is not None:                                   # the control: photos redrawn to match the swapped caption
        import tempfile
        folder = tempfile.mkdtemp(prefix="photochat-diagnostic-")
        swapped = [recolour_photo(s, labels[s.sample.dialogue_id], folder) for s in swapped]
    for bridge, source in arms:
        arm = copy.copy(model)                                   # same weights, another config
        arm.config = replace(model.config, bridge=bridge, sd_caption_source=source, mode="end2end")
        gaps, ses, firsts, chances = [], [], [], []
        for start in range(0, len(swapped), batch_size):
            chunk = swapped[start:start + batch_size]
            ds = PhotoChatDataset([s.sample for s in chunk])
            batch = collator([ds[i] for i in range(len(ds))])
            mean, per_draw = expected_caption_gradient(arm, batch, tau, n_gumbel, n_diffusion, seed)
            cap_mean, _ = arm.caption_logits(mean, batch["caption_positions"], len(chunk))   # (N, m, V1)
            cap_draws = [arm.caption_logits(p, batch["caption_positions"], len(chunk))[0] for p in per_draw]
            for c, s in enumerate(chunk):
                k = _colour_position(arm, batch, c, s.wrong)
                right, wrong = _colour_id(arm, s.right), _colour_id(arm, s.wrong)
                g = cap_mean[c, k]                                                            # (V1,)
                gaps.append(float(g[wrong] - g[right]))      # > 0: a descent step raises right over wrong
                others = [_colour_id(arm, c) for c in COLOURS if c not in (s.right, s.wrong)]
                firsts.append(bool(g[wrong] > g[right] and (g[right] < g[others]).all()))   # above every other colour too
                chances.append(1 / (len(others) + 1))
                d_gaps = torch.stack([d[c, k, wrong] - d[c, k, right] for d in cap_draws]).double()  # (n_diffusion,)
                ses.append(float(d_gaps.std() / math.sqrt(len(d_gaps))) if len(d_gaps) > 1 else float("nan"))
        n = len(gaps)
        wins, ties = sum(g > 0 for g in gaps), sum(g == 0 for g in gaps)
        clear = sum(g > 2 * se for g, se in zip(gaps, ses))   # won by more than 2 standard errors of its draws
        lo, hi = wilson(wins, n)
        n_first = sum(firsts)
        mean_gap = sum(gaps) / n if n else float("nan")
        sd = math.sqrt(sum((g - mean_gap) ** 2 for g in gaps) / (n - 1)) if n > 1 else float("nan")
        out[f"{bridge}/{source}"] = {"n": n, "wins": wins, "ties": ties, "clear_wins": clear,
                                     "share": wins / n if n else float("nan"), "ci95": [lo, hi],
                                     "right_first": n_first, "right_first_ci95": list(wilson(n_first, n)),
                                     "right_first_chance": sum(chances) / n if n else float("nan"),
                                     "mean_gap": mean_gap, "mean_gap_se": sd / math.sqrt(n) if n > 1 else float("nan")}
    return {"arms": out, "tau": tau, "n_gumbel": n_gumbel, "n_diffusion": n_diffusion, "seed": seed,
            "examples": [{"caption": s.sample.target_photos()[0].caption, "right": s.right, "wrong": s.wrong}
                         for s in swapped[:5]]}


__all__ = ["ARMS", "SwappedSample", "diagnose", "recolour_photo", "expected_caption_gradient", "swap_one_colour", "wilson"]
