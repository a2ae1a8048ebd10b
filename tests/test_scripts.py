"""The shell scripts and the paper's experiment and evaluation configs, checked without running any training.

Scripts run with ``PYTHON`` pointing at a stand-in that only records its arguments, so what they would start is
visible and nothing long starts.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SCRIPTS = sorted((ROOT / "training_scripts").glob("*.sh")) + sorted((ROOT / "testing_scripts").glob("*.sh"))
PAPER_SCRIPTS = [p for p in SCRIPTS if re.search(r"(MMWHS|TotalSegmentator)", p.name)]
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
EVALUATIONS = sorted(p.stem for p in (CONFIGS / "evaluation").glob("*.yaml"))


def _run(script: Path, tmp_path: Path, *args: str, **env_vars: str) -> tuple[subprocess.CompletedProcess, list]:
    """Run ``script`` with a recording stand-in for Python; returns the result and the recorded calls."""
    record = tmp_path / "calls"
    record.unlink(missing_ok=True)
    fake = tmp_path / "fake_python"
    fake.write_text(f"#!/usr/bin/env bash\nprintf '%s\\0' \"$@\" >> {record}\necho >> {record}\n", encoding="utf-8")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATA_ROOT", "CHECKPOINT", "CHECKPOINT_DIR", "ACDC_RAW", "DIFFATLAS_DATA")}
    env.update(PYTHON=str(fake), DIFFATLAS_DATA=str(tmp_path / "data"), **env_vars)
    done = subprocess.run(["bash", str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=60)
    calls = []
    if record.exists():
        calls = [chunk.split("\0") for chunk in record.read_text(encoding="utf-8").split("\0\n") if chunk]
    return done, calls


def _fake_prepared(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"cases": []}), encoding="utf-8")


@pytest.mark.parametrize("script", SCRIPTS + [ROOT / "training_scripts" / "common.sh"], ids=lambda p: p.name)
def test_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, encoding="utf-8", errors="replace")
    assert done.returncode == 0, done.stderr


def test_scripts_named_in_the_readme_exist():
    named = set(re.findall(r"(?:training|testing)_scripts/[\w.-]+\.sh", (ROOT / "README.md").read_text(
        encoding="utf-8")))
    assert named, "the README names no scripts"
    assert [name for name in sorted(named) if not (ROOT / name).is_file()] == []


def test_paper_scripts_name_existing_configs():
    for script in PAPER_SCRIPTS:
        call = script.read_text(encoding="utf-8").strip().splitlines()[-1].split()
        if call[0] == "compare_paper":
            experiment, dataset, *source = call[1:call.index("--")]
            assert (CONFIGS / "experiment" / f"{experiment}.yaml").is_file(), script.name
            assert (CONFIGS / "dataset" / f"{dataset}.yaml").is_file(), script.name
            if source:
                assert (CONFIGS / "dataset" / f"{source[0]}.yaml").is_file()
                assert (CONFIGS / "split" / f"{source[1]}.yaml").is_file()
            continue
        kind, name, dataset, split = call[:4]
        group = {"train_paper": "experiment", "test_paper": "evaluation"}[kind]
        assert (CONFIGS / group / f"{name}.yaml").is_file(), script.name
        assert (CONFIGS / "dataset" / f"{dataset}.yaml").is_file() and (CONFIGS / "split" / f"{split}.yaml").is_file()
        assert (ROOT / "training_scripts" / call[-2]).is_file(), script.name  # the script that trains the model
    assert len([p for p in PAPER_SCRIPTS if p.name.startswith("train_")]) == 9
    assert len([p for p in PAPER_SCRIPTS if p.name.startswith("test_")]) == 10
    assert len([p for p in PAPER_SCRIPTS if p.name.startswith("compare_")]) == 10


def test_compare_scripts_run_the_paper_rows(tmp_path):
    for dataset in ("mmwhs_ct", "mmwhs_mr"):
        _fake_prepared(tmp_path / "data" / dataset)
    done, calls = _run(ROOT / "testing_scripts" / "compare_MMWHSCT_2shot.sh", tmp_path, "methods=[rba]")
    assert done.returncode == 0, done.stderr
    assert calls == [["-m", "diffatlas.compare", "experiment=mmwhs_ct_2shot",
                      f"dataset.root={tmp_path}/data/mmwhs_ct", "methods=[rba]"]]
    done, calls = _run(ROOT / "testing_scripts" / "compare_MMWHSMRI_all.sh", tmp_path)
    assert done.returncode == 0, done.stderr
    [call] = calls
    assert call[:4] == ["-m", "diffatlas.compare", "experiment=mmwhs_ct_all", f"dataset.root={tmp_path}/data/mmwhs_mr"]
    for part in ("dataset=mmwhs_mr", "split=all", "dataset@train_dataset=mmwhs_ct",
                 f"train_dataset.root={tmp_path}/data/mmwhs_ct", "train_split_file=data/splits/mmwhs_ct/all.json",
                 "checkpoint_dir=Model/mmwhs_ct_all", "baselines.icf.out_dir=Model/mmwhs_ct_all/icf"):
        assert part in call
    # the zero-shot source must be prepared too
    done, calls = _run(ROOT / "testing_scripts" / "compare_MMWHSMRI_all_train_TotalSegmentator.sh", tmp_path)
    assert done.returncode == 1 and calls == [] and "no prepared totalsegmentator data" in done.stderr


@pytest.mark.parametrize("script", PAPER_SCRIPTS, ids=lambda p: p.name)
def test_missing_data_is_explained(script, tmp_path):
    done, calls = _run(script, tmp_path)
    assert done.returncode == 1
    assert "diffatlas.prepare source=" in done.stderr and "raw_dir=" in done.stderr, done.stderr
    assert "huggingface.co/datasets/YuheLiuu/DiffAtlas_Preprocessed_Data" in done.stderr
    assert calls == []


def test_missing_checkpoint_names_the_training_script(tmp_path):
    _fake_prepared(tmp_path / "data" / "mmwhs_mr")
    done, calls = _run(ROOT / "testing_scripts" / "test_MMWHSMRI_all.sh", tmp_path)
    assert done.returncode == 1 and calls == []
    assert "Model/mmwhs_ct_all/checkpoint_last.pt" in done.stderr
    assert "training_scripts/train_MMWHSCT_all.sh" in done.stderr


def test_arguments_and_overrides_reach_the_commands(tmp_path):
    _fake_prepared(tmp_path / "mine")
    done, calls = _run(ROOT / "training_scripts" / "train_MMWHSCT_2shot.sh", tmp_path, "mine", "", "seed=3")
    assert done.returncode == 0, done.stderr
    assert calls == [["-m", "diffatlas.train", "experiment=mmwhs_ct_2shot", f"dataset.root={tmp_path}/mine",
                      "checkpoint_dir=Model/mmwhs_ct_2shot", "seed=3"]]

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    _fake_prepared(tmp_path / "data" / "mmwhs_ct")
    done, calls = _run(ROOT / "testing_scripts" / "test_MMWHSCT_all.sh", tmp_path, "sampler=ddim",
                       CHECKPOINT="model.pt")
    assert done.returncode == 0, done.stderr
    assert calls == [["-m", "diffatlas.test", "evaluation=mmwhs_mr_all_to_mmwhs_ct_all",
                      f"dataset.root={tmp_path}/data/mmwhs_ct", f"checkpoint={ckpt}", "sampler=ddim"]]


def test_totalsegmentator_splits_are_made_when_missing(tmp_path):
    _fake_prepared(tmp_path / "data" / "totalsegmentator")
    done, calls = _run(ROOT / "training_scripts" / "train_TotalSegmentator.sh", tmp_path)
    assert done.returncode == 0, done.stderr
    train = ["-m", "diffatlas.train", "experiment=ts_full", f"dataset.root={tmp_path}/data/totalsegmentator",
             "checkpoint_dir=Model/ts_full"]
    if (ROOT / "data" / "splits" / "totalsegmentator" / "full.json").is_file():
        assert calls == [train]
    else:
        assert calls == [["-m", "diffatlas.splits", "dataset=totalsegmentator",
                          f"dataset.root={tmp_path}/data/totalsegmentator"], train]


def test_acdc_scripts(tmp_path):
    done, calls = _run(ROOT / "training_scripts" / "train_ACDC_2shot.sh", tmp_path, "no_such_folder")
    assert done.returncode == 1 and calls == []
    assert "diffatlas.prepare source=acdc_ed" in done.stderr and f"{tmp_path}/no_such_folder" in done.stderr

    raw = tmp_path / "raw"
    raw.mkdir()
    done, calls = _run(ROOT / "training_scripts" / "train_ACDC_2shot.sh", tmp_path, "raw", "training.steps=2")
    assert done.returncode == 0, done.stderr
    data = f"{tmp_path}/data/acdc_ed"
    assert calls[0] == ["-m", "diffatlas.prepare", "source=acdc_ed", f"raw_dir={raw}", f"out_dir={data}",
                        "shape=[32,32,32]"]
    assert calls[1] == ["-m", "diffatlas.splits", "dataset=acdc_ed", f"dataset.root={data}",
                        f"dataset.splits_dir={data}/splits"]
    assert calls[2][:4] == ["-m", "diffatlas.train", "dataset=acdc_ed", f"dataset.root={data}"]
    assert "split=2shot" in calls[2] and "training=cpu_acdc" in calls[2] and calls[2][-1] == "training.steps=2"

    done, calls = _run(ROOT / "testing_scripts" / "test_ACDC_2shot.sh", tmp_path, "raw", "raw")
    assert done.returncode == 1 and "training_scripts/train_ACDC_2shot.sh" in done.stderr and calls == []

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    done, calls = _run(ROOT / "testing_scripts" / "test_ACDC_2shot.sh", tmp_path, "raw", "raw",
                       CHECKPOINT=str(ckpt))
    assert done.returncode == 0, done.stderr
    unseen = f"{tmp_path}/data/acdc_ed_unseen"
    assert calls[0] == ["-m", "diffatlas.prepare", "source=acdc_ed", f"raw_dir={raw}", f"out_dir={unseen}",
                        "shape=[32,32,32]", "name=acdc_ed_unseen"]
    assert calls[1][-1] == "shots=[]" and f"dataset.root={unseen}" in calls[1]
    assert "split=all" in calls[2] and "sampler=ddim" in calls[2] and "sampler.num_steps=50" in calls[2]


@pytest.fixture(scope="module")
def hydra_configs():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        yield


def _resolved(config: str, override: str) -> dict:
    return OmegaConf.to_container(compose(config, overrides=[override]), resolve=True)


def test_experiment_configs_compose(hydra_configs):
    assert len(EXPERIMENTS) == 9
    for name in EXPERIMENTS:
        cfg = _resolved("train", f"experiment={name}")
        assert cfg["run_name"] == name and cfg["checkpoint_dir"] == f"Model/{name}"
        assert cfg["split"]["file"] == f"{cfg['dataset']['splits_dir']}/{cfg['split']['name']}.json"
        assert name.endswith(cfg["split"]["name"]) and cfg["model"]["base_channels"] == 32
        assert cfg["training"]["steps"] == (50000 if cfg["dataset"]["name"] == "totalsegmentator" else 10000)
        if cfg["dataset"]["name"].startswith("mmwhs"):
            assert (ROOT / cfg["split"]["file"]).is_file(), cfg["split"]["file"]


def test_evaluation_configs_compose(hydra_configs):
    assert len(EVALUATIONS) == 10
    for name in EVALUATIONS:
        cfg = _resolved("test", f"evaluation={name}")
        trained = Path(cfg["checkpoint"]).parent.name
        assert cfg["run_name"] == name and cfg["checkpoint"] == f"Model/{trained}/checkpoint_last.pt"
        assert trained in EXPERIMENTS and cfg["sampler"]["plan"] == "ddpm"
        assert cfg["split"]["file"] == f"{cfg['dataset']['splits_dir']}/{cfg['split']['name']}.json"
        assert name.startswith(trained) and name.endswith(cfg["split"]["name"])
        if "_to_" in name:
            assert cfg["split"]["name"] == "all" and name.endswith(f"{cfg['dataset']['name']}_all")


def test_plain_configs_default_to_phantoms(hydra_configs):
    train, test = _resolved("train", "seed=0"), _resolved("test", "device=cpu")
    assert train["split"]["file"] == test["split"]["file"] == "data/splits/phantom_ct/full.json"
    assert train["checkpoint_dir"] == "Model/phantom_ct_full"
    assert test["checkpoint"] == "Model/phantom_ct_full/checkpoint_last.pt"
    assert _resolved("train", "dataset=acdc_ed")["split"]["file"].endswith("acdc_ed/splits/full.json")


def test_compare_config_takes_a_paper_experiment(hydra_configs):
    cfg = _resolved("compare", "experiment=mmwhs_ct_2shot")
    assert cfg["dataset"]["name"] == "mmwhs_ct" and cfg["split"]["file"] == "data/splits/mmwhs_ct/2shot.json"
    assert cfg["checkpoint_dir"] == "Model/mmwhs_ct_2shot" and cfg["methods"] == ["icf", "rba", "icmd", "diffatlas"]
    for key in ("icf", "icmd"):   # the trained baselines get DiffAtlas's budget
        assert cfg["baselines"][key]["out_dir"] == f"Model/mmwhs_ct_2shot/{key}"
        budget = {k: cfg["baselines"][key]["training"][k] for k in ("steps", "batch_size", "grad_accum")}
        assert budget == {"steps": 10000, "batch_size": 6, "grad_accum": 2}
    assert cfg["baselines"]["icmd"]["sdf_clip"] == cfg["dataset"]["sdf_clip"]
    assert "train_dataset" not in cfg and cfg["train_split_file"] is None


@pytest.mark.parametrize("shots", [2, 4])
def test_acdc_compare_scripts(tmp_path, shots):
    """The ACDC comparison prepares the raw folder and its splits, then compares the six rows on one split."""
    done, calls = _run(ROOT / "testing_scripts" / f"compare_ACDC_{shots}shot.sh", tmp_path, "no_such_folder")
    assert done.returncode == 1 and calls == [] and f"{tmp_path}/no_such_folder" in done.stderr
    raw = tmp_path / "raw"
    raw.mkdir()
    done, calls = _run(ROOT / "testing_scripts" / f"compare_ACDC_{shots}shot.sh", tmp_path, "raw",
                       "training.steps=2")
    assert done.returncode == 0, done.stderr
    data = f"{tmp_path}/data/acdc_ed"
    assert calls[0][:3] == ["-m", "diffatlas.prepare", "source=acdc_ed"] and f"out_dir={data}" in calls[0]
    assert calls[1][:2] == ["-m", "diffatlas.splits"]
    compare = calls[2]
    assert compare[:2] == ["-m", "diffatlas.compare"] and f"split={shots}shot" in compare
    assert "methods=[icf,rba,icmd,diffatlas,mean_atlas,nearest_atlas]" in compare
    assert "training=cpu_acdc" in compare and "training.steps=400" in compare and compare[-1] == "training.steps=2"
