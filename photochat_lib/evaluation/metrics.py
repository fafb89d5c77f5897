"""Text metrics of Table 2 (BLEU-1, BLEU-2, ROUGE-L), share timing, and mean ± std over seeds (§3.1.3).

**What text is scored.** A response may contain shared photos written as ``[IMG] caption[/IMG]``
(``photochat_lib.data.samples``). Like Divter, whose text metrics score text responses, BLEU and ROUGE-L
here score the *text* of a response: :func:`strip_photos` removes every ``[IMG] … [/IMG]`` segment first,
and a pair whose reference has no text left (a photo-only response) is left out of the text metrics
(there is nothing to match; whether the model shared there is what :func:`share_timing` measures).
The captions are scored on their own by :func:`caption_bleu` (pairs where both sides share a photo).

**Tokenisation.** BLEU: lower-cased, ``re.findall(r"\\w+|[^\\w\\s]", text.lower())`` (words and single
punctuation marks; NLTK's ``word_tokenize`` needs the punkt data, a download). ROUGE-L: rouge_score's
default tokenizer (lower-cases, replaces every non-alphanumeric character by a space), no stemmer.

**BLEU.** NLTK ``corpus_bleu`` (corpus-level: n-gram counts summed over all pairs, one brevity penalty),
weights (1,0,0,0) for BLEU-1 and (0.5,0.5,0,0) for BLEU-2, smoothing ``SmoothingFunction().method1``
(epsilon 0.1 added to zero n-gram counts), one reference per prediction. **ROUGE-L** is the mean over
pairs of rouge_score's sentence-level ``rougeL`` F-measure. All scores are ×100, as in Table 2.
"""
from __future__ import annotations

import math
import re
import warnings
from typing import Sequence

from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
from rouge_score.rouge_scorer import RougeScorer

from photochat_lib.data.tokens import IMG_END, IMG_START

_PHOTO = re.compile(re.escape(IMG_START) + r"(.*?)(?:" + re.escape(IMG_END) + r"|$)", re.S)
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Return the BLEU tokens of text: lower-cased words and single punctuation marks."""
    return _TOKEN.findall(text.lower())


def strip_photos(text: str) -> str:
    """Return text without its ``[IMG] caption[/IMG]`` segments (an unclosed one runs to the end)."""
    return " ".join(_PHOTO.sub(" ", text).split())


def extract_captions(text: str) -> list[str]:
    """Return the captions inside the ``[IMG] … [/IMG]`` segments of text, in order."""
    return [c.strip() for c in _PHOTO.findall(text)]


def _check_pairs(predictions: Sequence[str], references: Sequence[str], what: str) -> None:
    """Raise ValueError unless predictions and references are equally long lists of strings."""
    if len(predictions) != len(references):
        raise ValueError(f"{what}: {len(predictions)} predictions but {len(references)} references")
    for name, seq in (("predictions", predictions), ("references", references)):
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                raise ValueError(f"{what}: {name}[{i}] must be a string, got {type(s).__name__}")


def _text_pairs(predictions: Sequence[str], references: Sequence[str]) -> list[tuple[str, str]]:
    """Return (prediction text, reference text) with photos stripped; pairs with no reference text dropped."""
    pairs = [(strip_photos(p), strip_photos(r)) for p, r in zip(predictions, references)]
    return [(p, r) for p, r in pairs if r]


def _corpus_bleu(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Return BLEU-1 and BLEU-2 (×100) of (prediction, reference) pairs, no text preprocessing."""
    if not pairs:
        return {"BLEU-1": 0.0, "BLEU-2": 0.0}
    refs = [[tokenize(r)] for _, r in pairs]
    hyps = [tokenize(p) for p, _ in pairs]
    smooth = SmoothingFunction().method1
    with warnings.catch_warnings():  # NLTK warns about 3/4-gram counts even when their weight is 0
        warnings.simplefilter("ignore")
        b1 = corpus_bleu(refs, hyps, weights=(1, 0, 0, 0), smoothing_function=smooth)
        b2 = corpus_bleu(refs, hyps, weights=(0.5, 0.5, 0, 0), smoothing_function=smooth)
    return {"BLEU-1": 100 * b1, "BLEU-2": 100 * b2}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Return corpus BLEU-1 and BLEU-2 (×100) of the responses' text (photos stripped)."""
    _check_pairs(predictions, references, "bleu")
    return _corpus_bleu(_text_pairs(predictions, references))


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Return the mean ROUGE-L F-measure (×100) of the responses' text (photos stripped)."""
    _check_pairs(predictions, references, "rouge_l")
    pairs = _text_pairs(predictions, references)
    if not pairs:
        return 0.0
    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    return 100 * sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs) / len(pairs)


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Return Table 2's text columns: BLEU-1, BLEU-2, Rouge-L (×100), and n, the pairs scored."""
    out = bleu(predictions, references)
    out["Rouge-L"] = rouge_l(predictions, references)
    out["n"] = len(_text_pairs(predictions, references))
    return out


