"""Scan geometry: orientation, crop grids, resampling onto a grid and back, header checks, pixdim spacing."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from diffatlas.data import geometry
from diffatlas.data.geometry import CropSpec, Grid
from diffatlas.data.io import read_volume, spacing_from_affine
from diffatlas.data.prepare import map_to_native


def _image(array_ijk, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    """A SimpleITK image holding an ``(i, j, k)`` array."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_ijk).transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        image.SetDirection(tuple(float(d) for d in np.asarray(direction, dtype=np.float64).ravel()))
    return image


def _edges(grid):
    """Physical lower and upper voxel edges of an identity-direction grid, per axis."""
    origin, spacing, size = (np.asarray(v, dtype=np.float64) for v in (grid.origin, grid.spacing, grid.size))
    return origin - spacing / 2, origin + (size - 0.5) * spacing


def _dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


# --- orientation -------------------------------------------------------------------------------------------

def test_orient_permuted_flipped_scan_keeps_physical_positions():
    # Columns are the voxel axes in LPS: axis 0 runs posterior, axis 1 inferior, axis 2 right.
    direction = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    array = np.zeros((5, 6, 7), dtype=np.float32)
    array[1, 2, 3] = 1.0
    image = _image(array, spacing=(1.0, 2.0, 3.0), origin=(4.0, -5.0, 6.0), direction=direction)
    marker_before = np.asarray(image.TransformIndexToPhysicalPoint((1, 2, 3)))

    oriented = geometry.orient(image)

    assert np.allclose(np.asarray(oriented.GetDirection()).reshape(3, 3), np.eye(3))
    # new x (left) is old axis 2 (it ran right, flipped), new y (posterior) old axis 0, new z old axis 1
    assert oriented.GetSize() == (7, 5, 6)
    assert np.allclose(oriented.GetSpacing(), (3.0, 1.0, 2.0))
    oriented_array = geometry.to_array(oriented)
    assert oriented_array.shape == (7, 5, 6) and oriented_array.sum() == 1.0
    index = tuple(int(v) for v in np.argwhere(oriented_array == 1.0)[0])
    assert index == (6 - 3, 1, 6 - 1 - 2)
    assert np.allclose(oriented.TransformIndexToPhysicalPoint(index), marker_before)


# --- crop grids --------------------------------------------------------------------------------------------

@pytest.fixture()
def scan_and_label():
    """A 40 x 40 x 20 scan at 1 x 1 x 2 mm (origin 0, identity direction) and a box label
    i 10..19, j 12..17, k 5..9: physical box x [9.5, 19.5], y [11.5, 17.5], z [9, 19] mm."""
    label = np.zeros((40, 40, 20), dtype=np.uint8)
    label[10:20, 12:18, 5:10] = 1
    return _image(np.zeros(label.shape, np.float32), spacing=(1.0, 1.0, 2.0)), label


def test_crop_grid_label_mode_covers_box_plus_margin(scan_and_label):
    image, label = scan_and_label
    grid = geometry.crop_grid(image, (10, 8, 10), CropSpec(mode="label", margin_mm=5.0, cube=False), label)
    # box edges (10, 6, 10) mm + 2 x 5 mm margin = (20, 16, 20) mm over (10, 8, 10) voxels
    assert grid.size == (10, 8, 10)
    assert np.allclose(grid.spacing, (2.0, 2.0, 2.0))
    lo, hi = _edges(grid)
    assert np.allclose(lo, (4.5, 6.5, 4.0)) and np.allclose(hi, (24.5, 22.5, 24.0))
    assert np.allclose(grid.direction, np.eye(3).ravel())


def test_crop_grid_cube_widens_to_the_longest_edge(scan_and_label):
    image, label = scan_and_label
    grid = geometry.crop_grid(image, (10, 8, 10), CropSpec(mode="label", margin_mm=5.0, cube=True), label)
    lo, hi = _edges(grid)
    assert np.allclose(hi - lo, (20.0, 20.0, 20.0))
    assert np.allclose(grid.spacing, (2.0, 2.5, 2.0))
    assert np.allclose((lo + hi) / 2, (14.5, 14.5, 14.0))  # still centred on the box


