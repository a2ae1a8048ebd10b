"""Faults a user meets: case ids that leave their folders, corrupt scans, resumes with other settings, shared run
folders, one-line errors. Every fake folder and file is made here, on the fly, at 16^3 (or the small raw scans of
``raw_fixtures``)."""

import gzip
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from diffatlas.cli import one_line, run_or_explain
from diffatlas.data import sources
from diffatlas.data.caseids import check_case_id, check_not_input, path_inside
from diffatlas.data.datasets import PreparedData, image_path
from diffatlas.data.io import read_volume
from diffatlas.data.phantom import write_phantom_dataset
from diffatlas.data.prepare import REPORT_JSON, STAGING_PREFIX, Settings, prepare_dataset
from diffatlas.data.splits import load_split
from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.training.runguard import LOCK_NAME, RunLock, load_checkpoint
from diffatlas.training.trainer import LAST, Trainer, TrainSettings, diffusion_objective
from tests.conftest import tiny_unet
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
    info = json.loads((phantom_root / "dataset.json").read_text(encoding="utf-8"))
    info["cases"].append(case)
    (phantom_root / "dataset.json").write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(ValueError, match=r"dataset.json: case id .* plain file-name stem"):
        PreparedData(phantom_root)


@pytest.mark.parametrize("case", ["/tmp/elsewhere/y", "../../../x"])
def test_split_with_an_escaping_case_is_refused(tmp_path, case):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"name": "s", "dataset": "d", "train": ["ct_0000"], "test": [case]}), encoding="utf-8")
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
    info = json.loads((raw / "dataset.json").read_text(encoding="utf-8"))
    (raw / "dataset.json").write_text(json.dumps(info | {"file_ending": "/../../x.nii.gz"}), encoding="utf-8")
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
    (raw / "dataset.json").write_text(json.dumps({"labels": labels}), encoding="utf-8")
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
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["cases"] == ["good_a", "good_b"]
    assert json.loads((out / REPORT_JSON).read_text(encoding="utf-8"))["skipped"] == report["skipped"]
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


# --- checkpoints ----------------------------------------------------------------------------------------------


def _write_pickle_with_code(path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"model": Payload()}, path)


@pytest.mark.parametrize("kind, message", [
    ("empty", r"checkpoint .*bad.pt is empty \(0 bytes\); delete it and train again"),
    ("truncated", r"checkpoint .*bad.pt is truncated or not a torch checkpoint"),
    ("pickle", r"checkpoint .*bad.pt holds objects other than tensors and plain types, so it was not loaded"),
    ("foreign", r"checkpoint .*bad.pt was not written by diffatlas \(missing model, ema, optimizer"),
])
def test_bad_checkpoints_are_explained(tmp_path, kind, message):
    path = tmp_path / "bad.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(100)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "pickle":
        _write_pickle_with_code(path)
    else:
        torch.save({"config": 1}, path)
    with pytest.raises(ValueError, match=message) as caught:
        load_checkpoint(path)
    assert "weights_only" not in str(caught.value)


# --- one-line errors ------------------------------------------------------------------------------------------


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


# --- resume and run folders -----------------------------------------------------------------------------------


def _data():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 16, 16, 16, generator=g) * 2 - 1 for _ in range(4)]


def _trainer(out_dir, steps=4, config=None, net=None, **kw):
    settings = TrainSettings(**({"steps": steps, "batch_size": 2, "lr": 1e-3, "ema_decay": 0.9,
                                 "checkpoint_every": 2, "seed": 5} | kw))
    diffusion = GaussianDiffusion(num_timesteps=10, prediction="x0", loss="l1")
    config = config if config is not None else {"model": {"base_channels": 8}, "diffusion": {"mask_weight": 1.0},
                                                "sdf_scale_vox": 40.0, "run": {"training": {"steps": steps}}}
    return Trainer(net or tiny_unet(3), diffusion_objective(diffusion), _data(), out_dir, settings, config=config)


