"""Scan geometry for preparation: orientation, crop boxes, resampling onto a grid and back.

Conventions. Raw scans are handled as SimpleITK images (LPS world, millimetres); a ``Grid`` is the
geometry of one (size, spacing, origin, direction). Arrays handed to the rest of the package are indexed
``(i, j, k)``, i.e. the transpose of SimpleITK's ``(z, y, x)`` array view, with the RAS affine of
``io.read_volume``.

Orientation policy: every scan is first permuted and flipped (never interpolated) to the closest
canonical axes, ITK code ``"LPS"``: voxel axis 0 runs towards the patient's left, axis 1 posterior,
axis 2 superior. A remaining oblique tilt (cardiac short-axis stacks) stays in the direction cosines,
so the prepared grid follows the scan's own slice planes and resampling never rotates the anatomy.

Crops, all boxes in the oriented scan's axes and resampled to the configured grid shape:

* ``label``: the structures' bounding box plus ``margin_mm`` (the paper's protocol; needs the label);
* ``whole``: the whole scan (label-free);
* ``center``: a box of ``size_mm`` about the scan's centre (label-free; cine MRI is centred on the heart);
* ``box``: a box the user gives per case in the raw file's voxel indices (label-free).

``cube`` widens the box's shorter edges to its longest, so a cubic grid has isotropic voxels; ``size_mm``
fixes the edge lengths instead (centred on the box), which keeps every case at the same scale.
"""

from __future__ import annotations

import logging
import math
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

