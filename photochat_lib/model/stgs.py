"""Straight-Through Gumbel-Softmax (STGS), paper §2.4.1, eq. (4)–(7).

The dialogue model must hand the caption to Stable Diffusion as *discrete* tokens, yet we want the
image loss to reach the language model. The STGS gives both:

* eq. (4): Gumbel noise by inverse-transform sampling, ``g = -log(-log(u))`` with ``u ~ Uniform(0, 1)``.
* eq. (5): ``p_GS = softmax((log p + g) / tau)`` — a differentiable relaxation of a categorical draw.
  Adding Gumbel noise and taking the argmax draws *exactly* from ``p`` (the Gumbel-max trick).
* eq. (6): the same with the logits ``o`` in place of ``log p``. Since ``log softmax(o) = o - logsumexp(o)``
  differs from ``o`` by one constant per row, and softmax ignores per-row constants, eq. (5) and eq. (6)
  are the *same* distribution, not just "almost" (the paper's wording).
* eq. (7): ``r = onehot(argmax p_GS) - sg[p_GS] + p_GS`` — the forward value is the one-hot, the
  backward is the gradient of the soft sample (straight-through estimator).

The temperature ``tau`` is annealed from 1 to 0.01 over the first three epochs and then held (§3.1.2);
see :func:`tau_at` and :class:`TauScheduler`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype we compute in: float32 for half types, else the dtype itself."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def clamp_open_unit(u: torch.Tensor) -> torch.Tensor:
    """Return ``u`` clamped into the open interval (0, 1), so that ``-log(-log(u))`` is finite."""
    finfo = torch.finfo(u.dtype)
    # smallest positive normal number keeps log(u) finite; 1 - eps/2 is the largest float below 1
    return u.clamp(min=finfo.tiny, max=1.0 - finfo.eps / 2)


def gumbel_noise(
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Return standard Gumbel(0, 1) noise of ``shape``, always finite (eq. 4)."""
    dtype = dtype or torch.get_default_dtype()
    if generator is not None and device is None:
        device = generator.device
    u = torch.rand(shape, generator=generator, device=device, dtype=_compute_dtype(dtype))
    u = clamp_open_unit(u)  # torch.rand can return exactly 0, where -log(-log(0)) = -inf
    g = -torch.log(-torch.log(u))  # eq. (4): g = -log(-log(u)), u ~ Uniform(0, 1)
    return g.to(dtype)


def _check_tau(tau: float) -> None:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")


def _soft_sample32(
    logits: torch.Tensor, tau: float, generator: torch.Generator | None, noise: torch.Tensor | None
) -> torch.Tensor:
    """Return the eq. (6) soft sample computed in float32 (or float64), differentiable in ``logits``."""
    _check_tau(tau)
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got dtype {logits.dtype}")
    dtype = _compute_dtype(logits.dtype)
    if noise is None:
        noise = gumbel_noise(logits.shape, generator=generator, device=logits.device, dtype=dtype)
    elif noise.shape != logits.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != logits shape {tuple(logits.shape)}")
    o = logits.to(dtype)  # (..., V)
    # eq. (6): p_GS = softmax((o + g) / tau). Eq. (5) uses log p = log_softmax(o) = o - logsumexp(o);
    # the per-row constant cancels inside the softmax, so eq. (5) and eq. (6) give the same p_GS.
    return torch.softmax((o + noise.to(dtype)) / tau, dim=-1)  # (..., V)


