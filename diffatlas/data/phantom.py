"""Synthetic heart phantoms: CT and MR stand-ins for MM-WHS-style crops.

Geometry (physical mm, RAS+: +x the subject's right, +y anterior, +z superior). The heart is built in
its own frame with the long axis along +z (apex below, base above) and then scaled, rotated (up to
15 degrees about each axis) and translated (up to 8 % of the field of view) per case:

* LV: an ellipsoidal cavity on the left (-x), wrapped by the myocardium, an ellipsoidal shell
  8-12 mm thick; both stop below the valve plane.
* RV: an ellipsoid on the right (+x) minus the LV's outer ellipsoid, so it wraps the septum as a
  crescent; its thin free wall has myocardial intensity but is background in the label.
* LA and RA: ellipsoids above their ventricles, beyond a thin valve plane, split by a thin
  interatrial septum; the ascending aorta (blood, label 0) rises between them.
* Background anatomy in the crop frame: body outline and subcutaneous fat, anterior chest wall with
  retrosternal fat and sternum, both lungs, spine, descending aorta (blood, label 0) and a shell of
  pericardial fat around the heart. Blood outside the five structures means thresholding is not enough.

Labels follow the paper: 1 Myo, 2 LV, 3 LA, 4 RA, 5 RV. The geometry (labels and tissue classes)
depends only on the seed, never on the modality, so ``make_phantom(s, "ct")`` and
``make_phantom(s, "mr")`` share their label map; use different seeds for training and test domains.

Appearance: ``"ct"`` is contrast-enhanced CT in HU (blood 250-400, myocardium 80-150, fat about -100,
lung about -800, bone about 700) with Gaussian noise; ``"mr"`` is bSSFP-like in arbitrary units with a
different contrast order (fat brighter than blood, dark myocardium, lung and bone), a smooth
multiplicative bias field and Rician noise. Both are blurred slightly (a few mm).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from diffatlas.data.datasets import open_dataset_info, save_dataset_info, write_case
from diffatlas.data.intensity import Modality, check_modality, intensity_spec, normalize_intensity
from diffatlas.data.io import write_volume

logger = logging.getLogger(__name__)

STRUCTURES: tuple[str, ...] = ("Myo", "LV", "LA", "RA", "RV")
MYO, LV, LA, RA, RV = 1, 2, 3, 4, 5

TISSUES: tuple[str, ...] = ("air", "soft", "fat", "lung", "bone", "blood_left", "blood_right", "myocardium")
AIR, SOFT, FAT, LUNG, BONE, BLOOD_LEFT, BLOOD_RIGHT, MYOCARDIUM = range(len(TISSUES))

# Per-case uniform ranges of the tissue intensities (index = tissue class).
_CT_HU = {
    AIR: (-1000.0, -1000.0),
    SOFT: (30.0, 60.0),
    FAT: (-120.0, -80.0),
    LUNG: (-850.0, -750.0),
    BONE: (600.0, 800.0),
    BLOOD_LEFT: (250.0, 400.0),
    MYOCARDIUM: (80.0, 150.0),
}
_MR_UNITS = {
    AIR: (0.0, 0.0),
    SOFT: (180.0, 260.0),
    FAT: (800.0, 900.0),
    LUNG: (20.0, 40.0),
    BONE: (120.0, 180.0),
    BLOOD_LEFT: (500.0, 700.0),
    MYOCARDIUM: (100.0, 200.0),
}


@dataclass
class Phantom:
    """One synthetic case.

    Attributes:
        image: float32 ``(X, Y, Z)`` in raw units (HU for CT, arbitrary units for MR).
        label: uint8 ``(X, Y, Z)``, 0 background, 1..5 in ``STRUCTURES`` order.
        affine: 4x4 voxel-to-RAS affine (spacing ``fov_mm / shape`` on the diagonal, crop centred at 0).
        tissue: uint8 ``(X, Y, Z)`` tissue classes indexing ``TISSUES`` (what the image was drawn from).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    tissue: np.ndarray


