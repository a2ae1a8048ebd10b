"""Training the joint image-mask denoiser on a split's training cases (``python -m diffatlas.train``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from diffatlas.builders import build_denoiser, build_diffusion, build_plan, denoiser_objective
from diffatlas.data.datasets import JointDataset, PreparedData
from diffatlas.data.layout import ChannelLayout
from diffatlas.device import resolve_device
from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.evaluation.metrics import evaluate_case
from diffatlas.inputs import load_data_and_split, preparation_record, sdf_settings
from diffatlas.heart_net import HeartNet, HeartNetSettings
from diffatlas.localise import LocaliserAtlas, build_atlases
from diffatlas.methods.diffatlas import DiffAtlasSegmenter
from diffatlas.nets.unet import count_parameters
from diffatlas.training.augment import make_augment
from diffatlas.training.distributed import init_distributed
from diffatlas.training.runguard import load_checkpoint
from diffatlas.training.trainer import LAST, Trainer, TrainSettings

log = logging.getLogger(__name__)


def train(cfg: Mapping[str, Any]) -> Path:
    """Train the joint denoiser on the split's training cases; returns the path of the last checkpoint."""
    data, split = load_data_and_split(cfg["dataset"], cfg["split"])
    if not split["train"]:
        raise ValueError(f"split {cfg['split']['file']} has no training cases (a test-only split?)")
    return fit_denoiser(cfg, data, list(split["train"]), list(split.get("val", [])), split.get("name", ""))


def fit_denoiser(cfg: Mapping[str, Any], data: PreparedData, train_cases: list[str], val_cases: list[str],
                 split_name: str) -> Path:
    """Train the joint denoiser on ``train_cases`` of ``data`` (validation Dice on ``val_cases``) with the
    ``model``, ``diffusion`` and ``training`` settings of ``cfg``; returns the path of the last checkpoint.

    Under ``torchrun`` every process runs this: each joins the process group on its own device and trains
    its part of every batch; rank 0 writes the checkpoints (see ``diffatlas.training.distributed``)."""
    device = init_distributed(resolve_device(cfg["device"]))
    layout = ChannelLayout(data.num_structures)
    clip, scale = sdf_settings(cfg["dataset"], data)
    dataset = JointDataset(data, train_cases, sdf_clip=clip, sdf_scale_vox=scale)
    torch.manual_seed(int(cfg["seed"]))
    model = build_denoiser(cfg["model"], layout)
    diffusion = build_diffusion(cfg["diffusion"], layout).to(device)
    settings = TrainSettings(**dict(cfg["training"]), seed=int(cfg["seed"]))
    log.info("training on %d cases of %s (%s), %d structures, grid %s, %s parameters, device %s",
             len(dataset), data.name, data.modality, layout.num_structures, data.shape,
             f"{count_parameters(model):,}", device)
    stored = {
        "method": "DiffAtlas", "model": dict(cfg["model"]), "diffusion": dict(cfg["diffusion"]),
        "structures": list(data.structures), "sdf_clip": clip, "sdf_scale_vox": scale,
        "shape": list(data.shape), "dataset": data.name, "modality": data.modality,
        "split": split_name, "train_cases": sorted(train_cases), "augment": dict(cfg.get("augment") or {}),
        "run": dict(cfg), "preparation": preparation_record(data),
    }
    validate = None
    if settings.val_every and val_cases:
        validate = _validator(cfg, data, val_cases, diffusion, layout, clip, device)
    augment = make_augment(cfg.get("augment"), image_channels=[layout.image.start])
    objective = denoiser_objective(diffusion, cfg["model"], cfg["diffusion"], layout)
    localiser = build_atlases(data, sorted(train_cases), stored["preparation"]["orientation"])
    extras: dict[str, Any] = {"localiser": localiser}
    if localiser:
        extras["heart_net"] = _heart_net(cfg, localiser, device)
    trainer = Trainer(model, objective, dataset, cfg["checkpoint_dir"], settings, config=stored,
                      validate=validate, device=device, augment=augment, extras=extras)
    trainer.fit(resume=bool(cfg.get("resume", True)))
    return Path(cfg["checkpoint_dir"]) / LAST


def _heart_net(cfg: Mapping[str, Any], localiser: list[dict[str, Any]], device: torch.device) -> dict[str, Any] | None:
    """The heart network's record (``diffatlas.heart_net``), trained on the localiser atlases with the
    ``heart_net`` settings (seeded by ``seed`` unless they name their own); on resume, the one in the last
    checkpoint when it was trained with the same settings. None with ``heart_net.steps=0``."""
    settings = HeartNetSettings(**{"seed": int(cfg["seed"]), **dict(cfg.get("heart_net") or {})})
    if settings.steps == 0:
        return None
    last = Path(cfg["checkpoint_dir"]) / LAST
    if cfg.get("resume", True) and last.is_file():
        stored = load_checkpoint(last).get("heart_net")
        if stored and HeartNetSettings(**dict(stored["settings"])) == settings:
            log.info("heart network kept from %s", last)
            return stored
    atlases = [LocaliserAtlas.from_record(record) for record in localiser]
    return HeartNet.train(atlases, settings, device).to_record()


def _validator(cfg: Mapping[str, Any], data: PreparedData, cases: list[str], diffusion: GaussianDiffusion,
               layout: ChannelLayout, clip: float, device: torch.device):
    plan = build_plan(cfg["validation_sampler"], diffusion.num_timesteps)
    loaded = [data.load_case(c) for c in cases]
    images = torch.from_numpy(np.stack([c.image for c in loaded])[:, None]).float().to(device)

    def validate(ema: torch.nn.Module, step: int) -> dict[str, float]:
        seg = DiffAtlasSegmenter(ema, diffusion, layout, plan, sdf_clip=clip, seed=0)
        labels = seg.segment(images, cases).cpu().numpy()
        dices = [np.nanmean([m["dice"] for m in evaluate_case(lab, c.label, data.structures, c.spacing_mm,
                                                               1.0).values()]) for lab, c in zip(labels, loaded)]
        return {"dice": float(np.mean(dices))}

    return validate
