"""Volume IO, the prepared-data layout and the joint image+SDF dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from diffatlas.data.datasets import JointDataset, PreparedData
from diffatlas.data.io import read_volume, spacing_from_affine, write_volume
from diffatlas.data.phantom import STRUCTURES, make_phantom, phantom_case_seed, write_phantom_dataset
from diffatlas.data.sdf import decode_sdf, encode_sdf

SHAPE = (16, 16, 16)


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    write_phantom_dataset(root, 3, "ct", shape=SHAPE, fov_mm=96.0, seed=1)
    return root


def test_nifti_round_trip_keeps_dtype_and_affine(tmp_path) -> None:
    affine = np.array([[0.0, -1.5, 0.0, 10.25], [2.0, 0.0, 0.0, -7.5], [0.0, 0.0, 3.0, 1.0], [0, 0, 0, 1]])
    label = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6) % 6
    image = np.linspace(-1, 1, 120, dtype=np.float32).reshape(4, 5, 6)
    write_volume(tmp_path / "a" / "label.nii.gz", label, affine)
    write_volume(tmp_path / "image.nii", image, affine)
    read_label, read_affine = read_volume(tmp_path / "a" / "label.nii.gz")
    read_image, _ = read_volume(tmp_path / "image.nii")
    assert read_label.dtype == np.uint8 and read_image.dtype == np.float32
    np.testing.assert_array_equal(read_label, label)
    np.testing.assert_array_equal(read_image, image)
    np.testing.assert_allclose(read_affine, affine, atol=1e-6)
    assert spacing_from_affine(affine) == (2.0, 1.5, 3.0)


def test_sitk_formats_match_nifti_geometry(tmp_path) -> None:
    array = np.random.default_rng(0).integers(0, 5, size=(4, 5, 6)).astype(np.int16)
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    image.SetSpacing((1.0, 2.0, 3.0))
    image.SetOrigin((5.0, -6.0, 7.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    for suffix in (".nrrd", ".mha"):
        sitk.WriteImage(image, str(tmp_path / f"v{suffix}"))
    sitk.WriteImage(image, str(tmp_path / "v.nii.gz"))
    nifti_array, nifti_affine = read_volume(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(nifti_array, array)
    for suffix in (".nrrd", ".mha"):
        got, affine = read_volume(tmp_path / f"v{suffix}")
        np.testing.assert_array_equal(got, array)
        np.testing.assert_allclose(affine, nifti_affine, atol=1e-5)


def test_read_volume_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        read_volume(tmp_path / "missing.nii.gz")
    with pytest.raises(ValueError, match=r"\.nrrd"):
        read_volume(tmp_path / "volume.png")


def test_prepared_layout_and_affine(ct_root) -> None:
    info = json.loads((ct_root / "dataset.json").read_text(encoding="utf-8"))
    assert info["cases"] == ["ct_0000", "ct_0001", "ct_0002"]
    assert info["structures"] == list(STRUCTURES) and info["shape"] == list(SHAPE)
    assert info["intensity"] == {"method": "ct_window", "window": [-250.0, 800.0]}
    data = PreparedData(ct_root)
    assert data.modality == "ct" and data.num_structures == 5 and data.shape == SHAPE
    case = data.load_case("ct_0001")
    phantom = make_phantom(phantom_case_seed(1, 1), "ct", shape=SHAPE, fov_mm=96.0)
    np.testing.assert_array_equal(case.label, phantom.label)
    np.testing.assert_allclose(case.affine, phantom.affine)
    assert case.spacing_mm == (6.0, 6.0, 6.0)
    assert case.image.dtype == np.float32 and -1.0 <= case.image.min() and case.image.max() <= 1.0


def test_appending_and_clashes(tmp_path) -> None:
    write_phantom_dataset(tmp_path, 2, "ct", shape=SHAPE, seed=0, prefix="train")
    write_phantom_dataset(tmp_path, 1, "ct", shape=SHAPE, seed=9, prefix="test")
    write_phantom_dataset(tmp_path, 1, "ct", shape=SHAPE, seed=0, prefix="train")
    assert PreparedData(tmp_path).cases == ("train_0000", "train_0001", "test_0000")
    with pytest.raises(ValueError, match="modality"):
        write_phantom_dataset(tmp_path, 1, "mr", shape=SHAPE)
    with pytest.raises(ValueError, match="shape"):
        write_phantom_dataset(tmp_path, 1, "ct", shape=(8, 8, 8))


def test_joint_dataset(ct_root) -> None:
    data = PreparedData(ct_root)
    dataset = JointDataset(data, ["ct_0002", "ct_0000"])
    assert len(dataset) == 2
    item = dataset[0]
    assert item.dtype == torch.float32 and item.shape == (6, *SHAPE)
    case = data.load_case("ct_0002")
    np.testing.assert_allclose(item[0].numpy(), case.image)
    np.testing.assert_allclose(item[1:].numpy(), encode_sdf(case.label, 5, scale_vox=8.0, clip=0.2))
    np.testing.assert_array_equal(decode_sdf(item[1:].numpy()), case.label)
    assert item[1:].abs().max() <= 0.2 + 1e-6
    item[0] = 5.0
    assert dataset[0][0].max() <= 1.0
    scaled = JointDataset(data, ["ct_0000"], sdf_clip=0.5, sdf_scale_vox=2.0)
    assert scaled[0][1:].abs().max() == pytest.approx(0.5)


def test_dataset_errors(tmp_path, ct_root) -> None:
    with pytest.raises(FileNotFoundError, match="diffatlas.prepare"):
        PreparedData(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x", "modality": "ct"}), encoding="utf-8")
    with pytest.raises(ValueError, match="structures"):
        PreparedData(tmp_path)
    data = PreparedData(ct_root)
    with pytest.raises(KeyError, match="ct_0000"):
        data.load_case("nope")
    with pytest.raises(ValueError, match="at least one"):
        JointDataset(data, [])


def test_label_values_checked(tmp_path, ct_root) -> None:
    data = PreparedData(ct_root)
    case = data.load_case("ct_0000")
    info = json.loads((ct_root / "dataset.json").read_text(encoding="utf-8"))
    info["structures"] = ["Myo", "LV"]
    info["cases"] = ["ct_0000"]
    (tmp_path / "dataset.json").write_text(json.dumps(info), encoding="utf-8")
    write_volume(tmp_path / "images" / "ct_0000.nii.gz", case.image, case.affine)
    write_volume(tmp_path / "labels" / "ct_0000.nii.gz", case.label, case.affine)
    with pytest.raises(ValueError, match="outside 0..2"):
        PreparedData(tmp_path).load_case("ct_0000")


def test_sdf_cache_is_reused_and_keyed_by_label_and_settings(tmp_path) -> None:
    write_phantom_dataset(tmp_path, 1, "ct", shape=SHAPE, fov_mm=96.0, seed=3)
    data = PreparedData(tmp_path)
    first = JointDataset(data, ["ct_0000"])[0]
    cached = sorted((tmp_path / "cache" / "sdf").glob("*.npy"))
    assert len(cached) == 1
    # a planted cache file with the same key is what the next dataset reads
    np.save(cached[0], np.full_like(np.load(cached[0]), 0.123))
    np.testing.assert_allclose(JointDataset(data, ["ct_0000"])[0][1:].numpy(), 0.123, rtol=1e-6)
    # other settings get their own key, and recompute the true SDFs
    other = JointDataset(data, ["ct_0000"], sdf_clip=0.3)[0]
    assert len(list((tmp_path / "cache" / "sdf").glob("*.npy"))) == 2
    np.testing.assert_allclose(other[1:].clamp(-0.2, 0.2).numpy(), first[1:].numpy(), atol=1e-6)