def gumbel_softmax_soft(
    logits: torch.Tensor,
    tau: float,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the soft Gumbel-softmax sample softmax((logits + g) / tau), same shape and dtype (eq. 6)."""
    return _soft_sample32(logits, tau, generator, noise).to(logits.dtype)


def gumbel_softmax_st(
    logits: torch.Tensor,
    tau: float,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return an exact one-hot sample (..., V) whose gradient is that of the soft sample (eq. 7)."""
    p32 = _soft_sample32(logits, tau, generator, noise)  # (..., V)
    index = p32.argmax(dim=-1, keepdim=True)  # (..., 1)  eq. (7): argmax(p_GS), taken in float32
    p = p32.to(logits.dtype)  # (..., V)
    y_hard = torch.zeros_like(p).scatter_(-1, index, 1.0)  # (..., V) exact one-hot
    # eq. (7): r = onehot - sg[p_GS] + p_GS. Written as onehot + (p - sg[p]): p - p is exactly 0 for
    # any finite p, so the forward value is the one-hot bit for bit; the backward is d p_GS.
    return y_hard + (p - p.detach())  # (..., V)


# --------------------------------------------------------------------------- temperature schedule (§3.1.2)

_TAU_MODES = ("exponential", "linear")


def tau_at(
    epoch_float: float,
    tau_start: float = 1.0,
    tau_end: float = 0.01,
    anneal_epochs: float = 3.0,
    mode: str = "exponential",
) -> float:
    """Return tau at fractional epoch ``epoch_float`` (= step / steps_per_epoch).

    The paper anneals tau "from 1 to 0.01 in the first three epochs" and then keeps it constant, but
    does not state the curve. Our default is geometric (``tau_start * (tau_end / tau_start) ** (t / T)``),
    which spends equal time in each decade of the two it spans; ``mode="linear"`` is the alternative.
    """
    if mode not in _TAU_MODES:
        raise ValueError(f"unknown tau schedule mode {mode!r}; expected one of {_TAU_MODES}")
    _check_tau(tau_start)
    _check_tau(tau_end)
    if anneal_epochs <= 0 or epoch_float >= anneal_epochs:
        return float(tau_end)  # constant after the annealing epochs
    t = max(float(epoch_float), 0.0) / anneal_epochs  # fraction of the annealing done, in [0, 1)
    if mode == "exponential":
        return float(tau_start * (tau_end / tau_start) ** t)
    return float(tau_start + (tau_end - tau_start) * t)


def tau_schedule(step: int, steps_per_epoch: int, **kwargs) -> float:
    """Return tau at optimizer step ``step``; keyword arguments go to :func:`tau_at`."""
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch}")
    return tau_at(step / steps_per_epoch, **kwargs)


@dataclass
class TauScheduler:
    """The §3.1.2 temperature schedule as a resumable callable ``tau = scheduler(step)``."""

    steps_per_epoch: int  # optimizer steps in one epoch (epoch_float = step / steps_per_epoch)
    tau_start: float = 1.0  # tau at step 0 (paper: 1)
    tau_end: float = 0.01  # tau after annealing, held constant (paper: 0.01)
    anneal_epochs: float = 3.0  # epochs over which tau is annealed (paper: 3)
    mode: str = "exponential"  # "exponential" (geometric, our choice) or "linear"; the paper does not say
    last_step: int = -1  # last step the scheduler was called with (-1: never), kept for resuming

    def __post_init__(self) -> None:
        if self.steps_per_epoch <= 0:
            raise ValueError(f"TauScheduler.steps_per_epoch must be > 0, got {self.steps_per_epoch}")
        if self.mode not in _TAU_MODES:
            raise ValueError(f"TauScheduler.mode must be one of {_TAU_MODES}, got {self.mode!r}")
        _check_tau(self.tau_start)
        _check_tau(self.tau_end)

    def __call__(self, step: int) -> float:
        """Return tau at optimizer step ``step`` and remember the step."""
        self.last_step = int(step)
        return tau_at(
            step / self.steps_per_epoch, self.tau_start, self.tau_end, self.anneal_epochs, self.mode
        )

    def state_dict(self) -> dict:
        """Return the scheduler's fields as a plain dict (JSON-serialisable)."""
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore the fields saved by :meth:`state_dict`."""
        expected = set(asdict(self))
        if set(state) != expected:
            raise ValueError(
                f"TauScheduler state has keys {sorted(state)}, expected {sorted(expected)}"
            )
        for key, value in state.items():
            setattr(self, key, value)
        self.__post_init__()


__all__ = [
    "clamp_open_unit",
    "gumbel_noise",
    "gumbel_softmax_soft",
    "gumbel_softmax_st",
    "tau_at",
    "tau_schedule",
    "TauScheduler",
]
