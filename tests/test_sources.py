"""Raw dataset layouts: which cases each reader finds, how it maps labels, and why it turns cases down.

The readers only look at file names and ``dataset.json``, so the fixtures here are empty files; the
preparation of real voxels is tested in ``test_prepare.py``.
"""

import json
from pathlib import Path

import pytest

from diffatlas.data import sources
from diffatlas.data.sources import HEART, RawCase

MMWHS_VALUES = {205: 1, 500: 2, 420: 3, 550: 4, 600: 5}


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --- MM-WHS --------------------------------------------------------------------------------------------------

def test_mmwhs_cases_pairs_images_and_labels_recursively(tmp_path):
    for case in ("ct_train_1001", "ct_train_1002"):
        _touch(tmp_path / "CT" / f"{case}_image.nii.gz")
        _touch(tmp_path / "CT" / f"{case}_label.nii.gz")
    _touch(tmp_path / "deeper" / "more" / "ct_train_1010_image.nii")
    _touch(tmp_path / "deeper" / "more" / "ct_train_1010_label.nii")
    _touch(tmp_path / "CT" / "ct_train_1003_image.nii.gz")           # no label
    _touch(tmp_path / "MR" / "mr_train_1001_image.nii.gz")           # other modality
    _touch(tmp_path / "MR" / "mr_train_1001_label.nii.gz")
    _touch(tmp_path / "CT" / "ct_train_1004_image_copy.nii.gz")      # not the naming scheme

    cases, skipped = sources.mmwhs_cases(tmp_path, "ct")

    assert [c.case for c in cases] == ["ct_train_1001", "ct_train_1002", "ct_train_1010"]
    first = cases[0]
    assert first.image == tmp_path / "CT" / "ct_train_1001_image.nii.gz"
    assert first.label == tmp_path / "CT" / "ct_train_1001_label.nii.gz"
    assert first.label_values == MMWHS_VALUES and first.structure_files == {} and first.has_label
    assert cases[2].label.name == "ct_train_1010_label.nii"
    assert skipped == [("ct_train_1003", "no label file ct_train_1003_label.nii.gz beside the image")]
    mr_cases, mr_skipped = sources.mmwhs_cases(tmp_path, "mr")
    assert [c.case for c in mr_cases] == ["mr_train_1001"] and mr_skipped == []


def test_mmwhs_cases_errors(tmp_path):
    with pytest.raises(ValueError, match="'ct' or 'mr'"):
        sources.mmwhs_cases(tmp_path, "pet")
    with pytest.raises(FileNotFoundError, match="MM-WHS folder not found: .*nowhere"):
        sources.mmwhs_cases(tmp_path / "nowhere", "ct")
    _touch(tmp_path / "readme.txt")
    with pytest.raises(FileNotFoundError, match="no MM-WHS ct images"):
        sources.mmwhs_cases(tmp_path, "ct")


# --- TotalSegmentator ------------------------------------------------------------------------------------------

def _subject(root, name, files):
    _touch(root / name / "ct.nii.gz")
    for file in files:
        _touch(root / name / "segmentations" / f"{file}.nii.gz")


def test_totalsegmentator_cases_and_reasons(tmp_path):
    heart = list(sources.TOTALSEG_FILES.values())
    _subject(tmp_path, "s0001", heart + ["liver", "aorta"])
    _subject(tmp_path, "s0002", ["heart", "liver"])                            # v2 release: one heart mask
    _subject(tmp_path, "s0003", ["liver"])                                     # no heart files at all
    _subject(tmp_path, "s0004", [f for f in heart if f != "heart_atrium_right"])
    (tmp_path / "not_a_subject").mkdir()                                       # no ct.nii.gz: ignored
    _touch(tmp_path / "meta.csv")

    cases, skipped = sources.totalsegmentator_cases(tmp_path)

    assert [c.case for c in cases] == ["s0001"]
    s1 = cases[0]
    assert s1.image == tmp_path / "s0001" / "ct.nii.gz" and s1.label is None and s1.has_label
    seg = tmp_path / "s0001" / "segmentations"
    assert s1.structure_files == {1: seg / "heart_myocardium.nii.gz", 2: seg / "heart_ventricle_left.nii.gz",
                                  3: seg / "heart_atrium_left.nii.gz", 4: seg / "heart_atrium_right.nii.gz",
                                  5: seg / "heart_ventricle_right.nii.gz"}
    reasons = dict(skipped)
    assert list(reasons) == ["s0002", "s0003", "s0004"]
    assert reasons["s0002"] == "no heart chamber files (only the combined heart.nii.gz of the v2 release)"
    assert reasons["s0003"] == "no heart chamber files"
    assert reasons["s0004"] == "missing heart_atrium_right.nii.gz"


def test_totalsegmentator_structure_subset_and_errors(tmp_path):
    _subject(tmp_path, "s0001", ["heart_ventricle_left", "heart_myocardium"])
    cases, skipped = sources.totalsegmentator_cases(tmp_path, structures=["LV", "Myo"])
    assert skipped == []
    assert {k: p.name for k, p in cases[0].structure_files.items()} == {1: "heart_ventricle_left.nii.gz",
                                                                        2: "heart_myocardium.nii.gz"}
    with pytest.raises(ValueError, match=r"no TotalSegmentator file for structures \['Aorta'\]"):
        sources.totalsegmentator_cases(tmp_path, structures=["LV", "Aorta"])
    with pytest.raises(FileNotFoundError, match="no subject folders"):
        sources.totalsegmentator_cases(tmp_path / "s0001" / "segmentations")
    with pytest.raises(FileNotFoundError, match="TotalSegmentator folder not found"):
        sources.totalsegmentator_cases(tmp_path / "missing")


