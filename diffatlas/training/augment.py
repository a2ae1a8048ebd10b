"""Joint spatial and intensity augmentation of training batches, on whatever device the batch lives.

A batch is ``(B, C, *spatial)`` with 2 or 3 spatial dimensions. One random spatial transform per sample (an
affine map: rotation, scaling, translation, plus a smooth elastic displacement) moves every channel of that
sample together, so an image and its masks stay aligned. Continuous channels (the image, signed distance maps)
are resampled linearly; label channels (integer values) by nearest neighbour. Intensity changes (contrast and
brightness, gamma, a smooth multiplicative bias field, Gaussian noise) touch the image channels only.

Every draw comes from the ``torch.Generator`` passed in, so training stays exactly reproducible and
resumable. The transform is a backward map: output voxel ``p`` reads the input at ``A p + u(p)``, with
``A`` the affine matrix and ``u`` the elastic displacement, both in the normalised ``[-1, 1]`` coordinates of
``torch.nn.functional.grid_sample``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass
class AugmentSettings:
    """Ranges of the random transforms. A probability of 0 turns its part off.

    Attributes:
        spatial_prob: probability that a sample gets a spatial transform.
        rotate_deg: largest rotation about each axis, degrees (uniform in ``[-rotate_deg, rotate_deg]``).
        scale: range of the isotropic zoom factor (> 1 enlarges the anatomy).
        anisotropic_scale: largest extra per-axis zoom, as a fraction (0.1 = up to +-10 % per axis).
        translate: largest shift, as a fraction of the field of view along each axis.
        elastic_prob: probability that a spatially transformed sample also gets an elastic displacement.
        elastic_vox: standard deviation of the elastic displacement at its control points, in voxels.
        elastic_points: control points of the displacement along each axis (a coarse grid upsampled
            smoothly to the volume).
        intensity_prob: probability that a sample gets each of the intensity changes below.
        contrast: range of the contrast factor about the image mean.
        brightness: largest brightness shift, in the image's [-1, 1] units.
        gamma: range of the gamma exponent applied to the image mapped to [0, 1].
        bias: standard deviation of the log bias field at its control points (0.3: about +-30 %).
        noise_std: largest standard deviation of added Gaussian noise, in the image's units.
    """

    spatial_prob: float = 0.8
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    anisotropic_scale: float = 0.05
    translate: float = 0.08
    elastic_prob: float = 0.5
    elastic_vox: float = 1.5
    elastic_points: int = 4
    intensity_prob: float = 0.5
    contrast: tuple[float, float] = (0.75, 1.25)
    brightness: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.5)
    bias: float = 0.3
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        for name in ("spatial_prob", "elastic_prob", "intensity_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} must lie in [0, 1], got {value}")
        for name in ("scale", "contrast", "gamma"):
            low, high = (float(v) for v in getattr(self, name))
            if not 0 < low <= high:
                raise ValueError(f"augment.{name} must be a range 0 < low <= high, got {getattr(self, name)}")
            setattr(self, name, (low, high))
        for name in ("rotate_deg", "anisotropic_scale", "translate", "elastic_vox", "brightness", "bias",
                     "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.elastic_points < 2:
            raise ValueError(f"augment.elastic_points must be >= 2, got {self.elastic_points}")


def _uniform(generator: torch.Generator, shape: Sequence[int], low: float, high: float,
             device: torch.device) -> torch.Tensor:
    u = torch.rand(tuple(shape), generator=generator, device=generator.device, dtype=torch.float64)
    return (low + (high - low) * u).to(device)


def _normal(generator: torch.Generator, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)


def rotation_matrices(angles_rad: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from angles: ``(B, 1)`` -> ``(B, 2, 2)`` in 2D, ``(B, 3)`` (about each axis, applied
    in turn) -> ``(B, 3, 3)`` in 3D. Float64."""
    angles = angles_rad.double()
    c, s = angles.cos(), angles.sin()
    if angles.shape[1] == 1:
        return torch.stack([torch.stack([c[:, 0], -s[:, 0]], 1), torch.stack([s[:, 0], c[:, 0]], 1)], 1)
    mats = []
    for axis in range(3):
        i, j = (a for a in range(3) if a != axis)
        m = torch.eye(3, dtype=angles.dtype, device=angles.device).repeat(angles.shape[0], 1, 1)
        m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = c[:, axis], -s[:, axis], s[:, axis], c[:, axis]
        mats.append(m)
    return mats[0] @ mats[1] @ mats[2]


