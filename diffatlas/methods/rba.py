"""RBA: registration-based multi-atlas segmentation, the paper's baseline (b) ("CMMAS").

Every training case is an atlas (in 2-shot and 4-shot settings, exactly those cases). To segment a target:

1. Affine stage, every atlas: the atlas image (moving) is registered to the target image (fixed) in
   physical space (mm, each image with its own spacing and orientation). The affine transform starts
   from ``CenteredTransformInitializer`` in geometry mode (the two grids' centres aligned), then a
   multi-resolution gradient descent on the configured metric refines it.
2. Selection: the atlases are ranked by global normalised mutual information (NMI) with the target
   after the affine stage (modality-agnostic, so CT atlases can be ranked against an MR target; ties
   keep the training-case order). When ``num_atlases`` caps the count, the best ``num_atlases`` go on.
3. Deformable stage: a cubic B-spline free-form deformation on top of the affine (L-BFGS-B), or fast
   symmetric-forces demons on the affinely resampled atlas (a same-modality method: its force is the
   intensity difference), or none.
4. The atlas labels are warped onto the target grid with nearest-neighbour interpolation and fused
   (``fuse_labels``) in the order of the final NMI ranking, best first.

Determinism: every random metric sample is drawn with a seed derived from ``seed`` and the atlas and
target ids, and SimpleITK runs on ``num_threads`` threads, so one configuration gives the same labels
on every run. Seconds per segmented case are kept in ``seconds_per_case``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Literal, Sequence, get_args

import numpy as np
import SimpleITK as sitk

from diffatlas.data.datasets import CaseData, PreparedData
from diffatlas.data.geometry import Grid, from_array, sitk_seed, sitk_threads, to_array
from diffatlas.methods.base import check_train_cases

logger = logging.getLogger(__name__)

Metric = Literal["mattes_mi", "mean_squares", "correlation"]
Deformable = Literal["bspline", "demons", "none"]
Fusion = Literal["majority", "weighted", "staple"]
METRICS: tuple[str, ...] = get_args(Metric)
DEFORMABLES: tuple[str, ...] = get_args(Deformable)
FUSIONS: tuple[str, ...] = get_args(Fusion)

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Prepared images lie in [-1, 1]; -1 is the background end, used where a warped atlas image has no data.
_OUTSIDE_INTENSITY = -1.0
_STAPLE_UNDECIDED = np.iinfo(np.uint16).max


def sitk_image(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of the ``(X, Y, Z)`` array ``array`` with the 4x4 voxel-to-RAS ``affine``.

    The affine's column lengths are the spacing in mm; its directions must be orthonormal (prepared grids are).
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    if array.ndim != 3:
        raise ValueError(f"expected a 3D (X, Y, Z) array, got shape {array.shape}")
    lps = _LPS_FROM_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"affine has a zero-length voxel axis: spacing {spacing}")
    direction = lps[:3, :3] / spacing[None, :]
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError("affine directions are not orthonormal (sheared grid); resample the case first")
    grid = Grid(tuple(int(s) for s in array.shape), tuple(float(s) for s in spacing),
                tuple(float(o) for o in lps[:3, 3]), tuple(float(d) for d in direction.ravel()))
    return from_array(array, grid)


def normalized_mutual_information(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    """Studholme's NMI ``(H(A) + H(B)) / H(A, B)`` of two equal-length intensity samples in [-1, 1].

    In [1, 2]: 1 for independent intensities, 2 when each determines the other. Values are clipped to
    [-1, 1] and binned into ``bins`` equal bins per axis.
    """
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"NMI needs two non-empty samples of equal shape, got {a.shape} and {b.shape}")
    joint, _, _ = np.histogram2d(np.clip(a, -1, 1), np.clip(b, -1, 1), bins=bins, range=[[-1, 1], [-1, 1]])
    p = joint / joint.sum()

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    h_joint = entropy(p)
    if h_joint == 0.0:
        return 2.0
    return (entropy(p.sum(axis=0)) + entropy(p.sum(axis=1))) / h_joint


def _check_fusion(fusion: str) -> None:
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")


def fuse_labels(
    labels: Sequence[np.ndarray],
    num_structures: int,
    fusion: Fusion,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Fuse warped atlas label maps into one uint8 label map.

    Args:
        labels: one integer ``(X, Y, Z)`` map per atlas, values ``0..num_structures``, best atlas first.
        num_structures: K.
        fusion: ``"majority"``: each voxel takes the label most atlases give it; ``"weighted"``: each atlas
            votes with its weight (required, non-negative, not all zero); ``"staple"``: SimpleITK's
            ``MultiLabelSTAPLE``, whose undecided voxels take the majority vote.
        weights: per-atlas vote weights, same order as ``labels``; read by ``"weighted"`` only.

    Ties (equal top vote) go to the label of the first atlas in ``labels`` that votes for one of the
    tied labels; as ``RBA`` passes atlases best first, the most similar atlas decides.
    """
    _check_fusion(fusion)
    if not labels:
        raise ValueError("fuse_labels needs at least one label map")
    shape = labels[0].shape
    mismatched = [i for i, lab in enumerate(labels) if lab.shape != shape]
    if mismatched:
        raise ValueError(f"label maps {mismatched} differ in shape from the first {shape}")
    for i, lab in enumerate(labels):
        if lab.size and (lab.min() < 0 or lab.max() > num_structures):
            raise ValueError(f"label map {i} has values {lab.min()}..{lab.max()} outside 0..{num_structures}")
    if fusion == "weighted":
        if weights is None:
            raise ValueError("fusion 'weighted' needs one weight per atlas")
        votes = np.asarray(weights, dtype=np.float64)
        if votes.shape != (len(labels),) or np.any(votes < 0) or not votes.sum() > 0:
            raise ValueError(f"weights must be {len(labels)} non-negative numbers, not all zero; got {weights}")
    else:
        votes = np.ones(len(labels))
    if fusion == "staple":
        images = [sitk.GetImageFromArray(np.asarray(lab, dtype=np.uint16)) for lab in labels]
        staple = sitk.GetArrayFromImage(sitk.MultiLabelSTAPLE(images, int(_STAPLE_UNDECIDED)))
        undecided = staple == _STAPLE_UNDECIDED
        if np.any(undecided):
            staple[undecided] = fuse_labels(labels, num_structures, "majority")[undecided]
        return staple.astype(np.uint8)

    scores = np.zeros((num_structures + 1, *shape), dtype=np.float64)
    for lab, vote in zip(labels, votes):
        for k in range(num_structures + 1):
            scores[k][lab == k] += vote
    is_top = scores == scores.max(axis=0, keepdims=True)
    fused = np.zeros(shape, dtype=np.uint8)
    decided = np.zeros(shape, dtype=bool)
    for lab in labels:
        votes_top = np.take_along_axis(is_top, lab.astype(np.intp)[None], axis=0)[0] & ~decided
        fused[votes_top] = lab[votes_top]
        decided |= votes_top
    return fused


