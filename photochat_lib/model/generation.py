"""Inference (paper §2.5, last paragraph): perceive the context's photos, write the reply, and draw a
photo for every ``[IMG] caption [/IMG]`` the LLM emits.

Edge cases, decided here and taught in the course:

* **Unbalanced ``[IMG]``** — the reply ends (eos or ``max_new_tokens``) before ``[/IMG]``: the caption
  is closed at the end of the reply, the photo is still drawn, and the segment is flagged
  ``unbalanced=True`` (the LLM clearly meant to share a photo; dropping it would hide that).
* **Empty caption** — ``[IMG] [/IMG]``: nothing to draw; the segment is kept with ``image=None`` and a
  note, so callers can see that the model tried to share.
* **Stray ``[/IMG]``** without an opening ``[IMG]``: dropped from the text, with a note.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import re

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList

from photochat_lib.model.sampling import GUIDANCE_SCALE, SAMPLER_STEPS
from photochat_lib.data.tokens import IMG_END, IMG_START


@dataclass
class Segment:
    kind: str                           # "text" or "photo"
    text: str                           # the utterance, or the photo's caption
    image: Image.Image | None = None    # the drawn photo (kind == "photo" and caption not empty)
    unbalanced: bool = False            # [IMG] never closed: caption ran to the end of the reply


@dataclass
class Reply:
    raw: str                                            # the LLM's decoded output, special tokens kept
    segments: list[Segment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)      # what was repaired (unbalanced, empty, stray)

    @property
    def text(self) -> str:
        """The reply's text with each photo shown as [photo: caption]."""
        parts = [s.text if s.kind == "text" else f"[photo: {s.text}]" for s in self.segments]
        return " ".join(p for p in parts if p)

    @property
    def captions(self) -> list[str]:
        """Captions of the photos the model shared, in order."""
        return [s.text for s in self.segments if s.kind == "photo"]

    @property
    def images(self) -> list[Image.Image]:
        """The drawn photos, in order (empty captions draw nothing)."""
        return [s.image for s in self.segments if s.kind == "photo" and s.image is not None]

    @property
    def shared_photo(self) -> bool:
        """Whether the model tried to share a photo in this reply."""
        return any(s.kind == "photo" for s in self.segments)


def parse_reply(raw: str) -> Reply:
    """Return the Reply structure of a decoded LLM output (no images drawn yet)."""
    reply, rest = Reply(raw=raw), raw
    while rest:
        start, end = rest.find(IMG_START), rest.find(IMG_END)
        if end != -1 and (start == -1 or end < start):              # stray [/IMG]
            reply.notes.append("stray [/IMG] without [IMG] dropped")
            rest = rest[:end] + rest[end + len(IMG_END):]
            continue
        if start == -1:
            _add_text(reply, rest)
            break
        _add_text(reply, rest[:start])
        rest = rest[start + len(IMG_START):]
        close = rest.find(IMG_END)
        caption = (rest if close == -1 else rest[:close]).strip()
        seg = Segment("photo", caption, unbalanced=close == -1)
        if close == -1:
            reply.notes.append("unbalanced [IMG]: caption closed at the end of the reply")
        if not caption:
            reply.notes.append("empty caption: no photo drawn")
        reply.segments.append(seg)
        rest = "" if close == -1 else rest[close + len(IMG_END):]
    return reply


def own_turn(text: str, tag: str) -> tuple[str, str | None]:
    """Return (the reply up to the first line another speaker opens, that speaker's tag or None).

    The chat layout writes every turn as a line "<tag>: text"; a model that has not learned to end its
    turn with eos may write the other speaker's next line too. The replying speaker's own further lines
    (a run of consecutive turns, §2.1) are kept, without their tags.
    """
    lines = text.split("\n")
    keep = [lines[0]]
    for line in lines[1:]:
        m = re.match(r"(\w+):", line)
        if m and m.group(1) != tag:
            return "\n".join(keep), m.group(1)
        keep.append(line[m.end():] if m else line)
    return "\n".join(keep), None


