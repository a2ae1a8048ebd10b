"""``python -m diffatlas.compare`` on 16^3 phantoms with tiny settings: every method fits and scores the same test
cases, and the combined table has the paper's rows."""

import json

import nibabel as nib
import numpy as np

from diffatlas.data.phantom import write_phantom_dataset, write_raw_phantom_scans
from diffatlas.data.splits import save_split
from tests.test_end_to_end import TINY_MODEL, _run

FAST_RBA = ["baselines.rba.affine_iterations=5", "baselines.rba.deformable=none", "baselines.rba.shrink_factors=[1]",
            "baselines.rba.smoothing_sigmas_mm=[0.0]", "baselines.rba.metric=mean_squares"]
TINY_ICF = ["baselines.icf.network.base_channels=8", "baselines.icf.network.channel_mults=[1,2]",
            "baselines.icf.network.norm_groups=4", "baselines.icf.training.steps=2",
            "baselines.icf.training.batch_size=2", "baselines.icf.device=cpu"]
TINY_ICMD = ["baselines.icmd.network.base_channels=8", "baselines.icmd.network.channel_mults=[1,2]",
             "baselines.icmd.network.attention_levels=[1]", "baselines.icmd.network.attention_heads=2",
             "baselines.icmd.network.norm_groups=4", "baselines.icmd.training.steps=2",
             "baselines.icmd.training.batch_size=2", "baselines.icmd.num_steps=2", "baselines.icmd.device=cpu"]


def test_compare_writes_the_paper_table(tmp_path):
    data, split = tmp_path / "phantom_ct", tmp_path / "split.json"
    _run("diffatlas.prepare", f"out_dir={data}", f"split_file={split}", "phantom.num_train=2", "phantom.num_test=2",
         "phantom.shape=[16,16,16]", "phantom.fov_mm=100", f"hydra.run.dir={tmp_path}/p")
    run_dir = tmp_path / "compare"
    done = _run("diffatlas.compare", f"dataset.root={data}", f"split.file={split}", "split.name=2shot",
                *TINY_MODEL, "training.steps=2", "training.batch_size=2", "sampler.num_steps=2", "device=cpu",
                f"checkpoint_dir={tmp_path}/diffatlas", f"baselines.icf.out_dir={tmp_path}/icf", *FAST_RBA,
                *TINY_ICF, *TINY_ICMD, f"baselines.icmd.out_dir={tmp_path}/icmd", "inference.seed=3",
                "inference.postprocess.largest_component=all", f"hydra.run.dir={run_dir}")
    table = (run_dir / "table.md").read_text(encoding="utf-8")
    assert table.strip() in done.stdout
    rows = [line.split(" | ")[0].lstrip("| ") for line in table.splitlines() if line.startswith("| (")]
    assert rows == ["(a) ICF", "(b) RBA", "(c) ICMD", "(d) DiffAtlas"]
    assert "Myo Dice" in table and "Average NSD" in table
    summaries = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert [s["method"] for s in summaries] == rows
    assert all(s["num_cases"] == 2 and s["sampler"]["train_cases"] == 2 for s in summaries)
    assert all(s["sampler"]["postprocess"]["largest_component"] == ["Myo", "LV", "LA", "RA", "RV"] for s in summaries)
    assert summaries[3]["sampler"]["seed"] == 3 and summaries[3]["sampler"]["plan"] == "ddim2"
    for key in ("icf", "rba", "icmd", "diffatlas"):
        assert json.loads((run_dir / key / "summary.json").read_text(encoding="utf-8"))["method"] in rows
        pred = nib.load(run_dir / key / "predictions" / "ct_test_0002.nii.gz")
        image = nib.load(data / "images" / "ct_test_0002.nii.gz")
        assert np.allclose(pred.affine, image.affine) and pred.shape == (16, 16, 16)
    # the baselines' checkpoints that compare wrote segment a new raw scan like DiffAtlas's
    scan = write_raw_phantom_scans(tmp_path / "raw", 1, "ct", (16, 16, 16), 100.0, seed=0, first_index=7)[0]
    for key in ("icf", "icmd"):
        out = tmp_path / f"segmented_{key}"
        _run("diffatlas.segment", f"checkpoint={tmp_path}/{key}/checkpoint_last.pt", f"input={scan}",
             f"output={out}", "device=cpu", "sampler.num_steps=2", f"hydra.run.dir={tmp_path}/s_{key}")
        written, raw = nib.load(out / "ct_0007.nii.gz"), nib.load(scan)
        assert written.shape == raw.shape and np.allclose(written.affine, raw.affine, atol=1e-4)
        assert 0 <= np.asarray(written.dataobj).min() and np.asarray(written.dataobj).max() <= 5
    # RBA with the two training phantoms as atlases segments something
    assert json.loads((run_dir / "rba" / "summary.json").read_text(encoding="utf-8"))["mean"]["dice"] > 0.2


