"""The image loss's gradient at the LLM over many draws (evaluation/gradient_signal.py), on a tiny toy model."""
import copy

import pytest
import torch

from photochat_lib.evaluation.gradient_signal import (diffusion_generator, expected_llm_gradient, gradient_signal,
                                                      gumbel_generator, in_dtype, norm_of_mean)
from photochat_lib.model.photochat_model import PhotoChatConfig
from photochat_lib.presets import build_model
from tests.test_model import hand_batch


@pytest.fixture(scope="module")
def toy_model():
    torch.manual_seed(0)
    return build_model("toy", seed=0)


def flat(grads, params):
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-5), (torch.float64, 1e-6)])
def test_the_averaged_logit_gradient_is_the_mean_of_full_per_draw_gradients(toy_model, dtype, rtol):
    """J_θᵀ E[∂αL_v/∂o] (one LLM backward) equals the mean of ∇_θ αL_v from full forward passes, draw by draw,
    and gradient_signal's per-draw ratios at θ are those draws' ratios. (In float64 too the LLM's backward rounds
    at float32's precision: transformers' Llama computes RMSNorm in float32; hence rtol 1e-6, against the draws'
    own scale.)"""
    model, batch, tau, G, D = in_dtype(toy_model, dtype), hand_batch(toy_model), 0.3, 3, 2
    cheap = expected_llm_gradient(model, batch, tau, gumbel_draws=G, diffusion_draws=D, seed=0)   # (P,)
    model.eval()
    params = [p for p in model.llm.parameters() if p.requires_grad]
    per_draw, text = [], None
    for d in range(D):
        gumbel = gumbel_generator(model.device, 0, d)
        for _ in range(G):
            out = model(batch, tau=tau, generator=diffusion_generator(model.device, 0, d), gumbel_generator=gumbel)
            per_draw.append(flat(torch.autograd.grad(model.config.alpha * out.image_loss, params, retain_graph=True,
                                                     allow_unused=True), params))
            text = flat(torch.autograd.grad(out.text_loss, params, allow_unused=True), params)
    full = torch.stack(per_draw).mean(0)
    assert full.norm() > 0
    scale = torch.stack(per_draw).norm(dim=1).mean()                  # one draw dominates a heavy-tailed mean
    assert (cheap - full).norm() <= rtol * scale
    signal = gradient_signal(model, batch, tau, gumbel_draws=G, diffusion_draws=D, param_draws=G, tail_draws=0)
    assert signal.dtype == str(dtype).replace("torch.", "")
    assert signal.mean_ratio == pytest.approx(float(full.norm() / text.norm()), rel=100 * rtol)
    assert signal.draw_ratios == pytest.approx([float(g.norm() / text.norm()) for g in per_draw], rel=100 * rtol)
    toy_model.train()


def test_the_standard_error_shrinks_with_more_draws_and_matches_the_spread():
    """norm_of_mean on light-tailed draws h_d = μ + σ z (P = 500, ‖μ‖ well above the noise): the s.e. of ‖h̄‖ falls
    as 1/√D and matches the spread of ‖h̄‖ over repeated experiments; the noise floor is σ √(P / D). (On the model
    the draws are heavy-tailed, so its s.e. is itself noisy; this checks the arithmetic.)"""
    g = torch.Generator().manual_seed(0)
    mu, sigma, P = torch.ones(500, dtype=torch.float64), 0.5, 500                              # ‖μ‖ ≈ 22
    draws = lambda D: mu + sigma * torch.randn(D, P, generator=g, dtype=torch.float64)        # (D, P)
    few, many = norm_of_mean(draws(16)), norm_of_mean(draws(256))
    assert many[1] < 0.45 * few[1]                                    # 16× the draws: the s.e. falls ≈ 4×
    assert many[2] == pytest.approx(sigma * (P / 256) ** 0.5, rel=0.05)
    spread = torch.tensor([norm_of_mean(draws(64))[0] for _ in range(200)]).std()
    assert norm_of_mean(draws(64))[1] == pytest.approx(float(spread), rel=0.35)
    assert norm_of_mean(torch.zeros(4, 3)) == (0.0, 0.0, 0.0)


def test_gradient_signal_reports_each_diffusion_draw(toy_model):
    """One Gumbel mean per diffusion draw; their spread is what the s.e. is made of."""
    signal = gradient_signal(toy_model, hand_batch(toy_model), 1.0, gumbel_draws=2, diffusion_draws=3, param_draws=0,
                             tail_draws=0)
    assert len(signal.group_ratios) == 3 and min(signal.group_ratios) > 0 and signal.mean_ratio_se > 0
    assert signal.mean_ratio <= max(signal.group_ratios) and signal.draw_ratios == [] and signal.zero_share == 0.0
    assert "group_ratios" not in signal.summary() and toy_model.training


def test_exact_zeros_are_counted_in_float32_and_float64(toy_model):
    """At a tiny τ most float32 draws' gradients underflow to exactly 0 (the softmax saturates); float64 keeps
    more of them. The expectation is not 0 in either: a few draws carry it."""
    batch = hand_batch(toy_model)
    signals = {dtype: gradient_signal(in_dtype(toy_model, dtype), batch, 0.01, gumbel_draws=8, diffusion_draws=2,
                                      param_draws=2, tail_draws=2) for dtype in (torch.float32, torch.float64)}
    f32, f64 = signals[torch.float32], signals[torch.float64]
    assert (f32.dtype, f64.dtype) == ("float32", "float64")
    assert 0.5 < f32.zero_share <= 1 and f64.zero_share < f32.zero_share
    assert f32.mean_ratio > 0 and f32.draw_median == 0.0 and f32.draw_max > 0
    assert toy_model.llm.get_input_embeddings().weight.dtype == torch.float32   # float64 was a copy


def test_the_pipeline_gives_exactly_zero(toy_model):
    """Pipeline mode: the caption reaches SD as text, so E ∇_θ αL_v and every draw's gradient are exactly 0."""
    pipe = copy.copy(toy_model)
    pipe.config = PhotoChatConfig(mode="pipeline")
    batch = hand_batch(toy_model)
    assert torch.count_nonzero(expected_llm_gradient(pipe, batch, 0.3, gumbel_draws=2, diffusion_draws=2)) == 0
    signal = gradient_signal(pipe, batch, 0.3, gumbel_draws=2, diffusion_draws=2, param_draws=1, tail_draws=1)
    assert (signal.mean_ratio, signal.mean_ratio_se, signal.noise_floor, signal.zero_share) == (0.0, 0.0, 0.0, 1.0)
    assert signal.draw_ratios == [0.0, 0.0] and signal.tail_ratios == [] and signal.text_norm > 0
    toy_model.train()