def test_crop_grid_size_mm_fixes_the_extent(scan_and_label):
    image, label = scan_and_label
    spec = CropSpec(mode="label", margin_mm=5.0, cube=True, size_mm=(30.0, 24.0, 36.0))
    grid = geometry.crop_grid(image, (10, 8, 12), spec, label)
    lo, hi = _edges(grid)
    assert np.allclose(hi - lo, (30.0, 24.0, 36.0))
    assert np.allclose(grid.spacing, (3.0, 3.0, 3.0))
    assert np.allclose((lo + hi) / 2, (14.5, 14.5, 14.0))


def test_crop_grid_label_mode_needs_a_nonempty_label(scan_and_label):
    image, label = scan_and_label
    with pytest.raises(ValueError, match="needs a label"):
        geometry.crop_grid(image, (8, 8, 8), CropSpec(mode="label"))
    with pytest.raises(ValueError, match="empty"):
        geometry.crop_grid(image, (8, 8, 8), CropSpec(mode="label"), np.zeros_like(label))


def test_center_mode_needs_size_mm_and_centres_on_the_scan(scan_and_label):
    with pytest.raises(ValueError, match="size_mm"):
        CropSpec(mode="center")
    with pytest.raises(ValueError, match="crop mode must be one of"):
        CropSpec(mode="middle")
    image, _ = scan_and_label
    grid = geometry.crop_grid(image, (10, 10, 10), CropSpec(mode="center", size_mm=(20.0, 20.0, 20.0)))
    lo, hi = _edges(grid)
    # the scan spans x, y [-0.5, 39.5] and z [-1, 39] mm: centre (19.5, 19.5, 19)
    assert np.allclose((lo + hi) / 2, (19.5, 19.5, 19.0)) and np.allclose(hi - lo, 20.0)


def test_box_mode_reads_raw_voxel_indices_of_the_unoriented_scan():
    # The raw scan's axis 0 runs towards the patient's right (LPS -x); orient flips it.
    native = _image(np.zeros((40, 30, 20), np.float32), spacing=(1.0, 1.0, 2.0), origin=(39.0, 0.0, 0.0),
                    direction=np.diag([-1.0, 1.0, 1.0]))
    oriented = geometry.orient(native)
    assert np.allclose(oriented.GetDirection(), np.eye(3).ravel())
    spec = CropSpec(mode="box", cube=False, boxes={"c1": [[0, 9], [12, 17], [5, 9]]})
    grid = geometry.crop_grid(oriented, (10, 6, 10), spec, case="c1", native=native)
    lo, hi = _edges(grid)
    # raw i 0..9 lies at x = 39 .. 30 (edges 29.5 .. 39.5); j 12..17 at y 11.5 .. 17.5; k 5..9 at z 9 .. 19
    assert np.allclose(lo, (29.5, 11.5, 9.0)) and np.allclose(hi, (39.5, 17.5, 19.0))
    assert np.allclose(grid.spacing, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="no entry for case"):
        geometry.crop_grid(oriented, (10, 6, 10), spec, case="c2", native=native)
    bad = CropSpec(mode="box", boxes={"c1": [[9, 0], [12, 17], [5, 9]]})
    with pytest.raises(ValueError, match="i0 <= i1"):
        geometry.crop_grid(oriented, (10, 6, 10), bad, case="c1", native=native)


def test_crop_grid_rejects_bad_shapes(scan_and_label):
    image, label = scan_and_label
    with pytest.raises(ValueError, match="three sizes >= 2"):
        geometry.crop_grid(image, (8, 8), CropSpec(), label)
    with pytest.raises(ValueError, match="three sizes >= 2"):
        geometry.crop_grid(image, (8, 1, 8), CropSpec(), label)


# --- resampling --------------------------------------------------------------------------------------------

def test_resample_labels_onto_the_identical_grid_is_exact():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(12, 10, 8)).astype(np.uint8)
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    image = _image(labels, spacing=(0.7, 1.3, 2.9), origin=(-3.0, 11.0, 5.5), direction=direction)
    # repeated: a result read from freed memory would differ between calls
    for _ in range(5):
        out = geometry.resample_labels(image, Grid.of(image), num_structures=3)
        assert out.dtype == np.uint8
        assert np.array_equal(out, labels)


