"""Segmenting new scans: the ``Segmenter`` API, the crops (roi), the geometry of the output, and
``python -m diffatlas.segment`` on a folder with broken inputs. A tiny DiffAtlas model is trained for three steps
on 16^3 phantoms; its label maps are rough, so the tests check geometry, determinism and error handling, and
the localisation is checked with a model that returns the phantom's true heart."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hydra import compose, initialize_config_dir

from diffatlas.cli import CONFIG_PATH, to_plain
from diffatlas.data import geometry
from diffatlas.data.geometry import Grid
from diffatlas.data.io import write_volume
from diffatlas.data.phantom import make_phantom, phantom_case_seed, write_raw_phantom_scans
from diffatlas.fitting import train
from diffatlas.inputs import prepare_phantoms
from diffatlas.segmenter import Segmenter, list_scans, read_scan, scan_name
from diffatlas.segmenting import segment
from tests.test_end_to_end import TINY_MODEL, _run

SHAPE, FOV_MM = (16, 16, 16), 100.0
FAST = {"plan": "ddim", "num_steps": 2, "eta": 0.0, "start_t": None}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A DiffAtlas checkpoint trained for 3 steps on three 16^3 CT phantoms (100 mm field of view)."""
    tmp = tmp_path_factory.mktemp("segment_model")
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        prep = compose("prepare", overrides=[f"out_dir={tmp}/data", f"split_file={tmp}/split.json",
                                             "phantom.num_train=3", "phantom.num_test=1", "phantom.num_val=0",
                                             f"phantom.shape={list(SHAPE)}", f"phantom.fov_mm={FOV_MM}"])
        prepare_phantoms(to_plain(prep))
        cfg = compose("train", overrides=[f"dataset.root={tmp}/data", f"split.file={tmp}/split.json", *TINY_MODEL,
                                          f"checkpoint_dir={tmp}/model", "training.steps=3", "training.batch_size=2",
                                          "device=cpu"])
        return train(to_plain(cfg))


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> list[Path]:
    """Two raw (HU, unlabelled) CT phantom scans, the held-out indices 3 and 4."""
    return write_raw_phantom_scans(tmp_path_factory.mktemp("raw"), 2, "ct", SHAPE, FOV_MM, seed=0, first_index=3)


def test_the_checkpoint_records_how_its_data_was_made(checkpoint):
    seg = Segmenter.from_checkpoint(checkpoint, "cpu", sampler=FAST, roi="whole")
    assert seg.orientation == "RAS"   # phantom arrays run towards right, anterior, superior
    assert seg.intensity == {"method": "ct_window", "window": [-250.0, 800.0]}
    assert seg.size_mm == (FOV_MM, FOV_MM, FOV_MM)


def test_a_checkpoint_without_a_method_name_is_a_diffatlas_checkpoint(checkpoint, scans, tmp_path):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert ckpt["config"]["method"] == "DiffAtlas"
    del ckpt["config"]["method"]
    torch.save(ckpt, tmp_path / "old.pt")
    old = Segmenter.from_checkpoint(tmp_path / "old.pt", "cpu", sampler=FAST, roi="whole")
    assert old.model.describe()["method"] == "DiffAtlas"
    new = Segmenter.from_checkpoint(checkpoint, "cpu", sampler=FAST, roi="whole")
    np.testing.assert_array_equal(old.segment_file(scans[0]).labels, new.segment_file(scans[0]).labels)
    del ckpt["config"]["model"]
    torch.save(ckpt, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="lacks structures or model, which the segmenter needs"):
        Segmenter.from_checkpoint(tmp_path / "broken.pt", "cpu")


