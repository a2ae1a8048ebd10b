"""Segmentation metrics: Dice, normalised surface Dice (NSD) and the 95th-percentile Hausdorff distance.

All functions are pure numpy: they take 3D masks of shape ``(X, Y, Z)`` and return plain floats.
Surface metrics use the ``surface_distance`` package (DeepMind) with the real voxel spacing in mm,
so a tolerance of 1 mm means 1 mm, not one voxel.

Empty-mask rule (followed by every function here and by the reports built on them):

* both masks empty: Dice, NSD and HD95 are all NaN. The structure is absent from the case, so there
  is nothing to score; averages use ``nanmean`` and skip it.
* exactly one mask empty: Dice 0 and NSD 0 (a missed or hallucinated structure is a full failure),
  HD95 NaN (a distance to an empty surface is undefined); reports count these as ``hd95_undefined``.

The empty cases are decided here before the library is called: ``surface_distance`` 0.1 uses
``np.Inf``, which NumPy 2 removed, on exactly those inputs.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import numpy as np
import surface_distance

logger = logging.getLogger(__name__)

HD_PERCENTILE = 95.0
_NUM_SPATIAL_DIMS = 3
# surface_distance 0.1 reaches correlate / distance_transform_edt through the deprecated
# scipy.ndimage.filters / .morphology namespaces; SciPy warns on every call.
_SCIPY_NAMESPACE_WARNING = r"Please import `\w+` from the `scipy\.ndimage` namespace"


def _check_masks(pred: np.ndarray, ref: np.ndarray, *, spatial: bool) -> None:
    """Raise ValueError unless ``pred`` and ``ref`` are bool arrays of one shape (3D if ``spatial``)."""
    for name, mask in (("pred", pred), ("ref", ref)):
        if not isinstance(mask, np.ndarray):
            raise ValueError(f"{name} must be a numpy array, got {type(mask).__name__}")
        if mask.dtype != np.bool_:
            raise ValueError(
                f"{name} must be a bool mask, got dtype {mask.dtype}; pass e.g. `label == k`"
            )
        if spatial and mask.ndim != _NUM_SPATIAL_DIMS:
            raise ValueError(f"{name} must be a 3D mask (X, Y, Z), got shape {mask.shape}")
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref shapes differ: {pred.shape} vs {ref.shape}")


def _check_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    """Return ``spacing_mm`` as three floats; raise ValueError unless three finite positive values."""
    values = tuple(float(s) for s in spacing_mm)
    if len(values) != _NUM_SPATIAL_DIMS:
        raise ValueError(f"spacing_mm must have 3 values (one per axis), got {len(values)}: {values}")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing_mm values must be finite and positive, got {values}")
    x_mm, y_mm, z_mm = values
    return x_mm, y_mm, z_mm


def _check_tolerance(tolerance_mm: float) -> float:
    """Return ``tolerance_mm`` as a float; raise ValueError unless finite and positive."""
    value = float(tolerance_mm)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"tolerance_mm must be finite and positive, got {tolerance_mm}")
    return value


def _surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing_mm: tuple[float, float, float]
) -> dict[str, np.ndarray] | None:
    """Surface distances from ``surface_distance``, or None when either mask is empty.

    The None return is the guard of the empty-mask rule: the library must not see an empty mask.
    """
    if not (pred.any() and ref.any()):
        return None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SCIPY_NAMESPACE_WARNING, category=DeprecationWarning)
        return surface_distance.compute_surface_distances(ref, pred, spacing_mm)


def _nsd_from_distances(
    distances: dict[str, np.ndarray] | None, pred: np.ndarray, ref: np.ndarray, tolerance_mm: float
) -> float:
    """NSD from precomputed distances, applying the empty-mask rule when they are None."""
    if distances is None:
        return math.nan if not (pred.any() or ref.any()) else 0.0
    return float(surface_distance.compute_surface_dice_at_tolerance(distances, tolerance_mm))


def _hd95_from_distances(distances: dict[str, np.ndarray] | None) -> float:
    """HD95 in mm from precomputed distances; NaN when either mask is empty (no distances)."""
    if distances is None:
        return math.nan
    return float(surface_distance.compute_robust_hausdorff(distances, HD_PERCENTILE))


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Volumetric Dice ``2|P & R| / (|P| + |R|)`` of two bool masks of equal shape.

    Returns NaN when both masks are empty and 0 when exactly one is (see the module docstring).
    """
    _check_masks(pred, ref, spatial=False)
    total = np.count_nonzero(pred) + np.count_nonzero(ref)
    if total == 0:
        return math.nan
    return 2.0 * np.count_nonzero(pred & ref) / total


