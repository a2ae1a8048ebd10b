"""prepare -> train -> test through the real Hydra entry points, on 16^3 phantoms and a tiny network."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from diffatlas.segmenter import Segmenter
from tests.raw_fixtures import write_nnunet

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["model.base_channels=8", "model.channel_mults=[1,2]", "model.attention_levels=[1]",
              "model.attention_heads=2", "model.norm_groups=4"]


def _run(module, *args, check=True):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace")
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_prepare_train_test(tmp_path):
    data, split = tmp_path / "phantom_ct", tmp_path / "split.json"
    _run("diffatlas.prepare", f"out_dir={data}", f"split_file={split}", "phantom.num_train=3",
         "phantom.num_test=2", "phantom.shape=[16,16,16]", "phantom.fov_mm=100", f"hydra.run.dir={tmp_path}/p")
    assert json.loads(split.read_text(encoding="utf-8"))["test"] == ["ct_test_0003", "ct_test_0004"]
    dataset = [f"dataset.root={data}", f"split.file={split}"]
    ckpt_dir = tmp_path / "model"
    _run("diffatlas.train", *dataset, *TINY_MODEL, f"checkpoint_dir={ckpt_dir}", "training.steps=3",
         "training.batch_size=2", "device=cpu", f"hydra.run.dir={tmp_path}/t")
    assert (ckpt_dir / "checkpoint_last.pt").is_file()
    run_dir = tmp_path / "test"
    done = _run("diffatlas.test", *dataset, f"checkpoint={ckpt_dir}/checkpoint_last.pt", "sampler=ddim",
                "sampler.num_steps=3", "inference.ensemble_size=2", "inference.seed=5", "device=cpu",
                f"hydra.run.dir={run_dir}")
    assert "| Average |" in done.stdout and "Dice (%)" in done.stdout
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["num_cases"] == 2 and summary["structures"] == ["Myo", "LV", "LA", "RA", "RV"]
    assert summary["sampler"]["plan"] == "ddim3" and summary["nsd_tolerance_mm"] == 2.0
    assert summary["sampler"]["network_evaluations"] == 6 and summary["sampler"]["uncertainty"] == "sdf_std"
    assert {k: summary["sampler"][k] for k in ("seed", "ensemble_size", "fusion", "guidance_scale", "bf16", "roi")} \
        == {"seed": 5, "ensemble_size": 2, "fusion": "mean_sdf", "guidance_scale": 0.0, "bf16": False, "roi": "label"}
    spread = nib.load(run_dir / "predictions" / "ct_test_0003_uncertainty.nii.gz")
    assert spread.shape == (16, 16, 16) and np.asarray(spread.dataobj).min() >= 0
    assert (run_dir / "table.md").read_text(encoding="utf-8").strip() in done.stdout
    assert len((run_dir / "per_case.csv").read_text(encoding="utf-8").strip().splitlines()) == 1 + 2 * 5
    pred = nib.load(run_dir / "predictions" / "ct_test_0003.nii.gz")
    image = nib.load(data / "images" / "ct_test_0003.nii.gz")
    assert np.allclose(pred.affine, image.affine) and pred.shape == image.shape
    assert np.allclose(spread.affine, image.affine)


def test_keys_moved_to_the_inference_group_are_one_line_errors(tmp_path):
    for module, arg, new in (("diffatlas.test", "sampler.ensemble_size=3", "inference.ensemble_size"),
                             ("diffatlas.segment", "roi=auto", "inference.roi"),
                             ("diffatlas.compare", "+sampler.guidance_scale=0.1", "inference.guidance_scale"),
                             ("diffatlas.test", "postprocess.fill_holes=[LV]", "inference.postprocess.fill_holes")):
        done = _run(module, arg, f"hydra.run.dir={tmp_path}/h", check=False)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done.stderr
        assert lines[0].startswith(f"error: {arg.split('=')[0].lstrip('+')} moved to {new} (")


def test_missing_data_is_explained(tmp_path):
    done = _run("diffatlas.train", f"dataset.root={tmp_path}/none", f"hydra.run.dir={tmp_path}/t", check=False)
    assert done.returncode != 0
    assert "make demo" in done.stderr or "diffatlas.prepare" in done.stderr


def test_nnunet_raw_to_native_scores(tmp_path):
    raw, data = tmp_path / "raw", tmp_path / "prepared"
    write_nnunet(raw, cases=[f"pat{n}" for n in range(5)])
    _run("diffatlas.prepare", "source=acdc_ed", f"raw_dir={raw}", f"out_dir={data}", "shape=[16,16,16]",
         f"hydra.run.dir={tmp_path}/p")
    assert (data / "preparation_report.md").is_file()
    _run("diffatlas.splits", "dataset=acdc_ed", f"dataset.root={data}", f"hydra.run.dir={tmp_path}/s")
    assert json.loads((data / "splits" / "2shot.json").read_text(encoding="utf-8"))["train"].__len__() == 2
    dataset = ["dataset=acdc_ed", f"dataset.root={data}", "split=2shot"]
    ckpt_dir = tmp_path / "model"
    _run("diffatlas.train", *dataset, *TINY_MODEL, f"checkpoint_dir={ckpt_dir}", "training.steps=2",
         "training.batch_size=2", "heart_net.steps=2", "heart_net.base_channels=4", "device=cpu",
         f"hydra.run.dir={tmp_path}/t")
    # raw scans behind the data: the checkpoint keeps localiser atlases and the heart network trained on them
    stored = torch.load(ckpt_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert [r["case"] for r in stored["localiser"]] == sorted(json.loads((data / "splits" / "2shot.json").read_text(
        encoding="utf-8"))["train"]) and stored["heart_net"]["settings"]["steps"] == 2
    seg = Segmenter.from_checkpoint(ckpt_dir / "checkpoint_last.pt", device="cpu", sampler={"plan": "ddim",
                                    "num_steps": 2, "eta": 0.0, "start_t": None})
    assert seg.describe()["localiser"] == "2 registered atlases and a heart network"
    run_dir = tmp_path / "test"
    done = _run("diffatlas.test", *dataset, f"checkpoint={ckpt_dir}/checkpoint_last.pt", "sampler=ddim",
                "sampler.num_steps=2", "device=cpu", f"hydra.run.dir={run_dir}")
    assert "scored on the native grid" in done.stdout and "scored on the prepared grid" in done.stdout
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["space"] == "prepared grid" and summary["native"]["space"] == "native"
    assert summary["native"]["structures"] == ["RV", "Myo", "LV"] and summary["native"]["num_cases"] == 1
    [case] = json.loads((data / "splits" / "2shot.json").read_text(encoding="utf-8"))["test"]
    pred = nib.load(run_dir / "predictions_native" / f"{case}.nii.gz")
    scan = nib.load(raw / "imagesTr" / f"{case}_0000.nii.gz")
    assert pred.shape == scan.shape and np.allclose(pred.affine, scan.affine, atol=1e-4)
    rows = (run_dir / "per_case.csv").read_text(encoding="utf-8").strip().splitlines()
    assert len(rows) == 1 + 2 * 3 and sum(",native," in row for row in rows) == 3
    # label-free: registration, then the heart network, then the model, back on the scan's own grid
    result = seg.segment_file(raw / "imagesTr" / f"{case}_0000.nii.gz")
    assert result.labels.shape == scan.shape and result.grid.size == (16, 16, 16)
    # the localisation benchmark frames the two cases that neither trained nor tested the 2-shot model
    splits = data / "splits"
    bench = [sys.executable, str(ROOT / "benchmarks" / "localisation.py"), str(ckpt_dir / "checkpoint_last.pt"),
             "--data", str(data), "--split", str(splits / "all.json"), "--exclude", str(splits / "2shot.json")]
    done = subprocess.run([*bench, "--json", str(tmp_path / "loc.json")], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    framed = json.loads((tmp_path / "loc.json").read_text(encoding="utf-8"))
    two_shot = json.loads((splits / "2shot.json").read_text(encoding="utf-8"))
    assert sorted(framed) == sorted({f"pat{n}" for n in range(5)} - set(two_shot["train"]) - set(two_shot["test"]))
    for crops in framed.values():
        assert set(crops) == {"registration", "registration + heart network"}
        assert all(distance >= 0 and ratio > 0 for distance, ratio in crops.values())
    assert "| registration + heart network |" in done.stdout and "2 cases" in done.stdout
    missing = subprocess.run([*bench[:-2], "--exclude", str(splits / "none.json")], capture_output=True, text=True,
                             cwd=ROOT, timeout=600)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and len(missing.stderr.splitlines()) == 1