def test_segment_file_keeps_the_scan_geometry_and_is_repeatable(checkpoint, scans, tmp_path):
    from diffatlas import Segmenter as Exported

    assert Exported is Segmenter
    seg = Segmenter.from_checkpoint(checkpoint, "cpu", sampler=FAST, roi="whole")
    first = seg.segment_file(scans[0], tmp_path / "a.nii.gz")
    again = seg.segment_file(scans[0])
    np.testing.assert_array_equal(first.labels, again.labels)
    scan, out = nib.load(str(scans[0])), nib.load(str(tmp_path / "a.nii.gz"))
    assert out.shape == scan.shape and out.get_fdata().max() <= 5
    np.testing.assert_allclose(out.affine, scan.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(out.dataobj), first.labels)
    counts = np.bincount(first.labels.ravel(), minlength=6)[1:]
    voxel_ml = (FOV_MM / SHAPE[0]) ** 3 / 1000.0
    assert first.volumes_ml() == pytest.approx(dict(zip(seg.structures, counts * voxel_ml)))


def test_the_same_anatomy_stored_in_other_axes_gets_the_same_labels(checkpoint, scans, tmp_path):
    """The scan is turned to the training axes before cropping, so storing it flipped and permuted (same
    world geometry, NRRD this time) moves the labels with it, voxel for voxel (up to float rounding of the
    grids, which can tip a few boundary voxels of this barely trained model)."""
    seg = Segmenter.from_checkpoint(checkpoint, "cpu", sampler=FAST, roi="whole")
    image, affine = nib.load(str(scans[0])).get_fdata().astype(np.float32), nib.load(str(scans[0])).affine
    flipped = np.ascontiguousarray(image[::-1].transpose(2, 0, 1))
    # voxel (k, i', j) of the new array is voxel (15 - i', j, k) of the old one
    perm = np.zeros((4, 4))
    perm[:3, :3] = affine[:3, :3] @ np.array([[0, -1, 0], [0, 0, 1], [1, 0, 0]])
    perm[:3, 3] = affine[:3, 3] + affine[:3, 0] * (SHAPE[0] - 1)
    perm[3, 3] = 1
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ perm
    other = sitk.GetImageFromArray(flipped.transpose(2, 1, 0))
    other.SetSpacing([float(s) for s in np.linalg.norm(lps[:3, :3], axis=0)])
    other.SetDirection((lps[:3, :3] / np.linalg.norm(lps[:3, :3], axis=0)).ravel().tolist())
    other.SetOrigin(lps[:3, 3].tolist())
    sitk.WriteImage(other, str(tmp_path / "turned.nrrd"))
    turned = seg.segment_file(tmp_path / "turned.nrrd", tmp_path / "turned.nii.gz")
    plain = seg.segment_file(scans[0])
    moved = np.ascontiguousarray(plain.labels[::-1].transpose(2, 0, 1))
    assert plain.labels.any() and turned.labels.shape == moved.shape
    assert np.mean(turned.labels != moved) < 0.01   # the grids agree up to float rounding
    np.testing.assert_allclose(nib.load(str(tmp_path / "turned.nii.gz")).affine, perm, atol=1e-4)


