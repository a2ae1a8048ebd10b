"""Train/validation/test splits."""

from __future__ import annotations

import json

import pytest

from diffatlas.data.datasets import PreparedData
from diffatlas.data.phantom import write_phantom_dataset
from diffatlas.data.splits import check_split_against, load_split, make_split, save_split

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
    (tmp_path / "bad.json").write_text(json.dumps({"name": "n", "train": ["a"]}))
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