def test_compare_explains_bad_input(tmp_path):
    done = _run("diffatlas.compare", f"dataset.root={tmp_path}/none", f"hydra.run.dir={tmp_path}/c", check=False)
    assert done.returncode == 1 and "diffatlas.prepare" in done.stderr and "Traceback" not in done.stderr
    data, split = tmp_path / "phantom_ct", tmp_path / "split.json"
    write_phantom_dataset(data, 3, "ct", shape=(16, 16, 16), prefix="ct")
    save_split({"name": "2shot", "dataset": "phantom_ct", "train": ["ct_0000", "ct_0001"], "test": ["ct_0002"]},
               split)
    done = _run("diffatlas.compare", "methods=[icf,nnunet]", f"dataset.root={data}", f"split.file={split}",
                f"hydra.run.dir={tmp_path}/c", check=False)
    assert done.returncode == 1 and "unknown method 'nnunet'" in done.stderr and "Traceback" not in done.stderr


def test_zero_shot_compare_fits_on_one_dataset_and_scores_another(tmp_path):
    ct, mr, split, zero = tmp_path / "ct", tmp_path / "mr", tmp_path / "ct.json", tmp_path / "mr.json"
    write_phantom_dataset(ct, 2, "ct", shape=(16, 16, 16), fov_mm=100.0, prefix="ct")
    write_phantom_dataset(mr, 2, "mr", shape=(16, 16, 16), fov_mm=100.0, prefix="mr", seed=1)
    save_split({"name": "2shot", "dataset": "phantom_ct", "train": ["ct_0000", "ct_0001"], "test": []}, split)
    save_split({"name": "zeroshot", "dataset": "phantom_mr", "train": [], "test": ["mr_0000", "mr_0001"]}, zero)
    run_dir = tmp_path / "compare"
    done = _run("diffatlas.compare", "dataset=phantom_mr", f"dataset.root={mr}", f"split.file={zero}",
                "split.name=zeroshot", "dataset@train_dataset=phantom_ct", f"train_dataset.root={ct}",
                f"train_split_file={split}", "methods=[rba,diffatlas]", *TINY_MODEL, "training.steps=2",
                "training.batch_size=2", "sampler.num_steps=2", "device=cpu", f"checkpoint_dir={tmp_path}/d",
                *FAST_RBA, f"hydra.run.dir={run_dir}")
    assert "phantom_mr, zeroshot split, 2 cases" in done.stdout
    summaries = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert [s["sampler"]["train_dataset"] for s in summaries] == ["phantom_ct", "phantom_ct"]
    assert all(s["dataset"] == "phantom_mr" and s["sampler"]["train_cases"] == 2 for s in summaries)
    done = _run("diffatlas.compare", "dataset=phantom_mr", f"dataset.root={mr}", f"split.file={zero}",
                "dataset@train_dataset=phantom_ct", f"train_dataset.root={ct}", f"hydra.run.dir={tmp_path}/c2",
                check=False)
    assert done.returncode == 1 and "train_split_file" in done.stderr
