"""A positional bridge from the LLM's sampled caption to Stable Diffusion's, beside the paper's (eq. 8–11).

The paper's bridge (`dvtm.dvtm_average` + `dvtm.straight_through_sd`) pools the caption: eq. (10)'s matrix is
the outer product of the caption's two token-set indicators, so what reaches caption position k of the LLM is

    dL_v / d r_k = c · a            (a: the indicator of T_LLM, c: ONE number per caption)

— L_v can say "more, or less, of the caption's own tokens", never "purple, not blue" (notebook 04, 09).

The positional bridge keeps the positions apart and the whole vocabulary in play:

1. a vocabulary-wide relation ``M`` (|V_LLM|, |V_SD|), :func:`token_level_vtm`: row i is the SD tokenization of
   LLM token i's text (eq. 8's equality relation, widened to a token that SD splits into several), each row
   summing to 1 — built once per pair of tokenizers, nnz ≈ |V_LLM| × (SD pieces per LLM token);
2. an alignment ``A_b`` (n_b, m_b) per caption, :func:`align_tokens`: SD caption token j reads the LLM caption
   positions that spell the same characters (averaged when several do);
3. eq. (9) per position, ``S_b = A_b (R_LLM,b M)`` (n_b, |V_SD|), and eq. (11)'s straight-through without the
   pooling: ``R_SD = R_SD − sg[S] + S`` at the caption's SD positions.

Then dL_v/d r_k[i] = Σ_j A_b[j, k] Σ_v M[i, v] g_j[v] (g_j = dL_v/dR_SD at SD position j): every LLM token i
gets its own value, so the gradient at a caption position ranks the whole vocabulary.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

BRIDGES = ("sentence", "positional")


def token_level_vtm(llm_tokenizer, sd_tokenizer, llm_vocab_size: int, sd_vocab_size: int) -> torch.Tensor:
    """Return the vocabulary-wide relation M, sparse COO (|V_LLM|, |V_SD|), rows summing to 1 (or 0).

    Row i spreads LLM token i over the SD tokens of its text: ``M[i, j] = 1/|T_SD(s_i)|`` for j ∈ T_SD(s_i),
    s_i = the decoded text of token i. Special tokens and tokens whose text SD cannot spell give an empty row.
    """
    special = set(llm_tokenizer.all_special_ids)
    ids = [i for i in range(min(llm_vocab_size, len(llm_tokenizer))) if i not in special]
    texts = [llm_tokenizer.decode([i]).strip() for i in ids]
    pieces = sd_tokenizer(texts, add_special_tokens=False).input_ids   # one fast batched call
    rows, cols, vals = [], [], []
    for i, text, sd in zip(ids, texts, pieces):
        sd = [j for j in sd if 0 <= j < sd_vocab_size and j != getattr(sd_tokenizer, "unk_token_id", None)]
        if not text or not sd:
            continue
        for j in sd:                                                   # eq. (8) widened: token i spells T_SD(s_i)
            rows.append(i), cols.append(j), vals.append(1.0 / len(sd))
    if not rows:
        raise ValueError("token_level_vtm: no LLM token's text could be spelled by the SD tokenizer")
    idx = torch.tensor([rows, cols], dtype=torch.long)                 # (2, nnz)
    M = torch.sparse_coo_tensor(idx, torch.tensor(vals), (llm_vocab_size, sd_vocab_size),
                                check_invariants=False).coalesce()           # ids in range by construction
    return M                                                           # a repeated piece sums: still rows of 1


def _spans(pieces: Sequence[str]) -> list[tuple[int, int]]:
    """Return each piece's [start, end) in the concatenation of the pieces (whitespace dropped, lowercased)."""
    out, at = [], 0
    for p in pieces:
        out.append((at, at + len(p)))
        at += len(p)
    return out


def _norm(text: str) -> str:
    return "".join(text.split()).lower()


def align_tokens(llm_pieces: Sequence[str], sd_pieces: Sequence[str]) -> torch.Tensor:
    """Return A (n, m): SD token j averages the LLM tokens whose characters overlap its own.

    Pieces are the tokens' decoded texts; whitespace and case are ignored (CLIP lowercases). When the two
    spell different strings (an unknown token, a byte split in two) the caption is aligned by relative
    position instead (SD j reads LLM ⌊(j + ½) m / n⌋), so every SD position still reads one LLM position.
    """
    a = [_norm(p) for p in llm_pieces]
    b = [_norm(p) for p in sd_pieces]
    m, n = len(a), len(b)
    A = torch.zeros(n, m)                                              # (n, m)
    if m == 0 or n == 0:
        return A
    if "".join(a) == "".join(b):
        la, lb = _spans(a), _spans(b)
        for j, (s, e) in enumerate(lb):
            for k, (s2, e2) in enumerate(la):
                if min(e, e2) > max(s, s2):                            # the two tokens share a character
                    A[j, k] = 1.0
    else:
        A[torch.arange(n), ((torch.arange(n) + 0.5) * m / n).long().clamp(max=m - 1)] = 1.0
    return A / A.sum(1, keepdim=True).clamp(min=1.0)                   # rows average their LLM positions


