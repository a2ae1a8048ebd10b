"""Noise schedules and the forward process of a DDPM (Ho et al. 2020), independent of what the channels mean.

Timesteps are integers ``0 .. T-1``; ``t = 0`` is the least noisy step. Schedule constants are computed in
float64 and stored as float32 buffers, so they move with ``.to(device)`` and are saved with the module.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Sequence

import numpy as np
import torch
from torch import nn

from diffatlas.options import parse_option


class Schedule(str, Enum):
    COSINE = "cosine"
    LINEAR = "linear"


class Prediction(str, Enum):
    """What the network outputs: the noise (``eps``), the clean sample (``x0``) or velocity (``v``)."""

    EPS = "eps"
    X0 = "x0"
    V = "v"


class LossType(str, Enum):
    L1 = "l1"
    L2 = "l2"


def make_betas(schedule: str, num_timesteps: int, *, beta_start: float = 1e-4, beta_end: float = 2e-2,
               cosine_s: float = 0.008) -> np.ndarray:
    """Betas ``(T,)`` in float64.

    Linear: evenly spaced from ``beta_start`` to ``beta_end``. Cosine (Nichol & Dhariwal 2021, eq. 17):
    ``alpha_bar(t) = f(t) / f(0)`` with ``f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2)`` and
    ``beta_t = 1 - alpha_bar(t + 1) / alpha_bar(t)``, clipped at 0.999.
    """
    kind = parse_option(Schedule, schedule, "schedule")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if kind is Schedule.LINEAR:
        return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, 0.999)


def extract(arr: torch.Tensor, t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Gather ``arr[t]`` for a batch of timesteps and reshape to broadcast against ``shape`` ``(B, ...)``."""
    out = arr.to(t.device)[t.long()]
    return out.view(t.shape[0], *([1] * (len(shape) - 1)))


class GaussianDiffusion(nn.Module):
    """Schedule constants, ``q_sample`` and the training loss.

    Args:
        num_timesteps: T.
        schedule: ``"cosine"`` or ``"linear"``.
        prediction: network target, ``"eps"``, ``"x0"`` or ``"v"``.
        loss: ``"l1"`` or ``"l2"``, on the chosen target.
        channel_weights: optional per-channel loss weights ``(C,)``; the loss is a weighted mean over channels.
    """

    def __init__(self, *, num_timesteps: int = 300, schedule: str = "cosine", prediction: str = "eps",
                 loss: str = "l1", channel_weights: Sequence[float] | None = None,
                 beta_start: float = 1e-4, beta_end: float = 2e-2, cosine_s: float = 0.008):
        super().__init__()
        self.num_timesteps = int(num_timesteps)
        self.schedule = parse_option(Schedule, schedule, "schedule").value
        self.prediction = parse_option(Prediction, prediction, "prediction").value
        self.loss_type = parse_option(LossType, loss, "loss").value
        betas = make_betas(schedule, num_timesteps, beta_start=beta_start, beta_end=beta_end, cosine_s=cosine_s)
        alphas_cumprod = np.cumprod(1.0 - betas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        consts = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            # posterior q(x_{t-1} | x_t, x_0), Ho et al. eq. 7
            "posterior_variance": betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        }
        for name, value in consts.items():
            self.register_buffer(name, torch.from_numpy(value).float(), persistent=False)
        if channel_weights is not None:
            w = torch.as_tensor(list(channel_weights), dtype=torch.float32)
            if w.ndim != 1 or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"channel_weights must be non-negative with a positive sum, got {list(channel_weights)}")
            self.register_buffer("channel_weights", w, persistent=False)
        else:
            self.channel_weights = None

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """``alpha_bar_t`` for integer ``t`` in ``-1 .. T-1``; ``t = -1`` means the clean sample (1.0)."""
        ab = torch.cat([torch.ones(1, device=self.alphas_cumprod.device), self.alphas_cumprod])
        return ab.to(t.device)[t.long() + 1]

    def q_sample_levels(self, x0: torch.Tensor, levels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``q_sample`` with one timestep per sample and channel: ``levels`` ``(B, C)`` in ``-1 .. T-1``
        (``-1`` keeps the channel clean). Equal levels give exactly ``q_sample``."""
        if levels.shape != x0.shape[:2]:
            raise ValueError(f"levels must be (B, C) = {tuple(x0.shape[:2])}, got {tuple(levels.shape)}")
        one = torch.ones(1, device=self.sqrt_alphas_cumprod.device)
        zero = torch.zeros(1, device=self.sqrt_alphas_cumprod.device)
        signal = torch.cat([one, self.sqrt_alphas_cumprod]).to(levels.device)[levels.long() + 1]
        sigma = torch.cat([zero, self.sqrt_one_minus_alphas_cumprod]).to(levels.device)[levels.long() + 1]
        view = (*levels.shape, *([1] * (x0.ndim - 2)))
        return signal.view(view) * x0 + sigma.view(view) * noise

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample ``x_t ~ q(x_t | x_0)``: ``sqrt(ab_t) x0 + sqrt(1 - ab_t) noise`` (Ho et al. eq. 4)."""
        return (extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.prediction == Prediction.EPS.value:
            return noise
        if self.prediction == Prediction.X0.value:
            return x0
        return (extract(self.sqrt_alphas_cumprod, t, x0.shape) * noise
                - extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * x0)

    def split_prediction(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn the network output into ``(x0_hat, eps_hat)`` whatever the parameterisation."""
        a = extract(self.sqrt_alphas_cumprod, t, x_t.shape)
        s = extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape)
        if self.prediction == Prediction.EPS.value:
            eps = model_out
            x0 = (x_t - s * eps) / a
        elif self.prediction == Prediction.X0.value:
            x0 = model_out
            eps = (x_t - a * x0) / s
        else:  # v = a * eps - s * x0  =>  x0 = a x_t - s v,  eps = s x_t + a v
            x0 = a * x_t - s * model_out
            eps = s * x_t + a * model_out
        return x0, eps

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        a = extract(self.sqrt_alphas_cumprod, t, x_t.shape)
        s = extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape)
        return (x_t - a * x0) / s

    def loss(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, *,
             levels: torch.Tensor | None = None, **model_kwargs: torch.Tensor) -> torch.Tensor:
        """Mean training loss of ``model`` on clean batch ``x0`` ``(B, C, ...)`` at timesteps ``t`` ``(B,)``.

        ``levels`` ``(B, C)`` noises each channel at its own timestep instead (``q_sample_levels``; needs the
        ``x0`` target, whose meaning does not depend on the level); ``model_kwargs`` go to the network, e.g. the
        second timestep of a network with decoupled noise levels.
        """
        if levels is None:
            x_t = self.q_sample(x0, t, noise)
        elif self.prediction != Prediction.X0.value:
            raise ValueError(f"per-channel noise levels need prediction 'x0', not {self.prediction!r}")
        else:
            x_t = self.q_sample_levels(x0, levels, noise)
        out = model(x_t, t, **model_kwargs)
        target = self.target(x0, t, noise)
        err = (out.float() - target).abs() if self.loss_type == LossType.L1.value else (out.float() - target) ** 2
        per_channel = err.transpose(0, 1).reshape(err.shape[1], -1).mean(dim=1)
        if self.channel_weights is None:
            return per_channel.mean()
        w = self.channel_weights.to(per_channel.device)
        if w.numel() != per_channel.numel():
            raise ValueError(f"channel_weights has {w.numel()} entries but the data has {per_channel.numel()} channels")
        return (w * per_channel).sum() / w.sum()


__all__ = ["GaussianDiffusion", "make_betas", "extract", "Schedule", "Prediction", "LossType"]
