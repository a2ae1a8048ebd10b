"""Raw scans -> the prepared-data contract of ``datasets.py``, keeping the way back to native space.

For every case of a raw layout (``sources.py``): read scan and label with SimpleITK; check the label's
header against the scan's (float noise: resample the label onto the scan grid and say so; a real
difference: skip the case, naming the fields); map label values to 1..K; orient both to the closest
``LPS`` axes; crop (``geometry.CropSpec``) and resample onto the configured grid (scan: anti-aliased
linear; label: per-structure linear + argmax); scale intensities (CT window, MR percentiles over the
grid); write the case. Beside each prepared case, ``native/<case>.json`` records the scan's own grid and
the prepared grid, and ``native/<case>_label.nii.gz`` holds the label (values 1..K) on the scan's own
grid, so predictions can be mapped back and scored in native space (``map_to_native``).
``preparation_report.json`` and ``preparation_report.md`` list the cases kept (sizes, spacings, crop,
label volumes), the cases skipped and why, and every note (such as a resampled label header).

The official DiffAtlas preprocessed layout (already cropped to 64^3) is read as it is by
``prepare_official``: no reorientation, cropping or resampling.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from tqdm.auto import tqdm

from diffatlas.data import geometry, sources
from diffatlas.data.caseids import case_id_problem, path_inside
from diffatlas.data.datasets import case_file, open_dataset_info, save_dataset_info, write_case
from diffatlas.data.geometry import CropSpec, Grid
from diffatlas.data.intensity import check_modality, intensity_spec, normalize_intensity
from diffatlas.data.io import read_json_object, read_volume
from diffatlas.data.sources import HEART, MMWHS_CODES, MMWHS_DROPPED, RawCase
from diffatlas.data.splits import save_split

log = logging.getLogger(__name__)

REPORT_JSON = "preparation_report.json"
REPORT_MD = "preparation_report.md"
NATIVE_DIR = "native"
MAX_LOGGED_NOTES = 5   # the rest are in the report
NONFINITE = ("skip", "replace")
STAGING_PREFIX = ".staging-"


class SkipCase(Exception):
    """A case that cannot be prepared; the message says why."""


@dataclass
class Settings:
    """Preparation settings shared by every case of a dataset.

    Attributes:
        modality: ``ct`` or ``mr`` (chooses the intensity scaling).
        structures: names of labels 1..K.
        shape: the prepared grid ``(X, Y, Z)``.
        crop: the crop rule.
        intensity: ``{"method": "ct_window", "window": [lo, hi]}`` or ``{"method": "percentile",
            "percentiles": [lo, hi]}`` (``intensity.intensity_spec``).
        require_all_structures: skip cases in which a structure has no voxels.
        antialias: smooth scans before downsampling.
        nonfinite: what to do with a scan holding NaN or infinite voxels: ``skip`` the case (default) or
            ``replace`` them with the scan's lowest finite value (noted in the report).
    """

    modality: str
    structures: Sequence[str]
    shape: Sequence[int] = (64, 64, 64)
    crop: CropSpec = field(default_factory=CropSpec)
    intensity: dict[str, Any] = field(default_factory=lambda: {"method": "ct_window", "window": [-250.0, 800.0]})
    require_all_structures: bool = True
    antialias: bool = True
    nonfinite: str = "skip"

    def __post_init__(self) -> None:
        if self.nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite must be one of {NONFINITE}, got {self.nonfinite!r}")

    def normalize(self, image: np.ndarray) -> np.ndarray:
        if self.intensity["method"] == "ct_window":
            return normalize_intensity(image, "ct", ct_window=tuple(self.intensity["window"]))
        return normalize_intensity(image, "mr", mr_percentiles=tuple(self.intensity["percentiles"]))


def _read_whole_nifti(path: Path, what: str) -> tuple[nib.Nifti1Header, np.ndarray]:
    """Read every voxel of a NIfTI file with nibabel (which, unlike ITK, fails on a truncated file) and return its
    header and the ``(i, j, k)`` mask of non-finite voxels (which ITK reads as 0); SkipCase names the problem."""
    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, OSError, ...)
        raise SkipCase(f"cannot read the {what} {path.name}: {_one_line(err)} (truncated or not a NIfTI file?)") \
            from err
    nonfinite = ~np.isfinite(array) if array.dtype.kind in "fc" else np.zeros(array.shape, dtype=bool)
    while nonfinite.ndim > 3 and nonfinite.shape[-1] == 1:
        nonfinite = nonfinite[..., 0]
    return image.header, nonfinite


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _read(path: Path, pixel_type: int, what: str, notes: list[str]) -> tuple[sitk.Image, np.ndarray | None]:
    """The file as a 3D SimpleITK image, and the ``(i, j, k)`` mask of its NaN or infinite voxels (None when the
    reader keeps them in the image)."""
    nonfinite = None
    if path.name.endswith((".nii", ".nii.gz")):
        header, nonfinite = _read_whole_nifti(path, what)
        sform = np.linalg.norm(header.get_sform()[:3, :3], axis=0)
        zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
        if header["sform_code"] > 0 and not np.allclose(sform, zooms, rtol=1e-3):
            notes.append(f"{path.name}: sform voxel sizes {np.round(sform, 3).tolist()} disagree with pixdim "
                         f"{np.round(zooms, 3).tolist()}; pixdim used")
    try:
        image = sitk.ReadImage(str(path), pixel_type)
    except RuntimeError as err:
        raise SkipCase(f"cannot read the {what} {path.name}: {str(err).strip().splitlines()[-1]}") from err
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise SkipCase(f"the {what} {path.name} is {image.GetDimension()}D, expected 3D")
    if min(image.GetSize()) < 2:
        raise SkipCase(f"the {what} {path.name} is 2D (size {list(image.GetSize())}), expected a 3D volume")
    return image, nonfinite


def _read_scan(path: Path, settings: Settings, notes: list[str]) -> sitk.Image:
    """The scan as float32; a scan with NaN or infinite voxels is skipped (or, with ``settings.nonfinite ==
    "replace"``, they become its lowest finite value), and so is a constant scan."""
    image, nonfinite_ijk = _read(path, sitk.sitkFloat32, "image", notes)
    array = sitk.GetArrayFromImage(image)
    bad_mask = ~np.isfinite(array)
    if nonfinite_ijk is not None and nonfinite_ijk.shape[::-1] == array.shape:
        bad_mask |= nonfinite_ijk.transpose(2, 1, 0)
    bad = int(np.count_nonzero(bad_mask))
    if bad:
        if settings.nonfinite == "skip" or bad == array.size:
            raise SkipCase(f"the image {path.name} has {bad} NaN or infinite voxels (nonfinite=replace "
                           "replaces them with the lowest finite value)")
        fill = float(array[~bad_mask].min())
        array = np.where(bad_mask, fill, array).astype(np.float32)
        notes.append(f"{path.name}: {bad} NaN or infinite voxels replaced by {fill:g}")
        fixed = sitk.GetImageFromArray(array)
        fixed.CopyInformation(image)
        image = fixed
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise SkipCase(f"the image {path.name} is constant (every voxel {low:g})")
    return image


def _label_on_image_grid(image: sitk.Image, path: Path, notes: list[str]) -> sitk.Image:
    label, _ = _read(path, sitk.sitkInt32, "label", notes)
    noise, real = geometry.header_differences(image, label)
    if real:
        raise SkipCase(f"label header differs from the image's: {', '.join(real + noise)}")
    if noise:
        notes.append(f"{path.name}: header differs from the image's by float noise only ({', '.join(noise)}); "
                     "label resampled onto the image grid")
        label = geometry.resample_nearest(label, image)
    return label


def read_label(raw: RawCase, image: sitk.Image, notes: list[str]) -> np.ndarray:
    """The case's label on the scan's grid as uint8 ``(i, j, k)`` with values 0..K."""
    if raw.structure_files:
        out: np.ndarray | None = None
        for k, path in sorted(raw.structure_files.items()):
            mask = geometry.to_array(_label_on_image_grid(image, path, notes)) > 0
            if out is None:
                out = np.zeros(mask.shape, dtype=np.uint8)
            overlap = int(np.count_nonzero(mask & (out > 0)))
            if overlap:
                notes.append(f"{path.name} overlaps earlier structures in {overlap} voxels; the later file wins")
            out[mask] = k
        assert out is not None
        return out
    assert raw.label is not None
    values = geometry.to_array(_label_on_image_grid(image, raw.label, notes))
    out = np.zeros(values.shape, dtype=np.uint8)
    for value, k in raw.label_values.items():
        out[values == value] = k
    unmapped = sorted(set(np.unique(values).tolist()) - set(raw.label_values) - {0} - set(_declared_drops(raw)))
    if unmapped:
        notes.append(f"label values {unmapped} are not in the label map and became background")
    return out


def _declared_drops(raw: RawCase) -> tuple[int, ...]:
    return MMWHS_DROPPED if set(raw.label_values) == set(MMWHS_CODES) else ()


def _volumes_ml(label: np.ndarray, structures: Sequence[str], spacing: Sequence[float]) -> dict[str, float]:
    counts = np.bincount(label.ravel(), minlength=len(structures) + 1)
    unit = geometry.voxel_volume_ml(spacing)
    return {name: round(float(counts[k + 1]) * unit, 3) for k, name in enumerate(structures)}


def prepare_case(raw: RawCase, out_dir: Path, settings: Settings) -> dict[str, Any]:
    """Prepare one case (see the module docstring); returns its report entry. Raises SkipCase."""
    notes: list[str] = []
    image = _read_scan(raw.image, settings, notes)
    if not raw.has_label:
        raise SkipCase("no label")
    label = read_label(raw, image, notes)
    structures = list(settings.structures)
    native_volumes = _volumes_ml(label, structures, image.GetSpacing())
    empty = [name for name, ml in native_volumes.items() if ml == 0.0]
    if len(empty) == len(structures):
        raise SkipCase("no voxel of any structure (" + ", ".join(structures) + ")")
    if empty and settings.require_all_structures:
        raise SkipCase(f"structures with no voxels: {', '.join(empty)}")
    native_grid = Grid.of(image)
    label_image = geometry.from_array(label, native_grid)
    oriented = geometry.orient(image)
    oriented_label = geometry.orient(label_image)
    try:
        grid = geometry.crop_grid(oriented, settings.shape, settings.crop, geometry.to_array(oriented_label),
                                  raw.case, native=image)
    except ValueError as err:
        raise SkipCase(str(err)) from err
    fill = float(sitk.GetArrayViewFromImage(image).min())
    scan = settings.normalize(geometry.resample_image(oriented, grid, default=fill, antialias=settings.antialias))
    prepared_label = geometry.resample_labels(oriented_label, grid, len(structures))
    write_case(out_dir, raw.case, scan, prepared_label, grid.affine())
    native_label_file = case_file(out_dir, NATIVE_DIR, raw.case, "_label.nii.gz")
    native_label_file.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.Cast(label_image, sitk.sitkUInt8), str(native_label_file), True)
    native = {"case": raw.case, "source_image": str(raw.image), "native_grid": native_grid.to_dict(),
              "prepared_grid": grid.to_dict(), "label": f"{NATIVE_DIR}/{native_label_file.name}"}
    case_file(out_dir, NATIVE_DIR, raw.case, ".json").write_text(json.dumps(native, indent=1) + "\n", encoding="utf-8")
    lost = [name for name, ml in _volumes_ml(prepared_label, structures, grid.spacing).items()
            if ml == 0.0 and native_volumes[name] > 0]
    if lost:
        notes.append(f"structures lost on the prepared grid: {', '.join(lost)}")
    return {
        "case": raw.case,
        "native_size": list(native_grid.size),
        "native_spacing_mm": [round(s, 4) for s in native_grid.spacing],
        "orientation": sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()),
        "crop_extent_mm": [round(n * s, 2) for n, s in zip(grid.size, grid.spacing)],
        "grid_spacing_mm": [round(s, 4) for s in grid.spacing],
        "label_volume_ml": native_volumes,
        "notes": notes,
    }


def native_info(root: str | Path, case: str) -> dict[str, Any] | None:
    """The stored native-space record of a prepared case, or None (phantoms, the official layout)."""
    path = case_file(root, NATIVE_DIR, case, ".json")
    return read_json_object(path) if path.is_file() else None


def map_to_native(label: np.ndarray, info: dict[str, Any], num_structures: int) -> sitk.Image:
    """A prepared-grid label ``(X, Y, Z)`` mapped onto the case's native scan grid (``native_info``)."""
    prepared = geometry.from_array(np.asarray(label, dtype=np.uint8), Grid.from_dict(info["prepared_grid"]))
    native_grid = Grid.from_dict(info["native_grid"])
    return geometry.from_array(geometry.resample_labels(prepared, native_grid, num_structures), native_grid)