def test_segment_array(checkpoint, scans):
    seg = Segmenter.from_checkpoint(checkpoint, "cpu", sampler=FAST, roi="whole", ensemble_size=2)
    array = nib.load(str(scans[1])).get_fdata()
    result = seg.segment_array(array, (6.25, 6.25, 6.25), case_id="x")
    assert result.labels.shape == array.shape and result.labels.dtype == np.uint8
    assert result.uncertainty_grid is not None and result.uncertainty_grid.shape == SHAPE
    with pytest.raises(ValueError, match="expected a 3D array"):
        seg.segment_array(array[0], (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        seg.segment_array(array, (1.0, 0.0, 1.0))


class TrueHeart:
    """A model that 'segments' by reading the phantom's true label at the grid's points, to check where the
    crops land (the geometry of localisation, not a network)."""

    structures = ("Myo", "LV", "LA", "RA", "RV")
    shape = SHAPE

    def __init__(self, label: sitk.Image):
        self.label = label
        self.grids: list[Grid] = []

    def use(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter

    def segment_grid(self, image, case_id):
        grid = self.segmenter.last_grid
        self.grids.append(grid)
        out = sitk.Resample(self.label, grid.blank(), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        return geometry.to_array(out).astype(np.uint8), None

    def describe(self):
        return {"method": "true heart"}


class RecordingSegmenter(Segmenter):
    def _on_grid(self, oriented, grid):
        self.last_grid = grid
        return super()._on_grid(oriented, grid)


def _big_scan(tmp_path):
    """A phantom drawn on a 200 mm field of view (the heart in about half of it), its label as an image, and the
    label's box centre in world (LPS) mm."""
    phantom = make_phantom(phantom_case_seed(0, 7), "ct", (32, 32, 32), 200.0)
    write_volume(tmp_path / "big.nii.gz", phantom.image, phantom.affine)
    write_volume(tmp_path / "big_label.nii.gz", phantom.label, phantom.affine)
    label = sitk.ReadImage(str(tmp_path / "big_label.nii.gz"))
    idx = np.nonzero(phantom.label)
    lo, hi = [float(i.min()) for i in idx], [float(i.max()) for i in idx]
    centre = label.TransformContinuousIndexToPhysicalPoint([(a + b) / 2 for a, b in zip(lo, hi)])
    return tmp_path / "big.nii.gz", label, np.asarray(centre), phantom


@pytest.mark.parametrize("roi", ["auto", "box", "label"])
def test_crops_centre_on_the_heart_at_the_training_scale(roi, tmp_path):
    path, label, centre, phantom = _big_scan(tmp_path)
    model = TrueHeart(label)
    prep = {"modality": "ct", "intensity": {"method": "ct_window", "window": [-250, 800]}, "orientation": "RAS",
            "crop": {"mode": "whole", "margin_mm": 0.0, "cube": True, "size_mm": [120.0, 120.0, 120.0]}}
    seg = RecordingSegmenter(model, prep, roi=roi, roi_passes=2)
    model.use(seg)
    idx = np.nonzero(phantom.label)
    box = [[int(i.min()), int(i.max())] for i in idx]
    result = seg.segment_image(read_scan(path), "big", box=box, reference=label)
    final = result.grid
    assert final.spacing == pytest.approx((120.0 / 16,) * 3)
    grid_centre = np.asarray(final.blank().TransformContinuousIndexToPhysicalPoint([7.5, 7.5, 7.5]))
    assert np.abs(grid_centre - centre).max() < 200.0 / 32   # within one scan voxel
    if roi == "auto":
        assert len(model.grids) == 3 and model.grids[0].spacing == pytest.approx((200.0 / 16,) * 3)
    dice = 2 * np.sum((result.labels > 0) & (phantom.label > 0)) / (np.sum(result.labels > 0) + np.sum(phantom.label > 0))
    assert dice > 0.8


def test_roi_margin_widens_only_the_label_free_crop(tmp_path):
    """``roi_margin_mm`` adds to the training margin around the heart that ``roi=auto`` found (for the localiser's
    error), on every side, 5 mm unless told (the API's default and the config's agree); a crop around the reference
    label keeps the training margin."""
    path, label, centre, _ = _big_scan(tmp_path)
    prep = {"modality": "ct", "intensity": {"method": "ct_window", "window": [-250, 800]}, "orientation": "RAS",
            "crop": {"mode": "label", "margin_mm": 10.0, "cube": True, "size_mm": None}}
    sides = {}
    for roi, extra in (("auto", 0.0), ("auto", None), ("auto", 15.0), ("label", 15.0)):
        model = TrueHeart(label)
        seg = RecordingSegmenter(model, prep, roi=roi, **({} if extra is None else {"roi_margin_mm": extra}))
        model.use(seg)
        grid = seg.segment_image(read_scan(path), "big", reference=label).grid
        sides[roi, extra] = grid.size[0] * grid.spacing[0]
        assert seg.describe().get("roi_margin_mm") == ((5.0 if extra is None else extra) if roi == "auto" else None)
        # on the heart, to a voxel of the whole-scan pass that found it (200 mm over 16 voxels)
        assert np.abs(np.asarray(grid.blank().TransformContinuousIndexToPhysicalPoint([7.5] * 3)) - centre).max() < 12.5
    assert sides["auto", 15.0] - sides["auto", 0.0] == pytest.approx(30.0, abs=1e-6)
    assert sides["auto", None] - sides["auto", 0.0] == pytest.approx(10.0, abs=1e-6)
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        for name in ("test", "segment"):
            assert compose(config_name=name).inference.roi_margin_mm == 5.0
    assert sides["label", 15.0] == pytest.approx(sides["auto", 0.0], abs=200.0 / 32)
    with pytest.raises(ValueError, match="roi_margin_mm must be >= 0, got -1"):
        Segmenter(model, prep, roi="auto", roi_margin_mm=-1)


@pytest.mark.parametrize("fov_mm, passes", [(126.0, 1), (140.0, 3)])
def test_a_scan_the_size_of_fixed_training_crops_needs_no_coarse_pass(fov_mm, passes, tmp_path):
    """Training crops of a fixed 120 mm: a 126 mm scan is framed like them already and is segmented whole in one
    pass; a 140 mm one (17 % larger) still gets its two coarse passes."""
    phantom = make_phantom(phantom_case_seed(0, 7), "ct", (32, 32, 32), fov_mm)
    write_volume(tmp_path / "scan.nii.gz", phantom.image, phantom.affine)
    write_volume(tmp_path / "label.nii.gz", phantom.label, phantom.affine)
    model = TrueHeart(sitk.ReadImage(str(tmp_path / "label.nii.gz")))
    prep = {"modality": "ct", "intensity": {"method": "ct_window", "window": [-250, 800]}, "orientation": "RAS",
            "crop": {"mode": "whole", "margin_mm": 0.0, "cube": True, "size_mm": [120.0, 120.0, 120.0]}}
    seg = RecordingSegmenter(model, prep, roi="auto", roi_passes=2)
    model.use(seg)
    result = seg.segment_image(read_scan(tmp_path / "scan.nii.gz"), "scan")
    assert len(model.grids) == passes and model.grids[0].spacing == pytest.approx((fov_mm / 16,) * 3)
    if passes == 1:
        assert result.grid == model.grids[0]


def test_bad_settings_and_inputs_are_one_line_errors(checkpoint, scans, tmp_path):
    with pytest.raises(ValueError, match="unknown roi 'heart'; allowed: 'auto', 'box', 'whole', 'label'"):
        Segmenter.from_checkpoint(checkpoint, "cpu", sampler=FAST, roi="heart")
    with pytest.raises(ValueError, match="roi_passes"):
        Segmenter.from_checkpoint(checkpoint, "cpu", sampler=FAST, roi_passes=0)
    with pytest.raises(ValueError, match="not structures"):
        Segmenter.from_checkpoint(checkpoint, "cpu", sampler=FAST, postprocess={"fill_holes": ["Aorta"]})
    seg = Segmenter.from_checkpoint(checkpoint, "cpu", sampler=FAST, roi="box")
    with pytest.raises(ValueError, match="roi=box but no box"):
        seg.segment_file(scans[0])
    with pytest.raises(ValueError, match="a box is"):
        seg.segment_file(scans[0], box=[[0, 40], [0, 3], [0, 3]])
    (tmp_path / "bad.mha").write_text("not an image", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read the scan") as err:
        read_scan(tmp_path / "bad.mha")
    assert "\n" not in str(err.value)
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_scan(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no scans in"):
        list_scans(tmp_path / "empty")
    assert scan_name("a/b/case_01.nii.gz") == "case_01" and scan_name("x/dicom_series") == "dicom_series"


def test_dicom_series_folder_is_one_scan(checkpoint, scans, tmp_path):
    image = sitk.Cast(sitk.ReadImage(str(scans[0])), sitk.sitkInt16)
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        for tag, value in (("0020|000e", "1.2.3.4"), ("0020|0013", str(k + 1)), ("0008|0060", "CT"),
                           ("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k))))),
                           ("0020|0037", "\\".join(map(str, image.GetDirection()[0::3] + image.GetDirection()[1::3])))):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(plane)
    read = read_scan(folder)
    assert read.GetSize() == SHAPE
    np.testing.assert_allclose(geometry.to_array(read), geometry.to_array(sitk.ReadImage(str(scans[0]))), atol=1)
    assert list_scans(folder) == [folder]


def test_segment_command_on_a_folder_with_broken_inputs(checkpoint, scans, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in scans:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "corrupt.nii.gz").write_bytes(b"not a scan")
    write_volume(folder / "flat.nii", np.zeros((12, 12, 1), np.float32), np.eye(4))
    (folder / "empty_series").mkdir()
    out = tmp_path / "out"
    done = _run("diffatlas.segment", f"checkpoint={checkpoint}", f"input={folder}", f"output={out}", "device=cpu",
                "sampler.num_steps=2", "inference.ensemble_size=2", f"hydra.run.dir={tmp_path}/h", check=False)
    assert done.returncode == 1, done.stderr[-2000:]
    failures = [line for line in done.stdout.splitlines() if line.startswith("failed: ")]
    assert [line.split(":")[1].strip() for line in failures] == ["corrupt", "empty_series", "flat"]
    assert "expected a 3D scan" in failures[2] and "no DICOM series" in failures[1]
    assert "Traceback" not in done.stderr
    for path in scans:
        name = scan_name(path)
        written, scan = nib.load(str(out / f"{name}.nii.gz")), nib.load(str(path))
        assert written.shape == scan.shape
        np.testing.assert_allclose(written.affine, scan.affine, atol=1e-4)
        assert (out / "qc" / f"{name}_planes.png").is_file() and (out / "qc" / f"{name}_uncertainty.png").is_file()
    rows = (out / "volumes.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "case,Myo_ml,LV_ml,LA_ml,RA_ml,RV_ml" and [r.split(",")[0] for r in rows[1:]] == ["ct_0003", "ct_0004"]
    report = (out / "report.html").read_text(encoding="utf-8")
    assert report.count("<img ") == 4 and "failed: " in report and "3 of 5" not in report and "2 of 5 cases" in report


def test_segment_command_explains_missing_inputs(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    done = _run("diffatlas.segment", f"checkpoint={checkpoint}", f"input={tmp_path}/empty", f"output={tmp_path}/o",
                "device=cpu", f"hydra.run.dir={tmp_path}/h", check=False)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("error: no scans in")
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = to_plain(compose("segment", overrides=[f"checkpoint={checkpoint}", f"input={tmp_path}/empty",
                                                     f"output={tmp_path}/o", "device=cpu", "inference.roi=box"]))
    with pytest.raises(ValueError, match="inference.roi=box needs inference.box_file"):
        segment(cfg)


def test_test_command_scores_raw_scans_with_roi_auto_and_writes_the_qc_report_with_either_roi(tmp_path):
    """``test inference.roi=auto`` segments each test case's raw scan label-free and scores it on the scan's own grid."""
    from diffatlas.data.prepare import prepare_from_config
    from diffatlas.data.splits import write_dataset_splits
    from diffatlas.testing import test
    from tests.raw_fixtures import write_nnunet

    raw, data = tmp_path / "raw", tmp_path / "prepared"
    write_nnunet(raw, cases=[f"pat{n}" for n in range(4)])
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        prepare_from_config(to_plain(compose("prepare", overrides=["source=acdc_ed", f"raw_dir={raw}",
                                                                   f"out_dir={data}", "shape=[16,16,16]"])))
        write_dataset_splits(data, data / "splits", seed=0, test_fraction=0.5, shots=[2], val_count=0)
        common = ["dataset=acdc_ed", f"dataset.root={data}", "split=2shot", "device=cpu"]
        train(to_plain(compose("train", overrides=[*common, *TINY_MODEL, f"checkpoint_dir={tmp_path}/model",
                                                   "training.steps=2", "training.batch_size=2",
                                                   "heart_net.steps=2", "heart_net.base_channels=4"])))
        cfg = to_plain(compose("test", overrides=[*common, f"checkpoint={tmp_path}/model/checkpoint_last.pt",
                                                  "sampler=ddim", "sampler.num_steps=2", "inference.roi=auto",
                                                  "inference.postprocess.largest_component=all"]))
    summary = test(cfg, tmp_path / "run")
    assert summary["space"] == "native" and summary["sampler"]["roi"] == "auto"
    assert summary["sampler"]["localiser"] == "2 registered atlases and a heart network"   # from the checkpoint
    assert summary["sampler"]["postprocess"]["largest_component"] == ["RV", "Myo", "LV"]
    cases = json.loads((data / "splits" / "2shot.json").read_text(encoding="utf-8"))["test"]
    assert summary["num_cases"] == len(cases) == 2
    for case in cases:
        pred = nib.load(str(tmp_path / "run" / "predictions_native" / f"{case}.nii.gz"))
        scan = nib.load(str(raw / "imagesTr" / f"{case}_0000.nii.gz"))
        assert pred.shape == scan.shape and np.allclose(pred.affine, scan.affine, atol=1e-4)
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert all(f"qc/{case}_planes.png" in page for case in cases) and "Dice (%)" in page

    # The paper's protocol (roi=label) writes the same QC report, on the prepared grid.
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = to_plain(compose("test", overrides=[*common, f"checkpoint={tmp_path}/model/checkpoint_last.pt",
                                                  "sampler=ddim", "sampler.num_steps=2"]))
    summary = test(cfg, tmp_path / "run_label")
    assert summary["sampler"]["roi"] == "label"
    page = (tmp_path / "run_label" / "report.html").read_text(encoding="utf-8")
    assert all(f"qc/{case}_planes.png" in page for case in cases) and "Dice (%)" in page
    with open(tmp_path / "run_label" / "volumes.csv") as handle:
        volumes = {row["case"]: row for row in csv.DictReader(handle)}
    for case in cases:
        assert (tmp_path / "run_label" / "qc" / f"{case}_planes.png").stat().st_size > 0
        pred = nib.load(str(tmp_path / "run_label" / "predictions" / f"{case}.nii.gz"))
        voxel_ml = float(np.prod(pred.header.get_zooms()[:3])) / 1000.0
        labels = np.asarray(pred.dataobj)
        for k, name in enumerate(["RV", "Myo", "LV"], start=1):
            assert float(volumes[case][f"{name}_ml"]) == pytest.approx((labels == k).sum() * voxel_ml, abs=1e-3)


def test_segment_scripts_pass_their_arguments(tmp_path):
    """``segment.sh`` with a stand-in Python that records its arguments: paths made absolute, DDIM-10, overrides."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    record, fake = tmp_path / "calls", tmp_path / "python"
    fake.write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" > {record}\n", encoding="utf-8")
    fake.chmod(0o755)
    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "scans").mkdir()
    env = dict(os.environ, PYTHON=str(fake))
    script = str(root / "testing_scripts" / "segment.sh")
    done = subprocess.run(["bash", script, "model.pt", "scans", "out", "inference.roi=whole"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60)
    assert done.returncode == 0, done.stderr
    assert record.read_text(encoding="utf-8").splitlines() == [
        "-m", "diffatlas.segment", f"checkpoint={tmp_path}/model.pt", f"input={tmp_path}/scans",
        f"output={tmp_path}/out", "sampler=ddim", "sampler.num_steps=10", "inference.roi=whole"]
    done = subprocess.run(["bash", script, "missing.pt", "scans", "out"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60)
    assert done.returncode == 1 and done.stderr.startswith("error: no checkpoint at")
    done = subprocess.run(["bash", script, "model.pt"], cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=60)
    assert done.returncode == 1 and "usage: bash testing_scripts/segment.sh CHECKPOINT INPUT OUTPUT" in done.stderr
