"""The DDPM loss with decoupled noise levels: the image channel and the mask channels at their own timesteps.

A network trained this way (``UNet(image_time=True)``) can sample the masks while the image channel is
replaced at any level ``t_image <= t``: ``t_image = t`` is the paper's replacement, ``t_image = -1`` conditions on
the clean scan. With probability ``equal_prob`` a sample gets equal levels (the paper's joint training);
otherwise its image level is uniform in ``-1 .. t``, the levels the sampler can ask for.
"""

from __future__ import annotations

import torch
from torch import nn

from diffatlas.diffusion.gaussian import GaussianDiffusion


def draw_image_levels(t: torch.Tensor, equal_prob: float, generator: torch.Generator) -> torch.Tensor:
    """Image timesteps ``(B,)`` for mask timesteps ``t`` ``(B,)``: ``t`` itself with probability ``equal_prob``,
    else uniform in ``-1 .. t``. Draws on ``t``'s device (the generator's)."""
    if not 0.0 <= equal_prob <= 1.0:
        raise ValueError(f"equal_prob must lie in [0, 1], got {equal_prob}")
    shape = (t.shape[0],)
    equal = torch.rand(shape, generator=generator, device=t.device) < equal_prob
    u = torch.rand(shape, generator=generator, device=t.device, dtype=torch.float64)
    lower = (u * (t.double() + 2)).floor().long() - 1   # u < 1, so -1 <= lower <= t
    return torch.where(equal, t, lower)


def decoupled_objective(diffusion: GaussianDiffusion, image_channels: slice, equal_prob: float = 0.5):
    """The trainer objective ``(model, batch, generator) -> loss`` with decoupled image and mask levels.

    The model is called as ``model(x_t, t, t_image=t_image)``. With ``equal_prob = 1`` every sample has
    ``t_image = t`` and the loss is the ordinary joint loss of the same network.
    """
    if not 0.0 <= equal_prob <= 1.0:
        raise ValueError(f"equal_prob must lie in [0, 1], got {equal_prob}")

    def objective(model: nn.Module, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, c = batch.shape[:2]
        t = torch.randint(diffusion.num_timesteps, (b,), generator=generator, device=batch.device)
        noise = torch.randn(batch.shape, generator=generator, device=batch.device, dtype=batch.dtype)
        t_image = draw_image_levels(t, equal_prob, generator)
        levels = t[:, None].repeat(1, c)
        levels[:, image_channels] = t_image[:, None]
        return diffusion.loss(model, batch, t, noise, levels=levels, t_image=t_image)

    return objective


__all__ = ["draw_image_levels", "decoupled_objective"]
