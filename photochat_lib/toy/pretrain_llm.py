"""Stage 1 of the toy foundation: the LLM's language, pretrained from scratch on a CPU.

The paper starts from Llama-2-7b-chat (§3.1.2); the toy preset's stand-in (4 layers, 256 wide) learns a
causal-LM objective, eq. (2) over *every* token, on the corpus of ``corpus.py``: toy-world dialogues in the
chat layout of ``data/collate.py`` (photo turns dropped), scene descriptions, world knowledge ("a kite is a
triangle") and copying narratives, so that like Llama it can copy what a dialogue names and knows what shape
a ball is. It never sees ``[IMG]``/``[/IMG]``/``<image>`` nor a PhotoChat-style caption: *when* to share and
*what* caption to write are left to joint training. ``photochat pretrain`` (`apps/pretrain.py`) runs this
stage, then the perceptron (`pretrain_perceptron.py`), the image generator (`pretrain_sd.py`) and the
classifier (`classifier.py`).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch

from photochat_lib.data.collate import Collator
from photochat_lib.data.samples import Sample
from photochat_lib.data.schema import Turn
from photochat_lib.data.tokens import IGNORE_INDEX
from photochat_lib.data.toy_world import sample_dialogue
from photochat_lib.model.text_generator import text_loss
from photochat_lib.toy.corpus import MIX, copying_text, knowledge_text, probe_llm, scene_text
from photochat_lib.toy.pretrain_perceptron import adamw, describe_scene, warmup_cosine
from photochat_lib.utils.cliutil import progress_bar


@dataclass
class LLMPretrainConfig:
    steps: int = 2500                  # optimizer steps (copying is learnt last: ~50 % at 1000, ~97 % at 2500)
    batch_size: int = 64               # sequences per step (one document per row, right-padded)
    chunk_size: int = 16               # sequences per forward pass, grouped by length (less padding)
    lr: float = 2e-3                   # AdamW peak learning rate (the toy LLM starts from scratch)
    weight_decay: float = 0.01         # AdamW weight decay on weight matrices
    warmup_steps: int = 50             # linear warm-up, then cosine decay to 10 % of lr
    mix: dict = field(default_factory=lambda: dict(MIX))  # share of each kind of text (corpus.MIX)
    max_length: int = 384              # longest single sequence (the toy preset's max_length)
    n_eval: int = 64                   # held-out sequences for the final loss
    n_probe: int = 100                 # held-out prompts per probe (corpus.probe_llm); 0: none


def dialogue_turns(rng: random.Random) -> list[Turn]:
    """Return one freshly sampled toy dialogue (training phrasings) as text turns; its photo turn is written as
    the photo's description in words, so what is said about the photo is true of it (no [IMG] ever)."""
    turns, objects, bg = sample_dialogue(rng, "train")
    return [Turn(speaker=str(t["user_id"]), text=f"(photo: {describe_scene(objects, bg)})" if t["share_photo"]
                 else t["message"]) for t in turns]


def chat_ids(collator: Collator, turns: list[Turn]) -> list[int]:
    """Return the ids of a text-only dialogue in the collate step's chat layout: <s> A: ...\n B: ... </s>."""
    speakers = tuple(dict.fromkeys(t.speaker for t in turns))
    sample = Sample(id="pretrain", dialogue_id="pretrain", context=turns[:-1], response=turns[-1:],
                    speakers=speakers)
    return collator.encode(sample)["input_ids"]


def lm_example(rng: random.Random, collator: Collator, mix: dict[str, float] = MIX) -> list[int]:
    """Return one pretraining sequence of a kind drawn from `mix` (see `corpus`): a chat-layout
    dialogue, or <s> text </s> with a described scene and questions about it, world knowledge or a copying
    narrative."""
    tok = collator.llm
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    if kind == "dialogue":
        return chat_ids(collator, dialogue_turns(rng))
    text = {"scene": scene_text, "knowledge": knowledge_text, "copying": copying_text}[kind](rng)
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