# --- nnU-Net raw -------------------------------------------------------------------------------------------------

def _nnunet(root, labels, cases=("case_a", "case_b"), ending=".nii.gz", unlabelled=()):
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ending}), encoding="utf-8")
    for case in cases:
        _touch(root / "imagesTr" / f"{case}_0000{ending}")
        if case not in unlabelled:
            _touch(root / "labelsTr" / f"{case}{ending}")
    return root


@pytest.mark.parametrize("labels", [
    {"background": 0, "RV": 1, "Myo": 2, "LV": 3},                  # nnU-Net v2: name -> value
    {"0": "background", "1": "RV", "2": "Myo", "3": "LV"},          # nnU-Net v1: value -> name
    {"LV": 3, "background": 0, "Myo": 2, "RV": 1},                  # any key order: sorted by value
], ids=["v2", "v1", "v2-unordered"])
def test_nnunet_labels_reads_both_forms(tmp_path, labels):
    root = _nnunet(tmp_path / "ds", labels)
    found = sources.nnunet_labels(root)
    assert found == {"RV": 1, "Myo": 2, "LV": 3} and list(found) == ["RV", "Myo", "LV"]


def test_nnunet_labels_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        sources.nnunet_labels(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="is not valid JSON"):
        sources.nnunet_labels(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x"}), encoding="utf-8")
    with pytest.raises(ValueError, match="'labels' must be an object"):
        sources.nnunet_labels(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2], "core": 2}}))
    with pytest.raises(ValueError, match="region-based labels are not supported"):
        sources.nnunet_labels(tmp_path)


def test_nnunet_cases_structures_select_and_reorder(tmp_path):
    root = _nnunet(tmp_path / "ds", {"0": "background", "1": "RV", "2": "Myo", "3": "LV"},
                   cases=("patient001", "patient002", "patient003"), unlabelled=("patient002",))
    cases, skipped = sources.nnunet_cases(root)
    assert [c.case for c in cases] == ["patient001", "patient003"]
    assert cases[0].image == root / "imagesTr" / "patient001_0000.nii.gz"
    assert cases[0].label == root / "labelsTr" / "patient001.nii.gz"
    assert cases[0].label_values == {1: 1, 2: 2, 3: 3}
    assert skipped == [("patient002", "no label labelsTr/patient002.nii.gz")]

    subset, _ = sources.nnunet_cases(root, structures=["LV", "RV"])
    assert subset[0].label_values == {3: 1, 1: 2}  # raw LV (3) becomes 1, raw RV (1) becomes 2, Myo dropped
    assert sources.structure_names("nnunet", root, ["LV", "RV"]) == ["LV", "RV"]
    assert sources.structure_names("nnunet", root, None) == ["RV", "Myo", "LV"]
    with pytest.raises(ValueError, match=r"structures \['LA'\] are not labels"):
        sources.nnunet_cases(root, structures=["LV", "LA"])


def test_nnunet_cases_file_ending_and_missing_images(tmp_path):
    root = _nnunet(tmp_path / "mha", {"background": 0, "A": 1}, cases=("x1",), ending=".mha")
    cases, _ = sources.nnunet_cases(root)
    assert cases[0].image.name == "x1_0000.mha" and cases[0].label.name == "x1.mha"
    empty = _nnunet(tmp_path / "empty", {"background": 0, "A": 1}, cases=())
    with pytest.raises(FileNotFoundError, match=r"no images matching imagesTr/\*_0000.nii.gz"):
        sources.nnunet_cases(empty)


# --- dispatch ------------------------------------------------------------------------------------------------------

def test_find_cases_dispatch_and_structure_names(tmp_path):
    _touch(tmp_path / "ct_train_1001_image.nii.gz")
    _touch(tmp_path / "ct_train_1001_label.nii.gz")
    cases, _ = sources.find_cases("mmwhs", tmp_path, modality="ct")
    assert [c.case for c in cases] == ["ct_train_1001"]
    assert sources.find_cases("mmwhs", tmp_path, modality="ct", structures=list(HEART))[0][0].case == "ct_train_1001"
    with pytest.raises(ValueError, match="MM-WHS structures are fixed"):
        sources.find_cases("mmwhs", tmp_path, modality="ct", structures=["LV", "Myo"])
    with pytest.raises(ValueError, match="unknown raw layout 'dicom'"):
        sources.find_cases("dicom", tmp_path, modality="ct")
    assert sources.structure_names("mmwhs", tmp_path, None) == ["Myo", "LV", "LA", "RA", "RV"]
    assert sources.structure_names("totalsegmentator", tmp_path, ["LV"]) == ["LV"]


def test_raw_case_has_label():
    scan = Path("c_0000.nii.gz")
    assert not RawCase("c", image=scan).has_label
    assert RawCase("c", image=scan, label=Path("c.nii.gz")).has_label
    assert RawCase("c", image=scan, structure_files={1: Path("lv.nii.gz")}).has_label
