"""The image loss's gradient at the LLM: its expectation over the draws, and its distribution per draw.

L_v (eq. 12) reaches the LLM only through the STGS (eq. 4–7) and the bridge (eq. 8–11). Its gradient at the
LLM's parameters θ is a random variable: every step draws Gumbel noise g (eq. 4) for the STGS and a diffusion
draw (VAE sample, noise ε, timestep t) for eq. (12). Training follows the *expectation* (steps average the
draws); one draw is one sample of a distribution that is heavy-tailed at low τ. This module measures both:

* the expectation: ‖E ∇_θ αL_v‖ / ‖∇_θ L_t‖ over G Gumbel × D diffusion draws, with its standard error and
  the noise floor (what the ratio would read if the expectation were 0);
* the distribution per draw: the share of draws whose gradient is exactly 0, and the median and maximum of
  the per-draw ratio ‖∇_θ αL_v‖ / ‖∇_θ L_t‖ (and of the same ratio at the logits, over every draw).

**Cost.** In eval mode (no dropout) the LLM's logits o do not depend on the draws, so by the chain rule

    E[∇_θ αL_v] = J_θ(o)ᵀ · E[∂αL_v/∂o].

Each draw runs only the STGS, the bridge and SD's forward and backward, from a leaf copy of o
(`PhotoChatModel.image_loss`); the LLM's backward runs once per diffusion draw, on that draw's Gumbel average.
(``tests/test_gradient_signal.py`` checks that this equals the average of full per-draw parameter gradients.)

**What is measured where.** Every draw: ∂αL_v/∂o (its norm; whether it is exactly 0 — then so is ∇_θ αL_v,
since J_θᵀ·0 = 0). At θ, one LLM backward a draw (≈ 3 draws' cost on the toy), only for a subset: the first
``param_draws`` Gumbel draws of every diffusion draw (an unbiased sample: the per-draw median at θ comes from
it) and the ``tail_draws`` other draws with the largest ∂αL_v/∂o (so that the maximum per-draw
ratio at θ is the maximum over the subset and the likeliest tail; it is not guaranteed to be the maximum over
every draw).

**Standard error.** Each diffusion draw's Gumbel average h_d = J_θᵀ ḡ_d is one independent sample of an
unbiased estimate of E ∇_θ αL_v; the mean h̄ over the D of them is the estimate. The s.e. of ‖h̄‖ is the delta
method's: the standard deviation over d of ⟨h_d, h̄/‖h̄‖⟩, over √D. The noise floor is √(tr Σ̂ / D), Σ̂ the h_d's
sample covariance: E‖h̄‖² = ‖E ∇_θ αL_v‖² + tr Σ / D, so a ratio near its noise floor has not resolved the
expectation (and its delta-method s.e. understates the uncertainty there); ‖h̄‖² − floor² is an unbiased
estimate of ‖E ∇_θ αL_v‖². Both come from D samples of a heavy-tailed distribution (on the toy the diffusion
draw alone moves the Gumbel average by an order of magnitude), so they are rough; ``group_ratios`` shows the D
samples' spread.

**float64.** A double copy of the model (`in_dtype`) runs the STGS, the bridge and both losses in float64, so a
draw's soft sample underflows only below float64's range. Inside the LLM and CLIP, transformers' Llama computes
RMSNorm (and eager attention its softmax) in float32, so their Jacobians round at float32's precision.
"""
from __future__ import annotations

import copy
import heapq
import time
from dataclasses import dataclass, field

import torch

_STREAMS = 2   # two seed streams per diffusion draw: the diffusion draw itself and its Gumbel draws


@dataclass
class GradientSignal:
    tau: float                      # the STGS temperature (eq. 5–7)
    dtype: str                      # "float32" | "float64": the whole model's, through the STGS and both losses
    gumbel_draws: int               # G: Gumbel draws per diffusion draw
    diffusion_draws: int            # D: diffusion draws (VAE sample, ε, t of eq. 12), each held for its G draws
    alpha: float                    # α of eq. (13)
    text_norm: float                # ‖∇_θ L_t‖ at the LLM (no draw involved)
    mean_ratio: float               # ‖h̄‖ / ‖∇_θ L_t‖, h̄ = mean over all G·D draws of ∇_θ αL_v
    mean_ratio_se: float            # its standard error (delta method over the D diffusion draws' Gumbel means)
    noise_floor: float              # √(tr Σ̂ / D) / ‖∇_θ L_t‖: what mean_ratio reads if E ∇_θ αL_v = 0
    zero_share: float               # share of the G·D draws whose ∂αL_v/∂o is exactly 0 (then ∇_θ αL_v is too)
    logit_median: float             # per-draw ‖∂αL_v/∂o‖ / ‖∂L_t/∂o‖ over all G·D draws: median,
    logit_p99: float                # 99th percentile,
    logit_max: float                # and maximum
    draw_median: float              # per-draw ‖∇_θ αL_v‖ / ‖∇_θ L_t‖, median over the subset (param_draws per d)
    draw_max: float                 # its maximum over the subset and the tail draws
    group_ratios: list[float] = field(default_factory=list)  # ‖h_d‖ / ‖∇_θ L_t‖ per diffusion draw (its Gumbel mean)
    draw_ratios: list[float] = field(default_factory=list)   # the subset's per-draw ratios at θ
    tail_ratios: list[float] = field(default_factory=list)   # the tail draws' ratios at θ
    seconds: float = 0.0            # wall time of the measurement

    def summary(self) -> dict:
        """Return the fields without the per-draw lists (for a report)."""
        return {k: v for k, v in self.__dict__.items() if not k.endswith("_ratios")}


