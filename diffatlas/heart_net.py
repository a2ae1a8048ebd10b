"""The localiser's second stage: a small U-Net that outlines the heart in the region the registration found.

Registration places the heart well (median 9.5 mm from the label crop's centre on ACDC) but sizes it poorly:
an affine fit of a whole atlas scan spends its scale on the chest, not on the heart. A network trained on the
localiser atlases' heart regions (``LocaliserAtlas.local``: the label's box plus ``LOCAL_MARGIN_MM``, on a
``ATLAS_SHAPE`` cube grid) with wide random shifts and zooms learns to outline the heart itself. At test time it
runs on the same kind of region around the registered heart (and around another atlas's, when that fits nearly
as well: ``localise.locate``), and the box of its largest component where it is surest is the crop. It is trained
beside the denoiser, from the same training cases (``python -m diffatlas.train``), and kept in the checkpoint under
``heart_net``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffatlas.localise import AtlasLevel, LocaliserAtlas, _level, _on_scan, local_grid
from diffatlas.nets.unet import UNet
from diffatlas.postprocess import largest_component
from diffatlas.training.augment import AugmentSettings, JointAugment

log = logging.getLogger(__name__)

# The heart region at test time is off by up to ~25 mm and ~35 % in size (the registration's errors), so the
# network sees shifts of 15 % of the region (about 25 mm) and zooms from 0.7 to 1.4.
AUGMENT = AugmentSettings(spatial_prob=1.0, rotate_deg=15.0, scale=(0.7, 1.4), anisotropic_scale=0.05,
                          translate=0.15, elastic_prob=0.5, elastic_vox=1.5)


@dataclass(frozen=True)
class HeartNetSettings:
    """How the heart network is built and trained.

    Attributes:
        steps: optimiser steps (0: no network; the registration's box is used alone).
        batch_size: regions per step, drawn from the atlases with replacement.
        lr: AdamW learning rate, decayed to 0 on a cosine.
        base_channels: width of the U-Net's first level (four levels, x1, x2, x4, x8).
        seed: seeds the initial weights, the draws and the augmentation.
    """

    steps: int = 300
    batch_size: int = 4
    lr: float = 2e-3
    base_channels: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "base_channels"):
            if getattr(self, name) < (0 if name == "steps" else 1):
                raise ValueError(f"heart_net.{name} must be >= {0 if name == 'steps' else 1}, got "
                                 f"{getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"heart_net.lr must be > 0, got {self.lr}")


def scale_region(image: np.ndarray) -> np.ndarray:
    """A region's intensities mapped to [-1, 1] by their 1st and 99th percentiles where the region holds scan
    data (``AtlasLevel.inside``); -1 outside it. Per region, so that any scanner's units serve."""
    image = np.asarray(image, dtype=np.float32)
    inside = image > image.min()
    if not inside.any():
        return np.full(image.shape, -1.0, dtype=np.float32)
    low, high = np.percentile(image[inside], [1.0, 99.0])
    out = np.clip((image - low) / max(float(high - low), 1e-6), 0.0, 1.0) * 2.0 - 1.0
    out[~inside] = -1.0
    return out.astype(np.float32)


def _network(base_channels: int) -> UNet:
    return UNet(in_channels=1, out_channels=1, base_channels=base_channels, channel_mults=(1, 2, 4, 8),
                time_conditioned=False, norm_groups=min(4, base_channels))


def _batch(levels: Sequence[AtlasLevel]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.stack([scale_region(level.image), level.mask.astype(np.float32)]))
                        for level in levels])


class HeartNet:
    """The trained network and the settings it was built with."""

    def __init__(self, net: UNet, settings: HeartNetSettings, shape: Sequence[int]):
        self.net = net.eval()
        self.settings = settings
        self.shape = tuple(int(n) for n in shape)

    @classmethod
    def train(cls, atlases: Sequence[LocaliserAtlas], settings: HeartNetSettings,
              device: torch.device | str = "cpu") -> "HeartNet":
        """Fit a network to outline the heart in the atlases' heart regions, with ``AUGMENT``."""
        if not atlases:
            raise ValueError("the heart network needs at least one localiser atlas to learn from")
        device = torch.device(device)
        torch.manual_seed(settings.seed)
        net = _network(settings.base_channels).to(device)
        shapes = {atlas.local.grid.size for atlas in atlases}
        if len(shapes) != 1:
            raise ValueError(f"the atlases' heart regions differ in shape ({sorted(shapes)}); they must share one grid")
        data = _batch([atlas.local for atlas in atlases]).to(device)
        augment = JointAugment(AUGMENT, image_channels=(0,), label_channels=(1,))
        generator = torch.Generator(device=device).manual_seed(settings.seed)
        optimiser = torch.optim.AdamW(net.parameters(), lr=settings.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: 0.5 * (1.0 + np.cos(np.pi * step / max(settings.steps, 1))))
        net.train()
        loss = torch.tensor(float("nan"))
        for _ in tqdm(range(settings.steps), desc="heart net", disable=None):
            pick = torch.randint(len(atlases), (settings.batch_size,), generator=generator, device=device)
            batch = augment(data[pick], generator)
            loss = heart_loss(net(batch[:, :1]), batch[:, 1:])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
        log.info("heart network trained on %d atlas regions, %d steps (last loss %.3f)", len(atlases),
                 settings.steps, loss.item())
        return cls(net.cpu(), settings, atlases[0].local.grid.size)

    def probability(self, region: np.ndarray) -> np.ndarray:
        """The heart probability over a region (raw intensities on a grid like the training regions')."""
        device = next(self.net.parameters()).device
        with torch.no_grad():
            x = torch.from_numpy(scale_region(region))[None, None].to(device)
            return torch.sigmoid(self.net(x))[0, 0].float().cpu().numpy()

    def outline(self, oriented: sitk.Image, heart: np.ndarray) -> tuple[np.ndarray, float] | None:
        """The heart outlined in the region around ``heart`` (a mask on ``oriented``, e.g. the registration's): the
        largest component of probability > 0.5, as a mask on ``oriented``'s voxels, and the network's confidence in
        it (its mean probability there). None when it finds none."""
        grid = local_grid(oriented, heart, self.shape)
        probability = self.probability(_level(oriented, grid).image)
        above = probability > 0.5
        if not above.any():
            return None
        found = largest_component(above)
        on_scan = _on_scan(oriented, found, grid)
        return None if on_scan is None else (on_scan, float(probability[found].mean()))

    def to_record(self) -> dict[str, Any]:
        """Weights and settings, for a checkpoint."""
        return {"settings": asdict(self.settings), "shape": list(self.shape),
                "state": {k: v.cpu() for k, v in self.net.state_dict().items()}}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "HeartNet":
        settings = HeartNetSettings(**dict(record["settings"]))
        net = _network(settings.base_channels)
        net.load_state_dict(record["state"])
        return cls(net, settings, record["shape"])


def heart_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus the soft Dice loss over the batch (the heart is a small part of the region)."""
    probability = torch.sigmoid(logits)
    overlap = (probability * target).sum()
    dice = 1.0 - (2.0 * overlap + 1.0) / (probability.sum() + target.sum() + 1.0)
    return F.binary_cross_entropy_with_logits(logits, target) + dice


__all__ = ["AUGMENT", "HeartNet", "HeartNetSettings", "heart_loss", "scale_region"]