def nsd(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    tolerance_mm: float,
) -> float:
    """Normalised surface Dice of two bool ``(X, Y, Z)`` masks at ``tolerance_mm``, in [0, 1].

    ``spacing_mm`` is the voxel size along (X, Y, Z). The fraction of both surfaces (by area) lying
    within ``tolerance_mm`` of the other surface. Empty masks follow the module's empty-mask rule.
    """
    _check_masks(pred, ref, spatial=True)
    spacing = _check_spacing(spacing_mm)
    tolerance = _check_tolerance(tolerance_mm)
    return _nsd_from_distances(_surface_distances(pred, ref, spacing), pred, ref, tolerance)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm of two bool ``(X, Y, Z)`` masks.

    The larger of the two directed 95th percentiles (surface-area weighted). NaN when either mask
    is empty (module's empty-mask rule).
    """
    _check_masks(pred, ref, spatial=True)
    spacing = _check_spacing(spacing_mm)
    return _hd95_from_distances(_surface_distances(pred, ref, spacing))


def _check_labels(name: str, label: np.ndarray, num_structures: int) -> None:
    """Raise ValueError unless ``label`` is a 3D integer map with values in ``0 .. num_structures``."""
    if not isinstance(label, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(label).__name__}")
    if label.ndim != _NUM_SPATIAL_DIMS:
        raise ValueError(f"{name} must be a 3D label map (X, Y, Z), got shape {label.shape}")
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {label.dtype}")
    if label.size and (label.min() < 0 or label.max() > num_structures):
        raise ValueError(
            f"{name} values must lie in 0..{num_structures} (0 = background), "
            f"got range {label.min()}..{label.max()}"
        )


def evaluate_case(
    pred_label: np.ndarray,
    ref_label: np.ndarray,
    structures: Sequence[str],
    spacing_mm: Sequence[float],
    tolerance_mm: float,
) -> dict[str, dict[str, float]]:
    """Dice, NSD and HD95 of every structure of one case.

    Args:
        pred_label: predicted label map, integer ``(X, Y, Z)``; label ``k`` is ``structures[k - 1]``.
        ref_label: reference label map, same shape and convention.
        structures: structure names in label order (label 0 is background).
        spacing_mm: voxel size along (X, Y, Z) in mm.
        tolerance_mm: NSD tolerance in mm.

    Returns:
        ``{name: {"dice": float, "nsd": float, "hd95": float}}`` in ``structures`` order; Dice and NSD
        are fractions in [0, 1], HD95 is in mm; NaN per the module's empty-mask rule.
    """
    names = list(structures)
    if not names:
        raise ValueError("structures must name at least one structure")
    if len(set(names)) != len(names):
        raise ValueError(f"structure names must be unique, got {names}")
    _check_labels("pred_label", pred_label, len(names))
    _check_labels("ref_label", ref_label, len(names))
    if pred_label.shape != ref_label.shape:
        raise ValueError(
            f"pred_label and ref_label shapes differ: {pred_label.shape} vs {ref_label.shape}"
        )
    spacing = _check_spacing(spacing_mm)
    tolerance = _check_tolerance(tolerance_mm)

    scores: dict[str, dict[str, float]] = {}
    for label, name in enumerate(names, start=1):
        pred = pred_label == label
        ref = ref_label == label
        distances = _surface_distances(pred, ref, spacing)
        scores[name] = {
            "dice": dice(pred, ref),
            "nsd": _nsd_from_distances(distances, pred, ref, tolerance),
            "hd95": _hd95_from_distances(distances),
        }
        logger.debug("label %d (%s): %s", label, name, scores[name])
    return scores