def native_label(root: str | Path, info: dict[str, Any]) -> sitk.Image:
    """The reference label (values 1..K) of a prepared case on its native scan grid."""
    path = path_inside(root, Path(root) / str(info["label"]), "native label")
    if not path.is_file():
        raise FileNotFoundError(f"native label {path} is missing; prepare the dataset again")
    label = sitk.ReadImage(str(path), sitk.sitkUInt8)
    if Grid.of(label).size != Grid.from_dict(info["native_grid"]).size:
        raise ValueError(f"native label {path} does not lie on the case's recorded native grid")
    return label


def _case_files(root: Path, case: str) -> list[Path]:
    """Every file ``prepare_case`` writes for ``case`` under ``root``."""
    return [case_file(root, "images", case), case_file(root, "labels", case),
            case_file(root, NATIVE_DIR, case, "_label.nii.gz"), case_file(root, NATIVE_DIR, case, ".json")]


def _prepare_one(raw: RawCase, stage: Path, settings: Settings) -> dict[str, Any]:
    """``prepare_case`` into the staging folder; any failure of this one case becomes a SkipCase naming it."""
    try:
        return prepare_case(raw, stage, settings)
    except SkipCase:
        raise
    except Exception as err:  # one unreadable or odd case must not stop the others; the report names it
        log.debug("case %s failed", raw.case, exc_info=True)
        raise SkipCase(f"failed: {_one_line(err)}") from err


