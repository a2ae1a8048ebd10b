"""Label-free localisation of the heart in a new scan by registering the training scans to it.

A checkpoint trained on data prepared from raw scans keeps a few *localiser atlases*: each training case's whole
scan, turned to the training axes and resampled onto a coarse cube grid (``ATLAS_SHAPE`` voxels over the scan's
largest extent), and the region around its heart (the label's box plus ``LOCAL_MARGIN_MM``) on a grid of the same
size, each with the label's foreground. To find the heart in a new scan (``roi=auto``), each atlas is registered to
it twice (affine, Mattes mutual information, both images masked to where they hold data): the whole scans, from
their grids' centres aligned, then the heart regions, from the first result. Each fit is scored by the normalised
cross-correlation of the registered atlas region with the scan; when even the best scores low (a registration
caught on the wrong structure), the atlases are registered again from starts moved along each axis. The box of
the best-scoring fit's heart, its largest side pulled to the geometric mean of its own and the atlas heart's (the
registration's scale is its least certain part), plus the training margin, is the crop, which the model may then
re-centre (``roi_passes``). A checkpoint with a heart network (``diffatlas.heart_net``) outlines the heart in the
region around the best fit's instead (and around any other atlas's that fits nearly as well, ``NEAR_BEST``), and
the box of its most confident outline sets the crop.

A generative atlas only knows hearts at the scale and place it was trained on: run on a whole scan shrunk onto its
grid it draws a heart of the training size wherever it likes, so its own coarse pass is kept only for checkpoints
without atlases (phantoms and the official layout, which have no raw scans).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from diffatlas.data import geometry
from diffatlas.data.datasets import PreparedData
from diffatlas.data.geometry import CropSpec, Grid
from diffatlas.data.prepare import native_info, native_label

log = logging.getLogger(__name__)

ATLAS_SHAPE = (48, 48, 48)
LOCAL_MARGIN_MM = 30.0
MAX_ATLASES = 5
RETRY_BELOW = 0.35        # best fit's NCC under which the whole-scan registration is tried from further starts
RETRY_SHIFT_MM = 30.0     # how far those starts move the atlas along each axis
SIZE_PRIOR = 0.5          # weight of the atlas heart's own size in the found heart's (0: the registration's alone)
NEAR_BEST = 0.1           # NCC below the best fit within which another atlas's best fit is outlined as well


@dataclass(frozen=True)
class AtlasLevel:
    """A training scan on one grid: ``image`` float32 and ``mask`` (its label's foreground) bool."""

    image: np.ndarray
    mask: np.ndarray
    grid: Grid

    def inside(self) -> np.ndarray:
        """Where the grid holds scan data (resampling fills the rest with the image's lowest value)."""
        return self.image > self.image.min()


@dataclass(frozen=True)
class LocaliserAtlas:
    """One training case: its whole scan on a coarse cube grid, and the region around its heart (the label's box
    plus ``LOCAL_MARGIN_MM``) on a grid of the same size, for the finer second registration."""

    case: str
    whole: AtlasLevel
    local: AtlasLevel

    def to_record(self) -> dict[str, Any]:
        """Tensors and plain types, for a checkpoint."""
        record: dict[str, Any] = {"case": self.case}
        for name, level in (("whole", self.whole), ("local", self.local)):
            record[name] = {"image": torch.from_numpy(level.image.astype(np.float32)),
                            "mask": torch.from_numpy(level.mask.astype(np.uint8)), "grid": level.grid.to_dict()}
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "LocaliserAtlas":
        levels = []
        for name in ("whole", "local"):
            entry = record[name]
            grid = Grid.from_dict(entry["grid"])
            image = np.asarray(torch.as_tensor(entry["image"]).numpy(), dtype=np.float32)
            mask = np.asarray(torch.as_tensor(entry["mask"]).numpy()) > 0
            if image.shape != grid.size or mask.shape != grid.size:
                raise ValueError(f"localiser atlas {record.get('case')} ({name}): arrays {image.shape} and "
                                 f"{mask.shape} do not match its grid {grid.size}")
            levels.append(AtlasLevel(image, mask, grid))
        return cls(str(record["case"]), *levels)


def coarse_grid(oriented: sitk.Image, shape: Sequence[int] = ATLAS_SHAPE) -> Grid:
    """A cube grid of ``shape`` voxels over the whole of ``oriented`` (its largest extent)."""
    return geometry.crop_grid(oriented, shape, CropSpec(mode="whole", cube=True))


def local_grid(oriented: sitk.Image, heart: np.ndarray, shape: Sequence[int] = ATLAS_SHAPE) -> Grid:
    """A cube grid of ``shape`` voxels over the box of ``heart`` (a mask on ``oriented``) plus ``LOCAL_MARGIN_MM``."""
    return geometry.crop_grid(oriented, shape, CropSpec(mode="label", margin_mm=LOCAL_MARGIN_MM, cube=True), heart)


def _level(oriented: sitk.Image, grid: Grid, label: sitk.Image | None = None) -> AtlasLevel:
    """The scan (outside it: its lowest value) and, given, the label's foreground on ``grid``."""
    low = float(sitk.GetArrayViewFromImage(oriented).min())
    image = geometry.resample_image(oriented, grid, default=low)
    mask = np.zeros(grid.size, dtype=bool) if label is None else \
        geometry.resample_labels(sitk.Cast(label > 0, sitk.sitkUInt8), grid, 1) > 0
    return AtlasLevel(image, mask, grid)


def make_atlas(case: str, oriented_scan: sitk.Image, oriented_label: sitk.Image,
               shape: Sequence[int] = ATLAS_SHAPE) -> LocaliserAtlas:
    """The localiser atlas of one training scan and its label, both already in the training axes, on grids of
    ``shape`` voxels."""
    foreground = geometry.to_array(oriented_label) > 0
    if not foreground.any():
        raise ValueError(f"case {case}: the label has no foreground")
    whole = _level(oriented_scan, coarse_grid(oriented_scan, shape), oriented_label)
    if not whole.mask.any():
        raise ValueError(f"case {case}: the label has no foreground on the localiser grid")
    return LocaliserAtlas(case, whole, _level(oriented_scan, local_grid(oriented_scan, foreground, shape),
                                              oriented_label))


def build_atlases(data: PreparedData, cases: Sequence[str], orientation: str,
                  max_atlases: int = MAX_ATLASES) -> list[dict[str, Any]]:
    """Localiser atlases (as checkpoint records) of up to ``max_atlases`` of ``cases``, from the raw scans they
    were prepared from; none when the data has no native records (phantoms, the official layout)."""
    records: list[dict[str, Any]] = []
    for case in list(cases)[:max_atlases]:
        info = native_info(data.root, case)
        if info is None:
            log.info("%s has no raw scans behind its cases: roi=auto will use the model's own coarse pass", data.root)
            return []
        try:
            scan = sitk.ReadImage(str(info["source_image"]), sitk.sitkFloat32)
            label = native_label(data.root, info)
            if label.GetSize() == scan.GetSize():
                label.CopyInformation(scan)
            atlas = make_atlas(case, sitk.DICOMOrient(scan, orientation), sitk.DICOMOrient(label, orientation))
        except (RuntimeError, OSError, ValueError) as err:
            log.warning("no localiser atlas from case %s: %s", case, " ".join(str(err).split())[:300])
            continue
        records.append(atlas.to_record())
    if records:
        log.info("localiser atlases for roi=auto: %s", ", ".join(r["case"] for r in records))
    return records


def _initial(fixed: AtlasLevel, moving: AtlasLevel, shift_mm: Sequence[float]) -> sitk.AffineTransform:
    """The starting transform of the whole-scan registration: the grids' centres aligned, then the atlas moved by
    ``shift_mm`` along the fixed grid's axes."""
    start = sitk.AffineTransform(sitk.CenteredTransformInitializer(
        geometry.from_array(fixed.image, fixed.grid), geometry.from_array(moving.image, moving.grid),
        sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.GEOMETRY))
    direction = np.asarray(fixed.grid.direction).reshape(3, 3)
    start.SetTranslation(tuple(np.asarray(start.GetTranslation()) + direction @ np.asarray(shift_mm, dtype=float)))
    return start


def _register(fixed: AtlasLevel, moving: AtlasLevel, seed: int, start: sitk.Transform,
              refine: bool = False) -> sitk.Transform:
    """The transform mapping ``fixed``'s points onto ``moving``'s: affine, Mattes mutual information over the voxels
    where both hold scan data; optimised from ``start``, or (``refine``) an affine step composed with it."""
    fixed_image, moving_image = geometry.from_array(fixed.image, fixed.grid), geometry.from_array(moving.image,
                                                                                                 moving.grid)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.3, geometry.sitk_seed("localise", seed))
    reg.SetMetricFixedMask(geometry.from_array(fixed.inside().astype(np.uint8), fixed.grid))
    reg.SetMetricMovingMask(geometry.from_array(moving.inside().astype(np.uint8), moving.grid))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=150,
                                                 relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    if not refine:
        reg.SetInitialTransform(start, inPlace=False)
        return reg.Execute(fixed_image, moving_image)
    step = sitk.AffineTransform(3)
    step.SetCenter(fixed_image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.grid.size]))
    reg.SetMovingInitialTransform(start)
    reg.SetInitialTransform(step, inPlace=False)
    found = reg.Execute(fixed_image, moving_image)
    composite = sitk.CompositeTransform(start)
    composite.AddTransform(found)          # applied first: fixed -> refined -> start -> moving
    return composite


