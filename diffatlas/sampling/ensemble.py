"""Fusing an ensemble of sampled SDFs into one label map and a per-voxel uncertainty map.

Members are stacked as ``(N, B, K, *spatial)``: N samples of a batch of B cases with K structure SDFs each.
"""

from __future__ import annotations

from enum import Enum

import torch

from diffatlas.data.sdf import decode_sdf_torch
from diffatlas.options import parse_option


class Fusion(str, Enum):
    MEAN_SDF = "mean_sdf"  # decode the voxel-wise mean of the members' SDFs
    VOTE = "vote"  # decode every member, then the most frequent label (ties to the lowest label)
    SELECT = "select"  # keep the member whose generated image agrees best with the scan (needs scores)


class Uncertainty(str, Enum):
    SDF_STD = "sdf_std"  # standard deviation of the SDFs across members, the largest over structures
    ENTROPY = "entropy"  # entropy (nats) of the members' decoded labels


def _check_members(sdfs: torch.Tensor) -> None:
    if sdfs.ndim < 4:
        raise ValueError(f"expected member SDFs shaped (N, B, K, *spatial), got {tuple(sdfs.shape)}")


def _label_counts(sdfs: torch.Tensor) -> torch.Tensor:
    """``(N, B, K, *spatial)`` -> votes per label ``(B, K + 1, *spatial)`` (label 0 is background)."""
    num_labels = sdfs.shape[2] + 1
    labels = decode_sdf_torch(sdfs.flatten(0, 1)).view(sdfs.shape[0], sdfs.shape[1], *sdfs.shape[3:])
    one_hot = torch.nn.functional.one_hot(labels, num_labels).movedim(-1, 2)
    return one_hot.sum(dim=0)


def _shifted_moments(sdfs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Member mean and population variance ``(B, K, *spatial)``, computed about the first member
    (``d_n = x_n - x_0``: mean ``x_0 + E[d]``, variance ``E[d^2] - E[d]^2``), so identical members give
    their own value and a variance of exactly 0."""
    d = sdfs.float() - sdfs[0].float()
    mean_d = d.mean(dim=0)
    return sdfs[0].float() + mean_d, (d.pow(2).mean(dim=0) - mean_d.pow(2)).clamp(min=0)


def fuse(sdfs: torch.Tensor, fusion: str = Fusion.MEAN_SDF.value, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Fused label maps ``(B, *spatial)`` (int64) from member SDFs ``(N, B, K, *spatial)``.

    ``select`` needs ``scores`` ``(N, B)`` (higher is better) and decodes, per case, the best-scoring member
    (ties to the lowest member index).
    """
    kind = parse_option(Fusion, fusion, "fusion")
    _check_members(sdfs)
    if kind is Fusion.SELECT:
        if scores is None or tuple(scores.shape) != tuple(sdfs.shape[:2]):
            raise ValueError(f"fusion 'select' needs member scores shaped (N, B) = {tuple(sdfs.shape[:2])}")
        best = scores.argmax(dim=0).to(sdfs.device)
        return decode_sdf_torch(sdfs[best, torch.arange(sdfs.shape[1], device=sdfs.device)])
    if kind is Fusion.MEAN_SDF:
        return decode_sdf_torch(_shifted_moments(sdfs)[0])
    return _label_counts(sdfs).argmax(dim=1)


def image_agreement(estimate: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Global normalised cross-correlation ``(B,)`` of a generated image ``(B, 1, *spatial)`` with the scan."""
    a = estimate.flatten(1).double()
    b = image.flatten(1).double().to(a.device)
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return ((a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-12)).float()


def uncertainty_map(sdfs: torch.Tensor, uncertainty: str = Uncertainty.SDF_STD.value) -> torch.Tensor:
    """Per-voxel uncertainty ``(B, *spatial)`` (float32) from member SDFs ``(N, B, K, *spatial)``.

    ``sdf_std``: ``max_k std_n sdf[n, b, k]`` (population standard deviation over the N members).
    ``entropy``: ``-sum_l p_l log p_l`` with ``p_l`` the fraction of members voting label ``l``.
    Both are exactly 0 where all members agree.
    """
    kind = parse_option(Uncertainty, uncertainty, "uncertainty")
    _check_members(sdfs)
    if kind is Uncertainty.SDF_STD:
        return _shifted_moments(sdfs)[1].sqrt().amax(dim=1)
    p = _label_counts(sdfs).float() / sdfs.shape[0]
    return (-p * torch.log(p.clamp(min=1e-12))).sum(dim=1)