@dataclass(frozen=True)
class _Ellipsoid:
    centre: np.ndarray
    radii: np.ndarray

    def inside(self, points: np.ndarray) -> np.ndarray:
        return np.sum(((points - self.centre) / self.radii) ** 2, axis=-1) <= 1.0

    def grown(self, margin: float) -> "_Ellipsoid":
        return _Ellipsoid(self.centre, self.radii + margin)


@dataclass(frozen=True)
class _Geometry:
    """Everything about a case's shape; heart parts in the heart frame (before scale), body in mm."""

    scale: float
    rotation: np.ndarray
    translation_frac: np.ndarray
    lv: _Ellipsoid
    myo_mm: float
    rv: _Ellipsoid
    rv_wall_mm: float
    la: _Ellipsoid
    ra: _Ellipsoid
    valve_z: float
    valve_gap_mm: float
    septum_gap_mm: float
    aorta_xy: np.ndarray
    aorta_radius: float
    pericardial_fat_mm: float
    body_radii: np.ndarray
    body_centre_y: float
    subcutaneous_mm: float
    chest_wall_y: float
    retrosternal_mm: float
    sternum_half_width: float
    lungs: tuple[_Ellipsoid, _Ellipsoid]
    spine_xy: np.ndarray
    spine_radius: float
    descending_xy: np.ndarray
    descending_radius: float


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` for angles ``(ax, ay, az)`` in radians."""
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _sample_geometry(rng: np.random.Generator) -> _Geometry:
    def jitter(nominal: Sequence[float], frac: float = 0.15) -> np.ndarray:
        values = np.asarray(nominal, dtype=np.float64)
        return values * rng.uniform(1.0 - frac, 1.0 + frac, size=values.shape)

    def shift(nominal: Sequence[float], mm: float = 3.0) -> np.ndarray:
        values = np.asarray(nominal, dtype=np.float64)
        return values + rng.uniform(-mm, mm, size=values.shape)

    scale = rng.uniform(0.85, 1.15)
    rotation = _rotation(np.deg2rad(rng.uniform(-15.0, 15.0, size=3)))
    translation_frac = rng.uniform(-0.08, 0.08, size=3)

    valve_z = 10.0
    lv = _Ellipsoid(shift([-12.0, 0.0, -4.0]), jitter([18.0, 19.0, 25.0]))
    rv = _Ellipsoid(shift([17.0, 7.0, -6.0]), jitter([22.0, 24.0, 24.0]))
    la_radii = jitter([21.0, 18.0, 17.0])
    ra_radii = jitter([20.0, 19.0, 17.0])
    la = _Ellipsoid(shift([-10.0, -10.0, valve_z + 0.8 * la_radii[2]]), la_radii)
    ra = _Ellipsoid(shift([17.0, -1.0, valve_z + 0.8 * ra_radii[2]]), ra_radii)

    lung_radii = [50.0, 70.0, 200.0]
    lungs = (
        _Ellipsoid(shift([75.0, -10.0, 0.0], 5.0), jitter(lung_radii, 0.1)),
        _Ellipsoid(shift([-75.0, -10.0, 0.0], 5.0), jitter(lung_radii, 0.1)),
    )
    return _Geometry(
        scale=scale,
        rotation=rotation,
        translation_frac=translation_frac,
        lv=lv,
        myo_mm=rng.uniform(8.0, 12.0),
        rv=rv,
        rv_wall_mm=rng.uniform(2.5, 4.0),
        la=la,
        ra=ra,
        valve_z=valve_z,
        valve_gap_mm=rng.uniform(3.0, 5.0),
        septum_gap_mm=rng.uniform(3.0, 5.0),
        aorta_xy=shift([2.0, 13.0], 2.0),
        aorta_radius=rng.uniform(10.0, 13.0),
        pericardial_fat_mm=rng.uniform(3.0, 6.0),
        body_radii=jitter([160.0, 110.0], 0.05),
        body_centre_y=rng.uniform(-15.0, -5.0),
        subcutaneous_mm=rng.uniform(8.0, 15.0),
        chest_wall_y=rng.uniform(46.0, 54.0),
        retrosternal_mm=rng.uniform(4.0, 8.0),
        sternum_half_width=rng.uniform(10.0, 14.0),
        lungs=lungs,
        spine_xy=shift([0.0, -68.0], 4.0),
        spine_radius=rng.uniform(16.0, 20.0),
        descending_xy=shift([-24.0, -42.0], 4.0),
        descending_radius=rng.uniform(9.0, 12.0),
    )


def _grid_affine(shape: tuple[int, int, int], fov_mm: float) -> np.ndarray:
    """Diagonal RAS affine with spacing ``fov_mm / shape`` and the crop centred on the origin."""
    spacing = fov_mm / np.asarray(shape, dtype=np.float64)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -spacing * (np.asarray(shape) - 1) / 2.0
    return affine


def _grid_points(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """World coordinates in mm of every voxel centre, ``(X, Y, Z, 3)``."""
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    return index @ affine[:3, :3].T + affine[:3, 3]


def _render(
    geometry: _Geometry, points: np.ndarray, spacing: np.ndarray, fov_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Label and tissue maps ``(X, Y, Z)`` of a geometry at voxel centres ``points`` ``(X, Y, Z, 3)``."""
    g = geometry
    shape = points.shape[:3]
    # heart frame: q = R^T (p - t) / s, written for row vectors
    local = (points - g.translation_frac * fov_mm) @ g.rotation / g.scale
    z = local[..., 2]
    half_gap = 0.5 * g.valve_gap_mm / g.scale
    ventricular = z < g.valve_z - half_gap
    atrial = z > g.valve_z + half_gap

    lv_cavity = g.lv.inside(local)
    lv_outer = g.lv.grown(g.myo_mm / g.scale).inside(local)
    rv_cavity = g.rv.inside(local)
    rv_outer = g.rv.grown(g.rv_wall_mm / g.scale).inside(local)
    aorta_dist = np.linalg.norm(local[..., :2] - g.aorta_xy, axis=-1)
    aorta = atrial & (aorta_dist < g.aorta_radius)
    aorta_wall = atrial & (aorta_dist < g.aorta_radius + 2.0 / g.scale)
    septum_normal = (g.ra.centre - g.la.centre) * np.array([1.0, 1.0, 0.0])
    septum_normal /= np.linalg.norm(septum_normal)
    septum_side = (local - 0.5 * (g.la.centre + g.ra.centre)) @ septum_normal
    half_septum = 0.5 * g.septum_gap_mm / g.scale

    label = np.zeros(shape, dtype=np.uint8)
    label[ventricular & lv_outer & ~lv_cavity] = MYO
    label[ventricular & lv_cavity] = LV
    label[atrial & g.la.inside(local) & (septum_side < -half_septum) & ~aorta_wall] = LA
    label[atrial & g.ra.inside(local) & (septum_side > half_septum) & ~aorta_wall] = RA
    label[ventricular & rv_cavity & ~lv_outer] = RV
    rv_wall = ventricular & rv_outer & ~rv_cavity & ~lv_outer

    x, y = points[..., 0], points[..., 1]
    body = (x / g.body_radii[0]) ** 2 + ((y - g.body_centre_y) / g.body_radii[1]) ** 2 <= 1.0
    inner_radii = g.body_radii - g.subcutaneous_mm
    deep = (x / inner_radii[0]) ** 2 + ((y - g.body_centre_y) / inner_radii[1]) ** 2 <= 1.0
    tissue = np.full(shape, AIR, dtype=np.uint8)
    tissue[body] = FAT
    tissue[deep] = SOFT
    mediastinum = y < g.chest_wall_y - g.retrosternal_mm
    tissue[deep & ~mediastinum] = FAT
    tissue[deep & (y > g.chest_wall_y)] = SOFT
    sternum = (np.abs(x) < g.sternum_half_width) & (y > g.chest_wall_y + 3.0) & (y < g.chest_wall_y + 15.0)
    tissue[deep & sternum] = BONE
    for lung in g.lungs:
        tissue[deep & mediastinum & lung.inside(points)] = LUNG
    tissue[np.linalg.norm(points[..., :2] - g.spine_xy, axis=-1) < g.spine_radius] = BONE
    tissue[np.linalg.norm(points[..., :2] - g.descending_xy, axis=-1) < g.descending_radius] = BLOOD_LEFT

    heart = (label > 0) | rv_wall | aorta_wall
    tissue[ndimage.distance_transform_edt(~heart, sampling=spacing) <= g.pericardial_fat_mm] = FAT
    tissue[aorta_wall] = SOFT
    tissue[rv_wall | (label == MYO)] = MYOCARDIUM
    tissue[aorta | (label == LV) | (label == LA)] = BLOOD_LEFT
    tissue[(label == RV) | (label == RA)] = BLOOD_RIGHT
    return label, tissue


def _tissue_values(
    rng: np.random.Generator, table: dict[int, tuple[float, float]], right_factor: tuple[float, float]
) -> np.ndarray:
    """One intensity per tissue class; right-heart blood is a factor of left-heart blood."""
    values = np.zeros(len(TISSUES), dtype=np.float64)
    for tissue, (low, high) in table.items():
        values[tissue] = rng.uniform(low, high)
    values[BLOOD_RIGHT] = values[BLOOD_LEFT] * rng.uniform(*right_factor)
    return values


def _bias_field(rng: np.random.Generator, points_unit: np.ndarray, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field ``1 + amplitude * p / max|p|``, p a random quadratic polynomial."""
    x, y, z = points_unit[..., 0], points_unit[..., 1], points_unit[..., 2]
    terms = np.stack([x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], axis=-1)
    poly = terms @ rng.normal(size=terms.shape[-1])
    poly -= poly.mean()
    return 1.0 + amplitude * poly / max(np.abs(poly).max(), 1e-12)


def _appearance(
    rng: np.random.Generator,
    tissue: np.ndarray,
    points: np.ndarray,
    spacing: np.ndarray,
    fov_mm: float,
    modality: Modality,
) -> np.ndarray:
    """Raw image ``(X, Y, Z)`` drawn from a tissue map: intensities, blur, bias field and noise."""
    if modality == "ct":
        values = _tissue_values(rng, _CT_HU, (0.8, 1.1))
    else:
        values = _tissue_values(rng, _MR_UNITS, (0.9, 1.05))
    blur_mm = rng.uniform(1.5, 2.5)
    image = ndimage.gaussian_filter(values[tissue], sigma=blur_mm / spacing, mode="nearest")
    if modality == "ct":
        image = image + rng.uniform(20.0, 40.0) * rng.standard_normal(tissue.shape)
    else:
        gain = rng.uniform(0.8, 1.2)
        image = image * gain * _bias_field(rng, points / (fov_mm / 2.0), rng.uniform(0.2, 0.3))
        sigma = rng.uniform(15.0, 30.0) * gain
        # Rician noise: magnitude of a complex signal with Gaussian noise on both parts
        real = image + sigma * rng.standard_normal(tissue.shape)
        imag = sigma * rng.standard_normal(tissue.shape)
        image = np.sqrt(real**2 + imag**2)
    return image.astype(np.float32)


def _check_grid(shape: Sequence[int], fov_mm: float) -> tuple[int, int, int]:
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes, got {tuple(shape)}")
    if fov_mm <= 0:
        raise ValueError(f"fov_mm must be positive, got {fov_mm}")
    x, y, z = (int(s) for s in shape)
    return x, y, z


def make_phantom(
    seed: int, modality: Modality, shape: Sequence[int] = (32, 32, 32), fov_mm: float = 128.0
) -> Phantom:
    """Draw one synthetic heart.

    Args:
        seed: non-negative integer; the geometry depends on it alone, the appearance on it and ``modality``.
        modality: ``"ct"`` or ``"mr"``.
        shape: grid ``(X, Y, Z)``; the spacing is ``fov_mm / shape`` (4 mm for 32^3 at 128 mm).
        fov_mm: physical extent of the cubic crop in mm.

    Returns:
        a ``Phantom`` with image, label, affine and tissue map on the requested grid.
    """
    check_modality(modality)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    grid = _check_grid(shape, fov_mm)
    affine = _grid_affine(grid, fov_mm)
    points = _grid_points(affine, grid)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    geometry = _sample_geometry(np.random.default_rng([seed, 0]))
    label, tissue = _render(geometry, points, spacing, fov_mm)
    appearance_rng = np.random.default_rng([seed, 1 + ("ct", "mr").index(modality)])
    image = _appearance(appearance_rng, tissue, points, spacing, fov_mm, modality)
    return Phantom(image=image, label=label, affine=affine, tissue=tissue)


def phantom_case_seed(seed: int, index: int) -> int:
    """The phantom seed of case ``index`` in a dataset written with ``seed``."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def write_phantom_dataset(
    out_dir: str | Path,
    num_cases: int,
    modality: Modality,
    shape: Sequence[int] = (32, 32, 32),
    fov_mm: float = 128.0,
    seed: int = 0,
    prefix: str | None = None,
    first_index: int = 0,
    ct_window: tuple[float, float] = (-250.0, 800.0),
    mr_percentiles: tuple[float, float] = (0.5, 99.5),
) -> list[str]:
    """Write phantoms in the prepared-data layout (see ``diffatlas.data.datasets``).

    Case ``i`` (``first_index <= i < first_index + num_cases``) is ``<prefix>_<i:04d>`` drawn with seed
    ``phantom_case_seed(seed, i)``. An existing ``dataset.json`` of the same modality, structures,
    shape and normalisation is extended (cases already listed are rewritten, not duplicated);
    otherwise one is created.

    Args:
        out_dir: dataset root.
        num_cases: how many cases to write.
        modality: ``"ct"`` or ``"mr"``.
        prefix: case id prefix, default the modality.

    Returns:
        the case ids written, in order.
    """
    check_modality(modality)
    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    grid = _check_grid(shape, fov_mm)
    prefix = modality if prefix is None else prefix
    info = open_dataset_info(
        out_dir,
        name=f"phantom_{modality}",
        modality=modality,
        structures=STRUCTURES,
        shape=grid,
        intensity=intensity_spec(modality, ct_window, mr_percentiles),
    )
    cases = []
    for index in tqdm(range(first_index, first_index + num_cases), desc=f"phantoms {modality}", disable=None):
        case = f"{prefix}_{index:04d}"
        phantom = make_phantom(phantom_case_seed(seed, index), modality, grid, fov_mm)
        image = normalize_intensity(phantom.image, modality, ct_window, mr_percentiles)
        write_case(out_dir, case, image, phantom.label, phantom.affine)
        cases.append(case)
    info["cases"] = info["cases"] + [case for case in cases if case not in info["cases"]]
    save_dataset_info(out_dir, info)
    logger.info("wrote %d %s phantoms to %s (%d cases in total)", len(cases), modality, out_dir, len(info["cases"]))
    return cases


def write_raw_phantom_scans(
    out_dir: str | Path,
    num_cases: int,
    modality: Modality,
    shape: Sequence[int] = (32, 32, 32),
    fov_mm: float = 128.0,
    seed: int = 0,
    prefix: str | None = None,
    first_index: int = 0,
) -> list[Path]:
    """Write phantom scans as a user would have them: ``<out_dir>/<prefix>_<i:04d>.nii.gz``, raw intensities
    (HU for CT), no labels, no ``dataset.json``. Case ``i`` is the same phantom ``write_phantom_dataset`` draws
    for index ``i`` with the same seed, shape and field of view. Returns the files written."""
    check_modality(modality)
    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}")
    grid = _check_grid(shape, fov_mm)
    prefix = modality if prefix is None else prefix
    paths = []
    for index in range(first_index, first_index + num_cases):
        phantom = make_phantom(phantom_case_seed(seed, index), modality, grid, fov_mm)
        path = Path(out_dir) / f"{prefix}_{index:04d}.nii.gz"
        write_volume(path, phantom.image, phantom.affine)
        paths.append(path)
    logger.info("wrote %d raw %s phantom scans to %s", len(paths), modality, out_dir)
    return paths
