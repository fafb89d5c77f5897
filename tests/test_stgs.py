"""Tests for the straight-through Gumbel-softmax (eq. 4–7) and the tau schedule (§3.1.2)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from photochat_lib.model import stgs
from photochat_lib.model.stgs import (
    TauScheduler,
    clamp_open_unit,
    gumbel_noise,
    gumbel_softmax_soft,
    gumbel_softmax_st,
    tau_at,
    tau_schedule,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- forward: exact one-hot

@pytest.mark.parametrize("shape", [(3, 4, 11), (11,), (2, 1, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_forward_is_exact_one_hot(shape, dtype):
    logits = (torch.randn(shape, generator=_gen(0)) * 3).to(dtype)
    for tau in (5.0, 1.0, 0.01):  # high tau: p_GS far from one-hot, the hard case for exactness
        out = gumbel_softmax_st(logits, tau, generator=_gen(1))
        assert out.shape == logits.shape and out.dtype == dtype
        expected = F.one_hot(out.argmax(-1), shape[-1]).to(dtype)
        assert torch.equal(out, expected)
        # the one-hot is the argmax of the soft sample drawn with the same noise (half types draw
        # and compute in float32, so compare with the float32 soft sample there)
        soft = gumbel_softmax_soft(logits.to(stgs._compute_dtype(dtype)), tau, generator=_gen(1))
        assert torch.equal(out.argmax(-1), soft.argmax(-1))


def test_forward_exact_with_grad_and_many_rows():
    logits = torch.randn(4000, 300, generator=_gen(2), requires_grad=True)
    out = gumbel_softmax_st(logits, 10.0, generator=_gen(3))  # p_GS ≈ 1/300: far from one-hot
    assert out.requires_grad
    assert torch.equal(out.detach(), F.one_hot(out.argmax(-1), 300).float())


# --------------------------------------------------------------------------- backward: the soft path's gradient

@pytest.mark.parametrize("tau", [2.0, 0.5, 0.1])
def test_backward_equals_soft_gradient(tau):
    logits = torch.randn(2, 5, 13, generator=_gen(4), dtype=torch.float64, requires_grad=True)
    g = gumbel_noise(logits.shape, generator=_gen(5), dtype=torch.float64)
    w = torch.randn(logits.shape, generator=_gen(6), dtype=torch.float64)
    (grad_st,) = torch.autograd.grad((w * gumbel_softmax_st(logits, tau, noise=g)).sum(), logits)
    (grad_soft,) = torch.autograd.grad((w * torch.softmax((logits + g) / tau, -1)).sum(), logits)
    assert torch.allclose(grad_st, grad_soft, rtol=1e-12, atol=1e-12)
    assert grad_st.abs().sum() > 0


def test_gradcheck_soft_path():
    logits = torch.randn(3, 6, generator=_gen(7), dtype=torch.float64, requires_grad=True)
    g = gumbel_noise(logits.shape, generator=_gen(8), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: gumbel_softmax_soft(x, 0.7, noise=g), (logits,))
    # the ST output's gradient is the soft path's too, so gradcheck of the soft path covers it
    assert torch.autograd.gradcheck(lambda x: gumbel_softmax_soft(x, 3.0, noise=g), (logits,))


def test_soft_path_central_differences():
    """Central differences by hand: error O(h²) ≈ 1e-10 at h = 1e-5 in float64; we allow 1e-7."""
    tau, h = 0.8, 1e-5
    logits = torch.randn(4, 9, generator=_gen(9), dtype=torch.float64)
    g = gumbel_noise(logits.shape, generator=_gen(10), dtype=torch.float64)
    w = torch.randn(logits.shape, generator=_gen(11), dtype=torch.float64)

    def loss(x):
        return (w * gumbel_softmax_soft(x, tau, noise=g)).sum()

    x = logits.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(loss(x), x)
    numeric = torch.zeros_like(logits)
    for idx in range(logits.numel()):
        e = torch.zeros(logits.numel(), dtype=torch.float64)
        e[idx] = h
        e = e.view_as(logits)
        numeric.view(-1)[idx] = (loss(logits + e) - loss(logits - e)) / (2 * h)
    assert (auto - numeric).abs().max() < 1e-7


def test_eq5_and_eq6_are_the_same_distribution():
    logits = torch.randn(5, 8, generator=_gen(12), dtype=torch.float64) * 4
    g = gumbel_noise(logits.shape, generator=_gen(13), dtype=torch.float64)
    eq5 = gumbel_softmax_soft(torch.log_softmax(logits, -1), 0.3, noise=g)  # log p instead of o
    eq6 = gumbel_softmax_soft(logits, 0.3, noise=g)
    assert torch.allclose(eq5, eq6, atol=1e-12)


# --------------------------------------------------------------------------- Gumbel-max: argmax draws from softmax(o)

def test_gumbel_max_frequencies_match_softmax():
    N, V = 40_000, 5
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0])
    samples = gumbel_softmax_st(logits.expand(N, V), 1.0, generator=_gen(14))  # (N, V), one draw per row
    freq = samples.mean(0)
    p = torch.softmax(logits, -1)
    # standard error of a frequency is sqrt(p(1-p)/N) <= sqrt(0.25/40000) = 0.0025; 4 SE = 0.010.
    # The sample is a fixed seed, so this is deterministic; the bound says a correct sampler passes
    # for essentially every seed, while a biased one (e.g. noise on p instead of log p) fails.
    assert (freq - p).abs().max() < 0.010
    assert math.isclose(float(samples.sum()), N)  # each row has exactly one 1


# --------------------------------------------------------------------------- noise

def test_noise_finite_at_u_zero_and_one(monkeypatch):
    for dtype in (torch.float16, torch.float32, torch.float64):
        u = clamp_open_unit(torch.tensor([0.0, 1.0, 0.5], dtype=stgs._compute_dtype(dtype)))
        assert ((u > 0) & (u < 1)).all()
        assert torch.isfinite(-torch.log(-torch.log(u))).all()

    real_rand = torch.rand
    for extreme in (0.0, 1.0):
        monkeypatch.setattr(
            torch, "rand", lambda *a, _v=extreme, **k: real_rand(*a, **k).fill_(_v)
        )
        for dtype in (torch.float16, torch.float32, torch.float64):
            g = gumbel_noise((7,), generator=_gen(0), dtype=dtype)
            assert g.dtype == dtype and torch.isfinite(g).all(), (extreme, dtype)
            logits = torch.zeros(3, 7, dtype=dtype)
            assert torch.isfinite(gumbel_softmax_st(logits, 0.01)).all()
    monkeypatch.setattr(torch, "rand", real_rand)


def test_same_seed_same_noise_different_seed_different():
    a = gumbel_noise((4, 100), generator=_gen(42))
    b = gumbel_noise((4, 100), generator=_gen(42))
    c = gumbel_noise((4, 100), generator=_gen(43))
    assert torch.equal(a, b) and not torch.equal(a, c)
    logits = torch.randn(4, 100, generator=_gen(0))
    assert torch.equal(gumbel_softmax_st(logits, 1.0, _gen(42)), gumbel_softmax_st(logits, 1.0, _gen(42)))
    assert not torch.equal(gumbel_softmax_st(logits, 1.0, _gen(42)), gumbel_softmax_st(logits, 1.0, _gen(43)))


def test_noise_statistics():
    g = gumbel_noise((200_000,), generator=_gen(15), dtype=torch.float64)
    # Gumbel(0,1): mean = Euler–Mascheroni 0.5772, var = pi²/6; SE of the mean ≈ 0.0029
    assert abs(g.mean().item() - 0.5772156649) < 0.015
    assert abs(g.var().item() - math.pi**2 / 6) < 0.05


def test_bad_inputs():
    with pytest.raises(ValueError, match="tau"):
        gumbel_softmax_st(torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="noise shape"):
        gumbel_softmax_st(torch.zeros(3), 1.0, noise=torch.zeros(4))
    with pytest.raises(TypeError, match="floating"):
        gumbel_softmax_st(torch.zeros(3, dtype=torch.long), 1.0)


# --------------------------------------------------------------------------- tau schedule (§3.1.2)

def test_tau_schedule_exponential():
    assert tau_at(0.0) == 1.0
    assert tau_at(3.0) == 0.01
    assert tau_at(3.5) == tau_at(10.0) == 0.01  # constant after three epochs
    assert math.isclose(tau_at(1.5), 0.1, rel_tol=1e-12)  # geometric: halfway in log-space
    ts = [tau_at(e / 100) for e in range(301)]
    assert all(a > b for a, b in zip(ts, ts[1:]))  # strictly decreasing while annealing


def test_tau_schedule_linear():
    assert tau_at(0.0, mode="linear") == 1.0
    assert tau_at(3.0, mode="linear") == 0.01
    assert math.isclose(tau_at(1.5, mode="linear"), 0.505)
    ts = [tau_at(e / 10, mode="linear") for e in range(31)]
    assert all(a > b for a, b in zip(ts, ts[1:]))
    with pytest.raises(ValueError, match="cosine"):
        tau_at(1.0, mode="cosine")


def test_tau_scheduler_round_trip():
    sched = TauScheduler(steps_per_epoch=100)
    assert sched(0) == 1.0 and sched(300) == 0.01 and sched(1000) == 0.01
    assert math.isclose(sched(150), 0.1, rel_tol=1e-12)
    assert sched(150) == tau_schedule(150, 100)
    state = json.loads(json.dumps(sched.state_dict()))  # survives a JSON checkpoint
    resumed = TauScheduler(steps_per_epoch=1, mode="linear")
    resumed.load_state_dict(state)
    assert resumed == sched and resumed.last_step == 150
    assert resumed(77) == sched(77)
    with pytest.raises(ValueError, match="keys"):
        resumed.load_state_dict({"steps_per_epoch": 3})
    with pytest.raises(ValueError, match="steps_per_epoch"):
        TauScheduler(steps_per_epoch=0)