class PositionalBridge:
    """The positional bridge of one (LLM tokenizer, SD tokenizer) pair; alignments cached per caption."""

    def __init__(self, llm_tokenizer, sd_tokenizer, llm_vocab_size: int, sd_vocab_size: int):
        self.llm_tokenizer, self.sd_tokenizer = llm_tokenizer, sd_tokenizer
        self.M = token_level_vtm(llm_tokenizer, sd_tokenizer, llm_vocab_size, sd_vocab_size)  # (V1, V2)
        self._align = lru_cache(maxsize=65536)(self._align_ids)

    def _align_ids(self, llm_ids: tuple[int, ...], sd_ids: tuple[int, ...]) -> torch.Tensor:
        llm = [self.llm_tokenizer.decode([i]) for i in llm_ids]
        sd = [self.sd_tokenizer.decode([j]) for j in sd_ids]
        return align_tokens(llm, sd)                                   # (n_b, m_b)

    def alignment(self, llm_ids: Sequence[torch.Tensor], sd_ids: Sequence[torch.Tensor], m: int, n: int,
                  device) -> torch.Tensor:
        """Return A (B, n, m): caption b's alignment placed at SD positions 1..n_b (after BOS), zeros elsewhere."""
        A = torch.zeros(len(llm_ids), n, m)                            # (B, n, m)
        for b, (li, si) in enumerate(zip(llm_ids, sd_ids)):
            a_b = self._align(tuple(int(x) for x in li), tuple(int(x) for x in si))   # (n_b, m_b)
            n_b = min(a_b.shape[0], n - 2)                             # SD keeps BOS ... EOS in n positions
            A[b, 1:1 + n_b, : a_b.shape[1]] = a_b[:n_b]
        return A.to(device)

    def __call__(self, r_llm: torch.Tensor, r_sd: torch.Tensor, llm_ids, sd_ids) -> torch.Tensor:
        """Return R_SD (B, n, V2) whose value is ``r_sd`` and whose gradient reaches ``r_llm`` position by position.

        r_llm (B, m, V1): the STGS one-hots of the caption (eq. 7), padded positions zero; r_sd (B, n, V2): the SD
        tokenizer's one-hots; llm_ids / sd_ids: caption b's LLM ids (its m_b real positions, in order) and SD ids.
        """
        return positional_straight_through(r_llm, r_sd, self.M,
                                           self.alignment(llm_ids, sd_ids, r_llm.shape[1], r_sd.shape[1], r_llm.device))


class _PositionalST(torch.autograd.Function):
    """Forward: R_SD's value. Backward: dL/dR_LLM = (Aᵀ g) Mᵀ, S = A (R_LLM M) never formed (only its gradient counts)."""

    @staticmethod
    def forward(ctx, r_llm, r_sd, M, A):
        ctx.save_for_backward(A)
        ctx.M, ctx.llm_dtype = M, r_llm.dtype
        return r_sd.view_as(r_sd)                                      # eq. (11): the value is R_SD's (no copy)

    @staticmethod
    def backward(ctx, g):                                              # g: (B, n, V2) = dL/dR_SD
        (A,), M = ctx.saved_tensors, ctx.M
        B, n, V2 = g.shape
        m = A.shape[2]
        g_rows = A.transpose(1, 2).to(ctx.llm_dtype) @ g.to(ctx.llm_dtype)   # (B, m, V2) each LLM position's share
        if M.layout == torch.strided:
            grad = g_rows @ M.to(ctx.llm_dtype).t()                    # (B, m, V1) eq. (9)'s transpose
        else:
            x = g_rows.reshape(B * m, V2).t().contiguous()                 # (V2, B m): contiguous is ~7x faster
            grad = torch.sparse.mm(M.to(ctx.llm_dtype), x).t().reshape(B, m, -1)   # (B, m, V1) eq. (9)'s transpose
        return grad, (g if ctx.needs_input_grad[1] else None), None, None


def positional_straight_through(r_llm: torch.Tensor, r_sd: torch.Tensor, M: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Return R_SD − sg[S] + S with S = A (R_LLM M) (eq. 9 per position, eq. 11 unpooled), shape (B, n, V2).

    M (V1, V2) dense or sparse COO; A (B, n, m) the alignment. The value is ``r_sd`` bit for bit; the backward
    computes S's gradient directly, (Aᵀ g) Mᵀ, so S itself, (B, n, |V_SD|), is never built.
    """
    B, m, V1 = r_llm.shape
    if M.shape[0] != V1 or r_sd.shape[2] != M.shape[1] or tuple(A.shape) != (B, r_sd.shape[1], m):
        raise ValueError(f"shapes do not fit: r_llm {tuple(r_llm.shape)}, r_sd {tuple(r_sd.shape)}, "
                         f"M {tuple(M.shape)}, A {tuple(A.shape)}")
    return _PositionalST.apply(r_llm, r_sd, M, A)


__all__ = ["BRIDGES", "PositionalBridge", "align_tokens", "positional_straight_through",
           "token_level_vtm"]
