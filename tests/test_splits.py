"""Train/validation/test splits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from diffatlas.data.datasets import PreparedData
from diffatlas.data.phantom import write_phantom_dataset
from diffatlas.data.splits import (check_split_against, load_split, make_split, mmwhs_cases, save_split,
                                   split_from_recipe, standard_splits, write_standard_splits)
from diffatlas.inputs import load_data_and_split

ROOT = Path(__file__).resolve().parents[1]
CASES = [f"case_{i:02d}" for i in range(20)]


def test_deterministic_and_partitioned() -> None:
    a = make_split(CASES, test_fraction=0.2, val_count=2, seed=3, name="s", dataset="d")
    assert a == make_split(list(reversed(CASES)), test_fraction=0.2, val_count=2, seed=3, name="s", dataset="d")
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (14, 2, 4)
    assert sorted(a["train"] + a["val"] + a["test"]) == CASES
    assert a["test"] != make_split(CASES, seed=4)["test"]


def test_shots_keep_the_test_set() -> None:
    full = make_split(CASES, seed=1)
    two, four = make_split(CASES, seed=1, shots=2), make_split(CASES, seed=1, shots=4)
    assert two["test"] == four["test"] == full["test"]
    assert two["train"] == four["train"][:2] == full["train"][:2]
    assert set(four["train"]) <= set(full["train"])


def test_save_load_round_trip(tmp_path) -> None:
    split = make_split(CASES, seed=0, name="ct_full", dataset="phantom_ct")
    save_split(split, tmp_path / "splits" / "ct_full.json")
    assert load_split(tmp_path / "splits" / "ct_full.json") == split
    (tmp_path / "no_val.json").write_text(json.dumps({"name": "n", "dataset": "d", "train": ["a"], "test": ["b"]}))
    assert load_split(tmp_path / "no_val.json")["val"] == []


def test_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="shots"):
        make_split(CASES, shots=17)
    with pytest.raises(ValueError, match="test_fraction"):
        make_split(CASES, test_fraction=1.0)
    with pytest.raises(ValueError, match="no training cases"):
        make_split(CASES[:2], test_fraction=0.5, val_count=1)
    with pytest.raises(ValueError, match="distinct"):
        make_split(["a", "a", "b"])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_split(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"name": "n", "train": ["a"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="dataset"):
        load_split(tmp_path / "bad.json")
    (tmp_path / "overlap.json").write_text(json.dumps({"name": "n", "dataset": "d", "train": ["a"], "test": ["a"]}))
    with pytest.raises(ValueError, match="both"):
        load_split(tmp_path / "overlap.json")


def test_check_against_data(tmp_path) -> None:
    write_phantom_dataset(tmp_path, 3, "mr", shape=(16, 16, 16))
    data = PreparedData(tmp_path)
    check_split_against(make_split(data.cases, test_fraction=0.34), data)
    with pytest.raises(ValueError, match="mr_0007"):
        check_split_against({"name": "s", "train": ["mr_0000", "mr_0007"], "test": []}, data)


def test_test_only_split_is_valid_but_an_empty_one_is_not(tmp_path):
    zero_shot = {"name": "zeroshot", "dataset": "d", "train": [], "val": [], "test": ["a", "b"]}
    save_split(zero_shot, tmp_path / "z.json")
    assert load_split(tmp_path / "z.json")["test"] == ["a", "b"]
    with pytest.raises(ValueError, match="both empty"):
        save_split({**zero_shot, "test": []}, tmp_path / "e.json")


def _split(**parts):
    return {"name": "s", "dataset": "d", "train": [], "val": [], "test": [], **parts}


def test_train_test_overlap_needs_the_flag(tmp_path):
    with pytest.raises(ValueError, match='"overlap": true'):
        save_split(_split(train=["a", "b"], test=["a"]), tmp_path / "s.json")
    save_split(_split(train=["a", "b"], test=["a", "b"], overlap=True), tmp_path / "s.json")
    assert load_split(tmp_path / "s.json")["test"] == ["a", "b"]
    for parts in ({"train": ["a"], "val": ["a"]}, {"val": ["a"], "test": ["a"]}):
        with pytest.raises(ValueError, match="in both"):
            save_split(_split(overlap=True, **parts), tmp_path / "v.json")
    with pytest.raises(ValueError, match="more than once"):
        save_split(_split(train=["a", "a"], overlap=True), tmp_path / "d.json")
    with pytest.raises(ValueError, match="true or false"):
        save_split(_split(train=["a"], overlap="yes"), tmp_path / "o.json")


def test_standard_splits():
    splits = standard_splits(CASES, "d", seed=0, shots=(4, 2))
    assert list(splits) == ["full", "2shot", "4shot", "all"]
    full = splits["full"]
    assert (len(full["train"]), len(full["test"])) == (16, 4) and full["name"] == "full" and full["dataset"] == "d"
    assert full == make_split(CASES, seed=0, name="full", dataset="d")
    for n in (2, 4):
        assert splits[f"{n}shot"]["train"] == full["train"][:n] and splits[f"{n}shot"]["test"] == full["test"]
    everything = splits["all"]
    assert everything["train"] == everything["test"] == CASES and everything["overlap"] is True
    assert everything["val"] == []
    with pytest.raises(ValueError, match="17-shot needs 17"):
        standard_splits(CASES, "d", shots=(2, 17))
    assert list(standard_splits(CASES, "d", shots=())) == ["full", "all"]


def test_committed_mmwhs_splits_are_the_standard_ones(tmp_path):
    for modality in ("ct", "mr"):
        cases = mmwhs_cases(modality)
        assert cases[0] == f"{modality}_train_1001" and cases[-1] == f"{modality}_train_1020"
        written = write_standard_splits(cases, tmp_path / modality, f"mmwhs_{modality}", seed=0)
        for name, path in written.items():
            committed = ROOT / "data" / "splits" / f"mmwhs_{modality}" / f"{name}.json"
            assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), committed
    with pytest.raises(ValueError, match="modality"):
        mmwhs_cases("pet")


def test_committed_phantom_splits_load():
    splits = ROOT / "data" / "splits"
    ct, mr = load_split(splits / "phantom_ct" / "full.json"), load_split(splits / "phantom_mr" / "full.json")
    assert (len(ct["train"]), len(ct["val"]), len(ct["test"])) == (40, 2, 10)
    assert mr["train"] == [c.replace("ct_", "mr_") for c in ct["train"]] and mr["dataset"] == "phantom_mr"
    two = load_split(splits / "phantom_ct" / "2shot.json")
    assert two["train"] == ct["train"][:2] and two["test"] == ct["test"] and two["val"] == ct["val"]
    zero = load_split(splits / "phantom_mr" / "zeroshot.json")
    assert zero["train"] == [] and zero["test"] == [f"mr_test_{i:04d}" for i in range(10)]


def _splits_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "diffatlas.splits", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace")


def test_splits_command(tmp_path):
    data, out = tmp_path / "phantom_ct", tmp_path / "splits"
    write_phantom_dataset(data, 10, "ct", shape=(16, 16, 16), prefix="ct")
    hydra_dir = f"hydra.run.dir={tmp_path}/h"
    done = _splits_cli("dataset=phantom_ct", f"dataset.root={data}", f"dataset.splits_dir={out}", "seed=3",
                       "val_count=1", hydra_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["2shot.json", "4shot.json", "all.json", "full.json"]
    full = load_split(out / "full.json")
    cases = [f"ct_{i:04d}" for i in range(10)]
    assert full == make_split(cases, val_count=1, seed=3, name="full", dataset="phantom_ct")
    assert (len(full["train"]), len(full["val"]), len(full["test"])) == (7, 1, 2)
    assert load_split(out / "2shot.json")["train"] == full["train"][:2]
    assert load_split(out / "all.json")["test"] == cases
    log = done.stdout + done.stderr
    assert "saved split 4shot (4 train, 1 val, 2 test)" in log and "train and test overlap" in log

    done = _splits_cli("dataset=phantom_ct", f"dataset.root={data}", f"dataset.splits_dir={tmp_path}/s2",
                       "shots=[2,9]", hydra_dir)
    assert done.returncode == 1 and "9-shot needs 9" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "s2").exists()

    done = _splits_cli("dataset=phantom_ct", f"dataset.root={tmp_path}/none", hydra_dir)
    assert done.returncode == 1 and "diffatlas.prepare" in done.stderr and "Traceback" not in done.stderr

    done = _splits_cli(hydra_dir)
    assert done.returncode != 0 and "dataset" in done.stderr


def test_split_configs_make_the_standard_splits(tmp_path):
    """The recipes in configs/split/ give the same files as the splits command (and the committed MM-WHS ones)."""
    cases = mmwhs_cases("ct")
    standard = standard_splits(cases, "mmwhs_ct", seed=0)
    for name in ("full", "2shot", "4shot", "all"):
        recipe = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "split" / f"{name}.yaml"))["make"]
        assert split_from_recipe(recipe, cases, name=name, dataset="mmwhs_ct") == standard[name]


def test_a_missing_split_is_made_from_its_recipe_once(tmp_path):
    data = tmp_path / "phantom_ct"
    write_phantom_dataset(data, 6, "ct", shape=(16, 16, 16), prefix="ct")
    split_cfg = {"name": "3shot", "file": str(tmp_path / "splits" / "3shot.json"),
                 "make": {"test_fraction": 0.5, "seed": 1, "shots": 3}}
    _, split = load_data_and_split({"root": str(data)}, split_cfg)
    cases = [f"ct_{i:04d}" for i in range(6)]
    assert split == make_split(cases, test_fraction=0.5, seed=1, shots=3, name="3shot", dataset="phantom_ct")
    # an existing file wins over the recipe
    _, again = load_data_and_split({"root": str(data)}, split_cfg | {"make": {"test_fraction": 0.5, "seed": 2}})
    assert again == split
    with pytest.raises(ValueError, match="unknown recipe keys \\['shot'\\]"):
        split_from_recipe({"shot": 2}, cases, name="x")
    with pytest.raises(ValueError, match="'all' takes no other settings"):
        split_from_recipe({"all": True, "seed": 1}, cases, name="x")
    with pytest.raises(FileNotFoundError, match="split file not found"):
        load_data_and_split({"root": str(data)}, {"name": "x", "file": str(tmp_path / "none.json")})