def prepare_dataset(cases: Sequence[RawCase], skipped: Sequence[tuple[str, str]], out_dir: str | Path, *,
                    name: str, settings: Settings, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Prepare ``cases`` into ``out_dir``; returns the preparation report (also written beside the data).

    ``skipped`` are cases the layout reader already turned down; they are listed in the report too. Each case is
    written to a staging folder inside ``out_dir`` first and moved into place only once every case is done, so an
    interrupted run leaves the folder as it was. ``out_dir`` may already hold a dataset with the same settings:
    cases are added or rewritten, and a case it listed that is skipped this time is removed from it.
    """
    out = Path(out_dir)
    check_modality(settings.modality)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # header problems are reported as notes instead
    info = open_dataset_info(out, name=name, modality=settings.modality, structures=settings.structures,
                             shape=settings.shape, intensity=settings.intensity)
    kept: list[dict[str, Any]] = []
    skips = [{"case": case, "reason": reason} for case, reason in skipped]
    stage = out / f"{STAGING_PREFIX}{os.getpid()}"
    try:
        for raw in tqdm(cases, desc=f"prepare {name}", disable=None):
            try:
                kept.append(_prepare_one(raw, stage, settings))
            except SkipCase as err:
                skips.append({"case": raw.case, "reason": str(err)})
                log.warning("skipped %s: %s", raw.case, err)
        info["crop"] = {"mode": settings.crop.mode, "margin_mm": settings.crop.margin_mm,
                        "cube": settings.crop.cube,
                        "size_mm": list(settings.crop.size_mm) if settings.crop.size_mm else None}
        report = {"dataset": name, "out_dir": str(out), "settings": info["crop"] | {"shape": list(settings.shape)},
                  "source": source or {}, "kept": kept, "skipped": skips}
        if kept:
            _commit(stage, out, info, kept, skips, source)
        write_report(out, report)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    notes = [f"{entry['case']}: {note}" for entry in kept for note in entry["notes"]]
    for note in notes[:MAX_LOGGED_NOTES]:
        log.warning(note)
    if len(notes) > MAX_LOGGED_NOTES:
        log.warning("... and %d more notes, all listed in %s", len(notes) - MAX_LOGGED_NOTES, out / REPORT_MD)
    log.info("prepared %d cases of %s into %s (%d skipped); report: %s", len(kept), name, out, len(skips),
             out / REPORT_MD)
    if not kept:
        reasons = "; ".join(f"{s['case']}: {s['reason']}" for s in skips[:5])
        raise ValueError(f"no case of {name} could be prepared (report: {out / REPORT_MD}; {reasons})")
    return report


def _commit(stage: Path, out: Path, info: dict[str, Any], kept: list[dict[str, Any]],
            skips: list[dict[str, str]], source: dict[str, Any] | None) -> None:
    """Move the staged cases into ``out``, drop the files of listed cases skipped this time, and rewrite
    ``dataset.json`` from what is there now."""
    dropped = sorted({s["case"] for s in skips} & set(info["cases"]))
    for case in dropped:
        for path in _case_files(out, case):
            path.unlink(missing_ok=True)
    if dropped:
        log.warning("removed from %s (skipped this time): %s", out / "dataset.json", ", ".join(dropped))
    for entry in kept:
        for staged, final in zip(_case_files(stage, entry["case"]), _case_files(out, entry["case"])):
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
    info["cases"] = sorted((set(info["cases"]) - set(dropped)) | {entry["case"] for entry in kept})
    info["orientation"] = geometry.ORIENTATION
    info["native"] = True
    if source:
        info["source"] = source
    save_dataset_info(out, info)


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    """``preparation_report.json`` and a readable ``preparation_report.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text(out_dir / REPORT_JSON, json.dumps(report, indent=1) + "\n")
    kept, skipped = report["kept"], report["skipped"]
    lines = [f"# Preparation of {report['dataset']}", "",
             f"{len(kept)} cases kept, {len(skipped)} skipped. Settings: {json.dumps(report['settings'])}", ""]
    if kept:
        structures = list(kept[0]["label_volume_ml"])
        lines += ["| Case | Native size | Native spacing (mm) | Crop (mm) | Grid spacing (mm) | "
                  + " | ".join(f"{s} (ml)" for s in structures) + " |",
                  "|" + "---|" * (5 + len(structures))]
        for e in kept:
            volumes = " | ".join(f"{e['label_volume_ml'][s]:.1f}" for s in structures)
            lines.append(f"| {e['case']} | {e['native_size']} | {e['native_spacing_mm']} | {e['crop_extent_mm']} | "
                         f"{e['grid_spacing_mm']} | {volumes} |")
        lines.append("")
    if skipped:
        lines += ["## Skipped", ""] + [f"- {s['case']}: {s['reason']}" for s in skipped] + [""]
    notes = [(e["case"], n) for e in kept for n in e["notes"]]
    if notes:
        lines += ["## Notes", ""] + [f"- {case}: {note}" for case, note in notes] + [""]
    _write_text(out_dir / REPORT_MD, "\n".join(lines))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


_OFFICIAL_PARTS = {"training_set_full": "train", "training_set": "train", "train": "train",
                   "testing_set": "test", "test": "test"}


def official_cases(raw_dir: str | Path) -> tuple[dict[str, tuple[Path, Path]], dict[str, str]]:
    """Cases of the official preprocessed layout: ``{case: (image, label)}`` and ``{case: "train"|"test"}``
    for cases found under a ``training_set_full``/``testing_set`` (or ``train``/``test``) folder."""
    root = Path(raw_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"official preprocessed folder not found: {root}")
    found: dict[str, tuple[Path, Path]] = {}
    parts: dict[str, str] = {}
    for image in sorted(root.rglob("*image.nii*")):
        case = re.sub(r"[_\-.]*image\.nii(\.gz)?$", "", image.name)
        label = image.with_name(image.name.replace("image.nii", "label.nii"))
        if not label.is_file():
            continue
        found.setdefault(case, (image, label))
        for folder in image.relative_to(root).parts[:-1]:
            if folder in _OFFICIAL_PARTS:
                parts[case] = _OFFICIAL_PARTS[folder]
    if not found:
        raise FileNotFoundError(f"no *image.nii.gz files with a matching *label.nii.gz under {root}")
    return found, parts


def prepare_official(raw_dir: str | Path, out_dir: str | Path, *, name: str, settings: Settings) -> dict[str, Any]:
    """Read the official preprocessed layout as it is (grid, crop and orientation untouched).

    Labels holding MM-WHS codes are mapped to 1..5; labels already 0..K are kept. Images already in
    [-1, 1] are kept; others are scaled with ``settings.intensity``. A provided ``*sdf.nii.gz`` is not read:
    SDFs are recomputed with the configured scale and clip (the official ones are scale 32, clip 0.2, the
    defaults at 64^3). When the cases sit in ``training_set_full``/``testing_set`` folders, that partition is
    written as the split ``<out_dir>/splits/official.json``.
    """
    out = Path(out_dir)
    found, parts = official_cases(raw_dir)
    structures = list(settings.structures)
    codes = {code: HEART.index(n) + 1 for code, n in MMWHS_CODES.items()}
    kept: list[dict[str, Any]] = []
    skips: list[dict[str, str]] = []
    shape: tuple[int, ...] | None = None
    scaled: list[str] = []
    for case, (image_file, label_file) in tqdm(sorted(found.items()), desc=f"read {name}", disable=None):
        if case_id_problem(case):
            skips.append({"case": case, "reason": f"{image_file.name}: the case id {case_id_problem(case)}"})
            continue
        try:
            image, affine = read_volume(image_file)
            label, _ = read_volume(label_file)
        except Exception as err:  # a corrupt or truncated file skips its case; the report names it
            skips.append({"case": case, "reason": f"cannot read {image_file.name} or {label_file.name}: "
                                                  f"{_one_line(err)}"})
            continue
        if not np.all(np.isfinite(image)):
            skips.append({"case": case, "reason": f"the image {image_file.name} has NaN or infinite voxels"})
            continue
        if image.shape != label.shape:
            skips.append({"case": case, "reason": f"image {image.shape} and label {label.shape} differ in shape"})
            continue
        if shape is not None and image.shape != shape:
            skips.append({"case": case, "reason": f"shape {image.shape} differs from the first case's {shape}"})
            continue
        values = set(np.unique(label).astype(int).tolist())
        if values <= set(range(len(structures) + 1)):
            mapped = label.astype(np.uint8)
        elif values <= set(codes) | set(MMWHS_DROPPED) | {0} and len(structures) == len(HEART):
            mapped = np.zeros(label.shape, dtype=np.uint8)
            for code, k in codes.items():
                mapped[label == code] = k
        else:
            skips.append({"case": case, "reason": f"label values {sorted(values)} are neither 0..{len(structures)} "
                          "nor MM-WHS codes"})
            continue
        image = np.asarray(image, dtype=np.float32)
        if image.min() < -1.001 or image.max() > 1.001:
            image = settings.normalize(image)
            scaled.append(case)
        shape = image.shape
        write_case(out, case, np.clip(image, -1.0, 1.0), mapped, affine)
        spacing = [float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)]
        kept.append({"case": case, "native_size": list(image.shape), "native_spacing_mm": spacing,
                     "orientation": "as provided", "crop_extent_mm": [n * s for n, s in zip(image.shape, spacing)],
                     "grid_spacing_mm": spacing, "label_volume_ml": _volumes_ml(mapped, structures, spacing),
                     "notes": ["intensities scaled with the configured window"] if case in scaled else []})
    if not kept:
        raise ValueError(f"no case of {raw_dir} could be read: " + "; ".join(f"{s['case']}: {s['reason']}"
                                                                            for s in skips[:5]))
    intensity = settings.intensity if scaled else {"method": "provided", "range": [-1.0, 1.0]}
    info = open_dataset_info(out, name=name, modality=settings.modality, structures=structures,
                             shape=[int(s) for s in shape], intensity=intensity)
    info["cases"] = sorted(set(info["cases"]) | {e["case"] for e in kept})
    info["source"] = {"layout": "official", "raw_dir": str(raw_dir)}
    save_dataset_info(out, info)
    if parts:
        names = {e["case"] for e in kept}
        save_split({"name": "official", "dataset": name,
                    "train": sorted(c for c, p in parts.items() if p == "train" and c in names),
                    "val": [], "test": sorted(c for c, p in parts.items() if p == "test" and c in names)},
                   out / "splits" / "official.json")
    report = {"dataset": name, "out_dir": str(out), "settings": {"layout": "official", "shape": list(shape)},
              "source": info["source"], "kept": kept, "skipped": skips}
    write_report(out, report)
    log.info("read %d official preprocessed cases into %s (%d skipped)", len(kept), out, len(skips))
    return report


