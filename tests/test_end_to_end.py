"""prepare -> train -> test through the real Hydra entry points, on 16^3 phantoms and a tiny network."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["model.base_channels=8", "model.channel_mults=[1,2]", "model.attention_levels=[1]",
              "model.attention_heads=2", "model.norm_groups=4"]


def _run(module, *args, check=True):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_prepare_train_test(tmp_path):
    data, split = tmp_path / "phantom_ct", tmp_path / "split.json"
    _run("diffatlas.prepare", f"out_dir={data}", f"split_file={split}", "phantom.num_train=3",
         "phantom.num_test=2", "phantom.shape=[16,16,16]", "phantom.fov_mm=100", f"hydra.run.dir={tmp_path}/p")
    assert json.loads(split.read_text())["test"] == ["ct_test_0003", "ct_test_0004"]
    dataset = [f"dataset.root={data}", f"split.file={split}"]
    ckpt_dir = tmp_path / "model"
    _run("diffatlas.train", *dataset, *TINY_MODEL, f"checkpoint_dir={ckpt_dir}", "training.steps=3",
         "training.batch_size=2", "device=cpu", f"hydra.run.dir={tmp_path}/t")
    assert (ckpt_dir / "checkpoint_last.pt").is_file()
    run_dir = tmp_path / "test"
    done = _run("diffatlas.test", *dataset, f"checkpoint={ckpt_dir}/checkpoint_last.pt", "sampler=ddim",
                "sampler.num_steps=3", "device=cpu", f"hydra.run.dir={run_dir}")
    assert "| Average |" in done.stdout and "Dice (%)" in done.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_cases"] == 2 and summary["structures"] == ["Myo", "LV", "LA", "RA", "RV"]
    assert summary["sampler"]["plan"] == "ddim3" and summary["nsd_tolerance_mm"] == 2.0
    assert (run_dir / "table.md").read_text().strip() in done.stdout
    assert len((run_dir / "per_case.csv").read_text().strip().splitlines()) == 1 + 2 * 5
    pred = nib.load(run_dir / "predictions" / "ct_test_0003.nii.gz")
    image = nib.load(data / "images" / "ct_test_0003.nii.gz")
    assert np.allclose(pred.affine, image.affine) and pred.shape == image.shape


def test_missing_data_is_explained(tmp_path):
    done = _run("diffatlas.train", f"dataset.root={tmp_path}/none", f"hydra.run.dir={tmp_path}/t", check=False)
    assert done.returncode != 0
    assert "make demo" in done.stderr or "diffatlas.prepare" in done.stderr
