"""The one reverse loop. Plans (``plans.py``) say which timesteps to visit; hooks change the state at each
visited timestep (image replacement); an optional guidance term is added to each denoising move
(``guidance.py``); nothing else differs between samplers.

Randomness comes from one ``torch.Generator`` per batch element, so a case's result depends only on its
own seed, not on which other cases share its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.sampling.plans import TimestepPlan


def randn_like_per_sample(x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` ``(B, ...)``, element ``b`` drawn from ``generators[b]``."""
    if len(generators) != x.shape[0]:
        raise ValueError(f"need one generator per batch element: {len(generators)} for batch {x.shape[0]}")
    return torch.stack([
        torch.randn(x.shape[1:], generator=g, device=g.device, dtype=torch.float32).to(x.device, x.dtype)
        for g in generators
    ])


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One seeded generator per sample. Noise is drawn on the CPU so a seed means the same on every device."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


class StepHook(Protocol):
    """Called at every visited timestep ``t`` before the state moves on; returns the (possibly changed) state."""

    def __call__(self, x: torch.Tensor, t: int, generators: Sequence[torch.Generator]) -> torch.Tensor: ...


class Guidance(Protocol):
    """A correction added to the state after a denoising move from ``t``.

    ``x_t`` ``(B, C, ...)`` requires grad and ``x0_hat`` is the network's clean estimate computed from it
    (before clipping), so the guidance can differentiate through the denoiser. Returns a tensor shaped like
    ``x_t``, without a graph, that the loop adds to the next state.
    """

    def __call__(self, x_t: torch.Tensor, x0_hat: torch.Tensor, t: int) -> torch.Tensor: ...


@dataclass
class StepState:
    """The state ``x`` at timestep ``t`` (after hooks), where the loop goes next, and the model's clean estimate
    (``None`` on re-noising moves, which call no network)."""

    t: int
    t_next: int
    x: torch.Tensor
    x0_hat: torch.Tensor | None


