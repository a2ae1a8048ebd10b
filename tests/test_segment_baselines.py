"""Segmenting new scans with the baselines' checkpoints: ICF and ICMD fitted for a few steps on 16^3 CT phantoms,
then a raw phantom scan segmented through ``Segmenter.from_checkpoint`` and ``python -m diffatlas.segment``'s
function. The label maps are rough; the tests check that the checkpoint's own network made them, on the scan's
grid, and that checkpoints lacking what the segmenter needs fail in one line."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from diffatlas.cli import CONFIG_PATH, to_plain
from diffatlas.data.datasets import PreparedData
from diffatlas.data.phantom import write_raw_phantom_scans
from diffatlas.inputs import prepare_phantoms
from diffatlas.methods.icf import ICF
from diffatlas.methods.icmd import ICMD
from diffatlas.segmenter import Segmenter
from diffatlas.segmenting import segment
from diffatlas.training.trainer import LAST

SHAPE, FOV_MM = (16, 16, 16), 100.0
NETWORK = dict(base_channels=8, channel_mults=[1, 2], attention_levels=[], norm_groups=4)
TRAINING = dict(steps=3, batch_size=2, lr=3e-3, ema_decay=0.9, checkpoint_every=1000, seed=3)
FAST = {"plan": "ddim", "num_steps": 2, "eta": 0.0, "start_t": None}
STRUCTURES = ("Myo", "LV", "LA", "RA", "RV")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> PreparedData:
    """Three 16^3 CT phantoms on a 100 mm field of view, prepared as ``python -m diffatlas.prepare`` does."""
    tmp = tmp_path_factory.mktemp("baseline_data")
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        prep = compose("prepare", overrides=[f"out_dir={tmp}/data", f"split_file={tmp}/split.json",
                                             "phantom.num_train=3", "phantom.num_test=0", "phantom.num_val=0",
                                             f"phantom.shape={list(SHAPE)}", f"phantom.fov_mm={FOV_MM}"])
        prepare_phantoms(to_plain(prep))
    return PreparedData(tmp / "data")


@pytest.fixture(scope="module")
def checkpoints(data, tmp_path_factory) -> dict[str, Path]:
    """ICF and ICMD (DDPM mode) fitted for 3 steps; their trainer checkpoints."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for name, cls, extra in (("ICF", ICF, {}), ("ICMD", ICMD, {"diffusion": {"num_timesteps": 20}, "plan": "ddim",
                                                                 "num_steps": 4})):
        folder = tmp_path_factory.mktemp(name.lower())
        cls(out_dir=folder, network=NETWORK, training=TRAINING, device="cpu", **extra).fit(data, list(data.cases))
        out[name] = folder / LAST
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    """One raw (HU, unlabelled) CT phantom scan, held-out index 3."""
    return write_raw_phantom_scans(tmp_path_factory.mktemp("raw"), 1, "ct", SHAPE, FOV_MM, seed=0, first_index=3)[0]


@pytest.mark.parametrize("method", ["ICF", "ICMD"])
@pytest.mark.parametrize("roi", ["auto", "whole"])
def test_segmenter_api_segments_a_raw_scan_with_the_checkpoints_network(method, roi, checkpoints, scan, tmp_path):
    seg = Segmenter.from_checkpoint(checkpoints[method], "cpu", sampler=FAST, roi=roi)
    assert seg.structures == STRUCTURES and seg.model.describe()["method"] == method
    assert seg.intensity == {"method": "ct_window", "window": [-250.0, 800.0]} and seg.orientation == "RAS"
    result = seg.segment_file(scan, tmp_path / "out.nii.gz")
    written, raw = nib.load(str(tmp_path / "out.nii.gz")), nib.load(str(scan))
    assert written.shape == raw.shape == result.labels.shape
    np.testing.assert_allclose(written.affine, raw.affine, atol=1e-4)
    labels = np.asarray(written.dataobj)
    assert labels.min() >= 0 and labels.max() <= len(STRUCTURES)
    assert result.uncertainty_grid is None
    # no postprocessing: the crop's labels are exactly what the fitted network gives for that crop
    reference = (ICF.from_checkpoint(checkpoints[method], "cpu") if method == "ICF" else
                 ICMD.from_checkpoint(checkpoints[method], "cpu", plan="ddim", num_steps=2))
    np.testing.assert_array_equal(result.labels_grid, reference.segment_grid(result.image_grid, "ct_0003"))


def test_icmd_samples_with_the_given_plan_and_seed(checkpoints):
    seg = Segmenter.from_checkpoint(checkpoints["ICMD"], "cpu", sampler=FAST, roi="whole", seed=7)
    described = seg.describe()
    assert {key: described[key] for key in ("method", "mode", "plan", "network_evaluations", "seed", "roi")} == {
        "method": "ICMD", "mode": "ddpm", "plan": "ddim2", "network_evaluations": 2, "seed": 7, "roi": "whole"}
    with pytest.raises(ValueError, match="ICMD samples from pure noise at t=19; the plan ddpm_from5 starts at t=5"):
        Segmenter.from_checkpoint(checkpoints["ICMD"], "cpu", sampler={"plan": "ddpm", "start_t": 5})


@pytest.mark.parametrize("method", ["ICF", "ICMD"])
def test_segment_command_function_writes_the_scan_geometry(method, checkpoints, scan, tmp_path):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = to_plain(compose("segment", overrides=[f"checkpoint={checkpoints[method]}", f"input={scan}",
                                                     f"output={tmp_path}/out", "device=cpu", "sampler.num_steps=2"]))
    summary = segment(cfg)
    assert summary["segmented"] == ["ct_0003"] and summary["failed"] == {}
    written, raw = nib.load(str(tmp_path / "out" / "ct_0003.nii.gz")), nib.load(str(scan))
    assert written.shape == raw.shape
    np.testing.assert_allclose(written.affine, raw.affine, atol=1e-4)
    assert np.asarray(written.dataobj).max() <= len(STRUCTURES)
    assert method in (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert (tmp_path / "out" / "volumes.csv").read_text(
        encoding="utf-8").startswith("case,Myo_ml,LV_ml,LA_ml,RA_ml,RV_ml")


def test_checkpoints_lacking_what_the_segmenter_needs_are_one_line_errors(checkpoints, tmp_path):
    for method, key in (("ICF", "preparation"), ("ICMD", "sampling")):
        ckpt = torch.load(checkpoints[method], map_location="cpu", weights_only=True)
        del ckpt["config"][key]
        torch.save(ckpt, tmp_path / f"{method}.pt")
        with pytest.raises(ValueError, match=f"this {method} checkpoint lacks {key}, which the segmenter needs") as err:
            Segmenter.from_checkpoint(tmp_path / f"{method}.pt", "cpu")
        assert "\n" not in str(err.value)
    ckpt = torch.load(checkpoints["ICF"], map_location="cpu", weights_only=True)
    ckpt["config"]["method"] = "RBA"
    torch.save(ckpt, tmp_path / "rba.pt")
    with pytest.raises(ValueError, match="a RBA checkpoint; the segmenter takes DiffAtlas, ICF and ICMD"):
        Segmenter.from_checkpoint(tmp_path / "rba.pt", "cpu")
    with pytest.raises(ValueError, match="ensemble_size=2 needs a DiffAtlas checkpoint"):
        Segmenter.from_checkpoint(checkpoints["ICF"], "cpu", sampler=FAST, ensemble_size=2)