def caption_bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Return BLEU-1/2 (×100) of the photo captions, over pairs where both responses share a photo."""
    _check_pairs(predictions, references, "caption_bleu")
    pairs = []
    for p, r in zip(predictions, references):
        pc, rc = extract_captions(p), extract_captions(r)
        if pc and rc:
            pairs.append((" ".join(pc), " ".join(rc)))
    return _corpus_bleu(pairs)


def share_timing(pred_shared: Sequence[bool], ref_shared: Sequence[bool]) -> dict[str, float]:
    """Return precision, recall and F1 (×100) of sharing a photo in exactly the reference's responses."""
    if len(pred_shared) != len(ref_shared):
        raise ValueError(f"share_timing: {len(pred_shared)} predictions but {len(ref_shared)} references")
    tp = sum(bool(p) and bool(r) for p, r in zip(pred_shared, ref_shared))
    n_pred, n_ref = sum(map(bool, pred_shared)), sum(map(bool, ref_shared))
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_ref if n_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": 100 * precision, "recall": 100 * recall, "F1": 100 * f1}


def mean_std(values: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Return {metric: {"mean", "std", "n"}} over runs (sample std, ddof=1; 0.0 for a single run)."""
    if not values:
        raise ValueError("mean_std: no runs given")
    keys = [k for k, v in values[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = {}
    for k in keys:
        xs = []
        for i, run in enumerate(values):
            if k not in run:
                raise ValueError(f"mean_std: run {i} has no metric {k!r} (run 0 has it)")
            xs.append(float(run[k]))
        m = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        out[k] = {"mean": m, "std": sd, "n": len(xs)}
    return out


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """Return "12.08 ± 0.94"."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


# Two-sided 95% quantiles of Student's t with df degrees of freedom (t_{0.975, df}); df > 30: 1.96-ish.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042}
LOWER_IS_BETTER = {"FID"}   # every other metric: higher is better


def t_975(df: int) -> float:
    """Return t_{0.975, df} (the nearest tabulated df at or below; 1.96 beyond 30)."""
    if df < 1:
        raise ValueError("a t interval needs at least two paired runs")
    return T_975[max(k for k in T_975 if k <= df)] if df <= 30 else 1.96


def paired_difference(a: Sequence[float], b: Sequence[float], metric: str = "") -> dict:
    """Return the mean of a_i − b_i (runs paired by seed) with its 95% t interval and a verdict.

    verdict: "ahead" when the whole interval favours a (above 0, or below 0 for a lower-is-better
    metric such as FID), "behind" when it favours b, "tied" when it contains 0.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} runs vs {len(b)} runs")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    half = t_975(n - 1) * sd / math.sqrt(n) if n > 1 else float("inf")
    low, high = mean - half, mean + half
    sign = -1 if metric in LOWER_IS_BETTER else 1
    verdict = "ahead" if sign * low > 0 and sign * high > 0 else "behind" if sign * low < 0 and sign * high < 0 else "tied"
    return {"mean": mean, "low": low, "high": high, "n": n, "verdict": verdict}
