"""Prepared datasets on disk and the joint image+SDF dataset built from them.

Prepared-data contract (written by ``diffatlas.prepare`` and ``phantom.write_phantom_dataset``)::

    <root>/dataset.json
        {"name": str,
         "modality": "ct" | "mr",
         "structures": ["Myo", "LV", ...],      label value k is structures[k - 1]
         "shape": [X, Y, Z],                    every case has exactly this grid
         "intensity": {"method": "ct_window" | "percentile", ...parameters},
         "cases": [case ids]}
    <root>/images/<case>.nii.gz   float32, already normalised to [-1, 1], real affine
    <root>/labels/<case>.nii.gz   uint8, 0 background, 1..K structures, same grid and affine

``JointDataset`` turns cases into the stacked ``(1 + K, X, Y, Z)`` tensors of ``ChannelLayout``:
channel 0 the image, channels 1..K the signed distance maps of ``sdf.encode_sdf``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from diffatlas.data.caseids import check_case_id, path_inside
from diffatlas.data.intensity import check_modality
from diffatlas.data.io import read_json_object, read_volume, spacing_from_affine, write_volume
from diffatlas.data.layout import ChannelLayout
from diffatlas.data.sdf import default_sdf_scale, encode_sdf

logger = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
REQUIRED_KEYS = ("name", "modality", "structures", "shape", "intensity", "cases")
_HOW_TO_MAKE = "run `python -m diffatlas.prepare` or `make demo` to create prepared data"


def case_file(root: str | Path, folder: str, case: str, suffix: str = ".nii.gz") -> Path:
    """``<root>/<folder>/<case><suffix>``, after checking that ``case`` is a plain id and the path stays in
    ``root``."""
    check_case_id(case, f"{root}/{folder}")
    return path_inside(root, Path(root) / folder / f"{case}{suffix}", f"case {case!r}")


def image_path(root: str | Path, case: str) -> Path:
    """Where a prepared case's image lives."""
    return case_file(root, "images", case)


def label_path(root: str | Path, case: str) -> Path:
    """Where a prepared case's label lives."""
    return case_file(root, "labels", case)


def validate_info(info: dict[str, Any], source: str) -> None:
    """Check a ``dataset.json`` dictionary against the contract; ``source`` names it in errors."""
    missing = [key for key in REQUIRED_KEYS if key not in info]
    if missing:
        raise ValueError(f"{source}: missing keys {missing} (required: {list(REQUIRED_KEYS)})")
    if not isinstance(info["name"], str):
        raise ValueError(f"{source}: 'name' must be a string, got {info['name']!r}")
    try:
        check_modality(info["modality"])
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    structures = info["structures"]
    if (not isinstance(structures, list) or not structures or not all(isinstance(s, str) for s in structures)
            or len(structures) > 255):
        raise ValueError(f"{source}: 'structures' must be a list of 1..255 names, got {structures!r}")
    shape = info["shape"]
    if not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"{source}: 'shape' must be three positive integers, got {shape!r}")
    if not isinstance(info["intensity"], dict) or "method" not in info["intensity"]:
        raise ValueError(f"{source}: 'intensity' must be a dict with a 'method', got {info['intensity']!r}")
    cases = info["cases"]
    if not isinstance(cases, list) or not all(isinstance(c, str) for c in cases) or len(set(cases)) != len(cases):
        raise ValueError(f"{source}: 'cases' must be a list of distinct strings")
    for case in cases:
        check_case_id(case, source)


def open_dataset_info(
    root: str | Path,
    *,
    name: str,
    modality: str,
    structures: Sequence[str],
    shape: Sequence[int],
    intensity: dict[str, Any],
) -> dict[str, Any]:
    """The ``dataset.json`` content to extend when adding cases to ``root``.

    Returns the existing description when ``root`` already holds one with the same modality,
    structures, shape and intensity normalisation (raises ValueError when any differs), or a new one
    with no cases. Nothing is written; see ``save_dataset_info``.
    """
    wanted = {
        "name": name,
        "modality": modality,
        "structures": list(structures),
        "shape": [int(s) for s in shape],
        "intensity": json.loads(json.dumps(intensity)),
        "cases": [],
    }
    validate_info(wanted, "new dataset")
    path = Path(root) / DATASET_JSON
    if not path.is_file():
        return wanted
    existing = read_json_object(path)
    validate_info(existing, str(path))
    clashes = [key for key in ("modality", "structures", "shape", "intensity") if existing[key] != wanted[key]]
    if clashes:
        details = ", ".join(f"{k}: {existing[k]!r} there vs {wanted[k]!r} here" for k in clashes)
        raise ValueError(f"{path} describes a different dataset ({details}); use another folder")
    return existing


