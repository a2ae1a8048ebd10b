"""The prepared data and split file a run works on, its SDF settings, and synthetic phantoms written in the
prepared-data layout."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import nibabel as nib

from diffatlas.data.datasets import PreparedData
from diffatlas.data.io import spacing_from_affine
from diffatlas.data.phantom import write_phantom_dataset, write_raw_phantom_scans
from diffatlas.data.sdf import default_sdf_scale
from diffatlas.data.splits import check_split_against, load_split, save_split, split_from_recipe

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_data_and_split(dataset_cfg: Mapping[str, Any],
                        split_cfg: Mapping[str, Any]) -> tuple[PreparedData, dict[str, Any]]:
    """The prepared data at ``dataset_cfg["root"]`` and the split file ``split_cfg["file"]``, checked against it.

    A missing split file is written first when the split config says how to make it (``make``: the keyword
    arguments of ``splits.make_split``, or ``{all: true}`` for the zero-shot ``all`` split), so a new
    few-shot setting is one YAML file in ``configs/split/``.
    """
    data = PreparedData(dataset_cfg["root"])
    path = Path(split_cfg["file"])
    if not path.is_file() and split_cfg.get("make"):
        save_split(split_from_recipe(split_cfg["make"], data.cases, name=split_cfg["name"], dataset=data.name), path)
        log.info("split %s written to %s from the recipe in its config", split_cfg["name"], path)
    split = load_split(path)
    check_split_against(split, data)
    return data, split


def sdf_settings(dataset_cfg: Mapping[str, Any], data: PreparedData) -> tuple[float, float]:
    """``(clip, scale_vox)``; a missing scale follows the grid (``max(shape) / 2``, the paper's 32 at 64^3)."""
    scale = dataset_cfg.get("sdf_scale_vox")
    return float(dataset_cfg["sdf_clip"]), float(scale if scale is not None else default_sdf_scale(data.shape))


def preparation_record(data: PreparedData) -> dict[str, Any]:
    """How ``data``'s cases were made from scans, for segmenting new scans the same way: the modality, the
    intensity scaling, the voxel axes (an orientation code such as ``LPS``: the directions axes 0, 1, 2 point
    to) and the crop (mode, margin, cube, fixed size). Data without a crop record (phantoms, the official
    layout) counts as a fixed-size crop the size of its grid's field of view, in its first case's axes."""
    crop, orientation = data.info.get("crop"), data.info.get("orientation")
    if crop is None or orientation is None:
        affine = data.load_case(data.cases[0]).affine
        orientation = orientation or "".join(nib.aff2axcodes(affine))
        extent_mm = [n * s for n, s in zip(data.shape, spacing_from_affine(affine))]
        crop = crop or {"mode": "whole", "margin_mm": 0.0, "cube": True, "size_mm": extent_mm}
    return {"modality": data.modality, "intensity": dict(data.info["intensity"]), "orientation": orientation,
            "crop": dict(crop), "shape": list(data.shape)}


def prepare_phantoms(cfg: Mapping[str, Any]) -> dict[str, list[str]]:
    """Write synthetic phantoms (train, test and validation parts, each from its own case indices) and their
    split file; with ``raw_scans`` only the test cases, as raw unlabelled scans (``<out_dir>/<case>.nii.gz``)."""
    p = cfg["phantom"]
    out = Path(cfg["out_dir"])
    common = dict(modality=p["modality"], shape=tuple(p["shape"]), fov_mm=float(p["fov_mm"]), seed=int(p["seed"]))
    if cfg.get("raw_scans"):
        scans = write_raw_phantom_scans(out, int(p["num_test"]), prefix=f"{p['modality']}_test",
                                        first_index=int(p["num_train"]), **common)
        return {"train": [], "val": [], "test": [path.name for path in scans]}
    parts: dict[str, list[str]] = {}
    first_index = 0
    for part, count in (("train", int(p["num_train"])), ("test", int(p["num_test"])),
                        ("val", int(p.get("num_val", 0)))):
        parts[part] = write_phantom_dataset(out, count, prefix=f"{p['modality']}_{part}", first_index=first_index,
                                            **common) if count > 0 else []
        first_index += count
    split = {"name": cfg.get("split_name", "full"), "dataset": out.name,
             "train": parts["train"], "val": parts["val"], "test": parts["test"]}
    if cfg.get("split_file"):
        _save_phantom_split(split, Path(cfg["split_file"]), out)
    log.info("phantoms: %d training, %d test and %d validation cases in %s", len(parts["train"]),
             len(parts["test"]), len(parts["val"]), out)
    return split


def _inside(folder: Path, path: Path) -> bool:
    folder, path = Path(os.path.normpath(folder.absolute())), Path(os.path.normpath(path.absolute()))
    return path == folder or folder in path.parents


def _save_phantom_split(split: dict[str, Any], path: Path, out: Path) -> None:
    """Write the phantoms' split file, except over one of the repository's own split files (``data/``) when the
    phantoms went elsewhere (``DIFFATLAS_DATA`` or ``out_dir``): that file is left as it is when it lists the same
    cases, and a ValueError says where to write it instead when it does not."""
    if not (_inside(REPO_ROOT / "data", path) and not _inside(REPO_ROOT, out)):
        save_split(split, path)
        return
    if path.is_file():
        existing = load_split(path)
        if all(existing.get(part, []) == split[part] for part in ("train", "val", "test")):
            log.info("%s already lists these phantoms; left as it is", path)
            return
    beside = out / "splits" / path.name
    raise ValueError(f"the phantoms in {out} would change the repository's split file {path}; write their split "
                     f"beside them with split_file={beside} (and train with split.file={beside})")