@dataclass
class _Atlas:
    case: str
    image: sitk.Image
    label: sitk.Image


class RBA:
    """Registration-based multi-atlas segmentation (see the module docstring).

    Args:
        num_atlases: at most this many atlases per target (the best by NMI after the affine stage);
            ``None`` uses every training case.
        metric: registration metric, ``"mattes_mi"`` (Mattes mutual information, works across
            modalities), ``"mean_squares"`` or ``"correlation"`` (same modality).
        histogram_bins: Mattes MI histogram bins; also the NMI bins for ranking and weights.
        sampling_percentage: fraction (0, 1] of voxels sampled at random (seeded) per metric evaluation;
            1 uses every voxel.
        shrink_factors: multi-resolution pyramid, one integer shrink per level, coarse to fine.
        smoothing_sigmas_mm: Gaussian smoothing per level in mm, same length as ``shrink_factors``.
        affine_iterations: gradient-descent iterations per level of the affine stage.
        affine_step_mm: first step of the regular-step gradient descent, in physical-shift units (the
            largest voxel motion in mm); halved whenever the gradient turns, stopping below 1/1000 of it.
        deformable: ``"bspline"``, ``"demons"`` or ``"none"`` (affine only).
        bspline_iterations: L-BFGS-B iterations per level.
        control_point_spacing_mm: approximate B-spline control-point spacing; the mesh has
            ``round(extent / spacing)`` (at least 1) intervals per axis.
        demons_iterations: demons iterations per level.
        demons_sigma_vox: Gaussian smoothing of the demons displacement field, in voxels of each level.
        fusion: ``"majority"``, ``"weighted"`` (weight ``(NMI - 1) ** weight_power`` per atlas) or ``"staple"``.
        weight_power: exponent of the weighted vote.
        num_threads: SimpleITK threads for registration and resampling (fixed, so results repeat).
        seed: base seed of the metric sampling.
    """

    name = "RBA"

    def __init__(
        self,
        *,
        num_atlases: int | None = None,
        metric: Metric = "mattes_mi",
        histogram_bins: int = 32,
        sampling_percentage: float = 0.2,
        shrink_factors: Sequence[int] = (4, 2, 1),
        smoothing_sigmas_mm: Sequence[float] = (4.0, 2.0, 0.0),
        affine_iterations: int = 100,
        affine_step_mm: float = 2.0,
        deformable: Deformable = "bspline",
        bspline_iterations: int = 50,
        control_point_spacing_mm: float = 32.0,
        demons_iterations: int = 50,
        demons_sigma_vox: float = 1.5,
        fusion: Fusion = "majority",
        weight_power: float = 1.0,
        num_threads: int = 1,
        seed: int = 0,
    ):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if deformable not in DEFORMABLES:
            raise ValueError(f"deformable must be one of {DEFORMABLES}, got {deformable!r}")
        _check_fusion(fusion)
        if num_atlases is not None and (isinstance(num_atlases, bool) or int(num_atlases) != num_atlases
                                        or num_atlases < 1):
            raise ValueError(f"num_atlases must be an integer >= 1 or None (all atlases), got {num_atlases!r}")
        if histogram_bins < 5:
            raise ValueError(f"histogram_bins must be >= 5, got {histogram_bins}")
        if not 0.0 < sampling_percentage <= 1.0:
            raise ValueError(f"sampling_percentage must lie in (0, 1], got {sampling_percentage}")
        shrink_factors = tuple(int(s) for s in shrink_factors)
        smoothing_sigmas_mm = tuple(float(s) for s in smoothing_sigmas_mm)
        if not shrink_factors or len(shrink_factors) != len(smoothing_sigmas_mm):
            raise ValueError(f"shrink_factors {shrink_factors} and smoothing_sigmas_mm {smoothing_sigmas_mm} "
                             "must be non-empty and of equal length (one entry per pyramid level)")
        if min(shrink_factors) < 1 or min(smoothing_sigmas_mm) < 0:
            raise ValueError(f"shrink factors must be >= 1 and smoothing sigmas >= 0, got {shrink_factors} "
                             f"and {smoothing_sigmas_mm}")
        for key, value in (("affine_iterations", affine_iterations), ("bspline_iterations", bspline_iterations),
                           ("demons_iterations", demons_iterations), ("num_threads", num_threads)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        for key, value in (("affine_step_mm", affine_step_mm),
                           ("control_point_spacing_mm", control_point_spacing_mm)):
            if not value > 0:
                raise ValueError(f"{key} must be > 0, got {value}")
        if demons_sigma_vox < 0 or weight_power < 0 or seed < 0:
            raise ValueError(f"demons_sigma_vox, weight_power and seed must be >= 0, got {demons_sigma_vox}, "
                             f"{weight_power} and {seed}")
        self.num_atlases = None if num_atlases is None else int(num_atlases)
        self.metric = metric
        self.histogram_bins = int(histogram_bins)
        self.sampling_percentage = float(sampling_percentage)
        self.shrink_factors = shrink_factors
        self.smoothing_sigmas_mm = smoothing_sigmas_mm
        self.affine_iterations = int(affine_iterations)
        self.affine_step_mm = float(affine_step_mm)
        self.deformable = deformable
        self.bspline_iterations = int(bspline_iterations)
        self.control_point_spacing_mm = float(control_point_spacing_mm)
        self.demons_iterations = int(demons_iterations)
        self.demons_sigma_vox = float(demons_sigma_vox)
        self.fusion = fusion
        self.weight_power = float(weight_power)
        self.num_threads = int(num_threads)
        self.seed = int(seed)
        self.num_structures = 0
        self.atlases: list[_Atlas] = []
        self.seconds_per_case: dict[str, float] = {}

    def fit(self, data: PreparedData, train_cases: Sequence[str]) -> None:
        """Keep every training case of ``data`` as an atlas (image and label in memory)."""
        cases = check_train_cases(data, train_cases)
        self.num_structures = data.num_structures
        self.atlases = []
        for case_id in cases:
            case = data.load_case(case_id)
            self.atlases.append(_Atlas(case.case, sitk_image(case.image.astype(np.float32), case.affine),
                                       sitk_image(case.label.astype(np.uint8), case.affine)))
        logger.info("RBA: %d atlases from %s", len(self.atlases), data.name)

    def segment(self, case: CaseData) -> np.ndarray:
        """Label map ``(X, Y, Z)`` uint8 of ``case.image`` on its own grid (``case.label`` is not read)."""
        if not self.atlases:
            raise RuntimeError("RBA has no atlases: call fit(data, train_cases) first")
        with sitk_threads(self.num_threads):
            return self._segment(case)

    def _segment(self, case: CaseData) -> np.ndarray:
        start = time.perf_counter()
        target = sitk_image(np.asarray(case.image, dtype=np.float32), case.affine)
        affines = [self._retried("affine", atlas, case.case, lambda robust, a=atlas: self._affine(target, a, case.case,
                                                                                                  robust))
                   for atlas in self.atlases]
        affine_nmi = [self._nmi(target, atlas, tx) for atlas, tx in zip(self.atlases, affines)]
        order = sorted(range(len(self.atlases)), key=lambda i: -affine_nmi[i])[: self.num_atlases]
        warped, nmi = [], []
        for i in order:
            atlas = self.atlases[i]
            transform = self._retried(self.deformable, atlas, case.case,
                                      lambda robust, a=atlas, i=i: self._deformable(target, a, affines[i], case.case,
                                                                                    robust))
            warped.append(to_array(self._resample(atlas.label, target, transform, sitk.sitkNearestNeighbor, 0.0)))
            nmi.append(self._nmi(target, atlas, transform))
        ranking = sorted(range(len(order)), key=lambda j: -nmi[j])
        weights = [max(nmi[j] - 1.0, 1e-6) ** self.weight_power for j in ranking]
        fused = fuse_labels([warped[j] for j in ranking], self.num_structures, self.fusion, weights)
        seconds = time.perf_counter() - start
        self.seconds_per_case[case.case] = seconds
        logger.info("RBA %s: %d atlases (%s), NMI %s, %.1f s", case.case, len(order),
                    ", ".join(self.atlases[order[j]].case for j in ranking),
                    " ".join(f"{nmi[j]:.3f}" for j in ranking), seconds)
        return fused

    @staticmethod
    def _retried(stage: str, atlas: _Atlas, target_id: str,
                 register: Callable[[bool], sitk.Transform]) -> sitk.Transform:
        """``register(robust=False)``; when ITK throws (too few samples, an empty joint histogram...), once more with
        the robust setting (every voxel sampled, a moments-centred start), saying so. A second failure is a
        RuntimeError naming the case, the atlas and the whole ITK message."""
        try:
            return register(False)
        except RuntimeError as err:
            reason = " ".join(str(err).split())
            logger.warning("RBA %s: %s registration of atlas %s failed (%s); retrying with every voxel sampled and "
                           "a moments-centred start", target_id, stage, atlas.case, reason)
        try:
            return register(True)
        except RuntimeError as err:
            raise RuntimeError(f"RBA {target_id}: {stage} registration of atlas {atlas.case} failed, also with every "
                               f"voxel sampled and a moments-centred start: {' '.join(str(err).split())}") from err

    def _registration(self, seed: int, robust: bool = False) -> sitk.ImageRegistrationMethod:
        """A registration method with the configured metric, seeded sampling, pyramid and threads (``robust``:
        every voxel sampled)."""
        reg = sitk.ImageRegistrationMethod()
        if self.metric == "mattes_mi":
            reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=self.histogram_bins)
        elif self.metric == "mean_squares":
            reg.SetMetricAsMeanSquares()
        else:
            reg.SetMetricAsCorrelation()
        if self.sampling_percentage < 1.0 and not robust:
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            reg.SetMetricSamplingPercentage(self.sampling_percentage, seed)
        else:
            reg.SetMetricSamplingStrategy(reg.NONE)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetShrinkFactorsPerLevel(list(self.shrink_factors))
        reg.SetSmoothingSigmasPerLevel(list(self.smoothing_sigmas_mm))
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        reg.SetNumberOfThreads(self.num_threads)
        return reg

    def _affine(self, target: sitk.Image, atlas: _Atlas, target_id: str, robust: bool = False) -> sitk.AffineTransform:
        centring = (sitk.CenteredTransformInitializerFilter.MOMENTS if robust
                    else sitk.CenteredTransformInitializerFilter.GEOMETRY)
        transform = sitk.AffineTransform(
            sitk.CenteredTransformInitializer(target, atlas.image, sitk.AffineTransform(3), centring))
        reg = self._registration(sitk_seed(self.seed, "affine", atlas.case, target_id), robust)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=self.affine_step_mm,
                                                     minStep=1e-3 * self.affine_step_mm,
                                                     numberOfIterations=self.affine_iterations,
                                                     relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInitialTransform(transform, inPlace=True)
        reg.Execute(target, atlas.image)
        logger.debug("affine %s -> %s: metric %.4f after %d iterations (%s)", atlas.case, target_id,
                     reg.GetMetricValue(), reg.GetOptimizerIteration(), reg.GetOptimizerStopConditionDescription())
        return transform

    def _deformable(self, target: sitk.Image, atlas: _Atlas, affine: sitk.AffineTransform,
                    target_id: str, robust: bool = False) -> sitk.Transform:
        """The atlas-to-target transform (maps target points to atlas points): affine after a deformation."""
        if self.deformable == "none":
            return affine
        if self.deformable == "bspline":
            deformation = self._bspline(target, atlas, affine, target_id, robust)
        else:
            deformation = self._demons(target, atlas, affine)
        # CompositeTransform applies its last transform first: x -> affine(deformation(x)).
        return sitk.CompositeTransform([affine, deformation])

    def _bspline(self, target: sitk.Image, atlas: _Atlas, affine: sitk.AffineTransform,
                 target_id: str, robust: bool = False) -> sitk.BSplineTransform:
        extent_mm = np.asarray(target.GetSize()) * np.asarray(target.GetSpacing())
        mesh = [max(1, int(round(e / self.control_point_spacing_mm))) for e in extent_mm]
        bspline = sitk.BSplineTransformInitializer(target, mesh, order=3)
        reg = self._registration(sitk_seed(self.seed, "bspline", atlas.case, target_id), robust)
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=self.bspline_iterations,
                                 maximumNumberOfCorrections=5,
                                 maximumNumberOfFunctionEvaluations=4 * self.bspline_iterations,
                                 costFunctionConvergenceFactor=1e7)
        reg.SetMovingInitialTransform(affine)
        reg.SetInitialTransform(bspline, inPlace=True)
        reg.Execute(target, atlas.image)
        logger.debug("bspline %s -> %s: mesh %s, metric %.4f (%s)", atlas.case, target_id, mesh,
                     reg.GetMetricValue(), reg.GetOptimizerStopConditionDescription())
        return bspline

    def _demons(self, target: sitk.Image, atlas: _Atlas, affine: sitk.AffineTransform) -> sitk.Transform:
        """Multi-resolution fast symmetric-forces demons of the affinely resampled atlas onto the target."""
        moving = self._resample(atlas.image, target, affine, sitk.sitkLinear, _OUTSIDE_INTENSITY)
        field = None
        for shrink, sigma_mm in zip(self.shrink_factors, self.smoothing_sigmas_mm):
            fixed_level = self._pyramid_level(target, shrink, sigma_mm)
            moving_level = self._pyramid_level(moving, shrink, sigma_mm)
            if field is None:
                field = sitk.Image(fixed_level.GetSize(), sitk.sitkVectorFloat64)
                field.CopyInformation(fixed_level)
            else:
                field = self._resample(field, fixed_level, sitk.Transform(), sitk.sitkLinear, 0.0)
            demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
            demons.SetNumberOfIterations(self.demons_iterations)
            demons.SetSmoothDisplacementField(self.demons_sigma_vox > 0)
            demons.SetStandardDeviations(max(self.demons_sigma_vox, 1e-3))
            demons.SetNumberOfThreads(self.num_threads)
            field = demons.Execute(fixed_level, moving_level, field)
        if field.GetSize() != target.GetSize():
            field = self._resample(field, target, sitk.Transform(), sitk.sitkLinear, 0.0)
        return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))

    @staticmethod
    def _pyramid_level(image: sitk.Image, shrink: int, sigma_mm: float) -> sitk.Image:
        if sigma_mm > 0:
            image = sitk.SmoothingRecursiveGaussian(image, sigma_mm)
        return sitk.Shrink(image, [shrink] * image.GetDimension()) if shrink > 1 else image

    def _resample(self, image: sitk.Image, reference: sitk.Image, transform: sitk.Transform,
                  interpolator: int, default: float) -> sitk.Image:
        resampler = sitk.ResampleImageFilter()
        resampler.SetReferenceImage(reference)
        resampler.SetTransform(transform)
        resampler.SetInterpolator(interpolator)
        resampler.SetDefaultPixelValue(default)
        resampler.SetOutputPixelType(image.GetPixelID())
        resampler.SetNumberOfThreads(self.num_threads)
        return resampler.Execute(image)

    def _nmi(self, target: sitk.Image, atlas: _Atlas, transform: sitk.Transform) -> float:
        """NMI of the target and the warped atlas image over the voxels the atlas covers."""
        warped = to_array(self._resample(atlas.image, target, transform, sitk.sitkLinear, math.nan))
        inside = np.isfinite(warped)
        if not np.any(inside):
            return 1.0
        return normalized_mutual_information(to_array(target)[inside], warped[inside], self.histogram_bins)