def test_prepared_to_native_round_trip_recovers_the_blobs():
    # Native scan 40 x 40 x 16 at 1 x 1 x 2.5 mm whose first axis runs right (flipped); two touching spheres
    # of radius 10 and 6 mm. The prepared grid is 24^3 at about 1.8 mm.
    shape, spacing = (40, 40, 16), np.array([1.0, 1.0, 2.5])
    mm = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), axis=-1)
    label = np.zeros(shape, dtype=np.uint8)
    label[np.linalg.norm(mm - (15.0, 20.0, 20.0), axis=-1) <= 10.0] = 1
    label[np.linalg.norm(mm - (31.0, 20.0, 20.0), axis=-1) <= 6.0] = 2
    native = _image(label, spacing=spacing, origin=(39.0, 0.0, 0.0), direction=np.diag([-1.0, 1.0, 1.0]))
    oriented = geometry.orient(native)
    grid = geometry.crop_grid(oriented, (24, 24, 24), CropSpec(margin_mm=5.0), geometry.to_array(oriented))
    prepared = geometry.resample_labels(oriented, grid, num_structures=2)
    assert set(np.unique(prepared).tolist()) == {0, 1, 2}
    info = {"native_grid": Grid.of(native).to_dict(), "prepared_grid": grid.to_dict()}

    back = map_to_native(prepared, info, num_structures=2)

    assert back.GetSize() == native.GetSize()
    assert np.allclose(back.GetDirection(), native.GetDirection()) and np.allclose(back.GetOrigin(), native.GetOrigin())
    back_array = geometry.to_array(back)
    for k in (1, 2):
        assert _dice(back_array == k, label == k) > 0.9


def test_resample_image_of_a_constant_scan_stays_constant():
    image = _image(np.full((40, 40, 20), 7.0, np.float32), spacing=(1.0, 1.0, 2.0))
    # a coarser grid inside the scan (the anti-aliasing smoothing runs) and the same without smoothing
    inside = geometry.crop_grid(image, (6, 6, 6), CropSpec(mode="center", size_mm=(20.0, 20.0, 20.0)))
    for antialias in (True, False):
        out = geometry.resample_image(image, inside, default=-5.0, antialias=antialias)
        assert out.shape == (6, 6, 6) and out.dtype == np.float32
        assert np.allclose(out, 7.0, atol=1e-4)
    # a grid twice the scan's size: its middle reads the scan, its rim lies outside and takes the default
    outside = geometry.crop_grid(image, (8, 8, 8), CropSpec(mode="center", size_mm=(80.0, 80.0, 80.0)))
    out = geometry.resample_image(image, outside, default=-5.0)
    assert np.allclose(out[3:5, 3:5, 3:5], 7.0, atol=1e-4)
    assert np.all(out[0] == -5.0) and np.all(out[-1] == -5.0)


def test_resample_image_of_a_disjoint_grid_is_all_default():
    image = _image(np.full((10, 10, 10), 3.0, np.float32))
    far = Grid((4, 4, 4), (1.0, 1.0, 1.0), (500.0, 500.0, 500.0), tuple(np.eye(3).ravel()))
    assert np.all(geometry.resample_image(image, far, default=-1.0) == -1.0)
    assert np.all(geometry.resample_labels(image, far, 3) == 0)


def test_grid_affine_is_the_ras_voxel_to_world_map():
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    image = _image(np.zeros((5, 6, 7), np.float32), spacing=(1.5, 2.0, 3.0), origin=(1.0, 2.0, 3.0),
                   direction=direction)
    affine = Grid.of(image).affine()
    lps = np.asarray(image.TransformIndexToPhysicalPoint((2, 3, 4)))
    assert np.allclose(affine @ (2, 3, 4, 1), (-lps[0], -lps[1], lps[2], 1.0))
    assert np.allclose(spacing_from_affine(affine), (1.5, 2.0, 3.0))
    assert Grid.from_dict(Grid.of(image).to_dict()) == Grid.of(image)