class EndOfTurn(StoppingCriteria):
    """Stop each row of a batch once its reply opens a line of another speaker (`own_turn`): the bot's turn is
    over, and the other person's line is theirs to write. The row's eos stops it too (the usual end)."""

    def __init__(self, tokenizer, tags: list[str]):
        self.tokenizer, self.tags = tokenizer, tags     # one replying speaker's tag per row

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return torch.tensor([own_turn(text, tag)[1] is not None for text, tag in zip(texts, self.tags)],
                            dtype=torch.bool, device=input_ids.device)


def _add_text(reply: Reply, text: str) -> None:
    text = " ".join(text.split())
    if text:
        reply.segments.append(Segment("text", text))


@torch.no_grad()
def generate(model, context, speaker: str | None = None, max_new_tokens: int = 48, do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, seed: int = 0, draw_images: bool = True,
             num_inference_steps: int = SAMPLER_STEPS, guidance_scale: float = GUIDANCE_SCALE) -> Reply:
    """Return the model's next reply to a multimodal context, with a photo drawn per caption.

    context: a list of turns — `photochat_lib.data.schema.Turn`, or (speaker, str | PIL.Image)
    pairs, or bare str / PIL.Image items (speakers then alternate A, B, A, … from the first).
    speaker: who replies (default: the speaker after the last turn).
    """
    return generate_batch(model, [context], [speaker], max_new_tokens=max_new_tokens, do_sample=do_sample,
                          temperature=temperature, top_k=top_k, seed=seed, draw_images=draw_images,
                          num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)[0]


@torch.no_grad()
def generate_batch(model, contexts: list, speakers: list | None = None, max_new_tokens: int = 48,
                   do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, seed: int = 0,
                   draw_images: bool = True, num_inference_steps: int = SAMPLER_STEPS, guidance_scale: float = GUIDANCE_SCALE,
                   image_batch_size: int = 16) -> list[Reply]:
    """Return one Reply per context, generated together (left-padded prompts, one LLM.generate)."""
    from photochat_lib.data.collate import Collator
    from photochat_lib.data.images import load_image
    model.eval()
    tok = model.tokenizer
    collator = Collator(tok, model.image_generator.tokenizer, image_transform=None, sd_image_transform=None,
                        max_length=model.llm.config.max_position_embeddings, context_photos=model.context_photos)
    rows, photos, photo_rows, tags = [], [], [], []
    for b, (ctx, who) in enumerate(zip(contexts, speakers or [None] * len(contexts))):
        turns, who, images = _normalise_context(ctx, who, model if model.context_photos == "caption" else None)
        prompt = collator.encode_prompt(turns, who, max_new_tokens=max_new_tokens)
        rows.append(prompt["input_ids"][0])
        tags.append(prompt["tag"])
        for t in prompt["context"]:                                              # photos that still fit
            if collator.sees_pixels(t):
                photos.append(images.get(id(t)) or load_image(t.photo))
                photo_rows.append(b)
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)  # (B, T) left-padded
    mask = torch.zeros_like(input_ids)
    for b, r in enumerate(rows):
        input_ids[b, T - len(r):], mask[b, T - len(r):] = r, 1
    pixels = model.perceptron.preprocess(photos)                                # (N, 3, S, S)
    embeds = model.input_embeddings(input_ids.to(model.device), pixels, torch.tensor(photo_rows, dtype=torch.long))
    torch.manual_seed(seed)
    kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id,
              eos_token_id=tok.eos_token_id, stopping_criteria=StoppingCriteriaList([EndOfTurn(tok, tags)]))
    if do_sample:
        kw.update(temperature=temperature, top_k=top_k or None)
    out = model.llm.generate(inputs_embeds=embeds, attention_mask=mask.to(model.device), **kw)
    replies = []
    for row, tag in zip(out.tolist(), tags):
        ids = []
        for i in row:
            if i == tok.eos_token_id:
                break
            if i != tok.pad_token_id:
                ids.append(i)
        text, cut = own_turn(tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False), tag)
        replies.append(parse_reply(text))
        if cut:
            replies[-1].notes.append(f"reply cut where speaker {cut} began a turn")
    if draw_images:
        draw_photos(model, replies, num_inference_steps, guidance_scale, seed, image_batch_size)
    return replies


