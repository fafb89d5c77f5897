"""The positional bridge (model/bridge.py) beside the paper's sentence-level DVTM: values, gradients, alignment."""
import copy

import pytest
import torch

from photochat_lib.model.bridge import PositionalBridge, align_tokens, positional_straight_through, token_level_vtm
from photochat_lib.model.photochat_model import PhotoChatConfig
from photochat_lib.presets import build_model
from tests.test_model import hand_batch


@pytest.fixture(scope="module")
def toy_model():
    torch.manual_seed(0)
    return build_model("toy", seed=0)


def dense_reference(r_llm, r_sd, M_dense, A):
    """The bridge written plainly, one SD position at a time: R_SD[j] + (s_j - sg[s_j]), s_j = Σ_k A[j,k] r_k M."""
    out = r_sd.clone()
    for b in range(r_llm.shape[0]):
        for j in range(r_sd.shape[1]):
            s = sum(A[b, j, k] * (r_llm[b, k] @ M_dense) for k in range(r_llm.shape[1]))   # (V2,)
            out[b, j] = out[b, j] + (s - s.detach())
    return out


def test_alignment_follows_the_characters_and_falls_back_to_position():
    A = align_tokens(["a", "big", "square"], ["a", "big", "s", "quare"])
    assert A.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]          # "square" feeds both of its pieces
    A = align_tokens(["pur", "ple", " kite"], ["Purple ", "kite"])                 # case and spaces do not matter
    assert A.tolist() == [[0.5, 0.5, 0], [0, 0, 1]]                             # "purple" averages its two pieces
    A = align_tokens(["a", "<unk>", "c"], ["a", "b", "c", "d"])                    # different strings: by position
    assert (A.sum(1) == 1).all() and A[0, 0] == 1 and A[3, 2] == 1


def test_the_fast_bridge_equals_the_dense_reference_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    B, m, n, V1, V2 = 2, 4, 6, 9, 7
    M_dense = (torch.rand(V1, V2, generator=g) < 0.3).float()
    M_dense = M_dense / M_dense.sum(1, keepdim=True).clamp(min=1)
    A = torch.rand(B, n, m, generator=g)
    logits = torch.randn(B, m, V1, generator=g, requires_grad=True)
    r_sd = torch.nn.functional.one_hot(torch.randint(0, V2, (B, n), generator=g), V2).float()
    up = torch.randn(B, n, V2, generator=g)                                   # an upstream gradient
    for M in (M_dense, M_dense.to_sparse()):
        r_llm = torch.softmax(logits, -1)                                    # (B, m, V1) any differentiable rows
        fast = positional_straight_through(r_llm, r_sd, M, A)
        ref = dense_reference(r_llm, r_sd, M_dense, A)
        assert torch.equal(fast.detach(), r_sd)                                # the value is R_SD, bit for bit
        g_fast, = torch.autograd.grad((fast * up).sum(), logits, retain_graph=True)
        g_ref, = torch.autograd.grad((ref * up).sum(), logits)
        assert torch.allclose(g_fast, g_ref, atol=1e-6)


def test_the_vocabulary_wide_matrix_spells_each_llm_token_in_sd_tokens(toy_model):
    tok, sd = toy_model.tokenizer, toy_model.image_generator.tokenizer
    V1, V2 = toy_model.llm.get_output_embeddings().weight.shape[0], toy_model.image_generator.vocab_size
    M = token_level_vtm(tok, sd, V1, V2).to_dense()                          # (V1, V2)
    rows = M.sum(1)
    assert torch.allclose(rows[rows > 0], torch.ones_like(rows[rows > 0]))  # each row a distribution
    purple = tok(" purple", add_special_tokens=False).input_ids
    assert len(purple) == 1
    sd_purple = sd("purple", add_special_tokens=False).input_ids
    assert M[purple[0]].nonzero().flatten().tolist() == sorted(sd_purple)
    assert rows[tok.eos_token_id] == 0                                       # special tokens spell nothing


def caption_logit_grad(model, batch, seed=0):
    """Return dL_v / d(caption logits) (N, m, V1) for one Gumbel and one diffusion draw."""
    model.eval()
    out = model(batch, tau=1.0, generator=torch.Generator().manual_seed(seed))
    grad, = torch.autograd.grad(out.image_loss, out.logits)
    cap, mask = model.caption_logits(grad, batch["caption_positions"], len(batch["captions"]))
    return cap, mask, out


def test_the_sentence_bridge_says_one_number_per_caption_and_the_positional_bridge_ranks_the_vocabulary(toy_model):
    """Through eq. (10)-(11) the gradient at the caption's r_k is c·a (a = T_LLM's indicator) at every position;
    through the positional bridge it differs from position to position and among tokens outside T_LLM."""
    batch = hand_batch(toy_model, captions=("purple circle, blue square", "green triangle"))
    sentence, positional = copy.copy(toy_model), copy.copy(toy_model)
    positional.config = PhotoChatConfig(bridge="positional")
    # the gradient at r_llm itself: hook the STGS output
    seen = {}
    import photochat_lib.model.photochat_model as pm
    real = pm.gumbel_softmax_st

    def spy(logits, tau, generator=None, noise=None):
        r = real(logits, tau, generator=generator, noise=noise)
        r.retain_grad()
        seen["r"] = r
        return r
    pm.gumbel_softmax_st = spy
    try:
        grads = {}
        for name, model in (("sentence", sentence), ("positional", positional)):
            model.eval()
            out = model(batch, tau=1.0, generator=torch.Generator().manual_seed(0))
            out.image_loss.backward()
            grads[name] = seen["r"].grad[0]                                  # caption 0: (m, V1)
            model.zero_grad(set_to_none=True)
    finally:
        pm.gumbel_softmax_st = real
    m0 = len(batch["llm_caption_ids"][0])
    s, p = grads["sentence"][:m0], grads["positional"][:m0]
    T = torch.zeros(s.shape[1], dtype=torch.bool)
    T[batch["llm_caption_ids"][0]] = True
    assert torch.allclose(s, s[0].expand_as(s))                               # the same at every position
    assert (s[:, ~T] == 0).all() and torch.allclose(s[0, T], s[0, T][0].expand(int(T.sum())))  # c · a
    assert not torch.allclose(p, p[0].expand_as(p))                           # positions differ
    outside = p[:, ~T]
    assert (outside != 0).any()                                               # tokens the caption lacks get a say
    assert p.unique().numel() > 10


def test_a_positional_model_trains_saves_and_loads_with_its_bridge(toy_model, tmp_path):
    model = copy.copy(toy_model)
    model.config = PhotoChatConfig(bridge="positional")
    batch = hand_batch(model)
    out = model(batch, tau=0.5, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    head = model.llm.get_output_embeddings().weight.grad
    assert head is not None and head.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="bridge must be one of"):
        PhotoChatConfig(bridge="wordwise")


def test_train_takes_bridge_and_refuses_an_unknown_one():
    from photochat_lib.training.train import TrainConfig
    assert TrainConfig(bridge="positional").bridge == "positional"
    with pytest.raises(ValueError, match="--bridge must be one of sentence, positional"):
        TrainConfig(bridge="pooled")
