"""Samples -> model batches: the chat layout, label masking, visual placeholders and caption targets.

**Text layout.** Speakers get tags "A", "B", ... in order of first appearance in the dialogue. Every
turn is one line ``"<tag>:" + body + "\\n"``, where body is ``" " + text`` for a text turn,
``NUM_VISUAL_TOKENS`` copies of ``<image>`` for a context photo (replaced by the perceptron's visual
tokens, eq. 3) and ``"[IMG] caption[/IMG]"`` for a response photo (§2.2). The sequence is::

    <s> A: hi\\n B: look\\n B:<image>...<image>\\n A: nice!\\n B: [response ...] </s>
        '------------------ context U ------------------'  '-'  '--- scored ---'

The responder's first tag ``"B:"`` is the prompt; everything after it (later turns of the run with
their tags, the captions with [IMG]/[/IMG], and eos) is scored by the text loss (eq. 2); the rest is
``IGNORE_INDEX``. Too long? Whole context turns are dropped, oldest first (never half a caption or
half a placeholder run, and their photos go too); if the response alone does not fit, DataError.
More context photos than ``max_context_images``? The oldest photo turns are dropped first. Both limits
come from the training recipe (``max_text_length``, ``max_context_images``: `presets.collator_for`), the
same numbers `photochat estimate-memory` budgets for; `cut_report` counts what they cut.

**Context photos** (``context_photos``). ``"perceptron"`` (the end-to-end model, §2.3): the ``<image>``
run above. ``"caption"`` (the pipeline's input end as the paper's introduction describes it: "the text
dialogue model perceives photos based on the image descriptions"): the photo is written as its caption,
``"B: [IMG] caption[/IMG]"``, the form the LLM itself writes when it shares one, and no pixels are used.
"""
from __future__ import annotations

import bisect
import hashlib
from collections import Counter
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from photochat_lib.data.images import load_image
from photochat_lib.data.samples import Sample
from photochat_lib.data.schema import DataError, Photo, Turn
from photochat_lib.data.tokens import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMG_END, IMG_START, NUM_VISUAL_TOKENS

CONTEXT_PHOTOS = ("perceptron", "caption")  # how a photo in the context U reaches the LLM


class PhotoChatDataset(Dataset):
    """Samples with their context and target images loaded (``image_loader(photo) -> PIL image``)."""

    def __init__(self, samples: list[Sample], image_loader: Callable[[Photo], Image.Image] = load_image,
                 max_context_images: int | None = None):
        self.samples = samples
        self.image_loader = image_loader
        self.max_context_images = max_context_images   # load only the newest this many context photos (the
                                                       # collator drops older ones anyway)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, photo: Photo, sample: Sample) -> Image.Image:
        """Return the photo's image, or raise DataError naming the sample."""
        try:
            return self.image_loader(photo)
        except Exception as e:
            raise DataError("bad_image", f"cannot load image {photo.path or photo.url!r}: {e}",
                            dialogue_id=sample.dialogue_id, field=f"sample {sample.id}") from e

    def __getitem__(self, i: int) -> dict:
        """Return {"sample", "context_images", "target_images"} (images in order of appearance)."""
        s = self.samples[i]
        photos = s.context_photos()
        if self.max_context_images is not None:
            photos = photos[len(photos) - self.max_context_images:] if self.max_context_images else []
        return {"sample": s, "context_images": [self._load(p, s) for p in photos],
                "target_images": [self._load(p, s) for p in s.target_photos()]}


def _tags(sample: Sample) -> dict[str, str]:
    """Return speaker -> tag ("A", "B", ...) in order of first appearance."""
    return {sp: chr(ord("A") + k) if k < 26 else f"S{k}" for k, sp in enumerate(sample.speakers)}


