"""Intensity normalisation of raw scans to [-1, 1].

CT is windowed: Hounsfield units are clipped to a fixed window and mapped linearly to [-1, 1]
(the paper's MM-WHS window is [-250, 800] HU). MR has no absolute scale, so a fixed clamp is fragile;
it is mapped by percentiles instead: the low percentile goes to -1, the high one to +1, then clipped.
``intensity_spec`` describes the chosen normalisation for a prepared dataset's ``dataset.json``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Modality = Literal["ct", "mr"]
MODALITIES: tuple[str, ...] = ("ct", "mr")

DEFAULT_CT_WINDOW = (-250.0, 800.0)
DEFAULT_MR_PERCENTILES = (0.5, 99.5)


def check_modality(modality: str) -> None:
    """Raise a ValueError naming the allowed values unless ``modality`` is one of them."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")


def normalize_intensity(
    image: np.ndarray,
    modality: Modality,
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
    mr_percentiles: tuple[float, float] = DEFAULT_MR_PERCENTILES,
) -> np.ndarray:
    """Map a raw scan to float32 in [-1, 1].

    Args:
        image: raw intensities ``(X, Y, Z)`` (HU for CT, scanner units for MR).
        modality: ``"ct"`` (window ``ct_window``) or ``"mr"`` (percentiles ``mr_percentiles`` of the
            whole volume).

    Returns:
        float32 array of the same shape with values in [-1, 1].
    """
    check_modality(modality)
    image = np.asarray(image, dtype=np.float32)
    if modality == "ct":
        low, high = (float(v) for v in ct_window)
        if not low < high:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {tuple(ct_window)}")
    else:
        p_low, p_high = (float(v) for v in mr_percentiles)
        if not 0.0 <= p_low < p_high <= 100.0:
            raise ValueError(f"mr_percentiles must satisfy 0 <= low < high <= 100, got {tuple(mr_percentiles)}")
        low, high = (float(v) for v in np.percentile(image, [p_low, p_high]))
        if not low < high:
            raise ValueError(f"MR image is constant between percentiles {p_low} and {p_high}: cannot normalise")
    scaled = 2.0 * (image - low) / (high - low) - 1.0
    return np.clip(scaled, -1.0, 1.0).astype(np.float32)


def intensity_spec(
    modality: Modality,
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
    mr_percentiles: tuple[float, float] = DEFAULT_MR_PERCENTILES,
) -> dict[str, Any]:
    """The ``"intensity"`` entry of ``dataset.json`` for ``normalize_intensity`` with these arguments."""
    check_modality(modality)
    if modality == "ct":
        return {"method": "ct_window", "window": [float(v) for v in ct_window]}
    return {"method": "percentile", "percentiles": [float(v) for v in mr_percentiles]}