def test_resume_with_other_network_diffusion_or_sdf_settings_is_refused(tmp_path, one_thread):
    _trainer(tmp_path, steps=2).fit()
    changed = {"model": {"base_channels": 8}, "sdf_scale_vox": 20.0, "diffusion": {"mask_weight": 5.0},
               "run": {"training": {"steps": 4}}}
    with pytest.raises(ValueError) as caught:
        _trainer(tmp_path, steps=4, config=changed).fit()
    assert str(caught.value) == (
        f"cannot resume {tmp_path / LAST}: it was trained with other settings: diffusion.mask_weight (1.0 "
        "there, 5.0 now), sdf_scale_vox (40.0 there, 20.0 now); use another checkpoint_dir, or resume=false to "
        f"start again from step 0 in {tmp_path}")
    assert load_checkpoint(tmp_path / LAST)["config"]["sdf_scale_vox"] == 40.0


def test_resume_with_another_network_shape_is_one_line(tmp_path, one_thread):
    _trainer(tmp_path, steps=2).fit()
    torch.manual_seed(0)
    from diffatlas.nets.unet import UNet
    wider = UNet(spatial_dims=3, in_channels=3, out_channels=3, base_channels=16, channel_mults=(1, 2),
                 attention_levels=(1,), attention_heads=2, norm_groups=4, time_conditioned=True)
    with pytest.raises(ValueError, match=r"cannot resume .*: its network differs from this run's \(\d+ parameters, "
                                         r"e\.g\. .*\); use another checkpoint_dir"):
        _trainer(tmp_path, steps=4, net=wider).fit()


def test_changed_optimisation_settings_are_logged_and_a_finished_checkpoint_says_so(tmp_path, caplog, one_thread):
    _trainer(tmp_path, steps=4).fit()
    with caplog.at_level(logging.INFO, logger="diffatlas.training"):
        _trainer(tmp_path, steps=6, lr=5e-4, checkpoint_every=3).fit()
    text = caplog.text
    assert "resuming with changed training setting lr: 0.001 -> 0.0005" in text
    assert "resuming with changed training setting steps: 4 -> 6" in text
    assert "resuming with changed training setting checkpoint_every: 2 -> 3" in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="diffatlas.training"):
        done = _trainer(tmp_path, steps=3)
        done.fit()
    assert f"{tmp_path / LAST} is at step 6, past training.steps=3: nothing to train" in caplog.text
    assert "trained to step" not in caplog.text and done.step == 6


def _finished_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_run_into_a_locked_folder_stops(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename,
                                                      "started": "2026-01-01T00:00:00"}) + "\n")
        with pytest.raises(RuntimeError) as caught:
            _trainer(tmp_path, steps=2).fit()
        assert str(caught.value) == (f"{tmp_path} is being written by another run (pid {other.pid}, started "
                                     "2026-01-01T00:00:00); wait for it to end or use another folder")
        assert not (tmp_path / LAST).exists() and not (tmp_path / "tb").exists()
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_is_taken_over_and_released(tmp_path, caplog):
    pid = _finished_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": os.uname().nodename}) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="diffatlas.training"):
        with RunLock(tmp_path) as lock:
            assert json.loads(lock.path.read_text(encoding="utf-8"))["pid"] == os.getpid()
    assert f"taking over the stale lock {tmp_path / LOCK_NAME} (pid {pid} is no longer running)" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


KILLED_RUN = """
import sys, torch
sys.path.insert(0, {root!r})
from tests.test_faults import _trainer
torch.set_num_threads(1)
_trainer({out!r}, steps=400, checkpoint_every=2).fit()
"""


def test_kill_9_and_resume_gives_the_uninterrupted_weights(tmp_path, one_thread):
    out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN.format(root=str(ROOT), out=str(out))])
    try:
        deadline = time.monotonic() + 120
        while not (out / LAST).is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(out / LAST)["step"]
    assert 2 <= killed_at < 400 and (out / LOCK_NAME).is_file()
    end = killed_at + 4
    resumed = _trainer(out, steps=end, checkpoint_every=2)
    resumed.fit()
    full = _trainer(tmp_path / "full", steps=end, checkpoint_every=2)
    full.fit()
    assert resumed.step == full.step == end and not (out / LOCK_NAME).exists()
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in full.ema.state_dict().items():
        assert torch.equal(value, resumed.ema.state_dict()[key]), key


# --- runs through the pipeline and the entry points ------------------------------------------------------------


def _run(module, *args):
    env = {k: v for k, v in os.environ.items() if k != "DIFFATLAS_DEBUG"} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace")