def reverse_process(
    denoiser: nn.Module,
    diffusion: GaussianDiffusion,
    plan: TimestepPlan,
    x_start: torch.Tensor,
    generators: Sequence[torch.Generator],
    *,
    hooks: Sequence[StepHook] = (),
    guidance: Guidance | None = None,
    clip_x0: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> Iterator[StepState]:
    """Run ``plan`` from ``x_start`` ``(B, C, ...)`` (the state at ``plan.timesteps[0]``).

    Yields one :class:`StepState` per visited timestep and a last one at ``t = -1`` whose ``x`` is the sample.
    Denoising from ``t`` to ``s < t`` uses the DDIM update (Song et al. 2021, eq. 12) with the plan's ``eta``;
    with ``eta = 1`` and ``s = t - 1`` it is exactly the DDPM ancestral step (posterior variance of Ho et al.
    eq. 7). Moving up from ``t`` to ``s > t`` draws ``x_s ~ q(x_s | x_t)``. With ``guidance``, the network is
    called with autograd on and the guidance's correction is added to every denoised state but the last (the
    sample stays the clipped clean estimate); without it, the network runs under ``no_grad``.
    """
    plan.check_range(diffusion.num_timesteps)
    x = x_start
    pairs = list(zip(plan.timesteps[:-1], plan.timesteps[1:]))
    for t, s in tqdm(pairs, desc=plan.name, disable=not progress, leave=False):
        for hook in hooks:
            x = hook(x, t, generators)
        bt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        bs = torch.full_like(bt, s)
        ab_t = diffusion.alpha_bar(bt).view(-1, *([1] * (x.ndim - 1)))
        ab_s = diffusion.alpha_bar(bs).view_as(ab_t)
        if s > t:
            ratio = ab_s / ab_t
            x_next = ratio.sqrt() * x + (1 - ratio).sqrt() * randn_like_per_sample(x, generators)
            yield StepState(t, s, x, None)
            x = x_next
            continue
        correction = None
        if guidance is None or s < 0:
            with torch.no_grad():
                x0_hat, eps_hat = diffusion.split_prediction(denoiser(x, bt).float(), x, bt)
        else:
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                x0_hat, eps_hat = diffusion.split_prediction(denoiser(x_in, bt).float(), x_in, bt)
                correction = guidance(x_in, x0_hat, t)
            x0_hat, eps_hat = x0_hat.detach(), eps_hat.detach()
        if clip_x0 is not None:
            x0_hat = clip_x0(x0_hat)
            eps_hat = diffusion.eps_from_x0(x, bt, x0_hat)
        sigma = plan.eta * ((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)).clamp(min=0).sqrt()
        x_next = ab_s.sqrt() * x0_hat + (1 - ab_s - sigma**2).clamp(min=0).sqrt() * eps_hat
        if s >= 0 and plan.eta > 0:
            x_next = x_next + sigma * randn_like_per_sample(x, generators)
        if correction is not None:
            x_next = x_next + correction
        yield StepState(t, s, x, x0_hat)
        x = x_next
    for hook in hooks:
        x = hook(x, -1, generators)
    yield StepState(-1, -1, x, x)


def run_to_end(states: Iterator[StepState]) -> torch.Tensor:
    """Exhaust a reverse process and return its final sample."""
    last = None
    for last in states:
        pass
    if last is None:
        raise RuntimeError("the reverse process yielded nothing")
    return last.x


def image_level(t: int | torch.Tensor, ratio: float) -> int | torch.Tensor:
    """The image channel's timestep when the masks are at ``t``: ``round(ratio * (t + 1)) - 1``, so
    ``ratio = 1`` gives ``t`` (the paper's replacement) and ``ratio = 0`` gives ``-1`` (the clean scan)."""
    if isinstance(t, torch.Tensor):
        return torch.round(ratio * (t + 1).double()).long() - 1
    return int(round(ratio * (t + 1))) - 1


class ImageReplacement:
    """RePaint-style conditioning: at every visited ``t`` the image channel becomes ``q_sample(image, t_image)``
    with fresh noise, where ``t_image = image_level(t, level_ratio)`` (``t`` itself by default); at
    ``t_image = -1``, and always at ``t = -1``, it becomes the clean image itself.

    Args:
        diffusion: the forward process.
        image: ``(B, 1, ...)`` the scans to segment, in [-1, 1].
        channel: the slice of the state holding the image (``ChannelLayout.image``).
        level_ratio: in [0, 1]; below 1 the image is less noisy than the masks (a network trained with
            decoupled noise levels is needed).
    """

    def __init__(self, diffusion: GaussianDiffusion, image: torch.Tensor, channel: slice, level_ratio: float = 1.0):
        if not 0.0 <= level_ratio <= 1.0:
            raise ValueError(f"image level ratio must lie in [0, 1], got {level_ratio}")
        self.diffusion = diffusion
        self.image = image
        self.channel = channel
        self.level_ratio = float(level_ratio)

    def __call__(self, x: torch.Tensor, t: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
        x = x.clone()
        level = image_level(t, self.level_ratio) if t >= 0 else -1
        noise = randn_like_per_sample(self.image, generators) if t >= 0 else None
        if level < 0:
            x[:, self.channel] = self.image
            return x
        bt = torch.full((x.shape[0],), level, device=x.device, dtype=torch.long)
        x[:, self.channel] = self.diffusion.q_sample(self.image, bt, noise)
        return x


class ImageLevelDenoiser(nn.Module):
    """A network with decoupled noise levels (``forward(x, t, t_image)``) seen by the reverse loop as an
    ordinary denoiser ``(x, t)``: the image level follows ``image_level(t, level_ratio)``, as in
    :class:`ImageReplacement`."""

    def __init__(self, network: nn.Module, level_ratio: float):
        super().__init__()
        self.network = network
        self.level_ratio = float(level_ratio)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.network(x, t, t_image=image_level(t, self.level_ratio))