ORIENTATION = "LPS"
CROP_MODES = ("label", "whole", "center", "box")
CropMode = Literal["label", "whole", "center", "box"]
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Header differences at or below these are float noise (a label written in float32 beside a float64
# image); anything larger is a different grid.
SPACING_NOISE_REL = 1e-3
ORIGIN_NOISE_MM = 1e-2
DIRECTION_NOISE = 1e-4


@dataclass(frozen=True)
class Grid:
    """The geometry of a 3D image: ``size`` in voxels ``(x, y, z)``, ``spacing`` mm, LPS ``origin`` and
    row-major 3x3 ``direction``, exactly as SimpleITK reports them."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Grid":
        return cls(tuple(int(s) for s in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                   tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Grid":
        return cls(tuple(d["size"]), tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    def blank(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """An empty image with this geometry (a resampling reference)."""
        image = sitk.Image(list(self.size), pixel_type)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def affine(self) -> np.ndarray:
        """The 4x4 voxel ``(i, j, k)`` to RAS affine of this grid (``io.read_volume``'s convention)."""
        lps = np.eye(4)
        lps[:3, :3] = np.asarray(self.direction).reshape(3, 3) * np.asarray(self.spacing)[None, :]
        lps[:3, 3] = self.origin
        return _LPS_TO_RAS @ lps


def to_array(image: sitk.Image) -> np.ndarray:
    """The voxels of ``image`` as an ``(i, j, k)`` array."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))


def from_array(array: np.ndarray, grid: Grid) -> sitk.Image:
    """An image holding the ``(i, j, k)`` array ``array`` on ``grid``."""
    if tuple(array.shape) != grid.size:
        raise ValueError(f"array shape {array.shape} does not match the grid size {grid.size}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def orient(image: sitk.Image) -> sitk.Image:
    """Permute and flip ``image`` to the closest ``ORIENTATION`` axes (no interpolation)."""
    return sitk.DICOMOrient(image, ORIENTATION)


def header_differences(image: sitk.Image, label: sitk.Image) -> tuple[list[str], list[str]]:
    """Compare a label's header with its image's.

    Returns:
        ``(noise, real)``: names of the fields that differ only by float noise (within
        ``SPACING_NOISE_REL``, ``ORIGIN_NOISE_MM``, ``DIRECTION_NOISE``) and of those that really differ,
        each with the largest difference, e.g. ``"origin (0.004 mm)"``.
    """
    a, b = Grid.of(image), Grid.of(label)
    noise: list[str] = []
    real: list[str] = []
    if a.size != b.size:
        real.append(f"size ({list(a.size)} vs {list(b.size)})")
    checks = (
        ("spacing", np.abs(np.subtract(a.spacing, b.spacing)) / np.asarray(a.spacing), SPACING_NOISE_REL, ""),
        ("origin", np.abs(np.subtract(a.origin, b.origin)), ORIGIN_NOISE_MM, " mm"),
        ("direction", np.abs(np.subtract(a.direction, b.direction)), DIRECTION_NOISE, ""),
    )
    for name, diff, tolerance, unit in checks:
        worst = float(np.max(diff))
        if worst == 0.0:
            continue
        text = f"{name} ({worst:.3g}{unit}{' relative' if name == 'spacing' else ''})"
        (noise if worst <= tolerance else real).append(text)
    return noise, real


def resample_nearest(label: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``label`` on ``reference``'s grid by nearest neighbour (used to fix float-noise header differences)."""
    return sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())


@dataclass(frozen=True)
class CropSpec:
    """How to choose the box that becomes the prepared grid (see the module docstring)."""

    mode: CropMode = "label"
    margin_mm: float = 10.0
    cube: bool = True
    size_mm: tuple[float, float, float] | None = None
    boxes: dict[str, list[list[int]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in CROP_MODES:
            raise ValueError(f"crop mode must be one of {CROP_MODES}, got {self.mode!r}")
        if self.margin_mm < 0:
            raise ValueError(f"crop margin_mm must be >= 0, got {self.margin_mm}")
        if self.size_mm is not None and (len(self.size_mm) != 3 or min(self.size_mm) <= 0):
            raise ValueError(f"crop size_mm must be three positive lengths, got {self.size_mm}")
        if self.mode == "center" and self.size_mm is None:
            raise ValueError("crop mode 'center' needs size_mm (the box's edge lengths in mm)")

    @property
    def needs_label(self) -> bool:
        return self.mode == "label"

    @classmethod
    def from_config(cls, cfg: dict[str, Any], boxes: dict[str, list[list[int]]] | None = None) -> "CropSpec":
        size = cfg.get("size_mm")
        if size is not None:
            size = tuple(float(s) for s in (size if isinstance(size, (list, tuple)) else [size] * 3))
        return cls(mode=cfg.get("mode", "label"), margin_mm=float(cfg.get("margin_mm", 10.0)),
                   cube=bool(cfg.get("cube", True)), size_mm=size, boxes=dict(boxes or {}))


def mask_bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The first and last voxel index of ``mask``'s foreground along each axis (int arrays), or None if empty."""
    nonzero = np.nonzero(mask)
    if not nonzero[0].size:
        return None
    return np.array([idx.min() for idx in nonzero]), np.array([idx.max() for idx in nonzero])


def _index_box(image: sitk.Image, spec: CropSpec, label: np.ndarray | None, case: str,
               native: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper voxel-edge coordinates (continuous indices of ``image``) of the raw box."""
    size = np.asarray(image.GetSize(), dtype=np.float64)
    if spec.mode == "label":
        if label is None:
            raise ValueError("crop mode 'label' needs a label")
        bounds = mask_bounds(label)
        if bounds is None:
            raise ValueError("the label is empty, so there is no box to crop around")
        return bounds[0] - 0.5, bounds[1] + 0.5
    if spec.mode in ("whole", "center"):
        return np.full(3, -0.5), size - 0.5
    if case not in spec.boxes:
        raise ValueError(f"crop mode 'box' but the box file has no entry for case {case!r}")
    bounds = np.asarray(spec.boxes[case], dtype=np.float64)
    if bounds.shape != (3, 2) or np.any(bounds[:, 1] < bounds[:, 0]):
        raise ValueError(f"case {case}: a box is [[i0, i1], [j0, j1], [k0, k1]] with i0 <= i1, got {spec.boxes[case]}")
    corners = [(bounds[0, a] + (a - 0.5), bounds[1, b] + (b - 0.5), bounds[2, c] + (c - 0.5))
               for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    points = [native.TransformContinuousIndexToPhysicalPoint(tuple(map(float, p))) for p in corners]
    indices = np.array([image.TransformPhysicalPointToContinuousIndex(p) for p in points])
    return indices.min(axis=0), indices.max(axis=0)


def crop_grid(image: sitk.Image, shape: Sequence[int], spec: CropSpec, label: np.ndarray | None = None,
              case: str = "", native: sitk.Image | None = None) -> Grid:
    """The prepared grid: ``shape`` voxels covering the crop box of oriented ``image``.

    Args:
        image: the oriented scan.
        shape: output grid size ``(X, Y, Z)``.
        spec: the crop rule.
        label: the oriented label as an ``(i, j, k)`` array (mode ``label``).
        case: the case id (mode ``box``).
        native: the scan as read, before orientation (mode ``box``: boxes are in its voxel indices).
    """
    shape = np.asarray([int(s) for s in shape])
    if shape.size != 3 or np.any(shape < 2):
        raise ValueError(f"the grid shape must be three sizes >= 2, got {list(shape)}")
    lo, hi = _index_box(image, spec, label, case, native if native is not None else image)
    spacing = np.asarray(image.GetSpacing())
    centre_index = (lo + hi) / 2.0
    extent_mm = (hi - lo) * spacing
    if spec.mode == "label":
        extent_mm = extent_mm + 2.0 * spec.margin_mm
    if spec.size_mm is not None:
        extent_mm = np.asarray(spec.size_mm, dtype=np.float64)
    elif spec.cube:
        extent_mm = np.full(3, extent_mm.max())
    out_spacing = extent_mm / shape
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, centre_index))))
    origin = centre - direction @ (out_spacing * (shape - 1) / 2.0)
    return Grid(tuple(int(s) for s in shape), tuple(float(s) for s in out_spacing),
                tuple(float(o) for o in origin), tuple(float(d) for d in direction.ravel()))


def _covering_region(image: sitk.Image, grid: Grid, pad_vox: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The voxel index range ``[lo, hi)`` of ``image`` that covers ``grid`` (padded), or None if disjoint."""
    ref = grid.blank()
    corners = [(a * (grid.size[0] - 1), b * (grid.size[1] - 1), c * (grid.size[2] - 1))
               for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    points = [ref.TransformIndexToPhysicalPoint(tuple(int(v) for v in p)) for p in corners]
    indices = np.array([image.TransformPhysicalPointToContinuousIndex(p) for p in points])
    half = np.asarray(grid.spacing).max() / np.asarray(image.GetSpacing())
    lo = np.floor(indices.min(axis=0) - half - pad_vox).astype(int)
    hi = np.ceil(indices.max(axis=0) + half + pad_vox).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(image.GetSize()))
    if np.any(hi <= lo):
        return None
    return lo, hi


def resample_image(image: sitk.Image, grid: Grid, default: float, antialias: bool = True) -> np.ndarray:
    """Linear resampling of a scan onto ``grid``, as float32 ``(i, j, k)``.

    When the grid is coarser than the scan along an axis, the scan is first smoothed with a Gaussian of
    sigma ``sqrt(s_out^2 - s_in^2) / 2`` mm on that axis (a standard anti-aliasing choice), so thin bright
    structures do not alias. Only the part of the scan the grid covers is read; voxels outside the scan
    take ``default``.
    """
    in_spacing = np.asarray(image.GetSpacing())
    sigma_mm = np.sqrt(np.maximum(np.asarray(grid.spacing) ** 2 - in_spacing ** 2, 0.0)) / 2.0 if antialias \
        else np.zeros(3)
    region = _covering_region(image, grid, pad_vox=np.ceil(3 * sigma_mm / in_spacing))
    if region is None:
        return np.full(grid.size, default, dtype=np.float32)
    lo, hi = region
    part = sitk.Cast(image[int(lo[0]):int(hi[0]), int(lo[1]):int(hi[1]), int(lo[2]):int(hi[2])], sitk.sitkFloat32)
    if np.any(sigma_mm > 0):
        part = sitk.SmoothingRecursiveGaussian(part, [float(max(s, 1e-6)) for s in sigma_mm])
    out = sitk.Resample(part, grid.blank(), sitk.Transform(), sitk.sitkLinear, float(default), sitk.sitkFloat32)
    return to_array(out).astype(np.float32)


def resample_labels(label: sitk.Image, grid: Grid, num_structures: int) -> np.ndarray:
    """Resample a label map (values 0..K) onto ``grid`` as uint8 ``(i, j, k)``.

    Each structure's indicator is interpolated linearly and every output voxel takes the structure with
    the largest value, background where ``1 - sum`` is larger still: smoother than nearest-neighbour
    when the grids differ in scale, and identical to it when they coincide. One structure is held in
    memory at a time, so mapping a 64^3 prediction back onto a 512^2 CT stays cheap. Only the part of
    ``grid`` that ``label`` covers is computed; the rest is background.
    """
    out = np.zeros(grid.size, dtype=np.uint8)
    source = Grid.of(label)
    region = _covering_region(grid.blank(), source, pad_vox=np.ones(3))
    if region is None:
        return out
    lo, hi = region
    sub_ref = grid.blank()[int(lo[0]):int(hi[0]), int(lo[1]):int(hi[1]), int(lo[2]):int(hi[2])]
    total = np.zeros(sub_ref.GetSize()[::-1], dtype=np.float32)
    best = np.zeros_like(total)
    best_label = np.zeros(total.shape, dtype=np.uint8)
    for k in range(1, num_structures + 1):
        indicator = sitk.Cast(label == k, sitk.sitkFloat32)
        value = sitk.GetArrayFromImage(
            sitk.Resample(indicator, sub_ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
        total += value
        better = value > best
        best[better] = value[better]
        best_label[better] = k
    best_label[(1.0 - total) >= best] = 0
    out[int(lo[0]):int(hi[0]), int(lo[1]):int(hi[1]), int(lo[2]):int(hi[2])] = best_label.transpose(2, 1, 0)
    return out


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """The volume of one voxel in millilitres."""
    return float(math.prod(spacing)) / 1000.0


def sitk_seed(*parts: object) -> int:
    """A stable seed in 1..2^31-1 for SimpleITK's random metric sampling, from ``parts`` (SimpleITK reads 0 as
    "seed from the wall clock", which would make registrations differ from run to run)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) % (2**31 - 1) + 1


@contextmanager
def sitk_threads(count: int) -> Iterator[None]:
    """SimpleITK's default thread count set to ``count`` inside the block (restored after). A registration's own
    ``SetNumberOfThreads`` leaves its random metric sampler on the default count, and threads that draw or sum
    samples in varying order make the same seed give different transforms."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(count))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
