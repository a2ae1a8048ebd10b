"""Faults a user meets: case ids that leave their folders, corrupt and odd scans, one-line errors, a method that
fails on one case of a comparison. Every fake folder and file is made here, on the fly, at 16^3 (or the small raw scans of
``raw_fixtures``)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from diffatlas.cli import one_line, run_or_explain
from diffatlas.data import sources
from diffatlas.data.caseids import check_case_id, check_not_input, path_inside
from diffatlas.data.datasets import PreparedData, image_path
from diffatlas.data.io import read_volume
from diffatlas.data.phantom import write_phantom_dataset
from diffatlas.data.prepare import REPORT_JSON, STAGING_PREFIX, Settings, prepare_dataset
from diffatlas.data.splits import load_split
from tests.raw_fixtures import write_nnunet

ROOT = Path(__file__).resolve().parents[1]
BAD_IDS = ["/tmp/elsewhere/y", "../../../x", "a/b", "..", ".hidden", "c:\\x", "", "a\x00b"]


# --- case ids -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BAD_IDS)
def test_bad_case_ids_are_refused(case):
    with pytest.raises(ValueError, match="case id"):
        check_case_id(case, "somewhere")


def test_plain_case_ids_pass():
    for case in ("ct_train_1001", "patient001", "s0042", "ct_test_0003", "pat a", "x.y"):
        assert check_case_id(case, "here") == case


@pytest.fixture()
def phantom_root(tmp_path):
    root = tmp_path / "data"
    write_phantom_dataset(root, 2, "ct", shape=(16, 16, 16), fov_mm=128.0, seed=0)
    return root


@pytest.mark.parametrize("case", ["/tmp/elsewhere/y", "../../../x"])
def test_dataset_json_with_an_escaping_case_is_refused(phantom_root, case):
    info = json.loads((phantom_root / "dataset.json").read_text())
    info["cases"].append(case)
    (phantom_root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"dataset.json: case id .* plain file-name stem"):
        PreparedData(phantom_root)


@pytest.mark.parametrize("case", ["/tmp/elsewhere/y", "../../../x"])
def test_split_with_an_escaping_case_is_refused(tmp_path, case):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"name": "s", "dataset": "d", "train": ["ct_0000"], "test": [case]}))
    with pytest.raises(ValueError, match=r"split.json \('test'\): case id"):
        load_split(path)


def test_paths_built_from_ids_stay_in_their_root(tmp_path):
    assert image_path(tmp_path, "ct_0000") == tmp_path / "images" / "ct_0000.nii.gz"
    with pytest.raises(ValueError, match="case id"):
        image_path(tmp_path, "../../etc/x")
    with pytest.raises(ValueError, match="leaves its folder"):
        path_inside(tmp_path / "a", tmp_path / "a" / ".." / "b.nii.gz")
    assert path_inside(tmp_path, tmp_path / "images" / "x.nii.gz") == tmp_path / "images" / "x.nii.gz"


def test_a_prediction_never_overwrites_an_input(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"x")
    with pytest.raises(ValueError, match="it is the input file"):
        check_not_input(tmp_path / "sub" / ".." / "scan.nii.gz", [None, scan])
    assert check_not_input(tmp_path / "pred.nii.gz", [scan]) == tmp_path / "pred.nii.gz"


def test_raw_folders_with_bad_names_skip_those_cases(tmp_path):
    raw = tmp_path / "raw"
    write_nnunet(raw, cases=("pat_a", ".._evil"))
    cases, skipped = sources.nnunet_cases(raw)
    assert [c.case for c in cases] == ["pat_a"]
    assert skipped == [(".._evil", "file name .._evil_0000.nii.gz: the case id holds '..'")]


def test_nnunet_file_ending_must_be_an_image_suffix(tmp_path):
    raw = tmp_path / "raw"
    write_nnunet(raw, cases=("pat_a",))
    info = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps(info | {"file_ending": "/../../x.nii.gz"}))
    with pytest.raises(ValueError, match="'file_ending' must be one of"):
        sources.nnunet_cases(raw)


@pytest.mark.parametrize("labels, message", [
    (["background", "RV"], "'labels' must be an object"),
    ({"background": "0", "RV": "1", "Myo": "2"}, None),
    ({"background": 0, "RV": "one"}, "label values must be integers"),
    ({"background": 0, "RV": [1, 2]}, "region-based labels are not supported"),
])
def test_nnunet_label_types(tmp_path, labels, message):
    raw = tmp_path / "raw"
    write_nnunet(raw, cases=("pat_a",))
    (raw / "dataset.json").write_text(json.dumps({"labels": labels}))
    if message is None:
        assert sources.nnunet_labels(raw) == {"RV": 1, "Myo": 2}
    else:
        with pytest.raises(ValueError, match=message):
            sources.nnunet_labels(raw)


# --- preparation ----------------------------------------------------------------------------------------------


def _settings(**kw):
    return Settings(modality="mr", structures=["RV", "Myo", "LV"], shape=(16, 16, 16),
                    intensity={"method": "percentile", "percentiles": [0.5, 99.5]}, **kw)


def _rewrite_image(raw, case, change):
    path = raw / "imagesTr" / f"{case}_0000.nii.gz"
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    out = sitk.GetImageFromArray(change(array))
    out.CopyInformation(image)
    sitk.WriteImage(out, str(path))


def _faulty_raw(tmp_path):
    """An nnU-Net raw folder with two good cases and one case per fault."""
    raw = tmp_path / "raw"
    names = ["good_a", "good_b", "truncated", "empty", "not_gzip", "nan", "flat", "constant", "no_label"]
    write_nnunet(raw, cases=names)
    images = raw / "imagesTr"
    whole = (images / "truncated_0000.nii.gz").read_bytes()
    (images / "truncated_0000.nii.gz").write_bytes(whole[: len(whole) // 2])
    (images / "empty_0000.nii.gz").write_bytes(b"")
    (images / "not_gzip_0000.nii.gz").write_bytes(b"this is not a scan\n" * 50)

    def with_nan(a):
        a[2, 5, 7] = np.nan
        a[3, 5, 7] = np.inf
        return a

    _rewrite_image(raw, "nan", with_nan)
    _rewrite_image(raw, "constant", lambda a: np.full_like(a, 7.0))
    flat = sitk.Image(48, 44, 1, sitk.sitkFloat32) + 1.0
    sitk.WriteImage(flat, str(images / "flat_0000.nii.gz"))
    sitk.WriteImage(sitk.Image(48, 44, 1, sitk.sitkUInt8), str(raw / "labelsTr" / "flat.nii.gz"))
    (raw / "labelsTr" / "no_label.nii.gz").unlink()
    return raw


def test_preparation_skips_each_bad_case_with_a_reason(tmp_path):
    raw = _faulty_raw(tmp_path)
    out = tmp_path / "prepared"
    cases, skipped = sources.nnunet_cases(raw)
    report = prepare_dataset(cases, skipped, out, name="faulty", settings=_settings())
    assert [e["case"] for e in report["kept"]] == ["good_a", "good_b"]
    reasons = {s["case"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"truncated", "empty", "not_gzip", "nan", "flat", "constant", "no_label"}
    assert reasons["truncated"].startswith("cannot read the image truncated_0000.nii.gz: ")
    assert "truncated or not a NIfTI file?" in reasons["truncated"]
    assert reasons["empty"].startswith("cannot read the image empty_0000.nii.gz: ")
    assert reasons["not_gzip"].startswith("cannot read the image not_gzip_0000.nii.gz: ")
    assert reasons["nan"].startswith("the image nan_0000.nii.gz has 2 NaN or infinite voxels")
    assert reasons["flat"] == "the image flat_0000.nii.gz is 2D (size [48, 44, 1]), expected a 3D volume"
    assert reasons["constant"] == "the image constant_0000.nii.gz is constant (every voxel 7)"
    assert reasons["no_label"] == "no label labelsTr/no_label.nii.gz"
    assert json.loads((out / "dataset.json").read_text())["cases"] == ["good_a", "good_b"]
    assert json.loads((out / REPORT_JSON).read_text())["skipped"] == report["skipped"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["good_a.nii.gz", "good_b.nii.gz"]
    assert not list(out.glob(f"{STAGING_PREFIX}*"))


def test_nonfinite_voxels_are_replaced_only_when_asked(tmp_path):
    raw = _faulty_raw(tmp_path)
    cases, _ = sources.nnunet_cases(raw)
    nan_case = [c for c in cases if c.case == "nan"]
    report = prepare_dataset(nan_case, [], tmp_path / "out", name="nan", settings=_settings(nonfinite="replace"))
    [entry] = report["kept"]
    assert any("2 NaN or infinite voxels replaced by" in note for note in entry["notes"])
    image, _ = read_volume(tmp_path / "out" / "images" / "nan.nii.gz")
    assert np.isfinite(image).all()
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        _settings(nonfinite="zero")


def test_reprepared_folder_drops_a_case_that_lost_its_label(tmp_path):
    raw = tmp_path / "raw"
    write_nnunet(raw, cases=("pat_a", "pat_b", "pat_c"))
    out = tmp_path / "prepared"
    prepare_dataset(*sources.nnunet_cases(raw), out, name="ds", settings=_settings())
    assert PreparedData(out).cases == ("pat_a", "pat_b", "pat_c")
    (raw / "labelsTr" / "pat_b.nii.gz").unlink()
    report = prepare_dataset(*sources.nnunet_cases(raw), out, name="ds", settings=_settings())
    assert report["skipped"] == [{"case": "pat_b", "reason": "no label labelsTr/pat_b.nii.gz"}]
    assert PreparedData(out).cases == ("pat_a", "pat_c")
    assert not (out / "images" / "pat_b.nii.gz").exists() and not (out / "native" / "pat_b.json").exists()


def test_an_interrupted_preparation_leaves_no_half_dataset(tmp_path):
    raw = tmp_path / "raw"
    write_nnunet(raw, cases=("pat_a", "pat_b", "pat_c"))
    found, _ = sources.nnunet_cases(raw)

    def interrupted():
        yield from found[:2]
        raise KeyboardInterrupt

    out = tmp_path / "prepared"
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(interrupted(), [], out, name="ds", settings=_settings())
    assert sorted(p.name for p in out.iterdir()) == []


def test_a_truncated_prepared_image_names_its_file(tmp_path, phantom_root):
    path = phantom_root / "images" / "ct_0000.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"cannot read {path}: .*truncated or not a NIfTI file"):
        PreparedData(phantom_root).load_case("ct_0000")


def _explained(func, capsys):
    with pytest.raises(SystemExit) as stop:
        run_or_explain(func)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err.strip()


def test_run_or_explain_keeps_the_whole_message_on_one_line(capsys):
    def fails():
        raise RuntimeError("Exception thrown in ImageRegistrationMethod_Execute:\n  file.hxx:307:\n  the reason")

    assert _explained(fails, capsys) == ("error: Exception thrown in ImageRegistrationMethod_Execute: file.hxx:307: "
                                         "the reason")


def test_run_or_explain_names_the_path_of_os_errors(tmp_path, capsys):
    folder = tmp_path / "checkpoint_last.pt"
    folder.mkdir()
    err = _explained(lambda: folder.write_text("x"), capsys)
    assert err.startswith("error: [Errno 21] Is a directory") and str(folder) in err
    assert _explained(lambda: {}["config"], capsys) == "error: config"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_read_only_output_folder_is_one_line(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        err = _explained(lambda: (folder / "x").write_text("x"), capsys)
    finally:
        folder.chmod(0o700)
    assert "Permission denied" in err and str(folder / "x") in err


def test_run_or_explain_keeps_the_traceback_when_debugging(monkeypatch):
    monkeypatch.setenv("DIFFATLAS_DEBUG", "1")
    with pytest.raises(ValueError, match="kept"):
        run_or_explain(lambda: (_ for _ in ()).throw(ValueError("kept")))


def test_one_line_of_an_exception_without_text():
    assert one_line(EOFError()) == "EOFError"


def _run(module, *args):
    env = {k: v for k, v in os.environ.items() if k != "DIFFATLAS_DEBUG"} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True)


def test_test_run_with_an_absolute_case_id_stops_before_touching_it(tmp_path, phantom_root):
    victim = tmp_path / "elsewhere" / "y.nii.gz"
    victim.parent.mkdir()
    shutil.copy(phantom_root / "images" / "ct_0000.nii.gz", victim)
    before = victim.read_bytes()
    info = json.loads((phantom_root / "dataset.json").read_text())
    info["cases"].append(str(victim)[: -len(".nii.gz")])
    (phantom_root / "dataset.json").write_text(json.dumps(info))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"name": "s", "dataset": "d", "train": ["ct_0000"], "test": [info["cases"][-1]]}))
    done = _run("diffatlas.test", f"dataset.root={phantom_root}", f"split.file={split}", "device=cpu",
                f"checkpoint={tmp_path}/none.pt", f"hydra.run.dir={tmp_path}/run")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr == (f"error: {phantom_root / 'dataset.json'}: case id {info['cases'][-1]!r} holds a path "
                           "separator, a drive colon or a control character; a case id must be a plain file-name "
                           "stem\n")
    assert victim.read_bytes() == before


def test_a_prediction_is_not_written_over_the_scan(tmp_path, phantom_root):
    from diffatlas.scoring import ScoreSheet
    data = PreparedData(phantom_root)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "predictions").symlink_to(phantom_root / "images")
    sheet = ScoreSheet(data, ["ct_0000"], 2.0, run_dir)
    case = data.load_case("ct_0000")
    before = image_path(phantom_root, "ct_0000").read_bytes()
    with pytest.raises(ValueError, match="it is the input file .*images/ct_0000.nii.gz; choose another run folder"):
        sheet.add(case, case.label, 0.0)
    assert image_path(phantom_root, "ct_0000").read_bytes() == before


def test_a_method_failing_on_one_case_is_recorded_and_the_comparison_goes_on(tmp_path):
    from diffatlas.data.io import write_volume
    data, split = tmp_path / "phantom_ct", tmp_path / "split.json"
    write_phantom_dataset(data, 4, "ct", shape=(16, 16, 16), fov_mm=100.0, prefix="ct")
    split.write_text(json.dumps({"name": "2shot", "dataset": "phantom_ct", "train": ["ct_0000", "ct_0001"],
                                 "test": ["ct_0002", "ct_0003"]}))
    image, affine = read_volume(data / "images" / "ct_0003.nii.gz")
    blank = np.full(image.shape, -1.0, dtype=np.float32)  # nothing to register: ITK throws however it samples
    write_volume(data / "images" / "ct_0003.nii.gz", blank, affine)
    run_dir = tmp_path / "compare"
    done = _run("diffatlas.compare", f"dataset.root={data}", f"split.file={split}", "split.name=2shot",
                "methods=[rba]", "device=cpu", "baselines.rba.deformable=none", "baselines.rba.affine_iterations=5",
                "baselines.rba.sampling_percentage=0.001", f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stdout + done.stderr
    assert "RBA ct_0002: affine registration of atlas ct_0000 failed (Exception thrown in SimpleITK " in log
    assert "retrying with every voxel sampled and a moments-centred start" in log
    summary = json.loads((run_dir / "rba" / "summary.json").read_text())
    assert summary["num_cases"] == 2 and list(summary["failed_cases"]) == ["ct_0003"]
    reason = summary["failed_cases"]["ct_0003"]
    assert reason.startswith("RuntimeError: RBA ct_0003: affine registration of atlas ct_0000 failed, also with "
                             "every voxel sampled and a moments-centred start: Exception thrown in SimpleITK")
    assert "\n" not in reason and "ITK ERROR" in reason
    table = (run_dir / "table.md").read_text()
    assert "phantom_ct, 2shot split, 2 cases" in table and "| (b) RBA (1 of 2 cases failed) |" in table
    assert f"- ct_0003: {reason}" in table and table.strip() in done.stdout
    rows = (run_dir / "rba" / "per_case.csv").read_text().splitlines()
    assert rows[0].endswith(",seconds,failed") and len(rows) == 1 + 2 * 5
    assert all(row.split(",")[3] == "0.0" for row in rows if row.startswith("ct_0003"))
    assert not (run_dir / "rba" / "predictions" / "ct_0003.nii.gz").exists()
    assert (run_dir / "rba" / "predictions" / "ct_0002.nii.gz").is_file()
    assert summary["per_structure"]["Myo"]["dice_mean"] < 0.5 + 1e-9