def _load_boxes(path: str | None) -> dict[str, list[list[int]]]:
    if not path:
        return {}
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"crop box file not found: {file}")
    return read_json_object(file)


def settings_from_config(cfg: dict[str, Any], structures: Sequence[str]) -> Settings:
    """``Settings`` from the ``prepare`` config (``configs/prepare.yaml`` with a ``source``)."""
    source = cfg["source"]
    modality = source.get("modality")
    check_modality(modality)
    intensity = source.get("intensity") or intensity_spec(modality)
    crop_cfg = dict(cfg.get("crop") or {})
    crop = CropSpec.from_config(crop_cfg, _load_boxes(crop_cfg.get("box_file")))
    return Settings(modality=modality, structures=list(structures), shape=[int(s) for s in cfg["shape"]], crop=crop,
                    intensity=dict(intensity), require_all_structures=bool(source.get("require_all_structures", True)),
                    antialias=bool(cfg.get("antialias", True)), nonfinite=str(cfg.get("nonfinite", "skip")))


def prepare_from_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the preparation a ``prepare`` config describes (any ``source`` but ``phantom``)."""
    source = cfg["source"]
    kind = source["kind"]
    if not cfg.get("raw_dir"):
        raise ValueError(f"raw_dir is not set: pass raw_dir=<folder with the {kind} data> (see data/README.md)")
    structures = sources.structure_names(kind if kind != "official" else "mmwhs", cfg["raw_dir"],
                                         source.get("structures"))
    settings = settings_from_config(cfg, structures)
    provenance = {"layout": kind, "raw_dir": str(cfg["raw_dir"])}
    if kind == "official":
        return prepare_official(cfg["raw_dir"], cfg["out_dir"], name=cfg["name"], settings=settings)
    found, skipped = sources.find_cases(kind, cfg["raw_dir"], modality=settings.modality,
                                        structures=source.get("structures"))
    return prepare_dataset(found, skipped, cfg["out_dir"], name=cfg["name"], settings=settings, source=provenance)
