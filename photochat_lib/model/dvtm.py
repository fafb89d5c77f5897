"""Vocabulary transformation matrices, paper §2.4.2, eq. (8)–(11).

The LLM samples caption tokens as one-hots over its vocabulary V_LLM (``R_LLM``, from the STGS), but
Stable Diffusion's CLIP text encoder reads one-hots over another vocabulary V_SD. A matrix
``M`` of shape (|V_LLM|, |V_SD|) carries one to the other and keeps the gradient (eq. 9: R_SD = R_LLM M).

* eq. (8), :func:`static_vtm` — ``M[i, j] = 1`` iff token strings are equal (one-to-one; very sparse,
  since sub-word vocabularies rarely agree).
* :func:`word_level_vtm` — every token of a word's LLM tokenization maps to every token of its SD
  tokenization, over a whole word list (many-to-many; the paper finds it too dense).
* eq. (10), :func:`sentence_level_matrix` — the *dynamic* matrix built per caption:
  ``M[i, j] = 1`` iff ``i ∈ T_LLM`` and ``j ∈ T_SD`` (the caption's token *sets* in each vocabulary).
* eq. (11), :func:`dvtm_average` + :func:`straight_through_sd` — the rows of ``R_LLM M`` are not one-hots,
  so they are average-pooled over the caption and used only for their gradient:
  ``R_SD = R_SD - sg[avg(R_LLM M)] + avg(R_LLM M)``, with ``R_SD`` the one-hots from the SD tokenizer.

The rank-one insight (why ``impl="batched"`` needs no V_LLM x V_SD memory at all): the eq. (10) matrix is
an outer product ``M_b = a_b b_bᵀ`` of the indicator vectors ``a_b ∈ {0,1}^|V_LLM|`` of T_LLM and
``b_b ∈ {0,1}^|V_SD|`` of T_SD. Hence ``avg_k(r_k M_b) = (avg_k r_k · a_b) b_b``: gather each row of R_LLM
at the caption's LLM ids, sum, average over positions to one scalar ``c_b``, and write ``c_b`` at the
caption's SD ids. The paper's 3.2 GB dense matrix (or its per-caption sparse version) becomes a gather
and a scatter, and the gradient w.r.t. R_LLM is ``c_b``'s gradient placed at T_LLM — exactly the dense one.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import torch

DENSE_LIMIT = 50_000_000  # largest V1 * V2 that impl="dense" / layout="dense" will materialise
DVTM_IMPLS = ("dense", "sparse", "batched")


# --------------------------------------------------------------------------- sizes (the 3.2 GB remark)

def dense_bytes(V1: int, V2: int, dtype: torch.dtype = torch.float16) -> int:
    """Return the bytes a dense (V1, V2) matrix of ``dtype`` occupies (paper: 40,000² x 2 = 3.2 GB)."""
    return int(V1) * int(V2) * torch.empty((), dtype=dtype).element_size()


def sparse_bytes(M: torch.Tensor) -> int:
    """Return the bytes held by a sparse COO matrix's indices and values (a dense one: all elements)."""
    if M.layout == torch.sparse_coo:
        idx, val = M._indices(), M._values()
        return idx.numel() * idx.element_size() + val.numel() * val.element_size()
    if M.layout == torch.strided:
        return M.numel() * M.element_size()
    raise ValueError(f"sparse_bytes supports sparse COO and dense tensors, got layout {M.layout}")


# --------------------------------------------------------------------------- matrices (eq. 8, word level, eq. 10)

def _as_ids(ids, vocab_size: int, what: str, check_range: bool = True) -> torch.Tensor:
    """Return ``ids`` as a 1-D LongTensor, checking every id lies in [0, vocab_size)."""
    t = torch.as_tensor(ids)
    if t.dim() != 1:
        raise ValueError(f"{what} must be a 1-D tensor of token ids, got shape {tuple(t.shape)}")
    if t.numel() and (t.is_floating_point() or t.is_complex()):
        raise ValueError(f"{what} must hold integer token ids, got dtype {t.dtype}")
    t = t.long()
    if check_range and t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab_size):
        raise ValueError(
            f"{what} has ids in [{int(t.min())}, {int(t.max())}], outside the vocabulary [0, {vocab_size})"
        )
    return t


def _coo_ones(rows, cols, V1: int, V2: int, dtype, device, dedup: bool = True) -> torch.Tensor:
    """Return a coalesced sparse COO (V1, V2) with value 1 at each distinct (row, col) pair."""
    idx = torch.stack([rows, cols]).to(device)  # (2, nnz) possibly with repeats
    if dedup and idx.numel():
        idx = torch.unique(idx, dim=1)  # union: repeated pairs count once
    values = torch.ones(idx.shape[1], dtype=dtype, device=device)
    # ids were range-checked by the callers, so skip torch's (slow) invariant checks
    return torch.sparse_coo_tensor(idx, values, (V1, V2), check_invariants=False).coalesce()


