"""Synthetic heart phantoms and intensity normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from diffatlas.data.intensity import intensity_spec, normalize_intensity
from diffatlas.data.io import spacing_from_affine
from diffatlas.data.phantom import (
    BLOOD_LEFT,
    FAT,
    LA,
    LV,
    MYO,
    MYOCARDIUM,
    RA,
    RV,
    STRUCTURES,
    make_phantom,
    phantom_case_seed,
)


@pytest.fixture(scope="module")
def ct_phantoms():
    return [make_phantom(seed, "ct") for seed in range(10)]


def test_structure_order() -> None:
    assert STRUCTURES == ("Myo", "LV", "LA", "RA", "RV")
    assert (MYO, LV, LA, RA, RV) == (1, 2, 3, 4, 5)


def test_deterministic_per_seed() -> None:
    a, b = make_phantom(4, "mr"), make_phantom(4, "mr")
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    c = make_phantom(5, "mr")
    assert not np.array_equal(a.label, c.label)
    assert not np.array_equal(a.image, c.image)


def test_types_and_affine(ct_phantoms) -> None:
    p = ct_phantoms[0]
    assert p.image.dtype == np.float32 and p.label.dtype == np.uint8
    assert p.image.shape == p.label.shape == (32, 32, 32)
    assert spacing_from_affine(p.affine) == (4.0, 4.0, 4.0)
    centre = p.affine @ np.array([15.5, 15.5, 15.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0)
    q = make_phantom(0, "ct", shape=(16, 20, 24), fov_mm=96.0)
    assert q.label.shape == (16, 20, 24)
    np.testing.assert_allclose(spacing_from_affine(q.affine), (6.0, 4.8, 4.0))


def test_all_structures_large_enough(ct_phantoms) -> None:
    for p in ct_phantoms:
        counts = np.bincount(p.label.ravel(), minlength=6)
        assert counts.size == 6
        assert counts[1:].min() >= 150, counts
        assert not (p.label[[0, -1]].any() or p.label[:, [0, -1]].any() or p.label[:, :, [0, -1]].any())


def test_arrangement(ct_phantoms) -> None:
    for p in ct_phantoms:
        lv = p.label == LV
        shell = ndimage.binary_dilation(lv) & ~lv
        assert np.mean(p.label[shell] == MYO) > 0.7
        height = {k: np.argwhere(p.label == k)[:, 2].mean() for k in range(1, 6)}
        assert height[LA] > height[LV] and height[RA] > height[RV]
        assert np.argwhere(p.label == RV)[:, 0].mean() > np.argwhere(p.label == LV)[:, 0].mean()


def test_modalities_share_labels_but_not_contrast() -> None:
    ct, mr = make_phantom(7, "ct"), make_phantom(7, "mr")
    np.testing.assert_array_equal(ct.label, mr.label)
    np.testing.assert_array_equal(ct.tissue, mr.tissue)
    for p, fat_brighter in ((ct, False), (mr, True)):
        blood = np.median(p.image[p.label == LV])
        assert np.median(p.image[p.label == MYO]) < blood
        assert np.median(p.image[p.tissue == MYOCARDIUM]) < np.median(p.image[p.tissue == BLOOD_LEFT])
        assert (np.median(p.image[p.tissue == FAT]) > blood) == fat_brighter
    assert ct.image.min() < -500  # lungs in HU
    assert mr.image.min() >= 0  # Rician magnitudes


def test_resolution_independent_geometry() -> None:
    coarse, fine = make_phantom(2, "ct"), make_phantom(2, "ct", shape=(64, 64, 64))
    coarse_volume = np.bincount(coarse.label.ravel(), minlength=6)[1:] * 4.0**3
    fine_volume = np.bincount(fine.label.ravel(), minlength=6)[1:] * 2.0**3
    np.testing.assert_allclose(coarse_volume, fine_volume, rtol=0.2)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="modality"):
        make_phantom(0, "pet")
    with pytest.raises(ValueError, match="shape"):
        make_phantom(0, "ct", shape=(32, 32))
    with pytest.raises(ValueError, match="seed"):
        make_phantom(-1, "ct")


def test_case_seeds() -> None:
    assert phantom_case_seed(0, 3) == phantom_case_seed(0, 3)
    assert len({phantom_case_seed(s, i) for s in range(3) for i in range(5)}) == 15


def test_normalize_intensity() -> None:
    ct = np.array([-1000.0, -250.0, 275.0, 800.0, 3000.0], dtype=np.float32)
    np.testing.assert_allclose(normalize_intensity(ct, "ct"), [-1.0, -1.0, 0.0, 1.0, 1.0])
    mr = np.linspace(0.0, 1000.0, 1001, dtype=np.float32)
    out = normalize_intensity(mr, "mr", mr_percentiles=(10.0, 90.0))
    assert out.dtype == np.float32 and out.min() == -1.0 and out.max() == 1.0
    assert out[500] == pytest.approx(0.0, abs=1e-6)
    phantom = normalize_intensity(make_phantom(0, "mr").image, "mr")
    assert -1.0 <= phantom.min() and phantom.max() <= 1.0
    assert intensity_spec("ct") == {"method": "ct_window", "window": [-250.0, 800.0]}
    assert intensity_spec("mr")["method"] == "percentile"
    with pytest.raises(ValueError, match="constant"):
        normalize_intensity(np.ones(10), "mr")
    with pytest.raises(ValueError, match="ct_window"):
        normalize_intensity(ct, "ct", ct_window=(1.0, 0.0))
