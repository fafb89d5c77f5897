"""The text dialogue generator (paper §2.2, eq. 1–2): a decoder-only LLM that reads the multimodal
context and writes the response, with ``[IMG] caption [/IMG]`` wherever it shares a photo.

    h_i = LLM(U, r_<i);  o_i = LPL(h_i);  p_i = softmax(o_i)          eq. (1)
    L_t = -sum_i log p_i[r_i]   over the response tokens only         eq. (2)

The context's photos enter as the image perceptron's visual tokens: the collate step writes
``NUM_VISUAL_TOKENS`` copies of the ``<image>`` placeholder for each photo, and `splice_visual_tokens`
replaces their embeddings, in order, with the perceptron's outputs. Context text and visual tokens
carry the label ``IGNORE_INDEX`` and are never scored.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from photochat_lib.data.tokens import IGNORE_INDEX, IMAGE_PLACEHOLDER, SPECIAL_TOKENS


def add_special_tokens(tokenizer: PreTrainedTokenizerBase, llm: torch.nn.Module | None = None) -> int:
    """Add [IMG], [/IMG], <image> (and a pad token if missing); resize the LLM's embeddings; return #added."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    added = tokenizer.add_special_tokens({"additional_special_tokens": missing}) if missing else 0
    if tokenizer.pad_token is None:
        # Llama-2 has no pad token; reuse <unk> so no embedding row is added for padding.
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if llm is not None and llm.get_input_embeddings().num_embeddings < len(tokenizer):
        # mean_resizing: new rows start at the mean embedding, a better start than noise for [IMG].
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return added


def load_llm(source: str | os.PathLike | LlamaConfig, tokenizer: PreTrainedTokenizerBase | None = None,
             token: str | None = None, dtype: torch.dtype | None = None):
    """Return (llm, tokenizer): from a LlamaConfig (random init, tokenizer required) or a hub id / folder."""
    if isinstance(source, LlamaConfig):
        if tokenizer is None:
            raise ValueError("building an LLM from a config needs its tokenizer")
        check_size(source, "the LLM config")
        llm = LlamaForCausalLM(source)
    else:
        from transformers import AutoConfig
        kwargs = {"dtype": dtype} if dtype is not None else {}
        check_size(AutoConfig.from_pretrained(source, token=token), f"{source}/config.json")   # no tensor yet
        llm = AutoModelForCausalLM.from_pretrained(source, token=token, **kwargs)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source, token=token)
    add_special_tokens(tokenizer, llm)
    return llm, tokenizer


def check_size(config, where: str, factor: float = 4.0) -> None:
    """Refuse, before any tensor is built, an LLM config whose weights would not fit `factor` x this machine's
    memory (RAM + GPUs), naming the file and its sizes: ``vocab_size`` 1e10 or ``num_hidden_layers`` 1e5 once
    meant a RuntimeError or minutes of silence. Estimate: embeddings and head, plus per layer the attention
    (4 hidden^2) and the gated MLP (3 hidden x intermediate), 4 bytes each."""
    import psutil
    get = lambda name, default=0: int(getattr(config, name, default) or default)   # noqa: E731
    vocab, hidden, layers = get("vocab_size"), get("hidden_size"), get("num_hidden_layers")
    inter = get("intermediate_size", 4 * hidden)
    params = 2 * vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * inter)
    memory = psutil.virtual_memory().total + sum(torch.cuda.get_device_properties(i).total_memory
                                                 for i in range(torch.cuda.device_count()))
    if params * 4 > factor * memory:
        raise ValueError(f"{where}: vocab_size {vocab:,}, hidden_size {hidden:,}, num_hidden_layers {layers:,} make "
                         f"about {params / 1e9:,.0f} B parameters ({params * 4 / 2 ** 30:,.0f} GiB), far beyond this "
                         f"machine's {memory / 2 ** 30:,.0f} GiB; is the config broken?")


def splice_visual_tokens(embeds: torch.Tensor, input_ids: torch.Tensor, placeholder_id: int,
                         visual: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
    """Return embeds with every <image> run replaced by that photo's visual tokens (eq. 3 → LLM input).

    embeds (B, T, D); input_ids (B, T); visual (N, Q, D), the photos in order of appearance;
    batch_index (N,), the row each photo belongs to (rows' photos appear in the same order).
    """
    is_slot = input_ids == placeholder_id                                   # (B, T)
    n_slots, n_visual = int(is_slot.sum()), visual.shape[0] * visual.shape[1]
    if n_slots != n_visual:
        raise ValueError(f"{n_slots} <image> placeholders but {visual.shape[0]} photos × "
                         f"{visual.shape[1]} visual tokens = {n_visual}")
    if n_visual == 0:
        return embeds
    # Photos must be ordered by row so that the flattened slots line up with the flattened tokens.
    if batch_index.numel() > 1 and bool((batch_index[1:] < batch_index[:-1]).any()):
        raise ValueError("context photos must be ordered by batch row")
    out = embeds.clone()
    out[is_slot] = visual.reshape(-1, visual.shape[-1]).to(embeds.dtype)    # (N*Q, D) into the slots
    return out


LOSS_REDUCTIONS = ("mean", "sum")   # eq. (2) and eq. (12) averaged (our default) or summed (the paper)


def text_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Return eq. (2), the NLL of the response tokens (labels != IGNORE_INDEX), next-token shifted.

    reduction "mean" (default): averaged over the batch's scored tokens, the usual batch-size independent
    normalisation. "sum": the paper's form, eq. (2)'s sum over the |R| tokens of each response, averaged over
    the responses of the batch. The two differ by the number of scored tokens per response (≈ 17 in the toy),
    so α of eq. (13) means something else in each (see `photochat_model.alpha_in`).
    """
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")
    shift_logits = logits[:, :-1]                                           # (B, T-1, V) predicts t+1
    shift_logits = shift_logits if shift_logits.dtype == torch.float64 else shift_logits.float()
    shift_labels = labels[:, 1:]                                            # (B, T-1)
    scored = shift_labels != IGNORE_INDEX                                   # (B, T-1)
    if not bool(scored.any()):
        return shift_logits.sum() * 0.0                                     # nothing to score
    if reduction == "mean":
        return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                               ignore_index=IGNORE_INDEX)                  # eq. (2), averaged
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="sum")      # eq. (2): -Σ log p over scored tokens
    return nll / scored.any(dim=1).sum()                                   # per response, averaged


def placeholder_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Return the id of the <image> placeholder token."""
    return tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
