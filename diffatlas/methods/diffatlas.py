"""DiffAtlas segmentation: sample the joint image-mask model with the image channel replaced by the noised scan
at every visited timestep, then decode the generated SDF channels to a label map.

Three extensions share the one reverse loop:

* refinement: a plan that starts at ``t0 < T - 1`` starts from a coarse label map, encoded to SDFs and noised
  to ``t0`` together with the scan (``q_sample``), instead of from pure noise; ``t0 = -1`` (the empty plan)
  returns the encoded coarse mask itself;
* ensembles: ``ensemble_size`` samples per case, each from its own seed, fused by mean SDF or majority vote,
  with a per-voxel uncertainty map;
* reconstruction guidance (``guidance_scale > 0``): see ``diffatlas.sampling.guidance``;
* decoupled noise levels (``image_level < 1``, a network trained with ``image_time``): the image channel is
  replaced less noisy than the masks, down to the clean scan at ``image_level = 0``;
* selection (``fusion="select"``): of the ensemble's members, the one whose generated image (the network's
  clean-image estimates along its trajectory) agrees best with the scan.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from torch import nn

from diffatlas.data.io import read_volume
from diffatlas.data.layout import ChannelLayout
from diffatlas.data.sdf import encode_sdf
from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.options import parse_option
from diffatlas.sampling.ensemble import Fusion, Uncertainty, fuse, image_agreement, uncertainty_map
from diffatlas.sampling.guidance import ReconstructionGuidance
from diffatlas.sampling.loop import (ImageLevelDenoiser, ImageReplacement, make_generators, randn_like_per_sample,
                                    reverse_process)
from diffatlas.sampling.plans import TimestepPlan

CoarseMasks = Union[torch.Tensor, np.ndarray, Sequence[Union[str, Path, np.ndarray]]]
"""Coarse label maps for a batch: one ``(B, *spatial)`` array or tensor, or one NIfTI path or
``(*spatial)`` array per case."""


def case_seed(seed: int, case_id: str) -> int:
    """A stable per-case seed: the same (seed, case) pair gives the same noise on every run and machine."""
    return zlib.crc32(f"{seed}:{case_id}".encode())


def member_seed(seed: int, case_id: str, member: int) -> int:
    """The seed of ensemble member ``member`` of a case. Member 0 uses the case seed, so an ensemble of one
    is exactly the plain sampler."""
    if member < 0:
        raise ValueError(f"member must be >= 0, got {member}")
    return case_seed(seed, case_id) if member == 0 else zlib.crc32(f"{seed}:{case_id}:{member}".encode())


class DiffAtlasSegmenter:
    """Segments scans with a trained joint denoiser (use the EMA weights).

    Args:
        denoiser: network ``(B, 1 + K, ...) , t -> (B, 1 + K, ...)``.
        diffusion: the schedule it was trained with.
        layout: channel layout (K structures).
        plan: the timestep plan; one that starts below ``T - 1`` refines a coarse mask.
        sdf_clip: the SDF clip value used in training; the mask estimate is clipped to it at every step.
        sdf_scale_vox: the SDF scale used in training; needed to encode coarse masks for refinement.
        seed: base seed; each sample's noise is seeded from ``(seed, case id, ensemble member)``.
        ensemble_size: samples per case (>= 1).
        fusion: ``"mean_sdf"`` (decode the mean SDF), ``"vote"`` (majority vote of the decoded members) or
            ``"select"`` (the member whose generated image agrees best with the scan, by the mean global NCC of
            the network's clean-image estimates over the trajectory).
        uncertainty: ``"sdf_std"`` or ``"entropy"``, see ``diffatlas.sampling.ensemble.uncertainty_map``.
        guidance_scale: reconstruction guidance step (0 = off: no guidance is installed).
        guidance_window: LNCC window side in voxels (odd).
        image_level: in [0, 1], the image channel's noise level as a fraction of the masks' (1: the paper's
            replacement at the same level; 0: the clean scan); below 1 the network must take ``t_image``.
        coarse_dir: folder of coarse label maps ``<case>.nii.gz`` read when a refinement plan gets no
            ``coarse`` argument (e.g. the ``predictions/`` folder of an earlier test run).
        progress: show a progress bar per sampling run.
        bf16: run the network under bfloat16 autocast on the images' device (meant for CUDA; off by default
            until it is shown to leave Dice unchanged); the reverse-loop arithmetic stays float32.
    """

    CASE_KEYS = ("seed", "ensemble_size", "fusion", "uncertainty", "guidance_scale", "guidance_window", "bf16")
    """The per-case settings: the ``inference`` config group (``configs/inference/``), never the sampler config."""
    SAMPLER_OPTIONS = ("image_level", "coarse_dir")
    """The sampler config keys that configure the segmenter; the others describe the timestep plan."""

    def __init__(self, denoiser: nn.Module, diffusion: GaussianDiffusion, layout: ChannelLayout,
                 plan: TimestepPlan, *, sdf_clip: float, sdf_scale_vox: float | None = None, seed: int = 0,
                 ensemble_size: int = 1, fusion: str = "mean_sdf", uncertainty: str = "sdf_std",
                 guidance_scale: float = 0.0, guidance_window: int = 5, image_level: float = 1.0,
                 coarse_dir: str | Path | None = None, progress: bool = False, bf16: bool = False):
        plan.check_range(diffusion.num_timesteps)
        if int(ensemble_size) < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
        if float(guidance_scale) < 0:
            raise ValueError(f"guidance_scale must be >= 0 (0 = off), got {guidance_scale}")
        if int(guidance_window) < 1 or int(guidance_window) % 2 == 0:
            raise ValueError(f"guidance_window must be a positive odd number, got {guidance_window}")
        if sdf_scale_vox is not None and float(sdf_scale_vox) <= 0:
            raise ValueError(f"sdf_scale_vox must be positive, got {sdf_scale_vox}")
        if coarse_dir is not None and sdf_scale_vox is None:
            raise ValueError("coarse_dir is set but sdf_scale_vox is not: coarse masks cannot be encoded")
        if not 0.0 <= float(image_level) <= 1.0:
            raise ValueError(f"image_level must lie in [0, 1], got {image_level}")
        decoupled = bool(getattr(denoiser, "image_time", False))
        if float(image_level) < 1.0 and not decoupled:
            raise ValueError(f"image_level={image_level} needs a network trained with decoupled noise levels "
                             "(model.image_time=true); this one was not")
        self.image_level = float(image_level)
        denoiser = denoiser.eval()
        self.denoiser = ImageLevelDenoiser(denoiser, self.image_level).eval() if decoupled else denoiser
        self.diffusion = diffusion
        self.layout = layout
        self.plan = plan
        self.sdf_clip = float(sdf_clip)
        self.sdf_scale_vox = None if sdf_scale_vox is None else float(sdf_scale_vox)
        self.seed = int(seed)
        self.ensemble_size = int(ensemble_size)
        self.fusion = parse_option(Fusion, fusion, "fusion").value
        self.uncertainty = parse_option(Uncertainty, uncertainty, "uncertainty").value
        self.guidance_scale = float(guidance_scale)
        self.guidance_window = int(guidance_window)
        self.coarse_dir = None if coarse_dir is None else Path(coarse_dir)
        self.progress = progress
        self.bf16 = bool(bf16)

    @property
    def refines(self) -> bool:
        """Whether the plan starts below ``T - 1`` and so needs a coarse mask."""
        return self.plan.start_t < self.diffusion.num_timesteps - 1

    @property
    def network_evaluations(self) -> int:
        """Network calls per case: the plan's, once per ensemble member."""
        return self.plan.network_evaluations * self.ensemble_size

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        x0 = x0.clone()
        x0[:, self.layout.image] = x0[:, self.layout.image].clamp(-1, 1)
        x0[:, self.layout.masks] = x0[:, self.layout.masks].clamp(-self.sdf_clip, self.sdf_clip)
        return x0

    def _check_images(self, images: torch.Tensor, case_ids: Sequence[str]) -> None:
        if images.ndim < 4 or images.shape[1] != 1:
            raise ValueError(f"expected images shaped (B, 1, *spatial), got {tuple(images.shape)}")
        if len(case_ids) != images.shape[0]:
            raise ValueError(f"{len(case_ids)} case ids for {images.shape[0]} images")

    def _coarse_labels(self, coarse: CoarseMasks | None, case_ids: Sequence[str]) -> list[np.ndarray]:
        """One ``(*spatial)`` label array per case, from ``coarse`` or from ``coarse_dir``."""
        if coarse is None:
            if self.coarse_dir is None:
                raise ValueError(f"plan {self.plan.name} starts at t={self.plan.start_t} < T-1 = "
                                 f"{self.diffusion.num_timesteps - 1}: refinement needs a coarse mask "
                                 "(pass coarse=... or set coarse_dir)")
            coarse = [self.coarse_dir / f"{c}.nii.gz" for c in case_ids]
        if isinstance(coarse, torch.Tensor):
            coarse = coarse.detach().cpu().numpy()
        items = list(coarse)
        if len(items) != len(case_ids):
            raise ValueError(f"{len(items)} coarse masks for {len(case_ids)} cases")
        out = []
        for item in items:
            if isinstance(item, (str, Path)):
                if not Path(item).is_file():
                    raise FileNotFoundError(f"coarse mask not found: {item}")
                item = read_volume(item)[0]
            out.append(np.asarray(item))
        return out

    def encode_coarse(self, coarse: CoarseMasks | None, case_ids: Sequence[str], spatial: Sequence[int],
                      device: torch.device | str = "cpu") -> torch.Tensor:
        """Coarse label maps -> SDFs ``(B, K, *spatial)`` with the training scale and clip."""
        if self.sdf_scale_vox is None:
            raise ValueError("refinement needs sdf_scale_vox (the checkpoint's SDF scale) to encode coarse masks")
        labels = self._coarse_labels(coarse, case_ids)
        for case, label in zip(case_ids, labels):
            if tuple(label.shape) != tuple(spatial):
                raise ValueError(f"coarse mask of case {case} has shape {tuple(label.shape)}, "
                                 f"the image has {tuple(spatial)}")
        sdf = np.stack([encode_sdf(label, self.layout.num_structures, self.sdf_scale_vox, self.sdf_clip)
                        for label in labels])
        return torch.from_numpy(sdf).to(device)

    def _start_state(self, images: torch.Tensor, coarse_sdf: torch.Tensor | None,
                     generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Pure noise ``(B, 1 + K, *spatial)``, or with a coarse mask ``q(x_t0 | [image, coarse SDFs])``
        (Ho et al. eq. 4); at ``t0 = -1`` the clean joint state itself."""
        shape = (images.shape[0], self.layout.num_channels, *images.shape[2:])
        noise = randn_like_per_sample(torch.empty(shape, device=images.device), generators)
        if coarse_sdf is None:
            return noise
        x0 = torch.empty(shape, device=images.device)
        x0[:, self.layout.image] = images
        x0[:, self.layout.masks] = coarse_sdf.to(images.device, torch.float32)
        t0 = self.plan.start_t
        if t0 < 0:
            return x0
        bt = torch.full((shape[0],), t0, device=images.device, dtype=torch.long)
        return self.diffusion.q_sample(x0, bt, noise)

    def sample_sdf(self, images: torch.Tensor, case_ids: Sequence[str], *, coarse: CoarseMasks | None = None,
                   member: int = 0) -> torch.Tensor:
        """One sample per case: ``images`` ``(B, 1, *spatial)`` in [-1, 1] -> SDFs ``(B, K, *spatial)``.

        ``coarse`` (refinement plans only; otherwise ignored) gives the coarse label maps; ``member`` picks
        the ensemble member's seed.
        """
        self._check_images(images, case_ids)
        coarse_sdf = None
        if self.refines:
            coarse_sdf = self.encode_coarse(coarse, case_ids, images.shape[2:], images.device)
        return self._sample(images, case_ids, coarse_sdf, member)[0]

    def _sample(self, images: torch.Tensor, case_ids: Sequence[str], coarse_sdf: torch.Tensor | None,
                member: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One member's SDFs ``(B, K, *spatial)`` and its image agreement ``(B,)``: the mean global NCC of the
        network's clean-image estimates with the scan over the visited steps (1 where no network ran)."""
        generators = make_generators([member_seed(self.seed, c, member) for c in case_ids])
        guidance = None
        if self.guidance_scale > 0:
            guidance = ReconstructionGuidance(images, self.layout.image, self.layout.masks,
                                              scale=self.guidance_scale, window=self.guidance_window)
        states = reverse_process(
            self.denoiser, self.diffusion, self.plan, self._start_state(images, coarse_sdf, generators),
            generators, hooks=[ImageReplacement(self.diffusion, images, self.layout.image, self.image_level)],
            guidance=guidance, clip_x0=self._clip, progress=self.progress,
        )
        agreement = torch.zeros(images.shape[0], device=images.device)
        steps, state = 0, None
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for state in states:
                if state.t >= 0 and state.x0_hat is not None:
                    agreement = agreement + image_agreement(state.x0_hat[:, self.layout.image], images).to(agreement)
                    steps += 1
        return state.x[:, self.layout.masks], agreement / steps if steps else agreement + 1

    def sample_members(self, images: torch.Tensor, case_ids: Sequence[str],
                       coarse: CoarseMasks | None = None) -> torch.Tensor:
        """All ensemble members: ``(N, B, K, *spatial)`` SDFs, member ``n`` seeded by ``member_seed(.., n)``."""
        return self.sample_scored_members(images, case_ids, coarse)[0]

    def sample_scored_members(self, images: torch.Tensor, case_ids: Sequence[str],
                              coarse: CoarseMasks | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All ensemble members ``(N, B, K, *spatial)`` and their image agreements ``(N, B)``."""
        self._check_images(images, case_ids)
        coarse_sdf = None
        if self.refines:
            coarse_sdf = self.encode_coarse(coarse, case_ids, images.shape[2:], images.device)
        runs = [self._sample(images, case_ids, coarse_sdf, n) for n in range(self.ensemble_size)]
        return torch.stack([r[0] for r in runs]), torch.stack([r[1] for r in runs])

    def segment_with_uncertainty(self, images: torch.Tensor, case_ids: Sequence[str],
                                 coarse: CoarseMasks | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fused label maps and the per-voxel uncertainty of the ensemble.

        Args:
            images: ``(B, 1, *spatial)`` scans in [-1, 1].
            case_ids: B case ids (they seed the noise).
            coarse: coarse label maps for refinement plans (else read from ``coarse_dir``); ignored otherwise.

        Returns:
            ``(labels, uncertainty)``: int64 ``(B, *spatial)`` (0 background, 1..K structures) and float32
            ``(B, *spatial)``, or ``None`` when ``ensemble_size == 1`` (one sample has no spread).
        """
        members, scores = self.sample_scored_members(images, case_ids, coarse)
        labels = fuse(members, self.fusion, scores)
        if self.ensemble_size == 1:
            return labels, None
        return labels, uncertainty_map(members, self.uncertainty)

    def segment(self, images: torch.Tensor, case_ids: Sequence[str],
                coarse: CoarseMasks | None = None) -> torch.Tensor:
        """``images`` ``(B, 1, *spatial)`` -> fused label maps ``(B, *spatial)`` (0 background, 1..K)."""
        return self.segment_with_uncertainty(images, case_ids, coarse)[0]
