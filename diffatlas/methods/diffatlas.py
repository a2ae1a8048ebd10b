"""DiffAtlas segmentation: sample the joint image-mask model with the image channel replaced by the noised scan
at every visited timestep, then decode the generated SDF channels to a label map."""

from __future__ import annotations

import zlib
from typing import Sequence

import torch
from torch import nn

from diffatlas.data.layout import ChannelLayout
from diffatlas.data.sdf import decode_sdf_torch
from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.sampling.loop import ImageReplacement, make_generators, randn_like_per_sample, reverse_process, run_to_end
from diffatlas.sampling.plans import TimestepPlan


def case_seed(seed: int, case_id: str) -> int:
    """A stable per-case seed: the same (seed, case) pair gives the same noise on every run and machine."""
    return zlib.crc32(f"{seed}:{case_id}".encode())


class DiffAtlasSegmenter:
    """Segments scans with a trained joint denoiser (use the EMA weights).

    Args:
        denoiser: network ``(B, 1 + K, ...) , t -> (B, 1 + K, ...)``.
        diffusion: the schedule it was trained with.
        layout: channel layout (K structures).
        plan: the timestep plan.
        sdf_clip: the SDF clip value used in training; the mask estimate is clipped to it at every step.
        seed: base seed; each case's noise is seeded from ``(seed, case id)``.
    """

    def __init__(self, denoiser: nn.Module, diffusion: GaussianDiffusion, layout: ChannelLayout,
                 plan: TimestepPlan, *, sdf_clip: float, seed: int = 0, progress: bool = False):
        self.denoiser = denoiser.eval()
        self.diffusion = diffusion
        self.layout = layout
        self.plan = plan
        self.sdf_clip = float(sdf_clip)
        self.seed = int(seed)
        self.progress = progress

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        x0 = x0.clone()
        x0[:, self.layout.image] = x0[:, self.layout.image].clamp(-1, 1)
        x0[:, self.layout.masks] = x0[:, self.layout.masks].clamp(-self.sdf_clip, self.sdf_clip)
        return x0

    def sample_sdf(self, images: torch.Tensor, case_ids: Sequence[str]) -> torch.Tensor:
        """``images`` ``(B, 1, *spatial)`` in [-1, 1] -> generated SDFs ``(B, K, *spatial)``."""
        if images.ndim < 4 or images.shape[1] != 1:
            raise ValueError(f"expected images shaped (B, 1, *spatial), got {tuple(images.shape)}")
        if len(case_ids) != images.shape[0]:
            raise ValueError(f"{len(case_ids)} case ids for {images.shape[0]} images")
        generators = make_generators([case_seed(self.seed, c) for c in case_ids])
        shape = (images.shape[0], self.layout.num_channels, *images.shape[2:])
        x_start = randn_like_per_sample(torch.empty(shape, device=images.device), generators)
        states = reverse_process(
            self.denoiser, self.diffusion, self.plan, x_start, generators,
            hooks=[ImageReplacement(self.diffusion, images, self.layout.image)],
            clip_x0=self._clip, progress=self.progress,
        )
        return run_to_end(states)[:, self.layout.masks]

    def segment(self, images: torch.Tensor, case_ids: Sequence[str]) -> torch.Tensor:
        """``images`` ``(B, 1, *spatial)`` -> label maps ``(B, *spatial)`` (0 background, 1..K structures)."""
        return decode_sdf_torch(self.sample_sdf(images, case_ids))
