"""Segment any scan with a trained checkpoint: no label, no preparation step.

A scan (NIfTI, NRRD, MetaImage, or a DICOM series folder) is turned to the training data's voxel axes, cropped around
the heart (``roi``), resampled onto the model's grid, scaled like the training data, segmented there,
postprocessed, and the label map is mapped back onto the scan's own grid, so it has the scan's affine, shape and
orientation.

Crops (``roi``):

* ``auto``: label-free. The checkpoint's localiser atlases are registered to the scan (``diffatlas.localise``) and
  its heart network outlines the heart in the region around the best fit's, and around any other atlas's that fits
  nearly as well, keeping the outline it is surest of (``diffatlas.heart_net``); that heart,
  plus the training crop's margin (``crop.margin_mm``, or its fixed size), sets the crop.
  Without atlases a coarse pass of the model segments the whole scan resampled onto the model grid and the
  largest connected part of its foreground sets the crop the same way; a scan already the size of fixed-size
  training crops (phantoms) is segmented whole. ``roi_passes`` > 1 runs the model on the crop found so far and
  re-centres it on its foreground.
* ``box``: a box ``[[i0, i1], [j0, j1], [k0, k1]]`` in the scan's voxel indices (e.g. from another tool), plus
  the training margin.
* ``whole``: the whole scan (widened to a cube).
* ``label``: a reference label's box plus the training margin (the paper's protocol; for measuring only).

    >>> seg = Segmenter.from_checkpoint("Model/phantom_ct/checkpoint_last.pt")
    >>> result = seg.segment_file("scan.nii.gz", "scan_label.nii.gz")
    >>> result.volumes_ml()
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from diffatlas import qc
from diffatlas.builders import build_plan, load_segmenter, sampling_options
from diffatlas.data import geometry
from diffatlas.data.geometry import CropSpec, Grid
from diffatlas.data.intensity import normalize_intensity
from diffatlas.data.io import NIFTI_SUFFIXES, SITK_SUFFIXES, read_json_object
from diffatlas.device import resolve_device
from diffatlas.heart_net import HeartNet
from diffatlas.localise import LocaliserAtlas, locate
from diffatlas.methods.diffatlas import DiffAtlasSegmenter
from diffatlas.methods.icf import ICF
from diffatlas.methods.icmd import ICMD
from diffatlas.options import parse_option
from diffatlas.postprocess import Postprocessing, largest_component
from diffatlas.training.trainer import load_checkpoint

log = logging.getLogger(__name__)

SCAN_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
DEFAULT_SAMPLER: dict[str, Any] = {"plan": "ddim", "num_steps": 25, "eta": 0.0, "start_t": None}
"""The timestep plan of ``Segmenter.from_checkpoint`` when none is given: DDIM-25."""
FRAMED_TOLERANCE = 0.1
"""``roi=auto`` segments a scan whole when its largest extent is within this fraction of fixed-size training crops."""

ROI_MARGIN_MM = 5.0
"""``roi=auto``'s default ``roi_margin_mm``. The localiser sizes hearts a few per cent small more often than large,
and on ACDC 2-shot a crop slightly wider than the label crop scored best: on the 77 ACDC ED cases outside the
split, 5 mm narrowed the gap to the label crop from 1.03 and 1.31 Dice points (two checkpoints) to 0.48 and 0.59,
where 10 mm widened it to 1.60 and 1.39 (``benchmarks/localisation.md``)."""


class Roi(str, Enum):
    AUTO = "auto"
    BOX = "box"
    WHOLE = "whole"
    LABEL = "label"


def scan_name(path: str | Path) -> str:
    """A scan's name without its suffix (``case.nii.gz`` -> ``case``; a DICOM folder keeps its name)."""
    name = Path(path).name
    for suffix in sorted(SCAN_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_scan(path: str | Path) -> sitk.Image:
    """A 3D scan as a float32 SimpleITK image: a NIfTI, NRRD or MetaImage file, or a folder holding one DICOM
    series. Raises ``ValueError`` (one line) for anything else, an unreadable file or a non-3D image."""
    path = Path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise ValueError(f"{path}: a folder with no DICOM series (give a scan file or a DICOM series folder)")
        if len(series) > 1:
            raise ValueError(f"{path}: holds {len(series)} DICOM series; give a folder with one")
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
        reader.SetOutputPixelType(sitk.sitkFloat32)
        try:
            image = reader.Execute()
        except RuntimeError as err:
            raise ValueError(f"{path}: cannot read the DICOM series: {_last_line(err)}") from None
    else:
        if not path.exists():
            raise FileNotFoundError(f"no scan at {path}")
        if not path.name.lower().endswith(SCAN_SUFFIXES):
            raise ValueError(f"{path}: unsupported file type; supported: {', '.join(SCAN_SUFFIXES)} or a DICOM "
                             "series folder")
        try:
            image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        except RuntimeError as err:
            raise ValueError(f"{path}: cannot read the scan: {_last_line(err)}") from None
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise ValueError(f"{path}: expected a 3D scan, got size {list(image.GetSize())}")
    return image


def _last_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def normalize_scan(image: np.ndarray, intensity: Mapping[str, Any], modality: str) -> np.ndarray:
    """Scale a resampled scan to [-1, 1] as the training data was (``intensity`` as in ``dataset.json``)."""
    if intensity["method"] == "ct_window":
        return normalize_intensity(image, "ct", ct_window=tuple(intensity["window"]))
    if intensity["method"] == "percentile":
        return normalize_intensity(image, "mr", mr_percentiles=tuple(intensity["percentiles"]))
    raise ValueError(f"unknown intensity method {intensity['method']!r} in the checkpoint ({modality})")


@dataclass
class Segmentation:
    """One segmented scan.

    Attributes:
        labels: uint8 ``(I, J, K)`` on the scan's own grid (0 background, 1..K ``structures``).
        scan_grid: the scan's geometry; ``affine`` gives its voxel-to-RAS matrix.
        structures: the label names.
        grid: the crop grid the model saw.
        image_grid: float32 ``(X, Y, Z)``, the scaled scan on ``grid``.
        labels_grid: uint8 ``(X, Y, Z)``, the (postprocessed) labels on ``grid``.
        uncertainty_grid: float32 ``(X, Y, Z)``, the ensemble's per-voxel uncertainty on ``grid`` (None for one sample).
        seconds: wall time of the whole segmentation.
    """

    labels: np.ndarray
    scan_grid: Grid
    structures: tuple[str, ...]
    grid: Grid
    image_grid: np.ndarray
    labels_grid: np.ndarray
    uncertainty_grid: np.ndarray | None
    seconds: float

    @property
    def affine(self) -> np.ndarray:
        """The scan's 4x4 voxel ``(i, j, k)`` to RAS affine."""
        return self.scan_grid.affine()

    def to_image(self) -> sitk.Image:
        """The label map as a SimpleITK image with the scan's geometry."""
        return geometry.from_array(self.labels, self.scan_grid)

    def save(self, path: str | Path) -> None:
        """Write the label map (NIfTI, ``.nii.gz``) with the scan's geometry."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(self.to_image(), str(path), True)

    def volumes_ml(self) -> dict[str, float]:
        """Each structure's volume in millilitres on the scan's own grid."""
        return qc.label_volumes_ml(self.labels, self.scan_grid.spacing, self.structures)


class GridModel(Protocol):
    """A trained model that segments a scan already on its grid."""

    structures: tuple[str, ...]
    shape: tuple[int, int, int]

    def segment_grid(self, image: np.ndarray, case_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``image`` float32 ``(X, Y, Z)`` in [-1, 1] -> uint8 labels and float32 uncertainty (or None)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The settings that decide its output, for reports."""
        ...


class DiffAtlasGridModel:
    """DiffAtlas sampling (``DiffAtlasSegmenter``) behind ``GridModel``: the one segmentation path of ``test``
    (a batch of prepared crops), ``compare`` (one prepared case) and ``segment`` (any scan)."""

    @classmethod
    def from_checkpoint(cls, path: str | Path, sampler_cfg: Mapping[str, Any], device: torch.device,
                        inference: Mapping[str, Any] | None = None) -> tuple["DiffAtlasGridModel", dict[str, Any]]:
        """The model around a checkpoint's EMA weights, sampling with the plan of ``sampler_cfg`` and the per-case
        settings of ``inference`` (seed, ensemble, guidance, bf16), and the checkpoint's stored config."""
        seg, stored = load_segmenter(path, sampler_cfg, device, inference=inference)
        return cls(seg, stored["structures"], stored["shape"], device), stored

    def __init__(self, sampler: DiffAtlasSegmenter, structures: Sequence[str], shape: Sequence[int],
                 device: torch.device):
        self.sampler = sampler
        self.structures = tuple(structures)
        self.shape = tuple(int(s) for s in shape)
        self.device = device

    def segment_batch(self, images: np.ndarray, case_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """``images`` ``(B, X, Y, Z)`` -> uint8 labels ``(B, X, Y, Z)`` and float32 uncertainty (or None)."""
        batch = torch.from_numpy(np.asarray(images, dtype=np.float32)[:, None]).to(self.device)
        labels, spread = self.sampler.segment_with_uncertainty(batch, list(case_ids))
        return (labels.cpu().numpy().astype(np.uint8),
                None if spread is None else spread.cpu().numpy().astype(np.float32))

    def segment_grid(self, image: np.ndarray, case_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        labels, spread = self.segment_batch(np.asarray(image)[None], [case_id])
        return labels[0], None if spread is None else spread[0]

    def describe(self) -> dict[str, Any]:
        """The timestep plan and every per-case setting (the uncertainty measure only for an ensemble)."""
        s = self.sampler
        return {"method": "DiffAtlas", "plan": s.plan.name, "network_evaluations": s.network_evaluations,
                "eta": s.plan.eta, "seed": s.seed, "ensemble_size": s.ensemble_size, "fusion": s.fusion,
                "uncertainty": s.uncertainty if s.ensemble_size > 1 else None, "guidance_scale": s.guidance_scale,
                "guidance_window": s.guidance_window, "bf16": s.bf16, "image_level": s.image_level}


class BaselineGridModel:
    """A fitted ICF or ICMD behind ``GridModel``: one sample per case, no uncertainty map."""

    def __init__(self, method: ICF | ICMD, structures: Sequence[str], shape: Sequence[int]):
        self.method = method
        self.structures = tuple(structures)
        self.shape = tuple(int(s) for s in shape)

    def segment_grid(self, image: np.ndarray, case_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        return self.method.segment_grid(np.asarray(image, dtype=np.float32), case_id), None

    def describe(self) -> dict[str, Any]:
        if isinstance(self.method, ICMD):
            m = self.method
            return {"method": "ICMD", "mode": m.mode.value, "plan": m.plan.name,
                    "network_evaluations": m.network_evaluations, "seed": m.seed}
        return {"method": self.method.name}


ONE_SAMPLE = {"ensemble_size": 1, "guidance_scale": 0.0, "bf16": False, "image_level": 1.0, "coarse_dir": None}
"""Settings only DiffAtlas sampling has, at the values that leave them off; ICF and ICMD accept nothing else."""


def load_grid_model(path: str | Path, sampler_cfg: Mapping[str, Any], device: torch.device,
                    inference: Mapping[str, Any] | None = None) -> tuple[GridModel, dict[str, Any]]:
    """The model of a checkpoint written by ``python -m diffatlas.train`` or by ``compare`` (DiffAtlas, ICF or
    ICMD: the stored ``method``; a checkpoint without one is DiffAtlas's), and its stored config with the
    checkpoint's localiser atlases under ``localiser`` (``diffatlas.localise``; empty when it has none) and its heart
    network under ``heart_net`` (``diffatlas.heart_net``; None when it has none). ICMD samples
    with the plan of ``sampler_cfg`` and the seed of ``inference``; ICF, a feedforward network, ignores both."""
    options = sampling_options(sampler_cfg, inference)
    ckpt = load_checkpoint(path)
    stored = {**ckpt["config"], "localiser": list(ckpt.get("localiser") or []), "heart_net": ckpt.get("heart_net")}
    method = stored.get("method", "DiffAtlas")
    if method == "DiffAtlas":
        if "structures" not in stored or "model" not in stored:
            raise ValueError(f"{path}: this checkpoint lacks structures or model, which the segmenter needs (a "
                             "checkpoint of python -m diffatlas.train or compare holds them)")
        model, _ = DiffAtlasGridModel.from_checkpoint(path, sampler_cfg, device, inference)
        return model, stored
    if method not in (ICF.name, ICMD.name):
        raise ValueError(f"{path}: a {method} checkpoint; the segmenter takes DiffAtlas, ICF and ICMD checkpoints")
    for key, off in ONE_SAMPLE.items():
        if options.get(key, off) != off:
            raise ValueError(f"{key}={options[key]} needs a DiffAtlas checkpoint; {path} is an {method} "
                             "checkpoint (one sample per case)")
    if method == ICF.name:
        baseline: ICF | ICMD = ICF.from_checkpoint(path, str(device))
    else:
        baseline = ICMD.from_checkpoint(path, str(device), seed=int(options.get("seed", 0)))
        baseline.use_plan(build_plan(sampler_cfg, baseline.diffusion.num_timesteps))
    return BaselineGridModel(baseline, stored["structures"], stored["shape"]), stored


def checkpoint_preparation(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The preparation record of a checkpoint's training data (``inputs.preparation_record``). Checkpoints
    written before it was stored fall back to the training data's ``dataset.json`` when it is still there,
    else to the preparation defaults for the modality."""
    if stored.get("preparation"):
        return dict(stored["preparation"])
    root = ((stored.get("run") or {}).get("dataset") or {}).get("root")
    info = read_json_object(Path(root) / "dataset.json") if root and (Path(root) / "dataset.json").is_file() else {}
    modality = stored.get("modality") or info.get("modality", "ct")
    intensity = info.get("intensity") or ({"method": "ct_window", "window": [-250.0, 800.0]} if modality == "ct"
                                          else {"method": "percentile", "percentiles": [0.5, 99.5]})
    crop = info.get("crop") or {"mode": "label", "margin_mm": 10.0, "cube": True, "size_mm": None}
    log.warning("the checkpoint has no preparation record; using %s", root or "the defaults for " + modality)
    return {"modality": modality, "intensity": intensity, "orientation": info.get("orientation", geometry.ORIENTATION),
            "crop": crop, "shape": list(stored["shape"])}


class Segmenter:
    """Segments whole scans with a trained model (see the module docstring).

    Args:
        model: the trained model on its grid (``DiffAtlasGridModel``, ``BaselineGridModel``).
        preparation: how the training data was made (``modality``, ``intensity``, ``crop``).
        roi: ``auto``, ``box``, ``whole`` or ``label``.
        roi_passes: coarse passes of ``roi=auto`` (>= 1): the first registers the localiser ``atlases`` to the
            scan (or, without atlases, runs the model on the whole scan), each further one runs the model on the
            crop found so far and re-centres the crop on its foreground (default 1: on the ACDC 2-shot test cases
            a re-centring pass after the atlases cost 3 Dice points, ``benchmarks/localisation.md``).
        roi_margin_mm: ``roi=auto``: millimetres added to the training crop's margin around the heart found, for
            the localiser's error (``ROI_MARGIN_MM``; a training crop of fixed size is kept as it is).
        postprocess: ``Postprocessing``, or its config ``{largest_component: [...], fill_holes: [...]}``.
        atlases: localiser atlases for ``roi=auto`` (``diffatlas.localise``; a checkpoint's ``localiser``).
        heart_net: the network that outlines the heart around the registered one (``diffatlas.heart_net``; a
            checkpoint's ``heart_net``); without it the registration's box is used.
    """

    def __init__(self, model: GridModel, preparation: Mapping[str, Any], *, roi: str = "auto", roi_passes: int = 1,
                 roi_margin_mm: float = ROI_MARGIN_MM, postprocess: Postprocessing | Mapping[str, Any] | None = None,
                 atlases: Sequence[LocaliserAtlas] = (), heart_net: HeartNet | None = None):
        self.model = model
        self.atlases = list(atlases)
        self.heart_net = heart_net
        self.roi = parse_option(Roi, roi, "roi").value
        if int(roi_passes) < 1:
            raise ValueError(f"roi_passes must be >= 1, got {roi_passes}")
        self.roi_passes = int(roi_passes)
        if not float(roi_margin_mm) >= 0.0:
            raise ValueError(f"roi_margin_mm must be >= 0, got {roi_margin_mm}")
        self.roi_margin_mm = float(roi_margin_mm)
        self.modality = str(preparation["modality"])
        self.intensity = dict(preparation["intensity"])
        self.orientation = str(preparation.get("orientation") or geometry.ORIENTATION)
        crop = dict(preparation["crop"])
        size = crop.get("size_mm")
        self.margin_mm = float(crop.get("margin_mm") or 0.0)
        self.cube = bool(crop.get("cube", True))
        self.size_mm = None if size is None else tuple(float(s) for s in (size if isinstance(size, (list, tuple))
                                                                          else [size] * 3))
        self.postprocess = postprocess if isinstance(postprocess, Postprocessing) else \
            Postprocessing.from_config(postprocess, model.structures)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", *, sampler: Mapping[str, Any] | None = None,
                        roi: str = "auto", roi_passes: int = 1, roi_margin_mm: float = ROI_MARGIN_MM,
                        postprocess: Postprocessing | Mapping[str, Any] | None = None,
                        **sampling: Any) -> "Segmenter":
        """A segmenter around a checkpoint's EMA weights: DiffAtlas, ICF or ICMD (``load_grid_model``).

        Args:
            path: a ``checkpoint_*.pt`` written by ``python -m diffatlas.train``, or an ICF or ICMD checkpoint
                written by ``python -m diffatlas.compare`` (in ``Model/<run>/icf/``, ``Model/<run>/icmd/``).
            device: ``auto``, ``cpu`` or ``cuda``.
            sampler: a sampler config, the timestep plan (``configs/sampler/``); default ``DEFAULT_SAMPLER``.
            roi, roi_passes, roi_margin_mm, postprocess: see the class.
            sampling: the per-case settings of the ``inference`` group, ``DiffAtlasSegmenter.CASE_KEYS``: ``seed``,
                ``ensemble_size``, ``fusion``, ``uncertainty``, ``guidance_scale``, ``guidance_window``, ``bf16``.
        """
        unknown = sorted(set(sampling) - set(DiffAtlasSegmenter.CASE_KEYS))
        if unknown:
            raise TypeError(f"unknown sampling settings {unknown}; allowed: {', '.join(DiffAtlasSegmenter.CASE_KEYS)}")
        sampler_cfg = dict(DEFAULT_SAMPLER if sampler is None else sampler)
        model, stored = load_grid_model(path, sampler_cfg, resolve_device(device), sampling)
        atlases = [LocaliserAtlas.from_record(record) for record in stored["localiser"]]
        heart_net = HeartNet.from_record(stored["heart_net"]) if stored.get("heart_net") else None
        return cls(model, checkpoint_preparation(stored), roi=roi, roi_passes=roi_passes, roi_margin_mm=roi_margin_mm,
                   postprocess=postprocess, atlases=atlases, heart_net=heart_net)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Segmenter":
        """A segmenter from a run config: ``checkpoint``, ``device``, ``sampler`` (the timestep plan) and
        ``inference`` (the per-case settings, the crop and postprocessing; ``configs/inference/``)."""
        inference = dict(cfg["inference"])
        sampling = {k: inference[k] for k in DiffAtlasSegmenter.CASE_KEYS if inference.get(k) is not None}
        margin = inference.get("roi_margin_mm")
        return cls.from_checkpoint(cfg["checkpoint"], cfg["device"], sampler=cfg["sampler"], roi=inference["roi"],
                                   roi_passes=int(inference.get("roi_passes", 1)),
                                   roi_margin_mm=ROI_MARGIN_MM if margin is None else float(margin),
                                   postprocess=inference.get("postprocess"), **sampling)

    @property
    def structures(self) -> tuple[str, ...]:
        return self.model.structures

    def describe(self) -> dict[str, Any]:
        """The settings that decide the label maps, for reports."""
        localiser = f"{len(self.atlases)} registered atlases" if self.atlases else "the model's whole-scan pass"
        if self.atlases and self.heart_net is not None:
            localiser += " and a heart network"
        return {**self.model.describe(), "roi": self.roi, "roi_passes": self.roi_passes,
                **({"localiser": localiser, "roi_margin_mm": self.roi_margin_mm} if self.roi == Roi.AUTO.value else {}),
                "postprocess": self.postprocess.describe()}

    def crop(self, oriented: sitk.Image, foreground: np.ndarray | None, extra_mm: float = 0.0) -> Grid:
        """The model grid over ``oriented``: the training crop around ``foreground`` (an ``(i, j, k)`` mask on
        ``oriented``) with ``extra_mm`` more margin, or the whole scan when it is None."""
        if foreground is None:
            spec = CropSpec(mode="whole", cube=True)
        else:
            spec = CropSpec(mode="label", margin_mm=self.margin_mm + extra_mm, cube=self.cube, size_mm=self.size_mm)
        return geometry.crop_grid(oriented, self.model.shape, spec, foreground)

    def _framed_like_training(self, whole: Grid) -> bool:
        """Whether the whole-scan grid ``whole`` already frames the scan as the training crops were: they had a
        fixed size (``crop.size_mm``) and the scan's largest extent is within ``FRAMED_TOLERANCE`` of it."""
        if self.size_mm is None:
            return False
        extent = max(n * s for n, s in zip(whole.size, whole.spacing))
        return abs(extent / max(self.size_mm) - 1.0) <= FRAMED_TOLERANCE

    def _on_grid(self, oriented: sitk.Image, grid: Grid) -> np.ndarray:
        fill = float(sitk.GetArrayViewFromImage(oriented).min())
        return normalize_scan(geometry.resample_image(oriented, grid, default=fill), self.intensity, self.modality)

    def _foreground_on(self, labels_grid: np.ndarray, grid: Grid, oriented: sitk.Image) -> np.ndarray | None:
        """The largest connected part of a grid prediction's foreground, on ``oriented``'s voxels (or None)."""
        foreground = geometry.from_array((labels_grid > 0).astype(np.uint8), grid)
        mask = geometry.resample_labels(foreground, Grid.of(oriented), 1) > 0
        if not mask.any():
            return None
        return largest_component(mask)

    def _locate(self, oriented: sitk.Image, case_id: str, box: Sequence[Sequence[int]] | None,
                reference: sitk.Image | None, scan: sitk.Image) -> Grid:
        if self.roi == Roi.WHOLE.value:
            return self.crop(oriented, None)
        if self.roi == Roi.LABEL.value:
            if reference is None:
                raise ValueError(f"{case_id}: roi=label needs the reference label")
            mask = geometry.to_array(sitk.DICOMOrient(reference, self.orientation)) > 0
            if not mask.any():
                raise ValueError(f"{case_id}: the reference label is empty, so there is no box to crop around")
            return self.crop(oriented, mask)
        if self.roi == Roi.BOX.value:
            if box is None:
                raise ValueError(f"{case_id}: roi=box but no box was given (box_file has no entry for it)")
            return self.crop(oriented, _box_mask(scan, box, case_id, self.orientation))
        grid = self.crop(oriented, None)
        if not self.atlases and self._framed_like_training(grid):
            log.info("%s: the scan is the size of the training crops; segmented whole, without a coarse pass", case_id)
            return grid
        first = 0
        if self.atlases:
            mask = locate(oriented, self.atlases, case_id=case_id,
                          outline=None if self.heart_net is None else self.heart_net.outline)
            if mask is None:
                log.warning("%s: no localiser atlas found the heart; the model's whole-scan pass is used", case_id)
            else:
                grid, first = self.crop(oriented, mask, self.roi_margin_mm), 1
        for npass in range(first, self.roi_passes):
            labels, _ = self.model.segment_grid(self._on_grid(oriented, grid), case_id)
            mask = self._foreground_on(labels, grid, oriented)
            if mask is None:
                log.warning("%s: the coarse pass %d found no heart; keeping the %s crop", case_id, npass + 1,
                            "whole-scan" if npass == 0 else "previous")
                break
            grid = self.crop(oriented, mask, self.roi_margin_mm)
        return grid

    def segment_image(self, scan: sitk.Image, case_id: str = "scan", *, box: Sequence[Sequence[int]] | None = None,
                      reference: sitk.Image | None = None) -> Segmentation:
        """Segment a 3D SimpleITK scan; ``case_id`` seeds the sampling noise.

        Args:
            scan: the scan as read (any orientation).
            case_id: the name that seeds the noise (the same name gives the same labels).
            box: the crop box for ``roi=box``, in ``scan``'s voxel indices.
            reference: the reference label on ``scan``'s grid, for ``roi=label``.
        """
        start = time.perf_counter()
        if scan.GetDimension() != 3:
            raise ValueError(f"{case_id}: expected a 3D scan, got {scan.GetDimension()} dimensions")
        scan = sitk.Cast(scan, sitk.sitkFloat32)
        oriented = sitk.DICOMOrient(scan, self.orientation)
        grid = self._locate(oriented, case_id, box, reference, scan)
        image_grid = self._on_grid(oriented, grid)
        labels_grid, spread = self.model.segment_grid(image_grid, case_id)
        labels_grid = self.postprocess(labels_grid).astype(np.uint8)
        scan_grid = Grid.of(scan)
        labels = geometry.resample_labels(geometry.from_array(labels_grid, grid), scan_grid, len(self.structures))
        return Segmentation(labels=labels, scan_grid=scan_grid, structures=self.structures, grid=grid,
                            image_grid=image_grid, labels_grid=labels_grid, uncertainty_grid=spread,
                            seconds=time.perf_counter() - start)

    def segment_file(self, in_path: str | Path, out_path: str | Path | None = None, *,
                     box: Sequence[Sequence[int]] | None = None) -> Segmentation:
        """Segment a scan file or DICOM series folder; write the label map to ``out_path`` when given."""
        result = self.segment_image(read_scan(in_path), scan_name(in_path), box=box)
        if out_path is not None:
            result.save(out_path)
        return result

    def segment_array(self, array: np.ndarray, spacing: Sequence[float], case_id: str = "array") -> Segmentation:
        """Segment a raw ``(I, J, K)`` array with voxel ``spacing`` in mm, its axes taken as the patient's
        left, posterior and superior (LPS); ``result.labels`` has the array's shape."""
        array = np.asarray(array, dtype=np.float32)
        if array.ndim != 3:
            raise ValueError(f"expected a 3D array, got shape {array.shape}")
        if len(spacing) != 3 or min(float(s) for s in spacing) <= 0:
            raise ValueError(f"spacing must be three positive lengths in mm, got {list(spacing)}")
        grid = Grid(tuple(int(s) for s in array.shape), tuple(float(s) for s in spacing), (0.0, 0.0, 0.0),
                    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        return self.segment_image(geometry.from_array(array, grid), case_id)


def _box_mask(scan: sitk.Image, box: Sequence[Sequence[int]], case_id: str, orientation: str) -> np.ndarray:
    """The box ``[[i0, i1], [j0, j1], [k0, k1]]`` (inclusive voxel indices of ``scan``) as a mask on the
    oriented scan."""
    bounds = np.asarray(box, dtype=np.int64)
    size = np.asarray(scan.GetSize())
    if bounds.shape != (3, 2) or np.any(bounds[:, 1] < bounds[:, 0]) or np.any(bounds[:, 0] < 0) \
            or np.any(bounds[:, 1] >= size):
        raise ValueError(f"{case_id}: a box is [[i0, i1], [j0, j1], [k0, k1]] with 0 <= i0 <= i1 < size "
                         f"{list(size)}, got {np.asarray(box).tolist()}")
    mask = np.zeros(tuple(size), dtype=np.uint8)
    mask[bounds[0, 0]:bounds[0, 1] + 1, bounds[1, 0]:bounds[1, 1] + 1, bounds[2, 0]:bounds[2, 1] + 1] = 1
    return geometry.to_array(sitk.DICOMOrient(geometry.from_array(mask, Grid.of(scan)), orientation)) > 0


def list_scans(input_path: str | Path) -> list[Path]:
    """The scans to segment: ``input_path`` itself when it is a file or a DICOM series folder, else its scan
    files and sub-folders (each read as a DICOM series), sorted by name; other files are skipped."""
    path = Path(input_path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no scan or folder at {path}")
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    scans = [p for p in entries if p.is_dir() or p.name.lower().endswith(SCAN_SUFFIXES)]
    if not scans and sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)):
        return [path]
    skipped = [p.name for p in entries if p not in scans]
    if skipped:
        log.info("skipping %d files that are not scans: %s", len(skipped), ", ".join(skipped[:5]))
    if not scans:
        raise ValueError(f"no scans in {path}: expected NIfTI, NRRD or MetaImage files, or DICOM series folders")
    return scans


def load_boxes(path: str | Path | None) -> dict[str, list[list[int]]]:
    """A box file for ``roi=box``: JSON ``{scan name: [[i0, i1], [j0, j1], [k0, k1]]}`` in voxel indices."""
    return {} if path is None else {str(k): v for k, v in read_json_object(path).items()}
