"""Label-free localisation of the heart in a new scan by registering the training scans to it.

A checkpoint trained on data prepared from raw scans keeps a few *localiser atlases*: each training case's whole
scan, turned to the training axes and resampled onto a coarse cube grid (``ATLAS_SHAPE`` voxels over the scan's
largest extent), with the foreground of its reference label on that grid. To find the heart in a new scan
(``roi=auto``), the scan is put on such a grid too, each atlas is registered to it (an affine transform started
with the two grids' centres aligned, Mattes mutual information, both images masked to where they hold data) and its foreground
is mapped across. The voxels that at least half of the atlases call foreground (or, when none do, any one) are the
heart; its box plus the training margin is the crop, which the model then refines (``roi_passes``).

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
MAX_ATLASES = 5


@dataclass(frozen=True)
class LocaliserAtlas:
    """One training scan on its coarse grid: ``image`` float32 and ``mask`` (the label's foreground) bool."""

    case: str
    image: np.ndarray
    mask: np.ndarray
    grid: Grid

    def to_record(self) -> dict[str, Any]:
        """Tensors and plain types, for a checkpoint."""
        return {"case": self.case, "image": torch.from_numpy(self.image.astype(np.float32)),
                "mask": torch.from_numpy(self.mask.astype(np.uint8)), "grid": self.grid.to_dict()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "LocaliserAtlas":
        grid = Grid.from_dict(record["grid"])
        image = np.asarray(record["image"].numpy() if torch.is_tensor(record["image"]) else record["image"],
                           dtype=np.float32)
        mask = np.asarray(record["mask"].numpy() if torch.is_tensor(record["mask"]) else record["mask"]) > 0
        if image.shape != grid.size or mask.shape != grid.size:
            raise ValueError(f"localiser atlas {record.get('case')}: arrays {image.shape} and {mask.shape} do not "
                             f"match its grid {grid.size}")
        return cls(str(record["case"]), image, mask, grid)


def coarse_grid(oriented: sitk.Image, shape: Sequence[int] = ATLAS_SHAPE) -> Grid:
    """A cube grid of ``shape`` voxels over the whole of ``oriented`` (its largest extent)."""
    return geometry.crop_grid(oriented, shape, CropSpec(mode="whole", cube=True))


def _coarse(oriented: sitk.Image, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The scan on ``grid`` (outside it: its lowest value) and where the grid lies inside the scan."""
    low = float(sitk.GetArrayViewFromImage(oriented).min())
    image = geometry.resample_image(oriented, grid, default=low)
    inside = geometry.resample_image(sitk.Cast(oriented * 0 + 1, sitk.sitkFloat32), grid, default=0.0,
                                     antialias=False) > 0.5
    return image, inside


def make_atlas(case: str, oriented_scan: sitk.Image, oriented_label: sitk.Image) -> LocaliserAtlas:
    """The localiser atlas of one training scan and its label, both already in the training axes."""
    grid = coarse_grid(oriented_scan)
    image, _ = _coarse(oriented_scan, grid)
    mask = geometry.resample_labels(sitk.Cast(oriented_label > 0, sitk.sitkUInt8), grid, 1) > 0
    if not mask.any():
        raise ValueError(f"case {case}: the label has no foreground on the localiser grid")
    return LocaliserAtlas(case, image, mask, grid)


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


def _register(fixed: sitk.Image, fixed_mask: sitk.Image, moving: sitk.Image, moving_mask: sitk.Image,
              seed: int) -> sitk.Transform:
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.3, seed)
    reg.SetMetricFixedMask(fixed_mask)
    reg.SetMetricMovingMask(moving_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=150,
                                                 relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    reg.SetInitialTransform(initial, inPlace=False)
    return reg.Execute(fixed, moving)


def locate(oriented: sitk.Image, atlases: Sequence[LocaliserAtlas], seed: int = 0,
           case_id: str = "scan") -> np.ndarray | None:
    """The heart's voxels on ``oriented`` (a scan in the training axes) by atlas registration, or None when no
    atlas could be registered or none maps any foreground onto the scan."""
    grid = coarse_grid(oriented)
    image, inside = _coarse(oriented, grid)
    fixed = geometry.from_array(image, grid)
    fixed_mask = geometry.from_array(inside.astype(np.uint8), grid)
    votes = np.zeros(grid.size, dtype=np.int32)
    used = 0
    for atlas in atlases:
        moving = geometry.from_array(atlas.image, atlas.grid)
        mask = geometry.from_array(atlas.mask.astype(np.uint8), atlas.grid)
        moving_inside = geometry.from_array((atlas.image > atlas.image.min()).astype(np.uint8), atlas.grid)
        try:
            transform = _register(fixed, fixed_mask, moving, moving_inside, seed)
        except RuntimeError as err:
            log.warning("%s: registering localiser atlas %s failed (%s); skipped", case_id, atlas.case,
                        " ".join(str(err).split())[-200:])
            continue
        warped = sitk.Resample(mask, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        votes += geometry.to_array(warped).astype(np.int32)
        used += 1
    if used == 0:
        return None
    heart = votes * 2 >= used
    if not heart.any():
        heart = votes > 0
    if not heart.any():
        return None
    on_scan = geometry.resample_labels(geometry.from_array(heart.astype(np.uint8), grid), Grid.of(oriented), 1) > 0
    return on_scan if on_scan.any() else None
