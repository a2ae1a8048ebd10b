"""Raw layouts -> prepared data, on small fake MM-WHS, TotalSegmentator, nnU-Net raw and official-preprocessed
folders written here: label mapping, header checks, skips and their reasons, the report, label-free crops and
the way back to native space."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from diffatlas.data import geometry, prepare, sources
from diffatlas.data.datasets import PreparedData
from diffatlas.data.geometry import CropSpec
from diffatlas.data.io import read_volume
from diffatlas.data.prepare import Settings
from diffatlas.data.splits import load_split
from tests.raw_fixtures import FLIPPED, heart as _heart, write_nnunet as _nnunet, write_scan as _write

SHAPE = (24, 24, 24)
MMWHS = (205, 500, 420, 550, 600, 820)   # the five heart codes in the paper's order, then the aorta


def _mmwhs(root):
    for n, case in enumerate(("ct_train_1001", "ct_train_1002", "ct_train_1003")):
        image, label = _heart(MMWHS, seed=n)
        _write(image, root / f"{case}_image.nii.gz")
        origin, spacing = (10.0, -20.0, 5.0), (1.0, 1.0, 1.5)
        if case == "ct_train_1002":
            origin = (10.004, -20.0, 5.0)        # float noise, as written by a float32 header
        if case == "ct_train_1003":
            spacing = (1.2, 1.0, 1.5)            # a real mismatch
        _write(label, root / f"{case}_label.nii.gz", spacing=spacing, origin=origin, pixel=sitk.sitkInt16)


def _settings(**kw):
    base = dict(modality="ct", structures=list(sources.HEART), shape=SHAPE,
                crop=CropSpec(mode="label", margin_mm=4.0))
    return Settings(**(base | kw))


def test_mmwhs_codes_headers_report_and_native_record(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _mmwhs(raw)
    cases, skipped = sources.find_cases("mmwhs", raw, modality="ct")
    report = prepare.prepare_dataset(cases, skipped, out, name="mmwhs_ct", settings=_settings())

    assert [e["case"] for e in report["kept"]] == ["ct_train_1001", "ct_train_1002"]
    [skip] = report["skipped"]
    assert skip["case"] == "ct_train_1003" and "spacing" in skip["reason"] and "origin" not in skip["reason"]
    notes = report["kept"][1]["notes"]
    assert len(notes) == 1 and "float noise" in notes[0] and "origin" in notes[0] and "resampled" in notes[0]
    assert report["kept"][0]["notes"] == []
    markdown = (out / prepare.REPORT_MD).read_text(encoding="utf-8")
    assert "ct_train_1003: label header differs from the image's: spacing" in markdown
    assert "float noise" in markdown

    data = PreparedData(out)
    assert data.cases == ("ct_train_1001", "ct_train_1002") and data.structures == sources.HEART
    case = data.load_case("ct_train_1001")
    assert case.image.shape == SHAPE and case.image.min() >= -1.0 and case.image.max() <= 1.0
    # 820 (aorta) became background; the five heart structures are 1..5 in the paper's order, each present
    assert sorted(np.unique(case.label).tolist()) == [0, 1, 2, 3, 4, 5]
    # the boxes lie side by side along raw axis 0, which runs right-to-left: in LPS they come in reverse order
    centres = [np.argwhere(case.label == k)[:, 0].mean() for k in range(1, 6)]
    assert centres == sorted(centres, reverse=True)
    # native record: the raw label (values 1..5, aorta dropped) on the scan's own grid
    info = prepare.native_info(out, "ct_train_1001")
    native = prepare.native_label(out, info)
    raw_label = geometry.to_array(sitk.ReadImage(str(raw / "ct_train_1001_label.nii.gz")))
    expected = np.zeros(raw_label.shape, np.uint8)
    for k, code in enumerate(MMWHS[:5], start=1):
        expected[raw_label == code] = k
    assert np.array_equal(geometry.to_array(native), expected)
    assert native.GetDirection() == pytest.approx(FLIPPED) and native.GetSpacing() == pytest.approx((1, 1, 1.5))
    # volumes in the report are the native ones: 4 x 14 x 13 voxels of 1.5 ul
    assert report["kept"][0]["label_volume_ml"]["Myo"] == pytest.approx(4 * 14 * 13 * 1.5 / 1000)


def test_prepared_label_maps_back_to_the_native_label(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _mmwhs(raw)
    cases, _ = sources.find_cases("mmwhs", raw, modality="ct")
    prepare.prepare_dataset(cases[:1], [], out, name="mmwhs_ct", settings=_settings(shape=(32, 32, 32)))
    info = prepare.native_info(out, "ct_train_1001")
    back = prepare.map_to_native(PreparedData(out).load_case("ct_train_1001").label, info, 5)
    reference = geometry.to_array(prepare.native_label(out, info))
    assert back.GetSize() == (40, 36, 30) and back.GetDirection() == pytest.approx(FLIPPED)
    back = geometry.to_array(back)
    for k in range(1, 6):
        a, b = back == k, reference == k
        assert 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)) > 0.75


def _totalseg(root):
    image, label = _heart((1, 2, 3, 4, 5), size=(30, 30, 24))
    for subject in ("s0001", "s0002", "s0003"):
        _write(image, root / subject / "ct.nii.gz", direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    for k, name in enumerate(sources.TOTALSEG_FILES.values(), start=1):
        _write((label == k).astype(np.uint8), root / "s0001" / "segmentations" / f"{name}.nii.gz",
               direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
        if name != "heart_atrium_left":
            _write((label == k).astype(np.uint8), root / "s0003" / "segmentations" / f"{name}.nii.gz",
                   direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    _write((label > 0).astype(np.uint8), root / "s0002" / "segmentations" / "heart.nii.gz",
           direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    _write(np.zeros((30, 30, 24), np.uint8), root / "s0002" / "segmentations" / "liver.nii.gz",
           direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_totalsegmentator_subjects_and_skips(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _totalseg(raw)
    cases, skipped = sources.find_cases("totalsegmentator", raw, modality="ct")
    report = prepare.prepare_dataset(cases, skipped, out, name="totalsegmentator", settings=_settings())
    assert [e["case"] for e in report["kept"]] == ["s0001"]
    reasons = {s["case"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"s0002", "s0003"}
    assert "no heart chamber files" in reasons["s0002"] and "heart.nii.gz" in reasons["s0002"]
    assert reasons["s0003"] == "missing heart_atrium_left.nii.gz"
    assert "s0002" in (out / prepare.REPORT_MD).read_text(encoding="utf-8")
    label = PreparedData(out).load_case("s0001").label
    assert sorted(np.unique(label).tolist()) == [0, 1, 2, 3, 4, 5]
    # per-structure files in the paper's order: the first box (heart_myocardium) is label 1, lowest along x
    centres = [np.argwhere(label == k)[:, 0].mean() for k in range(1, 6)]
    assert centres == sorted(centres)


def test_a_case_without_any_structure_is_skipped_and_an_all_skipped_dataset_fails(tmp_path):
    raw = tmp_path / "raw"
    image, _ = _heart((205,))
    _write(image, raw / "ct_train_1001_image.nii.gz")
    _write(np.full(image.shape, 820, np.int16), raw / "ct_train_1001_label.nii.gz")
    cases, skipped = sources.find_cases("mmwhs", raw, modality="ct")
    with pytest.raises(ValueError, match="no case of mmwhs_ct could be prepared .*no voxel of any structure"):
        prepare.prepare_dataset(cases, skipped, tmp_path / "out", name="mmwhs_ct", settings=_settings())
    assert "no voxel of any structure" in (tmp_path / "out" / prepare.REPORT_MD).read_text(encoding="utf-8")


@pytest.mark.parametrize("crop", [dict(mode="whole"), dict(mode="center", size_mm=[60.0, 60.0, 60.0]),
                                  dict(mode="box", box_file="boxes.json")])
def test_label_free_crops_do_not_depend_on_the_label(tmp_path, crop):
    raw = tmp_path / "raw"
    _nnunet(raw)
    (tmp_path / "boxes.json").write_text(json.dumps({"pat_a": [[4, 40], [6, 30], [2, 4]],
                                                     "pat_b": [[4, 40], [6, 30], [2, 4]]}))
    crop = {k: (str(tmp_path / v) if k == "box_file" else v) for k, v in crop.items()}
    grids = []
    for name, labelled in (("with", True), ("moved", False)):
        if not labelled:   # move every structure: a label-free crop must not follow it
            path = raw / "labelsTr" / "pat_a.nii.gz"
            moved = sitk.ReadImage(str(path))
            array = geometry.to_array(moved)
            _write(np.roll(array, 6, axis=0), path, spacing=moved.GetSpacing(), origin=moved.GetOrigin(),
                   direction=moved.GetDirection())
        cfg = {"source": {"kind": "nnunet", "name": "acdc_like", "modality": "mr", "structures": None,
                          "intensity": None, "require_all_structures": True},
               "raw_dir": str(raw), "out_dir": str(tmp_path / name), "name": "acdc_like", "shape": [16, 16, 16],
               "crop": crop}
        prepare.prepare_from_config(cfg)
        grids.append(prepare.native_info(tmp_path / name, "pat_a")["prepared_grid"])
    assert grids[0] == grids[1]
    data = PreparedData(tmp_path / "with")
    assert data.structures == ("RV", "Myo", "LV") and data.shape == (16, 16, 16)
    if crop["mode"] == "center":
        assert grids[0]["spacing"] == pytest.approx([60.0 / 16] * 3)
    if crop["mode"] == "box":   # edges in raw voxels: i 4..40 at 1.5 mm = 55.5 mm, longer than k 2..4 at 10 mm
        assert grids[0]["spacing"] == pytest.approx([55.5 / 16] * 3)


def test_box_crop_without_an_entry_for_a_case_skips_it(tmp_path):
    raw = tmp_path / "raw"
    _nnunet(raw)
    (tmp_path / "boxes.json").write_text(json.dumps({"pat_a": [[4, 40], [6, 30], [2, 4]]}), encoding="utf-8")
    cfg = {"source": {"kind": "nnunet", "name": "n", "modality": "mr", "structures": ["LV", "RV"],
                      "intensity": None, "require_all_structures": True},
           "raw_dir": str(raw), "out_dir": str(tmp_path / "out"), "name": "n", "shape": [16, 16, 16],
           "crop": {"mode": "box", "box_file": str(tmp_path / "boxes.json")}}
    report = prepare.prepare_from_config(cfg)
    assert [e["case"] for e in report["kept"]] == ["pat_a"]
    assert "no entry for case 'pat_b'" in report["skipped"][0]["reason"]
    assert PreparedData(tmp_path / "out").structures == ("LV", "RV")


def test_prepare_config_errors(tmp_path):
    cfg = {"source": {"kind": "nnunet", "name": "n", "modality": "mr"}, "raw_dir": None,
           "out_dir": str(tmp_path / "out"), "name": "n", "shape": [16, 16, 16], "crop": {}}
    with pytest.raises(ValueError, match="raw_dir is not set"):
        prepare.prepare_from_config(cfg)
    with pytest.raises(FileNotFoundError, match="crop box file not found"):
        prepare.settings_from_config(cfg | {"crop": {"mode": "box", "box_file": str(tmp_path / "x.json")}}, ["a"])
    with pytest.raises(ValueError, match="crop mode must be one of"):
        prepare.settings_from_config(cfg | {"crop": {"mode": "heart"}}, ["a"])
    with pytest.raises(ValueError, match="modality"):
        prepare.settings_from_config(cfg | {"source": {"modality": "pet"}}, ["a"])


def _official(root):
    """The official preprocessed layout: 16^3 crops, one case with MM-WHS codes in HU, one already 0..5 in [-1, 1]."""
    image, label = _heart(MMWHS[:5], size=(16, 16, 16))
    eye = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    _write(image, root / "training_set_full" / "ct_train_1001_image.nii.gz", direction=eye)
    _write(label, root / "training_set_full" / "ct_train_1001_label.nii.gz", direction=eye)
    codes = {205: 1, 500: 2, 420: 3, 550: 4, 600: 5}
    relabelled = np.vectorize(lambda v: codes.get(int(v), 0))(label).astype(np.uint8)
    _write(np.clip(image / 1000.0, -1, 1), root / "testing_set" / "ct_train_1002_image.nii.gz", direction=eye)
    _write(relabelled, root / "testing_set" / "ct_train_1002_label.nii.gz", direction=eye)
    _write(np.zeros((16, 16, 16), np.float32), root / "testing_set" / "ct_train_1002_sdf.nii.gz", direction=eye)
    return relabelled


def test_official_layout_is_read_as_it_is(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    relabelled = _official(raw)
    cfg = {"source": {"kind": "official", "name": "mmwhs_ct", "modality": "ct", "structures": None,
                      "intensity": None}, "raw_dir": str(raw), "out_dir": str(out), "name": "mmwhs_ct",
           "shape": [64, 64, 64], "crop": {}}
    report = prepare.prepare_from_config(cfg)
    assert [e["case"] for e in report["kept"]] == ["ct_train_1001", "ct_train_1002"]
    assert report["kept"][0]["notes"] == ["intensities scaled with the configured window"]
    assert report["kept"][1]["notes"] == []
    data = PreparedData(out)
    assert data.shape == (16, 16, 16)     # the files' own grid, not the configured one
    for case in data.cases:
        loaded = data.load_case(case)
        assert np.array_equal(loaded.label, relabelled)       # codes mapped, 0..5 kept, voxel for voxel
        assert loaded.image.min() >= -1 and loaded.image.max() <= 1
    split = load_split(out / "splits" / "official.json")
    assert split["train"] == ["ct_train_1001"] and split["test"] == ["ct_train_1002"]
    image, affine = read_volume(out / "images" / "ct_train_1002.nii.gz")
    _, raw_affine = read_volume(raw / "testing_set" / "ct_train_1002_image.nii.gz")
    assert np.allclose(affine, raw_affine)
    assert prepare.native_info(out, "ct_train_1002") is None   # no native grid: the files are the grid


def test_official_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="official preprocessed folder not found"):
        prepare.official_cases(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*image.nii.gz files"):
        prepare.official_cases(tmp_path / "empty")


ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "ACDC_ED"


@pytest.mark.skipif(not ACDC.is_dir(), reason="../shared/data/ACDC_ED is not here")
def test_real_acdc_cases_prepare_and_map_back(tmp_path):
    cases, _ = sources.find_cases("nnunet", ACDC, modality="mr")
    picked = [c for c in cases if c.case in ("patient001", "patient002")]
    settings = Settings(modality="mr", structures=["RV", "Myo", "LV"], shape=(32, 32, 32),
                        crop=CropSpec(mode="label", margin_mm=10.0),
                        intensity={"method": "percentile", "percentiles": [0.5, 99.5]})
    report = prepare.prepare_dataset(picked, [], tmp_path, name="acdc", settings=settings)
    assert [e["case"] for e in report["kept"]] == ["patient001", "patient002"]
    for entry in report["kept"]:
        assert entry["native_spacing_mm"][2] == 10.0          # pixdim, not the unit sform
        info = prepare.native_info(tmp_path, entry["case"])
        native = geometry.to_array(prepare.native_label(tmp_path, info))
        raw = geometry.to_array(sitk.ReadImage(str(ACDC / "labelsTr" / f"{entry['case']}.nii.gz")))
        assert np.array_equal(native, raw)                      # labels 1 RV, 2 Myo, 3 LV kept as they are
        back = geometry.to_array(prepare.map_to_native(PreparedData(tmp_path).load_case(entry["case"]).label,
                                                       info, 3))
        for k in (1, 2, 3):
            a, b = back == k, native == k
            assert 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)) > 0.85
