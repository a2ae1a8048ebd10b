"""RBA multi-atlas segmentation on tiny hand-made volumes: registration, label fusion, determinism, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage

from diffatlas.data.datasets import CaseData, PreparedData, open_dataset_info, save_dataset_info, write_case
from diffatlas.data.geometry import to_array
from diffatlas.evaluation.metrics import dice
from diffatlas.methods.base import SegmentationMethod
from diffatlas.methods.rba import RBA, fuse_labels, normalized_mutual_information, sitk_image

SHAPE = (24, 24, 24)
SPACING_MM = 2.0
STRUCTURES = ("Wall", "Cavity")
# Small, fast settings: two pyramid levels on 24^3 volumes.
FAST = dict(shrink_factors=(2, 1), smoothing_sigmas_mm=(2.0, 0.0), affine_iterations=40,
            bspline_iterations=15, demons_iterations=20, control_point_spacing_mm=16.0)


def _affine(origin_mm: float = 0.0) -> np.ndarray:
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    affine[:3, 3] = origin_mm
    return affine


def _blob(centre_vox: tuple[float, float, float], radii_vox: tuple[float, float, float],
          contrast: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A walled ellipsoid: label 1 a 2-voxel wall around label 2, a cavity; image in [-1, 1]."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in SHAPE], indexing="ij"))
    centre = np.asarray(centre_vox)[:, None, None, None]
    radii = np.asarray(radii_vox)[:, None, None, None]
    outer = (((grid - centre) / radii) ** 2).sum(0) <= 1.0
    inner = (((grid - centre) / (radii - 2.0)) ** 2).sum(0) <= 1.0
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[outer] = 1
    label[inner] = 2
    image = np.choose(label, [-0.8, 0.0, 0.7]).astype(np.float64)
    image = ndimage.gaussian_filter(image, 0.7) + np.random.default_rng(seed).normal(0, 0.02, SHAPE)
    return np.clip(contrast * image, -1, 1).astype(np.float32), label


TARGET = _blob((12, 12, 12), (7, 6, 5), seed=1)
ATLASES = {
    "shifted": _blob((9, 14, 10), (7, 6, 5), seed=2),
    "scaled": _blob((13, 11, 13), (8.5, 7, 6), seed=3),
    "inverted": _blob((10, 13, 11), (7.5, 6, 5.5), contrast=-1.0, seed=4),
    "copy": TARGET,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    root = tmp_path_factory.mktemp("rba_data")
    info = open_dataset_info(root, name="blobs", modality="ct", structures=STRUCTURES, shape=SHAPE,
                             intensity={"method": "ct_window", "window_hu": [-250, 800]})
    for case, (image, label) in {**ATLASES, "target": TARGET}.items():
        write_case(root, case, image, label, _affine(origin_mm=-20.0 if case == "shifted" else 0.0))
    info["cases"] = [*ATLASES, "target"]
    save_dataset_info(root, info)
    return PreparedData(root)


@pytest.fixture(scope="module")
def target(data: PreparedData) -> CaseData:
    return data.load_case("target")


def _mean_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([dice(pred == k, ref == k) for k in range(1, len(STRUCTURES) + 1)]))


def test_rba_follows_the_method_interface() -> None:
    assert isinstance(RBA(), SegmentationMethod)
    assert RBA().name == "RBA"


@pytest.mark.parametrize("deformable", ["bspline", "demons"])
def test_rba_beats_no_registration(data: PreparedData, target: CaseData, deformable: str) -> None:
    atlases = ["shifted", "scaled"]
    no_registration = max(_mean_dice(data.load_case(a).label, target.label) for a in atlases)
    rba = RBA(deformable=deformable, metric="mean_squares", **FAST)
    rba.fit(data, atlases)
    pred = rba.segment(target)
    assert pred.shape == SHAPE and pred.dtype == np.uint8
    assert set(np.unique(pred)) <= {0, 1, 2}
    score = _mean_dice(pred, target.label)
    assert no_registration < 0.5
    assert score > no_registration + 0.25
    assert rba.seconds_per_case["target"] > 0


def test_mutual_information_registers_inverted_contrast(data: PreparedData, target: CaseData) -> None:
    """A dark-on-bright atlas (another modality's contrast) still aligns under Mattes MI."""
    no_registration = _mean_dice(data.load_case("inverted").label, target.label)
    rba = RBA(metric="mattes_mi", deformable="bspline", sampling_percentage=0.5, **FAST)
    rba.fit(data, ["inverted"])
    assert _mean_dice(rba.segment(target), target.label) > no_registration + 0.15


def test_identical_atlas_gives_back_its_label(data: PreparedData, target: CaseData) -> None:
    rba = RBA(metric="mean_squares", deformable="bspline", **FAST)
    rba.fit(data, ["copy"])
    pred = rba.segment(target)
    assert np.mean(pred == target.label) > 0.998


def test_num_atlases_keeps_the_most_similar(data: PreparedData, target: CaseData) -> None:
    rba = RBA(num_atlases=1, metric="mean_squares", deformable="none", **FAST)
    rba.fit(data, ["shifted", "copy", "scaled"])
    pred = rba.segment(target)
    assert np.mean(pred == target.label) > 0.998


def test_same_seed_same_labels_and_other_fusions_run(data: PreparedData, target: CaseData) -> None:
    atlases = ["shifted", "scaled", "copy"]
    results = {}
    for fusion in ("majority", "majority", "weighted", "staple"):
        rba = RBA(fusion=fusion, deformable="none", sampling_percentage=0.3, seed=7, **FAST)
        rba.fit(data, atlases)
        results.setdefault(fusion, []).append(rba.segment(target))
    np.testing.assert_array_equal(results["majority"][0], results["majority"][1])
    no_registration = max(_mean_dice(data.load_case(a).label, target.label) for a in atlases[:2])
    for fusion in ("weighted", "staple"):
        pred = results[fusion][0]
        assert pred.shape == SHAPE and pred.dtype == np.uint8
        assert _mean_dice(pred, target.label) > no_registration


def test_majority_vote_by_hand() -> None:
    a = np.array([[[0, 1, 2, 2]]], dtype=np.uint8)
    b = np.array([[[0, 1, 1, 0]]], dtype=np.uint8)
    c = np.array([[[1, 2, 2, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(fuse_labels([a, b, c], 2, "majority"), [[[0, 1, 2, 0]]])


def test_ties_go_to_the_first_atlas() -> None:
    one, two, three = (np.full((1, 1, 2), k, dtype=np.uint8) for k in (1, 2, 3))
    np.testing.assert_array_equal(fuse_labels([one, two], 3, "majority"), one)
    np.testing.assert_array_equal(fuse_labels([two, one], 3, "majority"), two)
    np.testing.assert_array_equal(fuse_labels([three, one, two], 3, "majority"), three)
    # 2 vs 2: the first atlas's label among the tied ones wins, even when it votes late in the list.
    np.testing.assert_array_equal(fuse_labels([two, one, one, two], 3, "majority"), two)


def test_weighted_vote_lets_a_heavy_minority_win() -> None:
    one, two = (np.full((2, 1, 1), k, dtype=np.uint8) for k in (1, 2))
    np.testing.assert_array_equal(fuse_labels([one, two, two], 2, "weighted", [3.0, 1.0, 1.0]), one)
    np.testing.assert_array_equal(fuse_labels([one, two, two], 2, "weighted", [1.0, 1.0, 1.0]), two)


def test_staple_follows_the_agreeing_raters() -> None:
    ref = np.zeros((8, 8, 8), dtype=np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    ref[3:5, 3:5, 3:5] = 2
    noisy = ref.copy()
    noisy[0, 0, :4] = 2
    fused = fuse_labels([ref, ref.copy(), noisy], 2, "staple")
    np.testing.assert_array_equal(fused, ref)


def test_fusion_errors() -> None:
    one = np.ones((2, 2, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="majority.*weighted.*staple"):
        fuse_labels([one], 1, "median")
    with pytest.raises(ValueError, match="differ in shape"):
        fuse_labels([one, np.ones((2, 2, 3), dtype=np.uint8)], 1, "majority")
    with pytest.raises(ValueError, match="needs one weight per atlas"):
        fuse_labels([one, one], 1, "weighted")
    with pytest.raises(ValueError, match="2 non-negative numbers"):
        fuse_labels([one, one], 1, "weighted", [1.0])
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        fuse_labels([one * 2], 1, "majority")
    with pytest.raises(ValueError, match="at least one"):
        fuse_labels([], 1, "majority")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(metric="ncc"), r"metric must be one of \('mattes_mi', 'mean_squares', 'correlation'\)"),
        (dict(deformable="syn"), r"deformable must be one of \('bspline', 'demons', 'none'\)"),
        (dict(fusion="vote"), r"fusion must be one of \('majority', 'weighted', 'staple'\)"),
        (dict(num_atlases=0), "num_atlases must be an integer >= 1"),
        (dict(num_atlases=1.5), "num_atlases must be an integer >= 1"),
        (dict(sampling_percentage=0.0), r"sampling_percentage must lie in \(0, 1\]"),
        (dict(shrink_factors=(2, 1), smoothing_sigmas_mm=(1.0,)), "equal length"),
        (dict(affine_iterations=0), "affine_iterations must be >= 1"),
        (dict(histogram_bins=2), "histogram_bins must be >= 5"),
        (dict(control_point_spacing_mm=0.0), "control_point_spacing_mm must be > 0"),
    ],
)
def test_bad_config_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RBA(**kwargs)


def test_fit_and_segment_errors(data: PreparedData, target: CaseData) -> None:
    rba = RBA(**FAST)
    with pytest.raises(RuntimeError, match="call fit"):
        rba.segment(target)
    with pytest.raises(ValueError, match="no training cases"):
        rba.fit(data, [])
    with pytest.raises(ValueError, match="not in dataset"):
        rba.fit(data, ["nobody"])
    with pytest.raises(ValueError, match="repeat"):
        rba.fit(data, ["copy", "copy"])
    rba.fit(data, ["copy"])
    flat = CaseData("flat", target.image[..., 0], target.label[..., 0], target.affine, target.spacing_mm)
    with pytest.raises(ValueError, match=r"3D \(X, Y, Z\)"):
        rba.segment(flat)


def test_sitk_image_keeps_spacing_and_axes() -> None:
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    affine = np.diag([1.5, 2.0, 10.0, 1.0])
    affine[:3, 3] = (5.0, -7.0, 3.0)
    image = sitk_image(array, affine)
    assert image.GetSize() == (2, 3, 4)
    assert image.GetSpacing() == pytest.approx((1.5, 2.0, 10.0))
    assert image.GetOrigin() == pytest.approx((-5.0, 7.0, 3.0))
    np.testing.assert_array_equal(to_array(image), array)
    sheared = affine.copy()
    sheared[0, 1] = 1.0
    with pytest.raises(ValueError, match="not orthonormal"):
        sitk_image(array, sheared)


def test_nmi_bounds() -> None:
    x = np.random.default_rng(0).uniform(-1, 1, 5000)
    assert normalized_mutual_information(x, -x, 16) == pytest.approx(2.0)
    independent = normalized_mutual_information(x, np.random.default_rng(1).uniform(-1, 1, 5000), 16)
    assert 1.0 <= independent < 1.05


def test_config_file_builds_the_method() -> None:
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "method" / "rba.yaml").read_text(encoding="utf-8"))
    assert config.pop("_target_") == "diffatlas.methods.rba.RBA"
    rba = RBA(**config)
    assert (rba.metric, rba.deformable, rba.fusion) == ("mattes_mi", "bspline", "majority")