class Collator:
    """Build the batch contract documented in the module (see keys in :meth:`__call__`)."""

    def __init__(self, llm_tokenizer, sd_tokenizer, image_transform: Callable, sd_image_transform: Callable,
                 max_length: int = 512, num_visual_tokens: int = NUM_VISUAL_TOKENS,
                 context_photos: str = "perceptron", max_context_images: int | None = None):
        if context_photos not in CONTEXT_PHOTOS:
            raise ValueError(f"context_photos must be one of {CONTEXT_PHOTOS}, got {context_photos!r}")
        self.llm = llm_tokenizer                   # Llama-style tokenizer with [IMG] [/IMG] <image>
        self.sd = sd_tokenizer                     # CLIP tokenizer of the diffusion model
        self.image_transform = image_transform     # PIL -> (3, H, W), perceptron input
        self.sd_image_transform = sd_image_transform  # PIL -> (3, H', W') in [-1, 1], image-loss target
        self.max_length = max_length               # longest sequence, bos and eos included
        self.num_visual_tokens = num_visual_tokens  # <image> placeholders per context photo
        self.context_photos = context_photos       # "perceptron": visual tokens (eq. 3); "caption": its caption
        self.max_context_images = max_context_images  # context photos seen as pixels per sample; None: all
        self.caption_supervision = 1.0             # share of samples whose caption tokens L_t scores (paper: all)
        self.image_id = llm_tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self.pad_id = llm_tokenizer.pad_token_id if llm_tokenizer.pad_token_id is not None else llm_tokenizer.eos_token_id
        for tok in (IMG_START, IMG_END, IMAGE_PLACEHOLDER):
            if len(llm_tokenizer.tokenize(tok)) != 1:
                raise ValueError(f"the LLM tokenizer must keep {tok} as one special token")

    def sees_pixels(self, turn: Turn) -> bool:
        """Return whether a context turn reaches the LLM as visual tokens (a photo, perceptron mode)."""
        return turn.photo is not None and self.context_photos == "perceptron"

    # ---- text ---------------------------------------------------------------------------------
    def _render(self, sample: Sample, context: list[Turn]) -> tuple[str, int, list[tuple[int, int]], list[int]]:
        """Return (text, response start char, caption char spans, context turn start chars)."""
        tags = _tags(sample)
        parts, turn_starts = [], []
        pos = 0
        for t in context:
            turn_starts.append(pos)
            if t.photo is None:
                body = " " + t.text
            elif self.context_photos == "perceptron":
                body = IMAGE_PLACEHOLDER * self.num_visual_tokens
            else:                                  # the pipeline's input end: the photo as its caption text
                body = f"{IMG_START} {t.photo.caption}{IMG_END}"
            parts.append(f"{tags[t.speaker]}:{body}\n")
            pos += len(parts[-1])
        parts.append(f"{tags[sample.speaker]}:")  # the prompt: who answers
        pos += len(parts[-1])
        response_start, spans = pos, []
        for k, t in enumerate(sample.response):
            line = "" if k == 0 else f"\n{tags[t.speaker]}:"
            if t.photo is not None:
                line += IMG_START
                spans.append((pos + len(line), pos + len(line) + 1 + len(t.photo.caption)))
                line += f" {t.photo.caption}{IMG_END}"
            else:
                line += " " + t.text
            parts.append(line)
            pos += len(line)
        return "".join(parts), response_start, spans, turn_starts

    def _encode(self, text: str) -> tuple[list[int], list[int]]:
        """Return (ids, start offsets) of text with bos prepended (bos offset -1)."""
        return self._encode_batch([text])[0]

    def _encode_batch(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        """Return `_encode` of every text, tokenized in one call (a fast tokenizer's Rust core: one pass)."""
        bos = [] if self.llm.bos_token_id is None else [self.llm.bos_token_id]
        backend = getattr(self.llm, "backend_tokenizer", None)   # a fast tokenizer: no per-text Python wrapping
        if backend is not None:
            return [(bos + e.ids, [-1] * len(bos) + [a for a, _ in e.offsets])
                    for e in backend.encode_batch(texts, add_special_tokens=False)]
        enc = self.llm(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [(bos + list(ids), [-1] * len(bos) + [a for a, _ in offsets])
                for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"])]

    def _capped_context(self, sample: Sample, limit: int | None = None) -> list[Turn]:
        """Return the context without its oldest photo turns beyond ``max_context_images`` (pixels only:
        a photo written as its caption is text, and the length limit governs it); with `limit`, only its
        newest `limit` turns (walked from the end, so the cost does not grow with the dialogue)."""
        kept, photos = [], 0
        for t in reversed(sample.context):
            if self.sees_pixels(t):
                photos += 1
                if self.max_context_images is not None and photos > self.max_context_images:
                    continue
            kept.append(t)
            if limit is not None and len(kept) >= limit:
                break
        return kept[::-1]

    def _fitted(self, samples: list[Sample]) -> list[tuple]:
        """Return, per sample, (kept context, its `_render`, ids, starts): the newest context turns that fit
        ``max_length`` with the response. All samples advance together, one batched tokenizer call per round.

        Every context turn renders to >= 1 token, so turns older than the newest max_length never fit; the
        newest k turns, k doubling from 8, show where the fitting ones end; then the fewest oldest turns are
        dropped until it fits. So a sample costs about twice what it keeps, however long its dialogue (a
        5,000-turn dialogue once took minutes here, re-rendering and re-scanning everything it would drop).
        """
        first = min(64, self.max_length)                     # walk 64 turns back; more only if they all fit
        capped = [self._capped_context(s, limit=first) for s in samples]
        k, seen = [8] * len(samples), {}                     # seen: a sample's last overflowing render
        todo = [i for i, c in enumerate(capped) if len(c) > 8]
        while todo:                                          # gallop while the newest k turns fit: to where the
            rendered = [self._render(samples[i], capped[i][-k[i]:]) for i in todo]   # tokens per turn so far
            left = []                                        # say the limit falls (+25 %), at least doubling
            for i, r, enc in zip(todo, rendered, self._encode_batch([r[0] for r in rendered])):
                if len(enc[0]) >= self.max_length:
                    seen[i] = (r, enc)
                    continue
                k[i] = max(2 * k[i], int(1.25 * k[i] * self.max_length / len(enc[0])) + 1)
                if k[i] >= len(capped[i]) == first < self.max_length:     # all 64 fit: walk further back
                    capped[i] = self._capped_context(samples[i], limit=self.max_length)
                if k[i] < len(capped[i]):
                    left.append(i)
            todo = left
        drop = [max(0, len(c) - kk) for c, kk in zip(capped, k)]
        out, todo = [None] * len(samples), list(range(len(samples)))
        while todo:                                          # drop the fewest oldest turns that make it fit
            fresh = [i for i in todo if i not in seen]
            rendered = [self._render(samples[i], capped[i][drop[i]:]) for i in fresh]
            got = dict(zip(fresh, zip(rendered, self._encode_batch([r[0] for r in rendered]))))
            got.update((i, seen.pop(i)) for i in todo if i in seen)   # the gallop's last render, not redone
            left = []
            for i in todo:
                r, (ids, starts) = got[i]
                n = len(ids) + 1                             # + eos
                if n <= self.max_length:
                    out[i] = (capped[i][drop[i]:], r, ids, starts)
                    continue
                if drop[i] >= len(capped[i]):
                    raise DataError("too_long", f"the response alone needs {n} tokens > max_length "
                                    f"{self.max_length}", dialogue_id=samples[i].dialogue_id,
                                    field=f"sample {samples[i].id}")
                first_tok = [bisect.bisect_left(starts, c) for c in r[3][1:]]   # starts ascend: O(log n) each
                drop[i] += next((j + 1 for j, ft in enumerate(first_tok) if ft - 1 >= n - self.max_length),
                                len(capped[i]) - drop[i])
                left.append(i)                               # re-checked on the next round
            todo = left
        return out

    def encode(self, sample: Sample) -> dict:
        """Return one sample's ids, labels, caption positions (local) and the kept context turns."""
        context, (text, resp_start, spans, _), ids, starts = self._fitted([sample])[0]
        ids.append(self.llm.eos_token_id)
        starts.append(len(text))
        labels = [t if s >= resp_start else IGNORE_INDEX for t, s in zip(ids, starts)]
        cap = [-1] * len(ids)
        for j, (a, b) in enumerate(spans):
            for i, s in enumerate(starts):
                if a <= s < b and ids[i] != self.image_id:
                    cap[i] = j
        n_placeholders = sum(self.sees_pixels(t) for t in context) * self.num_visual_tokens
        assert ids.count(self.image_id) == n_placeholders, "an <image> placeholder was split or merged"
        if spans and not self.caption_scored(sample):        # the study's unsupervised captions: L_t skips
            labels = [IGNORE_INDEX if c >= 0 else lab for lab, c in zip(labels, cap)]   # them, L_v still sees them
        return {"input_ids": ids, "labels": labels, "caption_positions": cap, "context": context}

    def cut_report(self, samples: list[Sample]) -> Counter:
        """Return what the limits cut from `samples`: ``samples`` cut at all, context ``turns`` dropped for
        length, context ``photos`` dropped (over ``max_context_images`` or with a dropped turn)."""
        cuts, last, pixels = Counter(), [], 0
        fitted = (f for k in range(0, len(samples), 512) for f in self._fitted(samples[k:k + 512]))
        for s, (kept, *_) in zip(samples, fitted):
            # photos in the context; a dialogue's samples have growing prefixes as contexts: count only what is new
            grows = len(s.context) >= len(last) and s.context[:len(last)] == last
            pixels = (pixels if grows else 0) + sum(t.photo is not None for t in s.context[len(last) if grows else 0:])
            last = s.context
            pixels_seen = pixels if self.context_photos == "perceptron" else 0
            capped = len(s.context) - max(0, pixels_seen - self.max_context_images if self.max_context_images is not None else 0)
            n_turns = capped - len(kept)
            n_photos = pixels_seen - sum(self.sees_pixels(t) for t in kept)
            cuts["samples"] += bool(n_turns or n_photos)
            cuts["turns"] += n_turns
            cuts["photos"] += n_photos
        return cuts

    def caption_scored(self, sample: Sample) -> bool:
        """Return whether L_t scores this sample's caption tokens: always, unless `caption_supervision` < 1
        (the study's designed toy world), where a fixed, seeded share of samples keeps its caption unscored."""
        if self.caption_supervision >= 1:
            return True
        h = hashlib.sha256(f"caption-supervision:{sample.id}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2 ** 64 < self.caption_supervision

    def encode_prompt(self, context: list[Turn], speaker: str, max_new_tokens: int = 0) -> dict:
        """Return the generation prompt: ids of the context plus the responder's tag, the kept turns, the tag.

        Uses the training layout exactly (via `encode` on a one-token probe response), so inference
        sees what training saw; oldest turns are dropped until the prompt + `max_new_tokens` fit.
        """
        speakers = tuple(dict.fromkeys([t.speaker for t in context] + [speaker]))
        probe = Sample(id="prompt", dialogue_id="prompt", context=list(context),
                       response=[Turn(speaker=speaker, text=".")], speakers=speakers)
        saved, self.max_length = self.max_length, self.max_length - max_new_tokens
        try:
            e = self.encode(probe)
        finally:
            self.max_length = saved
        start = next(i for i, lab in enumerate(e["labels"]) if lab != IGNORE_INDEX)  # first response token
        return {"input_ids": torch.tensor([e["input_ids"][:start]]), "context": e["context"],
                "tag": _tags(probe)[speaker]}

    # ---- batch --------------------------------------------------------------------------------
    def _empty(self, transform: Callable) -> torch.Tensor:
        """Return a (0, 3, H, W) tensor shaped like transform's output."""
        return transform(Image.new("RGB", (64, 64))).unsqueeze(0)[:0]

    def __call__(self, items: list[dict]) -> dict:
        """Return the batch dict (keys and shapes in the docstring of this module's contract)."""
        encoded = [self.encode(it["sample"]) for it in items]
        T = max(len(e["input_ids"]) for e in encoded)
        B = len(items)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)       # (B, T)
        attention_mask = torch.zeros((B, T), dtype=torch.long)              # (B, T)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)         # (B, T)
        caption_positions = torch.full((B, T), -1, dtype=torch.long)        # (B, T)
        ctx_pix, ctx_idx, tgt_pix, tgt_idx, captions, llm_caps = [], [], [], [], [], []
        for b, (it, e) in enumerate(zip(items, encoded)):
            n = len(e["input_ids"])
            input_ids[b, :n] = torch.tensor(e["input_ids"])
            attention_mask[b, :n] = 1
            labels[b, :n] = torch.tensor(e["labels"])
            # context photos of the kept turns only: the newest images (older ones were dropped or never loaded)
            n_kept = sum(t.photo is not None for t in e["context"])
            for img in it["context_images"][len(it["context_images"]) - n_kept:] if self.context_photos == "perceptron" else []:
                ctx_pix.append(self.image_transform(img))
                ctx_idx.append(b)
            cap = torch.tensor(e["caption_positions"])
            offset = len(captions)
            for j, (photo, img) in enumerate(zip(it["sample"].target_photos(), it["target_images"])):
                tgt_pix.append(self.sd_image_transform(img))
                tgt_idx.append(b)
                captions.append(photo.caption)
                llm_caps.append(input_ids[b, :n][cap == j].clone())  # T_LLM tokens (eq. 10)
            caption_positions[b, :n] = torch.where(cap >= 0, cap + offset, cap)
        L = self.sd.model_max_length
        sd_caps = [torch.tensor(self.sd(c, add_special_tokens=False).input_ids[:L - 2], dtype=torch.long)
                   for c in captions]                                       # T_SD tokens (eq. 10)
        sd_input_ids = (torch.tensor(self.sd(captions, padding="max_length", max_length=L,
                                             truncation=True).input_ids, dtype=torch.long)
                        if captions else torch.zeros((0, L), dtype=torch.long))  # (N_cap, L)
        return {
            "ids": [it["sample"].id for it in items],
            "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "context_pixel_values": torch.stack(ctx_pix) if ctx_pix else self._empty(self.image_transform),
            "context_image_batch_index": torch.tensor(ctx_idx, dtype=torch.long),   # (N_ctx,)
            "caption_positions": caption_positions,
            "target_pixel_values": torch.stack(tgt_pix) if tgt_pix else self._empty(self.sd_image_transform),
            "target_batch_index": torch.tensor(tgt_idx, dtype=torch.long),          # (N_cap,)
            "sd_input_ids": sd_input_ids,
            "llm_caption_ids": llm_caps,
            "sd_caption_ids": sd_caps,
            "captions": captions,
        }
