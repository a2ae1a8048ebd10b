"""Signed distance encoding and decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from diffatlas.data.phantom import make_phantom
from diffatlas.data.sdf import decode_sdf, decode_sdf_torch, default_sdf_scale, encode_sdf


def _random_blobs(seed: int, shape: tuple[int, ...], num_structures: int) -> np.ndarray:
    """Overlapping smoothed-noise blobs written in turn, so labels touch and interleave."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    for k in range(1, num_structures + 1):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
        label[field > np.quantile(field, 0.8)] = k
    return label


def _cube(shape: int = 9, low: int = 3, high: int = 6) -> np.ndarray:
    label = np.zeros((shape,) * 3, dtype=np.uint8)
    label[low:high, low:high, low:high] = 1
    return label


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_random_blobs(seed: int) -> None:
    label = _random_blobs(seed, (16, 16, 16), num_structures=4)
    sdf = encode_sdf(label, 4, scale_vox=default_sdf_scale(label.shape), clip=0.2)
    assert sdf.shape == (4, 16, 16, 16) and sdf.dtype == np.float32
    np.testing.assert_array_equal(decode_sdf(sdf), label)


def test_round_trip_phantom_and_torch_decoder_agree() -> None:
    label = make_phantom(0, "ct", shape=(24, 24, 24)).label
    sdf = encode_sdf(label, 5, scale_vox=12.0, clip=0.2)
    np.testing.assert_array_equal(decode_sdf(sdf), label)
    decoded = decode_sdf_torch(torch.from_numpy(sdf)[None])
    assert decoded.dtype == torch.int64 and decoded.shape == (1, 24, 24, 24)
    np.testing.assert_array_equal(decoded[0].numpy(), label)


def test_round_trip_with_tiny_clip() -> None:
    label = _random_blobs(3, (16, 16, 16), num_structures=3)
    sdf = encode_sdf(label, 3, scale_vox=16.0, clip=1e-3)
    assert set(np.unique(np.abs(sdf))) == {np.float32(1e-3)}
    np.testing.assert_array_equal(decode_sdf(sdf), label)


def test_sign_convention_and_boundary_values_on_cube() -> None:
    sdf = encode_sdf(_cube(), 1, scale_vox=1.0, clip=10.0)[0]
    assert sdf[4, 4, 4] == -2.0  # centre of the 3x3x3 cube: two steps to the outside
    assert sdf[3, 4, 4] == -1.0  # innermost layer
    assert sdf[2, 4, 4] == 1.0  # first layer outside
    assert sdf[0, 4, 4] == 3.0
    assert sdf[2, 2, 2] == pytest.approx(np.sqrt(3.0))
    assert np.all(sdf[_cube() == 1] < 0) and np.all(sdf[_cube() == 0] > 0)


def test_scale_clip_and_spacing() -> None:
    label = _cube()
    sdf = encode_sdf(label, 1, scale_vox=2.0, clip=0.75)[0]
    assert sdf[4, 4, 4] == -0.75  # -2 / 2 clipped
    assert sdf[2, 4, 4] == 0.5
    assert sdf.max() == 0.75
    np.testing.assert_array_equal(encode_sdf(label, 1, 2.0, 0.75, spacing=(3.0, 3.0, 3.0))[0], sdf)
    anisotropic = encode_sdf(label, 1, 1.0, 10.0, spacing=(1.0, 1.0, 2.0))[0]
    assert anisotropic[1, 4, 4] == 2.0  # two x-steps of 1 mm
    assert anisotropic[4, 4, 1] == 4.0  # two z-steps of 2 mm, in units of the finest spacing


def test_empty_and_full_structures() -> None:
    sdf = encode_sdf(_cube(), 3, scale_vox=4.0, clip=0.2)
    np.testing.assert_array_equal(sdf[1:], np.float32(0.2))
    full = encode_sdf(np.ones((4, 4, 4), dtype=np.uint8), 1, scale_vox=4.0, clip=0.2)
    np.testing.assert_array_equal(full, np.float32(-0.2))


def test_decode_overlap_rule() -> None:
    sdf = np.array([[-0.1, -0.3, -0.2, 0.1], [-0.2, -0.3, 0.5, 0.2]], dtype=np.float32)
    expected = np.array([2, 1, 1, 0], dtype=np.uint8)
    np.testing.assert_array_equal(decode_sdf(sdf), expected)
    np.testing.assert_array_equal(decode_sdf_torch(torch.from_numpy(sdf)[None])[0].numpy(), expected)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="0..2"):
        encode_sdf(np.full((4, 4, 4), 3), 2, 2.0, 0.2)
    with pytest.raises(ValueError, match="0..2"):
        encode_sdf(np.full((4, 4, 4), -1), 2, 2.0, 0.2)
    with pytest.raises(ValueError, match="integer"):
        encode_sdf(np.full((4, 4, 4), 0.5), 2, 2.0, 0.2)
    with pytest.raises(ValueError, match="positive"):
        encode_sdf(np.zeros((4, 4, 4), dtype=np.uint8), 2, 0.0, 0.2)
    with pytest.raises(ValueError, match="shape"):
        decode_sdf(np.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        decode_sdf_torch(torch.zeros(2, 4))


def test_default_scale() -> None:
    assert default_sdf_scale((64, 64, 64)) == 32.0
    assert default_sdf_scale((32, 48, 16)) == 24.0
    with pytest.raises(ValueError):
        default_sdf_scale((0, 4, 4))
