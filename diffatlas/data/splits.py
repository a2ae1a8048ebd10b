"""Train/validation/test splits stored as JSON.

A split file holds ``{"name": str, "dataset": str, "train": [...], "val": [...], "test": [...]}``
(``val`` optional, possibly empty). Few-shot splits keep the first N training cases of the shuffled
order, so for one seed the test set is the same at every shot count and smaller shot sets are
contained in larger ones.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from diffatlas.data.datasets import PreparedData

logger = logging.getLogger(__name__)

PARTS = ("train", "val", "test")
_REQUIRED = ("name", "dataset", "train", "test")


def make_split(
    cases: Sequence[str],
    test_fraction: float = 0.2,
    val_count: int = 0,
    seed: int = 0,
    shots: int | None = None,
    name: str = "split",
    dataset: str = "",
) -> dict[str, Any]:
    """Shuffle ``cases`` with ``seed`` and cut them into test, validation and training parts.

    The case order given does not matter (cases are sorted before shuffling). The test part is the
    first ``round(test_fraction * len(cases))`` shuffled cases, validation the next ``val_count``,
    training the rest; ``shots=N`` keeps only the first N training cases.

    Returns:
        the split dictionary (see the module docstring).
    """
    ordered = sorted(cases)
    if len(set(ordered)) != len(ordered):
        raise ValueError("cases must be distinct")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    if val_count < 0:
        raise ValueError(f"val_count must be >= 0, got {val_count}")
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    num_test = int(round(test_fraction * len(shuffled)))
    test = shuffled[:num_test]
    val = shuffled[num_test : num_test + val_count]
    train = shuffled[num_test + val_count :]
    if not train:
        raise ValueError(
            f"no training cases left: {len(cases)} cases, {num_test} for test, {val_count} for validation"
        )
    if shots is not None:
        if not 1 <= shots <= len(train):
            raise ValueError(f"shots must lie in 1..{len(train)} (the training cases available), got {shots}")
        train = train[:shots]
    return {"name": name, "dataset": dataset, "train": train, "val": val, "test": test}


def _validate(split: dict[str, Any], source: str) -> dict[str, Any]:
    missing = [key for key in _REQUIRED if key not in split]
    if missing:
        raise ValueError(f"{source}: missing keys {missing} (required: {list(_REQUIRED)})")
    split = {**split, "val": list(split.get("val", []))}
    seen: dict[str, str] = {}
    for part in PARTS:
        if not isinstance(split[part], list) or not all(isinstance(c, str) for c in split[part]):
            raise ValueError(f"{source}: {part!r} must be a list of case ids")
        for case in split[part]:
            if case in seen:
                raise ValueError(f"{source}: case {case!r} is in both {seen[case]!r} and {part!r}")
            seen[case] = part
    if not split["train"] and not split["test"]:
        raise ValueError(f"{source}: 'train' and 'test' are both empty")
    return split


def save_split(split: dict[str, Any], path: str | Path) -> None:
    """Validate ``split`` and write it as JSON (parent folders are created)."""
    path = Path(path)
    split = _validate(split, "split")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split, indent=2) + "\n")
    sizes = [len(split[part]) for part in PARTS]
    logger.info("saved split %s (%d train, %d val, %d test) to %s", split["name"], *sizes, path)


def load_split(path: str | Path) -> dict[str, Any]:
    """Read and validate a split file; ``val`` defaults to an empty list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path} (make one with diffatlas.data.splits.make_split)")
    try:
        split = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(split, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return _validate(split, str(path))


def check_split_against(split: dict[str, Any], data: PreparedData) -> None:
    """Raise ValueError listing every case of ``split`` that ``data`` does not hold."""
    known = set(data.cases)
    missing = [case for part in PARTS for case in split.get(part, []) if case not in known]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        where = f"dataset {data.name!r} ({data.root})"
        raise ValueError(f"split {split.get('name')!r}: cases missing from {where}: {shown}")