def draw_photos(model, replies: Reply | list[Reply], num_inference_steps: int = SAMPLER_STEPS,
                guidance_scale: float = GUIDANCE_SCALE,
                seed: int = 0, batch_size: int = 16) -> None:
    """Draw every non-empty caption of the replies with the image generator (in place)."""
    replies = [replies] if isinstance(replies, Reply) else replies
    todo = [s for r in replies for s in r.segments if s.kind == "photo" and s.text]
    images = draw_captions(model.image_generator, [s.text for s in todo], num_inference_steps, guidance_scale,
                           seed, batch_size)
    for seg, img in zip(todo, images):
        seg.image = img


def draw_captions(generator, captions: list[str], num_inference_steps: int = SAMPLER_STEPS,
                  guidance_scale: float = GUIDANCE_SCALE, seed: int = 0, batch_size: int = 16) -> list[Image.Image]:
    """Return one PIL photo per caption, drawn by the image generator (one seeded noise stream)."""
    g = torch.Generator(device=generator.unet.device).manual_seed(seed)
    out = []
    for k in range(0, len(captions), batch_size):
        # §2.5: at inference the caption goes straight to SD; R_SD is the SD tokenizer's one-hot sequence.
        r_sd = generator.one_hot(generator.tokenize(captions[k:k + batch_size]))  # (P, n, V_SD)
        out += generator.generate(r_sd, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                  generator=g, output_type="pil")
    return out


def _normalise_context(context, speaker, captioner=None):
    """Return ([Turn], replying speaker, {id(turn): in-memory PIL image}) from the accepted forms.

    captioner: a model whose LLM sees context photos as captions (the pipeline's input end); an
    in-memory photo then gets the caption `caption_photo` reads from it.
    """
    from photochat_lib.data.schema import Photo, Turn
    turns, images = [], {}
    for k, item in enumerate(context):
        if isinstance(item, Turn):
            turns.append(item)
            continue
        who, content = item if isinstance(item, tuple) else ("AB"[k % 2], item)
        if isinstance(content, Image.Image):
            text = caption_photo(captioner, content) if captioner is not None else "a photo the user sent"
            turn = Turn(speaker=who, photo=Photo(caption=text))
            images[id(turn)] = content
        else:
            turn = Turn(speaker=who, text=str(content))
        turns.append(turn)
    if speaker is None:
        speakers = list(dict.fromkeys(t.speaker for t in turns)) or ["A"]
        others = [s for s in speakers + ["A", "B"] if s != turns[-1].speaker] if turns else ["A"]
        speaker = others[0]
    return turns, speaker, images


def caption_photo(model, image: Image.Image) -> str:
    """Return a caption of a photo for a pipeline whose LLM reads context photos as captions.

    The pipeline's image caption model is `model.captioner`, handed in by the preset layer
    (`presets.captioner_for`: on the toy preset the toy classifier names the objects it sees). The real presets
    ship none (BLIP-2's OPT is not loaded), so a photo sent to them must come with its caption.
    """
    if model.captioner is None:
        raise ValueError("this pipeline reads context photos as captions (pipeline_context='caption') and the "
                         f"{model.config.preset!r} model has no caption model: set model.captioner "
                         "(photochat_lib.presets.captioner_for), pass the photo as a Turn with Photo(caption=...), "
                         "or use pipeline_context='perceptron'")
    return model.captioner(image)