def sentence_level_matrix(
    llm_ids_b: torch.Tensor | Sequence[int],
    sd_ids_b: torch.Tensor | Sequence[int],
    V1: int,
    V2: int,
    layout: str = "sparse",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return the eq. (10) matrix (V1, V2) of one caption: 1 on T_LLM x T_SD, sparse COO or dense."""
    a = torch.unique(_as_ids(llm_ids_b, V1, "llm_ids_b"))  # T_LLM as a set
    b = torch.unique(_as_ids(sd_ids_b, V2, "sd_ids_b"))  # T_SD as a set
    if layout == "sparse":
        rows = a.repeat_interleave(b.numel())  # (|T_LLM| |T_SD|,)
        cols = b.repeat(a.numel())  # (|T_LLM| |T_SD|,)
        return _coo_ones(rows, cols, V1, V2, dtype, device, dedup=False)  # eq. (10), nnz = |T_LLM||T_SD|
    if layout == "dense":
        if V1 * V2 > DENSE_LIMIT:
            raise ValueError(
                f"a dense {V1} x {V2} matrix has {V1 * V2:,} elements (> {DENSE_LIMIT:,}, "
                f"{dense_bytes(V1, V2, dtype) / 2**30:.1f} GiB); use layout='sparse'"
            )
        M = torch.zeros(V1, V2, dtype=dtype, device=device)  # (V1, V2)
        M[a.to(M.device).unsqueeze(1), b.to(M.device).unsqueeze(0)] = 1.0  # eq. (10)
        return M
    raise ValueError(f"unknown layout {layout!r}; expected 'sparse' or 'dense'")


def identity(token: str) -> str:
    """Return ``token`` unchanged (the default normalisation of :func:`static_vtm`)."""
    return token


def strip_subword_markers(token: str) -> str:
    """Return ``token`` without SentencePiece ``▁``/byte-BPE ``Ġ`` prefixes and CLIP's ``</w>`` suffix."""
    if token.startswith(("\u2581", "\u0120")):
        token = token[1:]
    if token.endswith("</w>"):
        token = token[: -len("</w>")]
    return token


def static_vtm(
    llm_vocab: dict[str, int],
    sd_vocab: dict[str, int],
    normalize: Callable[[str], str] = identity,
) -> torch.Tensor:
    """Return the eq. (8) matrix as sparse COO (V1, V2): 1 where normalize(llm token) == normalize(sd token).

    V1 and V2 are ``max id + 1`` of each vocabulary. nnz is the number of matching pairs,
    ``sum_s count_LLM(s) * count_SD(s)`` over normalised strings ``s`` — exactly one-to-one when
    ``normalize`` is the identity (token strings are unique within a vocabulary), possibly many-to-many
    after a normalisation that merges forms (e.g. CLIP's ``cat`` and ``cat</w>``).
    """
    for name, vocab in (("llm_vocab", llm_vocab), ("sd_vocab", sd_vocab)):
        if not vocab:
            raise ValueError(f"{name} is empty")
        bad = [tok for tok, i in vocab.items() if not isinstance(i, int) or i < 0]
        if bad:
            raise ValueError(f"{name} has invalid (non-integer or negative) ids for tokens {bad[:5]}")
    V1, V2 = max(llm_vocab.values()) + 1, max(sd_vocab.values()) + 1
    sd_by_form: dict[str, list[int]] = defaultdict(list)
    for tok, j in sd_vocab.items():
        sd_by_form[normalize(tok)].append(j)
    rows, cols = [], []
    for tok, i in llm_vocab.items():
        for j in sd_by_form.get(normalize(tok), ()):  # eq. (8): M[i, j] = 1 iff V_LLM[i] = V_SD[j]
            rows.append(i)
            cols.append(j)
    return _coo_ones(torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long),
                     V1, V2, torch.float32, None)


def word_level_vtm(
    words: Sequence[str],
    llm_tokenize: Callable[[str], list[int]],
    sd_tokenize: Callable[[str], list[int]],
    V1: int,
    V2: int,
) -> torch.Tensor:
    """Return the word-level many-to-many matrix, sparse COO (V1, V2): union over words of T_LLM(w) x T_SD(w)."""
    rows, cols = [], []
    for w in words:
        a = torch.unique(_as_ids(llm_tokenize(w), V1, f"LLM tokens of word {w!r}"))
        b = torch.unique(_as_ids(sd_tokenize(w), V2, f"SD tokens of word {w!r}"))
        rows.append(a.repeat_interleave(b.numel()))
        cols.append(b.repeat(a.numel()))
    empty = torch.zeros(0, dtype=torch.long)
    return _coo_ones(torch.cat(rows) if rows else empty, torch.cat(cols) if cols else empty,
                     V1, V2, torch.float32, None)


