"""Train/validation/test splits stored as JSON.

A split file holds ``{"name": str, "dataset": str, "train": [...], "val": [...], "test": [...]}``
(``val`` optional, possibly empty). Few-shot splits keep the first N training cases of the shuffled
order, so for one seed the test set is the same at every shot count and smaller shot sets are
contained in larger ones.

A case may be in one part only, with one exception: a file carrying ``"overlap": true`` may list a case
in both ``train`` and ``test``. That is the ``all`` split of the paper's zero-shot setting (train on every
case of the source dataset, test on every case of the target): one file of a dataset then serves as the
training set when the dataset is the source and as the test set when it is the target. Scores on such a
split are only meaningful for a model trained on another dataset, so the overlap must be asked for
explicitly; a validation case is never allowed to be in another part (it steers training).

``write_standard_splits`` writes the four files a dataset's experiments use: ``full`` (an 80/20 cut),
``<N>shot`` (the first N training cases of ``full``, the same test set) and ``all``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from diffatlas.data.caseids import check_case_ids
from diffatlas.data.datasets import PreparedData
from diffatlas.data.io import read_json_object

logger = logging.getLogger(__name__)

PARTS = ("train", "val", "test")
_REQUIRED = ("name", "dataset", "train", "test")
OVERLAP_KEY = "overlap"


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
    overlap = split.get(OVERLAP_KEY, False)
    if not isinstance(overlap, bool):
        raise ValueError(f"{source}: {OVERLAP_KEY!r} must be true or false, got {overlap!r}")
    val = split.get("val", [])
    split = {**split, "val": list(val) if isinstance(val, list) else val}
    seen: dict[str, str] = {}
    for part in PARTS:
        if not isinstance(split[part], list) or not all(isinstance(c, str) for c in split[part]):
            raise ValueError(f"{source}: {part!r} must be a list of case ids")
        check_case_ids(split[part], f"{source} ({part!r})")
        if len(set(split[part])) != len(split[part]):
            raise ValueError(f"{source}: {part!r} lists a case more than once")
        for case in split[part]:
            if case in seen and not (overlap and {seen[case], part} == {"train", "test"}):
                hint = "" if overlap or "val" in (seen[case], part) else f' (set "{OVERLAP_KEY}": true to allow it)'
                raise ValueError(f"{source}: case {case!r} is in both {seen[case]!r} and {part!r}{hint}")
            seen.setdefault(case, part)
    if not split["train"] and not split["test"]:
        raise ValueError(f"{source}: 'train' and 'test' are both empty")
    return split


def make_all_split(cases: Sequence[str], name: str = "all", dataset: str = "") -> dict[str, Any]:
    """Every case in both ``train`` and ``test`` (sorted), no validation: the zero-shot ``all`` split."""
    ordered = sorted(cases)
    if len(set(ordered)) != len(ordered):
        raise ValueError("cases must be distinct")
    if not ordered:
        raise ValueError("no cases to split")
    return {"name": name, "dataset": dataset, OVERLAP_KEY: True, "train": ordered, "val": [], "test": list(ordered)}


def split_from_recipe(recipe: Mapping[str, Any], cases: Sequence[str], name: str, dataset: str = "") -> dict[str, Any]:
    """A split made from a config recipe: ``{"all": true}`` (``make_all_split``) or the keyword arguments of
    ``make_split`` (``test_fraction``, ``val_count``, ``seed``, ``shots``)."""
    recipe = dict(recipe)
    if recipe.pop("all", False):
        if recipe:
            raise ValueError(f"split {name}: 'all' takes no other settings, got {sorted(recipe)}")
        return make_all_split(cases, name=name, dataset=dataset)
    allowed = {"test_fraction", "val_count", "seed", "shots"}
    unknown = sorted(set(recipe) - allowed)
    if unknown:
        raise ValueError(f"split {name}: unknown recipe keys {unknown}; allowed: {sorted(allowed)} or all")
    return make_split(cases, name=name, dataset=dataset, **recipe)


def standard_splits(
    cases: Sequence[str],
    dataset_name: str,
    seed: int = 0,
    test_fraction: float = 0.2,
    shots: Sequence[int] = (2, 4),
    val_count: int = 0,
) -> dict[str, dict[str, Any]]:
    """The splits every dataset gets, by name: ``full``, ``<N>shot`` for each N of ``shots``, and ``all``.

    Raises ValueError (before anything is written by ``write_standard_splits``) when a shot count exceeds
    the training cases of ``full``.
    """
    full = make_split(cases, test_fraction=test_fraction, val_count=val_count, seed=seed, name="full",
                      dataset=dataset_name)
    splits = {"full": full}
    for n in sorted({int(n) for n in shots}):
        if not 1 <= n <= len(full["train"]):
            raise ValueError(f"{n}-shot needs {n} training cases but the full split of {len(cases)} cases has "
                             f"{len(full['train'])}; choose other shots (e.g. shots=[]) or test_fraction")
        splits[f"{n}shot"] = make_split(cases, test_fraction=test_fraction, val_count=val_count, seed=seed,
                                        shots=n, name=f"{n}shot", dataset=dataset_name)
    splits["all"] = make_all_split(cases, dataset=dataset_name)
    return splits


def write_standard_splits(
    cases: Sequence[str],
    out_dir: str | Path,
    dataset_name: str,
    seed: int = 0,
    test_fraction: float = 0.2,
    shots: Sequence[int] = (2, 4),
    val_count: int = 0,
) -> dict[str, Path]:
    """Write ``standard_splits`` as ``<out_dir>/<name>.json``; returns the paths by split name."""
    splits = standard_splits(cases, dataset_name, seed=seed, test_fraction=test_fraction, shots=shots,
                             val_count=val_count)
    paths = {}
    for name, split in splits.items():
        paths[name] = Path(out_dir) / f"{name}.json"
        save_split(split, paths[name])
    return paths


def write_dataset_splits(
    data_root: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    test_fraction: float = 0.2,
    shots: Sequence[int] = (2, 4),
    val_count: int = 0,
) -> dict[str, Path]:
    """``write_standard_splits`` for the cases of the prepared dataset at ``data_root`` (named as it names itself)."""
    data = PreparedData(data_root)
    return write_standard_splits(data.cases, out_dir, data.name, seed=seed, test_fraction=test_fraction,
                                 shots=shots, val_count=val_count)


MMWHS_NUM_CASES = 20


def mmwhs_cases(modality: str) -> list[str]:
    """The 20 public MM-WHS training case ids of ``modality`` (``"ct"`` or ``"mr"``): ``<mod>_train_1001..1020``.

    The committed ``data/splits/mmwhs_<modality>/`` files are ``write_standard_splits(mmwhs_cases(m), ...,
    seed=0)``; ``tests/test_splits.py`` checks that they still are.
    """
    if modality not in ("ct", "mr"):
        raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
    return [f"{modality}_train_{1001 + i}" for i in range(MMWHS_NUM_CASES)]


def save_split(split: dict[str, Any], path: str | Path) -> None:
    """Validate ``split`` and write it as JSON (parent folders are created)."""
    path = Path(path)
    split = _validate(split, "split")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split, indent=2) + "\n", encoding="utf-8")
    sizes = [len(split[part]) for part in PARTS]
    overlap = "; train and test overlap" if split.get(OVERLAP_KEY) else ""
    logger.info("saved split %s (%d train, %d val, %d test%s) to %s", split["name"], *sizes, overlap, path)


def load_split(path: str | Path) -> dict[str, Any]:
    """Read and validate a split file; ``val`` defaults to an empty list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path} (make the splits of a prepared dataset with "
                                f"`python -m diffatlas.splits dataset=<name>`)")
    return _validate(read_json_object(path), str(path))


def check_split_against(split: dict[str, Any], data: PreparedData) -> None:
    """Raise ValueError listing every case of ``split`` that ``data`` does not hold."""
    known = set(data.cases)
    missing = list(dict.fromkeys(case for part in PARTS for case in split.get(part, []) if case not in known))
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        where = f"dataset {data.name!r} ({data.root})"
        raise ValueError(f"split {split.get('name')!r}: cases missing from {where}: {shown}")
