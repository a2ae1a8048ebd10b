"""Two sanity baselines that use no registration and no training: they show what the crop alone gives.

* mean atlas: the per-voxel majority label of the training label maps on the prepared grid (the image is
  not looked at);
* nearest atlas: the label map of the training case whose image is most similar to the scan, by global
  normalised cross-correlation, copied as it is.

Prepared crops centre the heart, so these can score well; a method that does not beat them is not using
the image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from diffatlas.data.datasets import CaseData, PreparedData
from diffatlas.methods.base import check_train_cases


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


class _Atlases:
    """Stores the training cases' images and labels (one grid for all)."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.case_ids: list[str] = []
        self.num_structures = 0

    def fit(self, data: PreparedData, train_cases: Sequence[str]) -> None:
        cases = check_train_cases(data, train_cases)
        loaded = [data.load_case(c) for c in cases]
        self.images = [c.image.astype(np.float32) for c in loaded]
        self.labels = [c.label.astype(np.uint8) for c in loaded]
        self.case_ids = list(cases)
        self.num_structures = data.num_structures

    def _check(self, case: CaseData) -> None:
        if not self.labels:
            raise RuntimeError(f"{type(self).__name__} has no atlases: call fit(data, train_cases) first")
        if case.image.shape != self.labels[0].shape:
            raise ValueError(f"case {case.case} has grid {case.image.shape}, the atlases {self.labels[0].shape}")


class MeanAtlas(_Atlases):
    """The per-voxel majority label of the training label maps (ties to the lowest label)."""

    name = "mean atlas"

    def segment(self, case: CaseData) -> np.ndarray:
        self._check(case)
        stack = np.stack(self.labels)
        counts = np.stack([(stack == k).sum(axis=0) for k in range(self.num_structures + 1)])
        return counts.argmax(axis=0).astype(np.uint8)


class NearestAtlas(_Atlases):
    """The label map of the training case whose image has the highest global NCC with the scan."""

    name = "nearest atlas"

    def nearest(self, case: CaseData) -> int:
        """Index of the most similar training image (ties to the first)."""
        self._check(case)
        scores = [_ncc(case.image, image) for image in self.images]
        return int(np.argmax(scores))

    def segment(self, case: CaseData) -> np.ndarray:
        return self.labels[self.nearest(case)].copy()


__all__ = ["MeanAtlas", "NearestAtlas"]