def diffusion_generator(device, seed: int, d: int) -> torch.Generator:
    """Return the generator of diffusion draw d (seeded anew for each of its Gumbel draws: the same draw)."""
    return torch.Generator(device=device).manual_seed(_STREAMS * (seed * 100_003 + d))


def gumbel_generator(device, seed: int, d: int) -> torch.Generator:
    """Return the generator whose successive draws are diffusion draw d's Gumbel draws (eq. 4)."""
    return torch.Generator(device=device).manual_seed(_STREAMS * (seed * 100_003 + d) + 1)


def _image_logit_gradients(model, batch, logits: torch.Tensor, tau: float, gumbel_draws: int,
                           diffusion_draws: int, seed: int):
    """Yield (d, k, ∂αL_v/∂o) for each diffusion draw d and its Gumbel draws k; o the caption-free LLM logits."""
    leaf = logits.detach().requires_grad_(True)                                       # (B, T, V) o, cut from the LLM
    for d in range(diffusion_draws):
        gumbel = gumbel_generator(leaf.device, seed, d)
        for k in range(gumbel_draws):
            diffusion = diffusion_generator(leaf.device, seed, d)                     # the same draw d each time
            lv, _ = model.image_loss(leaf, batch, tau, diffusion, gumbel)             # eq. (4)–(12)
            grad = (torch.autograd.grad(model.config.alpha * lv, leaf, allow_unused=True)[0]
                    if lv.requires_grad else None)                                    # pipeline: no path to o
            yield d, k, torch.zeros_like(leaf) if grad is None else grad              # (B, T, V)


def _llm_gradient(out_logits: torch.Tensor, params: list, grad_logits: torch.Tensor) -> torch.Tensor:
    """Return J_θ(o)ᵀ · grad_logits flattened over the LLM's parameters, (P,)."""
    grads = torch.autograd.grad(out_logits, params, grad_logits, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])  # (P,)


def _norm(x: torch.Tensor) -> float:
    return float(x.double().norm())


def norm_of_mean(h: torch.Tensor) -> tuple[float, float, float]:
    """Return (‖h̄‖, its standard error, the noise floor √(tr Σ̂ / D)) of D independent samples h (D, P), D ≥ 2.

    The s.e. is the delta method's: the standard deviation of the projections ⟨h_d, h̄/‖h̄‖⟩ over √D. The noise
    floor is what ‖h̄‖ reads when E h = 0, since E‖h̄‖² = ‖E h‖² + tr Σ / D. Both assume a finite variance; with
    heavy-tailed samples they are themselves noisy (one rare sample can move them by orders of magnitude).
    """
    h = h.double()                                                                    # (D, P)
    D, mean = h.shape[0], h.mean(0)                                                   # (P,) h̄
    mean_norm = float(mean.norm())
    proj = h @ (mean / mean_norm) if mean_norm > 0 else torch.zeros(D, dtype=h.dtype)  # (D,) ⟨h_d, h̄/‖h̄‖⟩
    trace = float(((h - mean) ** 2).sum()) / (D - 1)                                  # tr Σ̂
    return mean_norm, float(proj.std()) / D ** 0.5, (trace / D) ** 0.5


def _probe(model, batch, tau: float, seed: int):
    """Return (LLM forward output, the LLM's trainable parameters), the model in eval mode (the caller restores)."""
    model.eval()                                                                      # no dropout: o is draw-free
    params = [p for p in model.llm.parameters() if p.requires_grad]
    out = model(batch, tau=tau, generator=diffusion_generator(model.device, seed, 0))
    return out, params