def apply_vtm(r_llm: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Return R_SD = R_LLM M (eq. 9) of shape (..., V2) for a dense or sparse COO M (V1, V2)."""
    if M.dim() != 2 or r_llm.shape[-1] != M.shape[0]:
        raise ValueError(f"r_llm (..., {r_llm.shape[-1]}) does not match M of shape {tuple(M.shape)}")
    if M.layout == torch.strided:
        return r_llm @ M.to(r_llm.dtype)  # eq. (9), (..., V2)
    lead = r_llm.shape[:-1]
    r2 = r_llm.reshape(-1, M.shape[0])  # (N, V1)
    out = torch.sparse.mm(M.t().to(r_llm.dtype), r2.t())  # eq. (9) as M^T R^T, (V2, N)
    return out.t().reshape(*lead, M.shape[1])  # (..., V2)


# --------------------------------------------------------------------------- eq. (9)-(11) over a batch

def _check_id_lists(ids: Sequence, vocab_size: int, name: str) -> list[torch.Tensor]:
    """Return the id lists as LongTensors; one range check for all (one device sync, not one per caption)."""
    out = [_as_ids(t, vocab_size, f"{name}[{b}]", check_range=False) for b, t in enumerate(ids)]
    flat = torch.cat([t.to(out[0].device) for t in out]) if out else torch.zeros(0, dtype=torch.long)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= vocab_size):
        for b, t in enumerate(out):  # find the offending caption for the error message
            _as_ids(t, vocab_size, f"{name}[{b}]")
    return out


def _check_inputs(r_llm, llm_ids, sd_ids, sd_vocab_size, r_mask):
    """Validate dvtm_average's inputs; return (ids lists as LongTensors, r_mask as bool (B, m))."""
    if r_llm.dim() != 3:
        raise ValueError(f"r_llm must have shape (B, m, V_LLM), got {tuple(r_llm.shape)}")
    B, m, V1 = r_llm.shape
    for name, ids in (("llm_ids", llm_ids), ("sd_ids", sd_ids)):
        if len(ids) != B:
            raise ValueError(f"len({name}) = {len(ids)} but r_llm has batch size B = {B}")
    if sd_vocab_size <= 0:
        raise ValueError(f"sd_vocab_size must be > 0, got {sd_vocab_size}")
    llm = _check_id_lists(llm_ids, V1, "llm_ids")
    sd = _check_id_lists(sd_ids, sd_vocab_size, "sd_ids")
    if r_mask is None:
        r_mask = torch.ones(B, m, dtype=torch.bool, device=r_llm.device)
    elif tuple(r_mask.shape) != (B, m) or r_mask.dtype != torch.bool:
        raise ValueError(
            f"r_mask must be a bool tensor of shape ({B}, {m}), got {r_mask.dtype} {tuple(r_mask.shape)}"
        )
    empty = (~r_mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"r_mask has no real caption position for captions {empty}; cannot average")
    return llm, sd, r_mask.to(r_llm.device)


def _padded_sets(ids: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (B, L) sorted ids with duplicates marked invalid, and the (B, L) validity mask, on ``device``."""
    home = ids[0].device if all(t.device == ids[0].device for t in ids) else device  # pad where ids live
    padded = torch.nn.utils.rnn.pad_sequence(
        [t.to(home) for t in ids], batch_first=True, padding_value=-1
    )  # (B, L), -1 = padding
    padded, _ = padded.sort(dim=1)  # (B, L) padding first, equal ids adjacent
    first = torch.ones_like(padded, dtype=torch.bool)
    first[:, 1:] = padded[:, 1:] != padded[:, :-1]  # keep the first of each run: ids as a SET (eq. 10)
    return padded.to(device), (first & (padded >= 0)).to(device)


def _dvtm_batched(r_llm, llm_ids, sd_ids, V2, weights):
    """Rank-one DVTM: avg_k(r_k M_b) = (avg_k r_k · a_b) b_b, never forming M_b."""
    B, m, _ = r_llm.shape
    a_idx, a_valid = _padded_sets(llm_ids, r_llm.device)  # (B, L1) T_LLM ids and mask
    b_idx, b_valid = _padded_sets(sd_ids, r_llm.device)  # (B, L2) T_SD ids and mask
    L1 = a_idx.shape[1]
    picked = r_llm.gather(2, a_idx.clamp(min=0).unsqueeze(1).expand(B, m, L1))  # (B, m, L1)
    s = (picked * a_valid.unsqueeze(1).to(r_llm.dtype)).sum(-1)  # (B, m)  r_k · a_b
    c = (s * weights).sum(-1)  # (B,)  avg_k r_k · a_b  (the average pooling of eq. 11)
    # eq. (9)+(10) rank one: avg_k(r_k M_b) = c_b b_b — write c_b at every id of T_SD. Invalid slots
    # (padding, repeated ids) go to a spare column V2 that is cut off, so each id is written once.
    cols = torch.where(b_valid, b_idx, torch.full_like(b_idx, V2))  # (B, L2)
    src = c.unsqueeze(1).expand(B, cols.shape[1])  # (B, L2)
    out = r_llm.new_zeros(B, V2 + 1).scatter(1, cols, src)  # (B, V2 + 1)
    return out[:, :V2]  # (B, V2)


def _dvtm_per_caption(r_llm, llm_ids, sd_ids, V2, weights, layout):
    """Reference / paper way: build M_b per caption (eq. 10), apply eq. (9), average the rows."""
    V1 = r_llm.shape[2]
    out = []
    for b, r_b in enumerate(r_llm.unbind(0)):  # r_b: (m, V1)
        M_b = sentence_level_matrix(llm_ids[b], sd_ids[b], V1, V2, layout, r_llm.dtype, r_llm.device)
        r_sd_b = apply_vtm(r_b, M_b)  # eq. (9): R_SD = R_LLM M_b, (m, V2)
        out.append((weights[b].unsqueeze(1) * r_sd_b).sum(0))  # avg over real positions, (V2,)
    return torch.stack(out)  # (B, V2)


def dvtm_average(
    r_llm: torch.Tensor,
    llm_ids: Sequence[torch.Tensor],
    sd_ids: Sequence[torch.Tensor],
    sd_vocab_size: int,
    impl: str = "batched",
    r_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return avg(R_LLM M_b) (B, V2): eq. (9) with the eq. (10) matrix of each caption, pooled over real positions.

    ``r_llm`` (B, m, V1) are the caption's one-hots (they carry gradient); ``llm_ids[b]`` / ``sd_ids[b]``
    are caption b's token ids in each vocabulary, used as sets; ``r_mask`` (B, m) marks real positions.
    ``impl``: "dense" (reference, small vocabularies), "sparse" (the paper's per-caption sparse matrix)
    or "batched" (default: the rank-one gather/scatter, no V1 x V2 memory). All three agree.
    """
    if impl not in DVTM_IMPLS:
        raise ValueError(f"unknown dvtm impl {impl!r}; expected one of {DVTM_IMPLS}")
    llm, sd, r_mask = _check_inputs(r_llm, llm_ids, sd_ids, sd_vocab_size, r_mask)
    mask = r_mask.to(r_llm.dtype)  # (B, m)
    weights = mask / mask.sum(dim=1, keepdim=True)  # (B, m)  1/n_real at real positions, 0 at padding
    if impl == "batched":
        return _dvtm_batched(r_llm, llm, sd, sd_vocab_size, weights)
    if impl == "dense" and r_llm.shape[2] * sd_vocab_size > DENSE_LIMIT:
        raise ValueError(
            f"impl='dense' would build {r_llm.shape[2]} x {sd_vocab_size} matrices "
            f"(> {DENSE_LIMIT:,} elements); use impl='batched'"
        )
    return _dvtm_per_caption(r_llm, llm, sd, sd_vocab_size, weights, impl)


def straight_through_sd(r_sd: torch.Tensor, avg: torch.Tensor) -> torch.Tensor:
    """Return R_SD - sg[avg] + avg (eq. 11), (B, n, V2): the value of ``r_sd``, the gradient flows to ``avg``.

    The pooled vector is broadcast over the n SD positions, so ``avg`` receives the upstream gradient
    summed over positions: dL/d avg = sum_n dL/d r_sd[:, n].
    """
    if r_sd.dim() != 3 or avg.dim() != 2 or r_sd.shape[0] != avg.shape[0] or r_sd.shape[2] != avg.shape[1]:
        raise ValueError(
            f"expected r_sd (B, n, V2) and avg (B, V2), got {tuple(r_sd.shape)} and {tuple(avg.shape)}"
        )
    # eq. (11): avg - sg[avg] is exactly 0 for finite avg, so the forward value is r_sd bit for bit.
    return r_sd + (avg - avg.detach()).to(r_sd.dtype).unsqueeze(1)  # (B, n, V2)


__all__ = [
    "DENSE_LIMIT",
    "DVTM_IMPLS",
    "apply_vtm",
    "dense_bytes",
    "dvtm_average",
    "identity",
    "sentence_level_matrix",
    "sparse_bytes",
    "static_vtm",
    "straight_through_sd",
    "strip_subword_markers",
    "word_level_vtm",
]
