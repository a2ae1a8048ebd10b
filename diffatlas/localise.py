"""Label-free localisation of the heart in a new scan by registering the training scans to it.

A checkpoint trained on data prepared from raw scans keeps a few *localiser atlases*: each training case's whole
scan, turned to the training axes and resampled onto a coarse cube grid (``ATLAS_SHAPE`` voxels over the scan's
largest extent), and the region around its heart (the label's box plus ``LOCAL_MARGIN_MM``) on a grid of the same
size, each with the label's foreground. To find the heart in a new scan (``roi=auto``), each atlas is registered to
it twice (affine, Mattes mutual information, both images masked to where they hold data): the whole scans, from
their grids' centres aligned, then the heart regions, from the first result. The voxels that at least half of the
atlases call foreground (or, when none do, any one) are the heart; its box plus the training margin is the crop,
which the model may then re-centre (``roi_passes``).

A generative atlas only knows hearts at the scale and place it was trained on: run on a whole scan shrunk onto its
grid it draws a heart of the training size wherever it likes, so its own coarse pass is kept only for checkpoints
without atlases (phantoms and the official layout, which have no raw scans).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

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


def make_atlas(case: str, oriented_scan: sitk.Image, oriented_label: sitk.Image) -> LocaliserAtlas:
    """The localiser atlas of one training scan and its label, both already in the training axes."""
    foreground = geometry.to_array(oriented_label) > 0
    if not foreground.any():
        raise ValueError(f"case {case}: the label has no foreground")
    whole = _level(oriented_scan, coarse_grid(oriented_scan), oriented_label)
    if not whole.mask.any():
        raise ValueError(f"case {case}: the label has no foreground on the localiser grid")
    return LocaliserAtlas(case, whole, _level(oriented_scan, local_grid(oriented_scan, foreground), oriented_label))


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


def _register(fixed: AtlasLevel, moving: AtlasLevel, seed: int, start: sitk.Transform | None) -> sitk.Transform:
    """The transform mapping ``fixed``'s points onto ``moving``'s: affine, Mattes mutual information over the voxels
    where both hold scan data; from the grids' centres aligned, or refining ``start``."""
    fixed_image, moving_image = geometry.from_array(fixed.image, fixed.grid), geometry.from_array(moving.image,
                                                                                                 moving.grid)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.3, seed)
    reg.SetMetricFixedMask(geometry.from_array(fixed.inside().astype(np.uint8), fixed.grid))
    reg.SetMetricMovingMask(geometry.from_array(moving.inside().astype(np.uint8), moving.grid))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=150,
                                                 relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    if start is None:
        reg.SetInitialTransform(sitk.CenteredTransformInitializer(
            fixed_image, moving_image, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.GEOMETRY),
            inPlace=False)
        return reg.Execute(fixed_image, moving_image)
    refine = sitk.AffineTransform(3)
    refine.SetCenter(fixed_image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.grid.size]))
    reg.SetMovingInitialTransform(start)
    reg.SetInitialTransform(refine, inPlace=False)
    found = reg.Execute(fixed_image, moving_image)
    composite = sitk.CompositeTransform(start)
    composite.AddTransform(found)          # applied first: fixed -> refined -> start -> moving
    return composite


def _vote(oriented: sitk.Image, fixed: AtlasLevel, atlases: Sequence[tuple[AtlasLevel, sitk.Transform]]
          ) -> np.ndarray | None:
    """The voxels of ``oriented`` that at least half of the registered atlas masks cover (else any one)."""
    votes = np.zeros(fixed.grid.size, dtype=np.int32)
    reference = fixed.grid.blank()
    for level, transform in atlases:
        mask = geometry.from_array(level.mask.astype(np.uint8), level.grid)
        votes += geometry.to_array(sitk.Resample(mask, reference, transform, sitk.sitkNearestNeighbor, 0,
                                                 sitk.sitkUInt8)).astype(np.int32)
    heart = votes * 2 >= len(atlases)
    if not heart.any():
        heart = votes > 0
    if not heart.any():
        return None
    on_scan = geometry.resample_labels(geometry.from_array(heart.astype(np.uint8), fixed.grid), Grid.of(oriented),
                                       1) > 0
    return on_scan if on_scan.any() else None


def locate(oriented: sitk.Image, atlases: Sequence[LocaliserAtlas], seed: int = 0,
           case_id: str = "scan") -> np.ndarray | None:
    """The heart's voxels on ``oriented`` (a scan in the training axes) by atlas registration, or None when no
    atlas could be registered or none maps any foreground onto the scan.

    Two registrations per atlas: the whole scans on their coarse grids, then, refining that, the region around
    the heart the first one found against the atlas's own heart region, on grids of the same size."""
    fixed = _level(oriented, coarse_grid(oriented))
    found: list[tuple[LocaliserAtlas, sitk.Transform]] = []
    for atlas in atlases:
        try:
            found.append((atlas, _register(fixed, atlas.whole, seed, None)))
        except RuntimeError as err:
            log.warning("%s: registering localiser atlas %s failed (%s); skipped", case_id, atlas.case,
                        " ".join(str(err).split())[-200:])
    if not found:
        return None
    heart = _vote(oriented, fixed, [(atlas.whole, transform) for atlas, transform in found])
    if heart is None:
        return None
    near = _level(oriented, local_grid(oriented, heart))
    refined = []
    for atlas, transform in found:
        try:
            refined.append((atlas.local, _register(near, atlas.local, seed, transform)))
        except RuntimeError as err:
            log.warning("%s: refining localiser atlas %s failed (%s); its first registration is kept", case_id,
                        atlas.case, " ".join(str(err).split())[-200:])
            refined.append((atlas.local, transform))
    closer = _vote(oriented, near, refined)
    return heart if closer is None else closer