def expected_llm_gradient(model, batch, tau: float, gumbel_draws: int, diffusion_draws: int,
                          seed: int = 0) -> torch.Tensor:
    """Return the mean over the G·D draws of ∇_θ αL_v at the LLM's parameters, flattened (P,): J_θᵀ E[∂αL_v/∂o]."""
    training = model.training
    try:
        out, params = _probe(model, batch, tau, seed)
        total = torch.zeros_like(out.logits)                                          # (B, T, V)
        for _, _, grad in _image_logit_gradients(model, batch, out.logits, tau, gumbel_draws, diffusion_draws, seed):
            total += grad
        return _llm_gradient(out.logits, params, total / (gumbel_draws * diffusion_draws))  # (P,) one LLM backward
    finally:
        model.train(training)


def gradient_signal(model, batch, tau: float, gumbel_draws: int = 200, diffusion_draws: int = 8,
                    param_draws: int = 8, tail_draws: int = 8, seed: int = 0) -> GradientSignal:
    """Return the expected image-loss gradient at the LLM and its per-draw distribution at temperature tau.

    gumbel_draws × diffusion_draws draws (each diffusion draw held for its Gumbel draws); param_draws: Gumbel
    draws of every diffusion draw whose gradient is also taken at θ; tail_draws: the other draws with the
    largest gradient at the logits, also taken at θ (see the module docstring for what each number means).
    """
    if diffusion_draws < 2 or gumbel_draws < 1:
        raise ValueError(f"need diffusion_draws >= 2 (for a standard error) and gumbel_draws >= 1, "
                         f"got {diffusion_draws} and {gumbel_draws}")
    t0, training = time.perf_counter(), model.training
    try:
        out, params = _probe(model, batch, tau, seed)
        text_logits = torch.autograd.grad(out.text_loss, out.logits, retain_graph=True)[0]  # (B, T, V) ∂L_t/∂o
        text_norm = _norm(_llm_gradient(out.logits, params, text_logits))            # ‖∇_θ L_t‖ (eq. 2)
        group_sum = torch.zeros_like(out.logits)                                      # (B, T, V) Σ_k ∂αL_v/∂o
        groups, logit_norms, zeros, draw_ratios, tail = [], [], 0, [], []
        for d, k, grad in _image_logit_gradients(model, batch, out.logits, tau, gumbel_draws, diffusion_draws, seed):
            group_sum += grad
            norm = _norm(grad)
            logit_norms.append(norm)
            zeros += norm == 0.0                                                      # every element exactly 0
            if k < param_draws:                                                        # the unbiased subset at θ
                draw_ratios.append(_norm(_llm_gradient(out.logits, params, grad)) / text_norm)
            elif tail_draws and norm > 0:                                             # the likeliest tail, kept aside
                item = (norm, d * gumbel_draws + k, grad.clone())
                (heapq.heappush if len(tail) < tail_draws else heapq.heappushpop)(tail, item)
            if k == gumbel_draws - 1:                                                  # diffusion draw d done:
                groups.append(_llm_gradient(out.logits, params, group_sum / gumbel_draws))  # (P,) h_d = J_θᵀ ḡ_d
                group_sum.zero_()
        tail_ratios = [_norm(_llm_gradient(out.logits, params, g)) / text_norm
                       for _, _, g in sorted(tail, reverse=True)]
    finally:
        model.train(training)
    mean_norm, se, floor = norm_of_mean(torch.stack(groups))                          # (D, P) h_d
    logit = torch.tensor(logit_norms, dtype=torch.float64) / _norm(text_logits)       # (G·D,) per-draw at o
    per_draw = torch.tensor(draw_ratios or [float("nan")], dtype=torch.float64)
    return GradientSignal(
        tau=float(tau), dtype=str(out.logits.dtype).replace("torch.", ""), gumbel_draws=gumbel_draws,
        diffusion_draws=diffusion_draws, alpha=float(model.config.alpha), text_norm=text_norm,
        mean_ratio=mean_norm / text_norm, mean_ratio_se=se / text_norm, noise_floor=floor / text_norm,
        zero_share=zeros / len(logit_norms),
        logit_median=float(torch.quantile(logit, 0.5)), logit_p99=float(torch.quantile(logit, 0.99)),
        logit_max=float(logit.max()),
        draw_median=float(torch.quantile(per_draw, 0.5)), draw_max=max(draw_ratios + tail_ratios, default=float("nan")),
        group_ratios=[_norm(h) / text_norm for h in groups], draw_ratios=draw_ratios, tail_ratios=tail_ratios,
        seconds=round(time.perf_counter() - t0, 1))


def in_dtype(model, dtype: torch.dtype):
    """Return the model itself when its LLM is already in dtype, else a deep copy cast to dtype (model.double())."""
    return model if model.llm.get_input_embeddings().weight.dtype == dtype else copy.deepcopy(model).to(dtype)


__all__ = ["GradientSignal", "diffusion_generator", "expected_llm_gradient", "gradient_signal", "gumbel_generator",
           "in_dtype", "norm_of_mean"]