class JointAugment:
    """Random joint augmentation of ``(B, C, *spatial)`` batches; see the module docstring.

    Args:
        settings: the ranges (:class:`AugmentSettings`, or its keyword arguments as a mapping).
        image_channels: channels that hold images (intensity changes, linear resampling).
        label_channels: channels that hold integer labels (nearest-neighbour resampling); every other channel
            is resampled linearly (e.g. signed distance maps).
        image_range: the value range images are kept in after intensity changes.
    """

    def __init__(self, settings: AugmentSettings | dict | None = None, *, image_channels: Sequence[int] = (0,),
                 label_channels: Sequence[int] = (), image_range: tuple[float, float] = (-1.0, 1.0)):
        if settings is None:
            settings = AugmentSettings()
        elif not isinstance(settings, AugmentSettings):
            settings = AugmentSettings(**dict(settings))
        self.s = settings
        self.image_channels = tuple(int(c) for c in image_channels)
        self.label_channels = tuple(int(c) for c in label_channels)
        overlap = set(self.image_channels) & set(self.label_channels)
        if overlap:
            raise ValueError(f"channels {sorted(overlap)} cannot be both image and label channels")
        self.image_range = (float(image_range[0]), float(image_range[1]))

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The augmented batch (a new tensor; the input is not changed)."""
        if batch.ndim not in (4, 5):
            raise ValueError(f"expected a (B, C, *spatial) batch with 2 or 3 spatial dims, got {tuple(batch.shape)}")
        channels = batch.shape[1]
        bad = [c for c in (*self.image_channels, *self.label_channels) if not 0 <= c < channels]
        if bad:
            raise ValueError(f"augment channels {bad} do not exist in a batch of {channels} channels")
        out = self.spatial(batch, generator)
        return self.intensity(out, generator)

    def sample_grid(self, batch_size: int, spatial: Sequence[int], generator: torch.Generator,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling grids ``(B, *spatial, ndim)`` for ``grid_sample`` and which samples are transformed ``(B,)``."""
        ndim = len(spatial)
        s = self.s
        active = _uniform(generator, (batch_size,), 0, 1, device) < s.spatial_prob
        angles = _uniform(generator, (batch_size, 1 if ndim == 2 else 3), -1, 1, device) * math.radians(s.rotate_deg)
        zoom = _uniform(generator, (batch_size, 1), *s.scale, device)
        zoom = zoom * (1 + _uniform(generator, (batch_size, ndim), -1, 1, device) * s.anisotropic_scale)
        shift = _uniform(generator, (batch_size, ndim), -1, 1, device) * 2 * s.translate
        elastic_on = _uniform(generator, (batch_size,), 0, 1, device) < s.elastic_prob
        coarse = _normal(generator, (batch_size, ndim, *([s.elastic_points] * ndim)), device)
        # backward map: output p reads input R diag(1 / zoom) p + shift, so zoom > 1 enlarges the anatomy
        matrix = rotation_matrices(angles) @ torch.diag_embed(1.0 / zoom)
        eye = torch.eye(ndim, dtype=matrix.dtype, device=device).expand_as(matrix)
        matrix = torch.where(active.view(-1, 1, 1), matrix, eye)
        shift = torch.where(active.view(-1, 1), shift, torch.zeros_like(shift))
        theta = torch.cat([matrix, shift[..., None]], dim=2).float()
        grid = F.affine_grid(theta, [batch_size, 1, *spatial], align_corners=False)
        if s.elastic_vox > 0:
            # the coarse field, in voxels per axis, upsampled smoothly and turned into normalised units;
            # grid's last dimension is ordered (x, y, z) = reversed array axes
            size = torch.tensor(list(spatial)[::-1], dtype=torch.float32, device=device)
            mode = "bilinear" if ndim == 2 else "trilinear"
            field = F.interpolate(coarse.float() * s.elastic_vox, size=tuple(spatial), mode=mode, align_corners=True)
            field = field.movedim(1, -1) * (2.0 / size)
            on = (elastic_on & active).view(-1, *([1] * (ndim + 1)))
            grid = grid + torch.where(on, field, torch.zeros_like(field))
        return grid, active

    def spatial(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Move every channel of each sample with that sample's random transform."""
        if self.s.spatial_prob == 0:
            return batch.clone()
        grid, _ = self.sample_grid(batch.shape[0], batch.shape[2:], generator, batch.device)
        return warp(batch, grid, self.label_channels)

    def intensity(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Contrast and brightness, gamma, bias field and noise on the image channels (each with
        ``intensity_prob``); images are clamped to ``image_range`` afterwards."""
        s = self.s
        out = batch.clone()
        if not self.image_channels or s.intensity_prob == 0:
            return out
        b, spatial = batch.shape[0], batch.shape[2:]
        ndim = len(spatial)
        device = batch.device
        view = (b, 1, *([1] * ndim))
        low, high = self.image_range

        def chosen() -> torch.Tensor:
            return (_uniform(generator, (b,), 0, 1, device) < s.intensity_prob).view(view)

        use_contrast, contrast = chosen(), _uniform(generator, (b,), *s.contrast, device).view(view).float()
        shift = (_uniform(generator, (b,), -1, 1, device) * s.brightness).view(view).float()
        use_gamma, gamma = chosen(), _uniform(generator, (b,), *s.gamma, device).view(view).float()
        use_bias = chosen()
        log_bias = _normal(generator, (b, 1, *([3] * ndim)), device) * s.bias
        use_noise, sigma = chosen(), (_uniform(generator, (b,), 0, 1, device) * s.noise_std).view(view).float()
        noise = _normal(generator, (b, len(self.image_channels), *spatial), device)
        mode = "bilinear" if ndim == 2 else "trilinear"
        bias = F.interpolate(log_bias, size=tuple(spatial), mode=mode, align_corners=True).exp()
        image = out[:, list(self.image_channels)].float()
        dims = tuple(range(2, image.ndim))
        mean = image.mean(dim=dims, keepdim=True)
        image = torch.where(use_contrast, (image - mean) * contrast + mean + shift, image)
        unit = ((image - low) / (high - low)).clamp(0, 1)
        unit = torch.where(use_gamma, unit.pow(gamma), unit)
        unit = torch.where(use_bias, unit * bias, unit)
        image = low + (high - low) * unit
        image = torch.where(use_noise, image + sigma * noise, image)
        out[:, list(self.image_channels)] = image.clamp(low, high).to(out.dtype)
        return out


def warp(batch: torch.Tensor, grid: torch.Tensor, label_channels: Sequence[int] = ()) -> torch.Tensor:
    """Resample ``batch`` ``(B, C, *spatial)`` at ``grid`` ``(B, *spatial, ndim)``: label channels by nearest
    neighbour, the others linearly; values outside the volume repeat the border."""
    labels = list(label_channels)
    others = [c for c in range(batch.shape[1]) if c not in labels]
    out = torch.empty_like(batch)
    kwargs = dict(padding_mode="border", align_corners=False)
    if others:
        out[:, others] = F.grid_sample(batch[:, others].float(), grid, mode="bilinear", **kwargs).to(batch.dtype)
    if labels:
        out[:, labels] = F.grid_sample(batch[:, labels].float(), grid, mode="nearest", **kwargs).to(batch.dtype)
    return out


def make_augment(config: dict | None, *, image_channels: Sequence[int] = (0,),
                 label_channels: Sequence[int] = ()) -> JointAugment | None:
    """The augmentation of an ``augment`` config (``configs/augment/``): ``None`` when it is absent or has
    ``enabled: false``; otherwise :class:`JointAugment` with the other keys as :class:`AugmentSettings`."""
    cfg = dict(config or {})
    if not cfg.pop("enabled", False):
        return None
    return JointAugment(AugmentSettings(**cfg), image_channels=image_channels, label_channels=label_channels)


__all__ = ["AugmentSettings", "JointAugment", "rotation_matrices", "warp", "make_augment"]
