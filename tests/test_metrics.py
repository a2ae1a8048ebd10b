"""Hand-checkable cases for diffatlas.evaluation.metrics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from diffatlas.evaluation.metrics import dice, evaluate_case, hd95, nsd

SHAPE = (10, 10, 10)
ISOTROPIC_MM = (1.0, 1.0, 1.0)
# axis 0 is fine (0.5 mm), axis 2 is coarse (3 mm), as in thick-slice MRI
ANISOTROPIC_MM = (0.5, 1.0, 3.0)


def cube(start: tuple[int, int, int] = (3, 3, 3), size: int = 4) -> np.ndarray:
    """A bool ``size``^3 cube in a 10^3 volume with its low corner at ``start``."""
    mask = np.zeros(SHAPE, dtype=bool)
    x, y, z = start
    mask[x : x + size, y : y + size, z : z + size] = True
    return mask


def test_identical_masks_score_perfectly() -> None:
    mask = cube()
    assert dice(mask, mask) == 1.0
    assert nsd(mask, mask, ANISOTROPIC_MM, tolerance_mm=0.1) == 1.0
    assert hd95(mask, mask, ANISOTROPIC_MM) == 0.0


def test_disjoint_masks() -> None:
    pred, ref = cube((0, 0, 0), 3), cube((6, 6, 6), 3)
    assert dice(pred, ref) == 0.0
    assert nsd(pred, ref, ISOTROPIC_MM, tolerance_mm=1.0) == 0.0


def test_dice_of_cube_shifted_by_one_voxel() -> None:
    # 4^3 cube vs the same cube shifted by one voxel: overlap 3*4*4 = 48, Dice = 2*48 / (64 + 64)
    assert dice(cube((3, 3, 3)), cube((4, 3, 3))) == pytest.approx(0.75)


def test_nsd_uses_real_anisotropic_spacing() -> None:
    ref = cube((3, 3, 3))
    shifted_coarse = cube((3, 3, 4))  # one voxel along the 3 mm axis
    shifted_fine = cube((4, 3, 3))  # one voxel along the 0.5 mm axis
    assert nsd(shifted_coarse, ref, ANISOTROPIC_MM, tolerance_mm=3.5) == pytest.approx(1.0)
    assert nsd(shifted_coarse, ref, ANISOTROPIC_MM, tolerance_mm=1.0) < 0.95
    assert nsd(shifted_fine, ref, ANISOTROPIC_MM, tolerance_mm=1.0) == pytest.approx(1.0)


def test_hd95_of_one_voxel_shift_is_the_axis_spacing() -> None:
    ref = cube((3, 3, 3))
    assert hd95(cube((3, 3, 4)), ref, ANISOTROPIC_MM) == pytest.approx(3.0)
    assert hd95(cube((4, 3, 3)), ref, ANISOTROPIC_MM) == pytest.approx(0.5)


def test_library_calls_emit_no_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nsd(cube((3, 3, 4)), cube(), ANISOTROPIC_MM, tolerance_mm=1.0)
        hd95(cube((3, 3, 4)), cube(), ANISOTROPIC_MM)


def test_both_masks_empty_gives_nan_everywhere() -> None:
    empty = np.zeros(SHAPE, dtype=bool)
    assert math.isnan(dice(empty, empty))
    assert math.isnan(nsd(empty, empty, ISOTROPIC_MM, tolerance_mm=1.0))
    assert math.isnan(hd95(empty, empty, ISOTROPIC_MM))


@pytest.mark.parametrize("empty_side", ["pred", "ref"])
def test_one_mask_empty_gives_zero_and_undefined_hd95(empty_side: str) -> None:
    empty, full = np.zeros(SHAPE, dtype=bool), cube()
    pred, ref = (empty, full) if empty_side == "pred" else (full, empty)
    assert dice(pred, ref) == 0.0
    assert nsd(pred, ref, ISOTROPIC_MM, tolerance_mm=1.0) == 0.0
    assert math.isnan(hd95(pred, ref, ISOTROPIC_MM))


def test_evaluate_case_maps_labels_to_structures() -> None:
    ref = np.zeros(SHAPE, dtype=np.uint8)
    ref[cube((0, 0, 0), 4)] = 1
    ref[cube((5, 5, 5), 4)] = 2
    pred = ref.copy()
    pred[cube((5, 5, 5), 4)] = 0
    pred[cube((5, 5, 6), 4)] = 2  # label 2 shifted one voxel along the 3 mm axis
    scores = evaluate_case(pred, ref, ["Myo", "LV", "LA"], ANISOTROPIC_MM, tolerance_mm=1.0)
    assert list(scores) == ["Myo", "LV", "LA"]
    assert scores["Myo"] == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}
    assert scores["LV"]["dice"] == pytest.approx(0.75)
    assert scores["LV"]["hd95"] == pytest.approx(3.0)
    assert scores["LV"]["nsd"] < 0.95
    assert all(math.isnan(value) for value in scores["LA"].values())  # absent structure


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dice(cube(), np.zeros((10, 10, 9), dtype=bool)), "shapes differ"),
        (lambda: dice(cube().astype(np.uint8), cube()), "bool mask"),
        (lambda: nsd(cube()[0], cube()[0], ISOTROPIC_MM, 1.0), "3D mask"),
        (lambda: nsd(cube(), cube(), (1.0, 1.0), 1.0), "3 values"),
        (lambda: nsd(cube(), cube(), (1.0, 0.0, 1.0), 1.0), "positive"),
        (lambda: hd95(cube(), cube(), (1.0, -1.0, 1.0)), "positive"),
        (lambda: nsd(cube(), cube(), ISOTROPIC_MM, 0.0), "tolerance_mm"),
    ],
)
def test_bad_mask_input_raises(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("pred", "structures", "message"),
    [
        (np.zeros((10, 10, 9), dtype=np.int64), ["Myo"], "shapes differ"),
        (np.zeros(SHAPE, dtype=np.float32), ["Myo"], "integer dtype"),
        (np.full(SHAPE, 2, dtype=np.int64), ["Myo"], "0..1"),
        (np.zeros(SHAPE, dtype=np.int64), [], "at least one"),
        (np.zeros(SHAPE, dtype=np.int64), ["Myo", "Myo"], "unique"),
    ],
)
def test_evaluate_case_rejects_bad_input(pred: np.ndarray, structures: list[str], message: str) -> None:
    ref = np.zeros(SHAPE, dtype=np.int64)
    with pytest.raises(ValueError, match=message):
        evaluate_case(pred, ref, structures, ISOTROPIC_MM, tolerance_mm=1.0)