# --- header comparison ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, kind, field", [
    ({"origin": (10.0 + 1e-5, -4.0, 3.0)}, "noise", "origin"),
    ({"spacing": (2.0 * (1 + 1e-6), 2.0, 2.0)}, "noise", "spacing"),
    ({"origin": (15.0, -4.0, 3.0)}, "real", "origin"),
    ({"spacing": (2.0, 2.5, 2.0)}, "real", "spacing"),
    ({"direction": np.diag([1.0, -1.0, -1.0])}, "real", "direction"),
    ({"size": (10, 10, 11)}, "real", "size"),
])
def test_header_differences_tells_noise_from_real(change, kind, field):
    base = {"size": (10, 10, 10), "spacing": (2.0, 2.0, 2.0), "origin": (10.0, -4.0, 3.0), "direction": np.eye(3)}
    image = _image(np.zeros(base["size"], np.float32), base["spacing"], base["origin"], base["direction"])
    other = base | change
    label = _image(np.zeros(other["size"], np.uint8), other["spacing"], other["origin"], other["direction"])
    noise, real = geometry.header_differences(image, label)
    assert geometry.header_differences(image, image) == ([], [])
    found, empty = (noise, real) if kind == "noise" else (real, noise)
    assert len(found) == 1 and found[0].startswith(field) and empty == []
    if (kind, field) == ("real", "origin"):
        assert found == ["origin (5 mm)"]


def test_resample_nearest_moves_a_noisy_label_onto_the_image_grid():
    image = _image(np.zeros((6, 6, 6), np.float32), spacing=(2.0, 2.0, 2.0))
    labels = np.arange(6 * 6 * 6, dtype=np.int32).reshape(6, 6, 6) % 7
    label = _image(labels, spacing=(2.0, 2.0, 2.0), origin=(1e-5, 0.0, 0.0))
    out = geometry.resample_nearest(label, image)
    assert Grid.of(out) == Grid.of(image)
    assert np.array_equal(geometry.to_array(out), labels)


def test_from_array_checks_the_grid_size():
    grid = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    with pytest.raises(ValueError, match="does not match the grid size"):
        geometry.from_array(np.zeros((4, 4, 5), np.uint8), grid)
    assert geometry.voxel_volume_ml((2.0, 2.5, 10.0)) == pytest.approx(0.05)


# --- NIfTI spacing ---------------------------------------------------------------------------------------------

def test_read_volume_takes_pixdim_spacing_when_the_sform_has_unit_columns(tmp_path):
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation
    affine[:3, 3] = (10.0, -20.0, 30.0)
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code=2)
    image.set_qform(affine, code=0)
    image.header.set_zooms((1.5, 1.5, 10.0))
    path = tmp_path / "acdc_like.nii.gz"
    nib.save(image, str(path))
    header = nib.load(str(path)).header
    assert np.allclose(np.linalg.norm(header.get_sform()[:3, :3], axis=0), 1.0)  # the fixture is what we meant

    data, read_affine = read_volume(path)

    assert np.array_equal(data, array)
    assert spacing_from_affine(read_affine) == pytest.approx((1.5, 1.5, 10.0))
    assert np.allclose(read_affine[:3, :3], rotation * np.array([1.5, 1.5, 10.0])[None, :])
    assert np.allclose(read_affine[:3, 3], (10.0, -20.0, 30.0))
    assert np.allclose(sitk.ReadImage(str(path)).GetSpacing(), (1.5, 1.5, 10.0))  # ITK agrees


def test_spacing_from_affine_rejects_bad_shapes():
    assert spacing_from_affine(np.diag([2.0, 3.0, 4.0, 1.0])) == (2.0, 3.0, 4.0)
    with pytest.raises(ValueError, match="4x4"):
        spacing_from_affine(np.eye(2))


def test_sitk_seeds_are_stable_and_never_the_wall_clock():
    from diffatlas.data.geometry import sitk_seed, sitk_threads
    seeds = [sitk_seed("localise", s) for s in range(200)]
    assert all(1 <= s < 2**31 for s in seeds) and len(set(seeds)) == 200
    assert sitk_seed("localise", 3) == sitk_seed("localise", 3) != sitk_seed("rba", 3)
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    with sitk_threads(1):
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before
