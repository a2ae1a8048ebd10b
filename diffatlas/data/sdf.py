"""Signed distance maps for label volumes, in the paper's convention.

Structure ``k`` (label value ``k``, ``k = 1 .. K``) becomes one channel

    sdf_k = clip((d_out - d_in) / scale_vox, -clip, clip)

where, with distances in voxels from ``scipy.ndimage.distance_transform_edt``,

* ``d_in``  is, for a voxel inside the structure, the distance to the nearest voxel outside it (0 outside);
* ``d_out`` is, for a voxel outside the structure, the distance to the nearest voxel inside it (0 inside).

So the map is negative inside and positive outside and never zero: the innermost layer of the
structure is ``-1 / scale_vox`` and the first layer outside it is ``+1 / scale_vox``. An empty
structure is ``+clip`` everywhere (a structure filling the whole grid is ``-clip`` everywhere).

The scale ties SDF units to the grid size: ``default_sdf_scale(shape) = max(shape) / 2`` (32 for the
paper's 64^3 crops), so a clip of 0.2 keeps a band of ``0.2 * max(shape) / 2`` voxels on each side of
every surface, the same fraction of the crop at any resolution.

Decoding gives a voxel the label of the structure whose SDF is most negative, or background when no
SDF is negative; ties go to the lowest structure index. ``decode_sdf(encode_sdf(label))`` returns
``label`` exactly, because every voxel is negative in exactly one channel.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage


def default_sdf_scale(shape: Sequence[int]) -> float:
    """The paper's SDF scale for a grid: ``max(shape) / 2`` voxels (32 for 64^3)."""
    if len(shape) == 0 or min(shape) < 1:
        raise ValueError(f"shape must be a non-empty sequence of positive sizes, got {tuple(shape)}")
    return max(shape) / 2.0


def _as_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.dtype == bool:
        return label.astype(np.uint8)
    if np.issubdtype(label.dtype, np.integer):
        return label
    if np.issubdtype(label.dtype, np.floating) and np.all(label == np.round(label)):
        return label.astype(np.int64)
    raise ValueError(f"label must hold integer values, got dtype {label.dtype} with non-integer values")


def encode_sdf(
    label: np.ndarray,
    num_structures: int,
    scale_vox: float,
    clip: float,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Encode a label map as one clipped, scaled signed distance map per structure.

    Args:
        label: integer label map ``(X, Y, Z)`` (2D ``(X, Y)`` also works), 0 background, 1..K structures.
        num_structures: K.
        scale_vox: divisor of the distances, in voxels (see ``default_sdf_scale``).
        clip: the maps are clipped to ``[-clip, clip]``.
        spacing: optional voxel spacing in mm per axis. When given, distances are measured in mm and
            expressed in units of the smallest spacing, so an isotropic grid gives the same result as
            ``spacing=None``.

    Returns:
        float32 array ``(K, X, Y, Z)``, negative inside each structure.
    """
    label = _as_label(label)
    if label.ndim not in (2, 3):
        raise ValueError(f"label must be 2D or 3D, got shape {label.shape}")
    if num_structures < 1:
        raise ValueError(f"num_structures must be >= 1, got {num_structures}")
    if scale_vox <= 0 or clip <= 0:
        raise ValueError(f"scale_vox and clip must be positive, got scale_vox={scale_vox}, clip={clip}")
    if label.size and (label.min() < 0 or label.max() > num_structures):
        raise ValueError(
            f"label values must lie in 0..{num_structures}, found range {label.min()}..{label.max()}"
        )
    sampling = None
    unit = 1.0
    if spacing is not None:
        if len(spacing) != label.ndim or min(spacing) <= 0:
            raise ValueError(f"spacing must give {label.ndim} positive values, got {tuple(spacing)}")
        sampling = tuple(float(s) for s in spacing)
        unit = min(sampling)

    sdf = np.empty((num_structures, *label.shape), dtype=np.float32)
    for k in range(1, num_structures + 1):
        inside = label == k
        if not inside.any():
            sdf[k - 1] = clip
        elif inside.all():
            sdf[k - 1] = -clip
        else:
            d_in = ndimage.distance_transform_edt(inside, sampling=sampling)
            d_out = ndimage.distance_transform_edt(~inside, sampling=sampling)
            sdf[k - 1] = np.clip((d_out - d_in) / (unit * scale_vox), -clip, clip)
    return sdf


def decode_sdf(sdf: np.ndarray) -> np.ndarray:
    """Decode per-structure SDFs to a label map (most negative wins, ties to the lowest index).

    Args:
        sdf: ``(K, *spatial)`` array, e.g. ``(K, X, Y, Z)``.

    Returns:
        uint8 label map ``(*spatial)``: ``argmin_k sdf + 1`` where ``min_k sdf < 0``, else 0.
    """
    sdf = np.asarray(sdf)
    if sdf.ndim < 2:
        raise ValueError(f"sdf must have shape (K, *spatial), got {sdf.shape}")
    if not 1 <= sdf.shape[0] <= 255:
        raise ValueError(f"sdf must have 1..255 structure channels for a uint8 label, got {sdf.shape[0]}")
    winner = np.argmin(sdf, axis=0)
    inside = np.min(sdf, axis=0) < 0
    return np.where(inside, winner + 1, 0).astype(np.uint8)


def decode_sdf_torch(sdf: torch.Tensor) -> torch.Tensor:
    """Batched torch version of ``decode_sdf``, on the input's device.

    Args:
        sdf: ``(B, K, *spatial)`` tensor.

    Returns:
        int64 label tensor ``(B, *spatial)`` on ``sdf.device``.
    """
    if sdf.ndim < 3:
        raise ValueError(f"sdf must have shape (B, K, *spatial), got {tuple(sdf.shape)}")
    values, winner = torch.min(sdf, dim=1)
    return torch.where(values < 0, winner + 1, torch.zeros_like(winner))
