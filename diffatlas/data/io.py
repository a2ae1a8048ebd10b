"""Reading and writing 3D volumes with their world geometry.

Every volume travels as a pair ``(array, affine)``: ``array`` is indexed in nibabel voxel order
``(i, j, k)`` and ``affine`` is the 4x4 float64 matrix mapping ``(i, j, k, 1)`` to RAS+ millimetres,
exactly as nibabel reports it. NIfTI files are read with nibabel; NRRD and MetaImage files with
SimpleITK, whose LPS geometry is converted to the same RAS convention.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
from nibabel.filebasedimages import ImageFileError
import numpy as np
import SimpleITK as sitk

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".mha", ".mhd")
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def _squeeze_to_3d(array: np.ndarray, path: Path) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got an array of shape {array.shape}")
    return array


def _sitk_affine(image: sitk.Image) -> np.ndarray:
    """The RAS affine of a SimpleITK image, for the array transposed to ``(i, j, k)``."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    affine_lps = np.eye(4)
    # physical point (LPS) = origin + direction @ diag(spacing) @ index
    affine_lps[:3, :3] = direction * spacing[None, :]
    affine_lps[:3, 3] = origin
    return _LPS_TO_RAS @ affine_lps


def nifti_affine(header: nib.Nifti1Header, path: Path | str = "") -> np.ndarray:
    """The voxel-to-RAS affine of a NIfTI header, with voxel sizes that agree with ``pixdim``.

    Some datasets (ACDC among them) carry an sform whose columns have unit length while ``pixdim`` holds
    the real voxel sizes (e.g. 1.56 x 1.56 x 10 mm). nibabel trusts the sform; ITK rejects it and falls
    back to ``pixdim``. We follow ITK: the sform's directions and origin are kept and its columns are
    rescaled to the ``pixdim`` sizes, so both readers see the same geometry.
    """
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    if np.all(zooms > 0) and np.all(norms > 0) and not np.allclose(norms, zooms, rtol=1e-3):
        logger.debug("%s: sform voxel sizes %s disagree with pixdim %s; using pixdim", path, norms, zooms)
        affine[:3, :3] = affine[:3, :3] / norms[None, :] * zooms[None, :]
    return affine


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D volume and its RAS affine.

    Args:
        path: a ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha`` or ``.mhd`` file.

    Returns:
        ``(array, affine)``: the voxel array ``(I, J, K)`` in its stored dtype (scaled to float when
        the NIfTI header carries a slope/intercept) and the 4x4 float64 voxel-to-RAS affine.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"volume file not found: {path}")
    if suffix in NIFTI_SUFFIXES:
        try:
            image = nib.load(str(path))
            array = np.asanyarray(image.dataobj)
        except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as err:
            raise ValueError(f"cannot read {path}: {' '.join(str(err).split()) or type(err).__name__} "
                             "(truncated or not a NIfTI file?)") from err
        affine = nifti_affine(image.header, path)
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise ValueError(f"cannot read {path}: {' '.join(str(err).split())}") from err
        if image.GetNumberOfComponentsPerPixel() != 1:
            components = image.GetNumberOfComponentsPerPixel()
            raise ValueError(f"{path}: expected a scalar volume, got {components} components per voxel")
        if image.GetDimension() != 3:
            raise ValueError(f"{path}: expected a 3D volume, got {image.GetDimension()} dimensions")
        array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
        affine = _sitk_affine(image)
    return np.ascontiguousarray(_squeeze_to_3d(array, path)), affine


def write_volume(path: str | Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a volume as NIfTI, keeping its dtype and affine.

    The affine is stored in both the qform and the sform (code 1, scanner), so any reader finds it;
    the header holds it in float32, which is exact for the usual spacings and origins.

    Args:
        path: destination ending in ``.nii`` or ``.nii.gz``; parent folders are created.
        array: voxel array ``(I, J, K)``, e.g. uint8 labels or float32 images.
        affine: 4x4 voxel-to-RAS matrix.
    """
    path = Path(path)
    if _suffix(path) not in NIFTI_SUFFIXES:
        raise ValueError(f"{path}: write_volume writes NIfTI only; use one of {', '.join(NIFTI_SUFFIXES)}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {array.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, affine)
    image.set_data_dtype(array.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    logger.debug("wrote %s %s %s", path, array.shape, array.dtype)


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in mm: the lengths of the affine's first three columns."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape not in ((4, 4), (3, 4), (3, 3)):
        raise ValueError(f"affine must be 4x4 (or its 3x4/3x3 top), got shape {affine.shape}")
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    return float(norms[0]), float(norms[1]), float(norms[2])


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file that must hold an object; ``ValueError`` names the file when it is not valid JSON or no object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value