def _warp(level: AtlasLevel, onto: Grid, transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """``level``'s image (its lowest value outside it) and mask resampled onto ``onto`` through ``transform``."""
    low = float(level.image.min())
    image = geometry.to_array(sitk.Resample(geometry.from_array(level.image, level.grid), onto.blank(), transform,
                                            sitk.sitkLinear, low, sitk.sitkFloat32))
    mask = geometry.to_array(sitk.Resample(geometry.from_array(level.mask.astype(np.uint8), level.grid), onto.blank(),
                                           transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0
    return image, mask


def _ncc(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """Normalised cross-correlation of ``a`` and ``b`` over ``where`` (-1 where it is nearly empty or flat)."""
    if where.sum() < 27:
        return -1.0
    a, b = a[where] - a[where].mean(), b[where] - b[where].mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / norm if norm > 0 else -1.0


def _on_scan(oriented: sitk.Image, mask: np.ndarray, grid: Grid) -> np.ndarray | None:
    """A mask on ``grid`` carried onto ``oriented``'s voxels, or None when nothing of it lands there."""
    if not mask.any():
        return None
    on_scan = geometry.resample_labels(geometry.from_array(mask.astype(np.uint8), grid), Grid.of(oriented), 1) > 0
    return on_scan if on_scan.any() else None


@dataclass(frozen=True)
class Fit:
    """One atlas registered to a scan: the heart it maps onto the scan's voxels and ``score``, the normalised
    cross-correlation of the registered atlas region with the scan (about 0.5-0.7 for a heart found in cine MRI,
    under 0.3 for a registration that went astray), and ``transform``, which maps the scan's points onto the
    atlas's."""

    atlas: str
    heart: np.ndarray
    score: float
    transform: sitk.Transform


def fit_atlas(oriented: sitk.Image, fixed: AtlasLevel, atlas: LocaliserAtlas, seed: int = 0,
              shift_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> Fit | None:
    """Register one atlas to ``oriented`` (whose coarse level is ``fixed``): the whole scans from ``_initial``, then
    the region around the heart that found against the atlas's own. None when the atlas maps no heart onto the
    scan; a RuntimeError when the first registration fails."""
    coarse = _register(fixed, atlas.whole, seed, _initial(fixed, atlas.whole, shift_mm))
    heart = _on_scan(oriented, _warp(atlas.whole, fixed.grid, coarse)[1], fixed.grid)
    if heart is None:
        return None
    near = _level(oriented, local_grid(oriented, heart))
    try:
        transform = _register(near, atlas.local, seed, coarse, refine=True)
    except RuntimeError as err:
        log.debug("refining atlas %s failed (%s); its whole-scan registration is kept", atlas.case, err)
        transform = coarse
    image, mask = _warp(atlas.local, near.grid, transform)
    heart = _on_scan(oriented, mask, near.grid)
    if heart is None:
        return None
    return Fit(atlas.case, heart, _ncc(near.image, image, near.inside() & (image > atlas.local.image.min())),
               transform)


def retry_shifts(mm: float = RETRY_SHIFT_MM) -> list[tuple[float, float, float]]:
    """The further starts of the whole-scan registration: the atlas moved ``mm`` either way along each axis."""
    return [tuple(float(sign * mm * (axis == k)) for k in range(3)) for axis in range(3) for sign in (-1, 1)]


def fit_atlases(oriented: sitk.Image, atlases: Sequence[LocaliserAtlas], seed: int = 0,
                case_id: str = "scan") -> list[Fit]:
    """Every atlas registered to ``oriented``, best ``score`` first. When even the best scores under
    ``RETRY_BELOW`` (a registration caught far from the heart), each atlas is registered again from the starts of
    ``retry_shifts`` and those fits join the list."""
    fixed = _level(oriented, coarse_grid(oriented))

    def attempt(atlas: LocaliserAtlas, shift: Sequence[float]) -> Fit | None:
        try:
            return fit_atlas(oriented, fixed, atlas, seed, shift)
        except RuntimeError as err:
            log.warning("%s: registering localiser atlas %s failed (%s); skipped", case_id, atlas.case,
                        " ".join(str(err).split())[-200:])
            return None

    with geometry.sitk_threads(1):          # one thread: the same seed gives the same fits
        fits = [fit for fit in (attempt(atlas, (0.0, 0.0, 0.0)) for atlas in atlases) if fit is not None]
        if atlases and (not fits or max(fit.score for fit in fits) < RETRY_BELOW):
            log.info("%s: the atlases fit poorly (best NCC %s); registering again from %d further starts", case_id,
                     f"{max(fit.score for fit in fits):.2f}" if fits else "none", len(retry_shifts()))
            fits += [fit for atlas in atlases for shift in retry_shifts()
                     if (fit := attempt(atlas, shift)) is not None]
    return sorted(fits, key=lambda fit: -fit.score)


Outline = Callable[[sitk.Image, np.ndarray], tuple[np.ndarray, float] | None]   # a heart and a confidence


def locate(oriented: sitk.Image, atlases: Sequence[LocaliserAtlas], seed: int = 0, case_id: str = "scan",
           outline: Outline | None = None) -> np.ndarray | None:
    """The heart on ``oriented`` (a scan in the training axes), as a mask on its voxels; None when no atlas could be
    registered or none maps any heart onto the scan.

    Without ``outline``: the box of the heart of the atlas that fits the scan best (``fit_atlases``), sized by
    ``_sized_box``. With ``outline`` (``HeartNet.outline``: the heart it finds around a box, and its confidence),
    each atlas's best fit scoring within ``NEAR_BEST`` of the best is outlined, and the most confident outline is
    the heart (the best fit's box when none finds one). Two atlases can fit about as well in different places
    (ACDC patient063: NCC 0.45 at 129 mm from the heart, 0.42 at 34 mm), and the network is surer of the heart.
    The outline is taken however far it lies from its box: on the 77 ACDC cases outside the 2-shot split, each
    outline more than 30 mm from its box lay nearer the heart than the box did."""
    fits = fit_atlases(oriented, atlases, seed, case_id)
    if not fits:
        return None
    best = fits[0]
    log.info("%s: heart found with atlas %s (NCC %.2f)", case_id, best.atlas, best.score)
    box = _fit_box(oriented, best, atlases)
    if outline is None:
        return box
    candidates = [best] + [fit for fit in _best_per_atlas(fits)[1:] if fit.score >= best.score - NEAR_BEST]
    found = []
    for fit in candidates:
        fit_box = box if fit is best else _fit_box(oriented, fit, atlases)
        if (outlined := outline(oriented, fit_box)) is not None:
            found.append((outlined[1], fit, fit_box, outlined[0]))
    if not found:
        log.warning("%s: the heart network found no heart near the registered one; the registration's box is used",
                    case_id)
        return box
    confidence, fit, fit_box, heart = max(found, key=lambda item: item[0])
    moved = float(np.linalg.norm((np.mean(geometry.mask_bounds(heart), axis=0) -
                                  np.mean(geometry.mask_bounds(fit_box), axis=0)) * np.asarray(oriented.GetSpacing())))
    log.info("%s: the heart network's outline around atlas %s's box (NCC %.2f, confidence %.3f) is centred %.0f mm "
             "from it", case_id, fit.atlas, fit.score, confidence, moved)
    return heart


def _best_per_atlas(fits: Sequence[Fit]) -> list[Fit]:
    """The best of each atlas's fits, best first (``fits`` sorted best first, as ``fit_atlases`` gives them)."""
    best: dict[str, Fit] = {}
    for fit in fits:
        best.setdefault(fit.atlas, fit)
    return list(best.values())


def _fit_box(oriented: sitk.Image, fit: Fit, atlases: Sequence[LocaliserAtlas]) -> np.ndarray:
    """The sized box (``_sized_box``) of the heart that ``fit`` maps onto ``oriented``."""
    atlas = next(a for a in atlases if a.case == fit.atlas)
    return _sized_box(oriented, fit.heart, _extent_mm(*geometry.mask_bounds(atlas.local.mask),
                                                      atlas.local.grid.spacing))


def _extent_mm(lo: np.ndarray, hi: np.ndarray, spacing: Sequence[float]) -> float:
    """The largest side in mm of the box from voxel ``lo`` to voxel ``hi`` (both included)."""
    return float(((hi - lo + 1) * np.asarray(spacing, dtype=float)).max())


def _sized_box(oriented: sitk.Image, heart: np.ndarray, atlas_extent_mm: float) -> np.ndarray:
    """The box of ``heart`` (a mask on ``oriented``), scaled about its centre so that its largest side is the
    geometric mean of its own and the atlas heart's: the registration's scale is the least certain part of a fit,
    and the atlas's own size is a prior for it (``SIZE_PRIOR`` is the weight of that prior)."""
    lo, hi = geometry.mask_bounds(heart)
    found = _extent_mm(lo, hi, oriented.GetSpacing())
    factor = (atlas_extent_mm / found) ** SIZE_PRIOR
    voxels = np.maximum(1, np.floor((hi - lo + 1) * factor + 0.5)).astype(int)
    start = np.floor((lo + hi) / 2 - (voxels - 1) / 2 + 0.5).astype(int)
    stop = np.minimum(start + voxels, heart.shape)
    start = np.maximum(start, 0)
    box = np.zeros(heart.shape, dtype=bool)
    box[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] = True
    return box
