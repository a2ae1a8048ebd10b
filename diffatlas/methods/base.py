"""The interface every segmentation method follows: fit on a split, segment a case.

A method is fitted once on the training cases of a prepared dataset (training a network, or storing
atlases) and then segments one prepared case at a time. ``segment`` returns a uint8 label map on the
case's own grid, ``(X, Y, Z)``, 0 background and ``1..K`` the dataset's structures in order
(``PreparedData.structures``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from diffatlas.data.datasets import CaseData, PreparedData
from diffatlas.inputs import preparation_record

SEGMENTER_RECORD = ("structures", "shape", "modality", "preparation")
"""What a trained method's checkpoint stores so that ``Segmenter.from_checkpoint`` can segment new scans with it."""


@runtime_checkable
class SegmentationMethod(Protocol):
    """A segmenter with a short ``name`` (the row label in result tables)."""

    name: str

    def fit(self, data: PreparedData, train_cases: Sequence[str]) -> None:
        """Learn from ``train_cases`` of ``data`` (case ids listed in its ``dataset.json``)."""
        ...

    def segment(self, case: CaseData) -> np.ndarray:
        """The uint8 label map ``(X, Y, Z)`` of ``case`` (0 background, 1..K structures)."""
        ...


def check_train_cases(data: PreparedData, train_cases: Sequence[str]) -> tuple[str, ...]:
    """``train_cases`` as a tuple, after checking it is non-empty, has no repeats and names cases of ``data``."""
    cases = tuple(train_cases)
    if not cases:
        raise ValueError(f"no training cases given for dataset {data.name!r}")
    if len(set(cases)) != len(cases):
        raise ValueError(f"training cases repeat: {sorted(c for c in set(cases) if cases.count(c) > 1)}")
    unknown = [case for case in cases if case not in data.cases]
    if unknown:
        raise ValueError(f"training cases {unknown} are not in dataset {data.name!r} ({data.root})")
    return cases


def segmenter_record(data: PreparedData) -> dict[str, Any]:
    """The ``SEGMENTER_RECORD`` of a method trained on ``data``: its structures, grid shape, modality and how its
    cases were made from scans (``inputs.preparation_record``: intensity scaling, voxel axes, crop)."""
    return {"structures": list(data.structures), "shape": list(data.shape), "modality": data.modality,
            "preparation": preparation_record(data)}


def check_segmenter_record(stored: Mapping[str, Any], path: str | Path, method: str,
                           extra: Sequence[str] = ()) -> None:
    """Raise a one-line ``ValueError`` when a ``method`` checkpoint's stored config lacks part of the
    ``SEGMENTER_RECORD`` or the ``extra`` keys the method needs to rebuild its network."""
    missing = [key for key in (*SEGMENTER_RECORD, *extra) if key not in stored]
    if missing:
        raise ValueError(f"{path}: this {method} checkpoint lacks {', '.join(missing)}, which the segmenter needs; "
                         f"fit {method} again (python -m diffatlas.compare) to write a checkpoint that has them")


def plain(value: Any) -> Any:
    """``value`` with every mapping turned into a dict and every non-string sequence into a list, recursively: what a
    checkpoint's config may hold (``torch.load(weights_only=True)`` refuses e.g. OmegaConf containers)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value