def test_test_run_with_an_absolute_case_id_stops_before_touching_it(tmp_path, phantom_root):
    victim = tmp_path / "elsewhere" / "y.nii.gz"
    victim.parent.mkdir()
    shutil.copy(phantom_root / "images" / "ct_0000.nii.gz", victim)
    before = victim.read_bytes()
    info = json.loads((phantom_root / "dataset.json").read_text(encoding="utf-8"))
    info["cases"].append(str(victim)[: -len(".nii.gz")])
    (phantom_root / "dataset.json").write_text(json.dumps(info), encoding="utf-8")
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


def test_phantoms_prepared_elsewhere_leave_the_repository_split_alone(tmp_path):
    from diffatlas.inputs import prepare_phantoms
    tracked = ROOT / "data" / "splits" / "phantom_ct" / "full.json"
    before, mtime = tracked.read_bytes(), tracked.stat().st_mtime_ns
    phantom = {"modality": "ct", "num_train": 40, "num_test": 10, "num_val": 2, "shape": [16, 16, 16],
               "fov_mm": 100.0, "seed": 0}
    prepare_phantoms({"out_dir": str(tmp_path / "phantom_ct"), "split_file": str(tracked), "phantom": phantom})
    assert tracked.read_bytes() == before and tracked.stat().st_mtime_ns == mtime
    fewer = phantom | {"num_train": 3}
    with pytest.raises(ValueError, match=r"would change the repository's split file .*full.json; write their split "
                                         r"beside them with split_file=.*phantom_ct/splits/full.json"):
        prepare_phantoms({"out_dir": str(tmp_path / "phantom_ct"), "split_file": str(tracked), "phantom": fewer})
    assert tracked.read_bytes() == before and tracked.stat().st_mtime_ns == mtime


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
    summary = json.loads((run_dir / "rba" / "summary.json").read_text(encoding="utf-8"))
    assert summary["num_cases"] == 2 and list(summary["failed_cases"]) == ["ct_0003"]
    reason = summary["failed_cases"]["ct_0003"]
    assert reason.startswith("RuntimeError: RBA ct_0003: affine registration of atlas ct_0000 failed, also with "
                             "every voxel sampled and a moments-centred start: Exception thrown in SimpleITK")
    assert "\n" not in reason and "ITK ERROR" in reason
    table = (run_dir / "table.md").read_text(encoding="utf-8")
    assert "phantom_ct, 2shot split, 2 cases" in table and "| (b) RBA (1 of 2 cases failed) |" in table
    assert f"- ct_0003: {reason}" in table and table.strip() in done.stdout
    rows = (run_dir / "rba" / "per_case.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].endswith(",seconds,failed") and len(rows) == 1 + 2 * 5
    assert all(row.split(",")[3] == "0.0" for row in rows if row.startswith("ct_0003"))
    assert not (run_dir / "rba" / "predictions" / "ct_0003.nii.gz").exists()
    assert (run_dir / "rba" / "predictions" / "ct_0002.nii.gz").is_file()
    assert summary["per_structure"]["Myo"]["dice_mean"] < 0.5 + 1e-9


def test_train_resumed_with_another_network_names_the_setting(tmp_path, phantom_root):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"name": "s", "dataset": "phantom_ct", "train": ["ct_0000", "ct_0001"], "test": []}))
    tiny = ["model.base_channels=8", "model.channel_mults=[1,2]", "model.attention_levels=[1]",
            "model.attention_heads=2", "model.norm_groups=4"]
    common = [f"dataset.root={phantom_root}", f"split.file={split}", f"checkpoint_dir={tmp_path}/model",
              "training.batch_size=2", "device=cpu", "training.val_every=0", f"hydra.run.dir={tmp_path}/t"]
    first = _run("diffatlas.train", *common, *tiny, "training.steps=2")
    assert first.returncode == 0, first.stderr[-2000:]
    again = _run("diffatlas.train", *common, *tiny[1:], "model.base_channels=16", "dataset.sdf_scale_vox=20",
                 "training.steps=4")
    assert again.returncode == 1
    assert again.stderr == (
        f"error: cannot resume {tmp_path}/model/checkpoint_last.pt: it was trained with other settings: "
        "model.base_channels (8 there, 16 now), sdf_scale_vox (40.0 there, 20.0 now); use another checkpoint_dir, "
        f"or resume=false to start again from step 0 in {tmp_path}/model\n")
    assert not (tmp_path / "model" / LOCK_NAME).exists()
