"""The denoiser, the forward process and the timestep plan built from config mappings, and the sampler built
around a checkpoint's EMA weights. The network, diffusion and SDF settings used at test time are read from the
checkpoint, never re-typed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from diffatlas.data.layout import ChannelLayout
from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.methods.diffatlas import DiffAtlasSegmenter
from diffatlas.nets.unet import UNet
from diffatlas.sampling.plans import TimestepPlan, make_plan
from diffatlas.training.objectives import decoupled_objective
from diffatlas.training.trainer import diffusion_objective, load_checkpoint

log = logging.getLogger(__name__)


def build_denoiser(model_cfg: Mapping[str, Any], layout: ChannelLayout, spatial_dims: int = 3) -> UNet:
    """The joint denoiser: ``1 + K`` channels in and out."""
    return UNet(spatial_dims=spatial_dims, in_channels=layout.num_channels, out_channels=layout.num_channels,
                time_conditioned=True, **dict(model_cfg))


def build_diffusion(diffusion_cfg: Mapping[str, Any], layout: ChannelLayout) -> GaussianDiffusion:
    """The forward process; ``image_weight`` and ``mask_weight`` become per-channel loss weights."""
    cfg = dict(diffusion_cfg)
    image_w, mask_w = float(cfg.pop("image_weight", 1.0)), float(cfg.pop("mask_weight", 1.0))
    cfg.pop("equal_levels_prob", None)
    weights = [0.0] * layout.num_channels
    weights[layout.image] = [image_w]
    weights[layout.masks] = [mask_w] * layout.num_structures
    return GaussianDiffusion(channel_weights=weights, **cfg)


def denoiser_objective(diffusion: GaussianDiffusion, model_cfg: Mapping[str, Any], diffusion_cfg: Mapping[str, Any],
                       layout: ChannelLayout):
    """The training objective of the joint denoiser: the DDPM loss, with decoupled image and mask noise levels
    when the network takes the image's level (``model.image_time``)."""
    if model_cfg.get("image_time", False):
        return decoupled_objective(diffusion, layout.image, float(diffusion_cfg.get("equal_levels_prob", 0.5)))
    return diffusion_objective(diffusion)


def check_sampler_config(sampler_cfg: Mapping[str, Any]) -> None:
    """Raise a one-line ``ValueError`` for a per-case setting in a sampler config: those moved to the
    ``inference`` group (``DiffAtlasSegmenter.CASE_KEYS``), the sampler config holds the timestep plan."""
    stray = [key for key in DiffAtlasSegmenter.CASE_KEYS if key in sampler_cfg]
    if stray:
        raise ValueError(f"sampler.{stray[0]} moved to inference.{stray[0]} (the sampler config holds the timestep "
                         f"plan only; per-case settings are in configs/inference/)")


def build_plan(sampler_cfg: Mapping[str, Any], num_timesteps: int) -> TimestepPlan:
    """The timestep plan of a sampler config; its segmenter options (``DiffAtlasSegmenter.SAMPLER_OPTIONS``:
    image level, coarse masks) are left out."""
    check_sampler_config(sampler_cfg)
    cfg = {k: v for k, v in dict(sampler_cfg).items() if k not in DiffAtlasSegmenter.SAMPLER_OPTIONS}
    return make_plan(cfg.pop("plan"), num_timesteps, **cfg)


def sampling_options(sampler_cfg: Mapping[str, Any], inference: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``DiffAtlasSegmenter`` keywords of a sampler config (image level, coarse masks) and of the per-case
    settings ``inference`` (an ``inference`` config or a part of it: seed, ensemble, fusion, guidance, bf16);
    unset (None) values are left to the segmenter's defaults."""
    check_sampler_config(sampler_cfg)
    inference = dict(inference or {})
    options = {k: sampler_cfg[k] for k in DiffAtlasSegmenter.SAMPLER_OPTIONS if sampler_cfg.get(k) is not None}
    return options | {k: inference[k] for k in DiffAtlasSegmenter.CASE_KEYS if inference.get(k) is not None}


def load_segmenter(checkpoint: str | Path, sampler_cfg: Mapping[str, Any], device: torch.device,
                   progress: bool = False, inference: Mapping[str, Any] | None = None
                   ) -> tuple[DiffAtlasSegmenter, dict[str, Any]]:
    """Build the sampler around the checkpoint's EMA weights, with the timestep plan of ``sampler_cfg`` and the
    per-case settings of ``inference`` (``sampling_options``); returns it and the checkpoint's stored config."""
    ckpt = load_checkpoint(checkpoint)
    stored = ckpt["config"]
    layout = ChannelLayout(len(stored["structures"]))
    model = build_denoiser(stored["model"], layout).to(device)
    model.load_state_dict(ckpt["ema"])
    diffusion = build_diffusion(stored["diffusion"], layout).to(device)
    plan = build_plan(sampler_cfg, diffusion.num_timesteps)
    seg = DiffAtlasSegmenter(model, diffusion, layout, plan, sdf_clip=stored["sdf_clip"],
                             sdf_scale_vox=stored["sdf_scale_vox"], progress=progress,
                             **sampling_options(sampler_cfg, inference))
    log.info("loaded EMA weights from %s (step %d)", checkpoint, ckpt["step"])
    return seg, stored