def save_dataset_info(root: str | Path, info: dict[str, Any]) -> None:
    """Validate and write ``<root>/dataset.json`` (atomically, via a temporary file)."""
    path = Path(root) / DATASET_JSON
    validate_info(info, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_case(root: str | Path, case: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> None:
    """Write one prepared case: ``image`` ``(X, Y, Z)`` in [-1, 1] and ``label`` ``(X, Y, Z)`` 0..255."""
    if image.shape != label.shape:
        raise ValueError(f"case {case}: image shape {image.shape} != label shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"case {case}: label values must fit uint8, got {label.min()}..{label.max()}")
    write_volume(image_path(root, case), np.asarray(image, dtype=np.float32), affine)
    write_volume(label_path(root, case), np.asarray(label, dtype=np.uint8), affine)


@dataclass
class CaseData:
    """One prepared case: ``image`` float32 ``(X, Y, Z)`` in [-1, 1], ``label`` uint8 ``(X, Y, Z)``."""

    case: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing_mm: tuple[float, float, float]


class PreparedData:
    """A prepared dataset folder (see the module docstring for the layout)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / DATASET_JSON
        if not path.is_file():
            raise FileNotFoundError(f"no {DATASET_JSON} in {self.root}: {_HOW_TO_MAKE}")
        info = read_json_object(path)
        validate_info(info, str(path))
        self.info: dict[str, Any] = info

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def modality(self) -> str:
        return self.info["modality"]

    @property
    def structures(self) -> tuple[str, ...]:
        return tuple(self.info["structures"])

    @property
    def num_structures(self) -> int:
        return len(self.info["structures"])

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = self.info["shape"]
        return x, y, z

    @property
    def cases(self) -> tuple[str, ...]:
        return tuple(self.info["cases"])

    def load_case(self, case: str) -> CaseData:
        """Read one case and check it against ``dataset.json``."""
        if case not in self.info["cases"]:
            known = ", ".join(self.cases[:5]) + (", ..." if len(self.cases) > 5 else "")
            raise KeyError(f"case {case!r} is not in {self.root / DATASET_JSON} (known: {known})")
        image, affine = read_volume(image_path(self.root, case))
        label, label_affine = read_volume(label_path(self.root, case))
        if image.shape != self.shape or label.shape != self.shape:
            raise ValueError(
                f"case {case}: image {image.shape} and label {label.shape} "
                f"must both have the dataset shape {self.shape}"
            )
        if not np.allclose(affine, label_affine, atol=1e-4):
            raise ValueError(f"case {case}: image and label affines differ")
        label = np.asarray(label)
        if label.min() < 0 or label.max() > self.num_structures:
            raise ValueError(
                f"case {case}: label values {label.min()}..{label.max()} outside 0..{self.num_structures}"
            )
        return CaseData(
            case=case,
            image=np.asarray(image, dtype=np.float32),
            label=label.astype(np.uint8),
            affine=affine,
            spacing_mm=spacing_from_affine(affine),
        )


class JointDataset(Dataset):
    """Stacked ``[image, SDF_1 .. SDF_K]`` tensors for a list of prepared cases.

    All cases are read and encoded at construction (the datasets are small). The SDFs are cached in
    ``<root>/cache/sdf/`` under a key made of the label's content hash, the scale and the clip, so a later
    run with the same settings reads them instead of recomputing the distance transforms; a changed label
    or setting gets a new key. Items are float32
    tensors ``(1 + K, X, Y, Z)`` in ``ChannelLayout`` order, the image clamped to [-1, 1]. The dataset
    is deterministic; augmentation belongs to the trainer.

    Args:
        data: the prepared dataset.
        cases: case ids to include, in item order.
        sdf_clip: SDF clip value (paper: 0.2).
        sdf_scale_vox: SDF scale in voxels; ``None`` uses ``default_sdf_scale(data.shape)``.
    """

    def __init__(
        self,
        data: PreparedData,
        cases: Sequence[str],
        sdf_clip: float = 0.2,
        sdf_scale_vox: float | None = None,
    ):
        if len(cases) == 0:
            raise ValueError("JointDataset needs at least one case")
        self.data = data
        self.cases = tuple(cases)
        self.layout = ChannelLayout(data.num_structures)
        self.sdf_clip = float(sdf_clip)
        self.sdf_scale_vox = float(default_sdf_scale(data.shape) if sdf_scale_vox is None else sdf_scale_vox)
        self._items = [self._encode(data.load_case(case)) for case in self.cases]
        logger.info("JointDataset: %d cases of %s, %d channels", len(self.cases), data.name, self.layout.num_channels)

    def _encode(self, case: CaseData) -> torch.Tensor:
        sample = np.empty((self.layout.num_channels, *case.image.shape), dtype=np.float32)
        sample[self.layout.image] = np.clip(case.image, -1.0, 1.0)[None]
        sample[self.layout.masks] = self._sdf(case)
        return torch.from_numpy(sample)

    def _sdf(self, case: CaseData) -> np.ndarray:
        digest = hashlib.sha1(np.ascontiguousarray(case.label).tobytes()).hexdigest()[:16]
        path = self.data.root / "cache" / "sdf" / f"{case.case}_{digest}_s{self.sdf_scale_vox:g}_c{self.sdf_clip:g}.npy"
        if path.is_file():
            try:
                return np.load(path)
            except (OSError, ValueError):
                logger.warning("unreadable SDF cache %s; recomputing", path)
        sdf = encode_sdf(case.label, self.layout.num_structures, self.sdf_scale_vox, self.sdf_clip)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as handle:
                np.save(handle, sdf)
            os.replace(tmp, path)
        except OSError as err:
            logger.debug("SDF cache not written (%s)", err)
        return sdf

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._items[index].clone()
