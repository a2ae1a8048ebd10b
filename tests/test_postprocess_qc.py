"""Postprocessing on hand-made label maps, and the QC images, volumes and report (rendered in headless Chromium
where it is installed)."""

import re
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from diffatlas import qc
from diffatlas.postprocess import Postprocessing

NAMES = ("Myo", "LV", "RV")


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def test_largest_component_drops_the_smaller_islands_only_of_the_chosen_structures():
    labels = np.zeros((16, 16, 16), np.uint8)
    labels[_ball(labels.shape, (5, 5, 5), 3)] = 2
    labels[12:14, 12:14, 12:14] = 2        # an island of LV
    labels[0:2, 14:16, 0:2] = 3            # RV: two islands
    labels[14:16, 0:2, 14:16] = 3
    labels[14, 14, 0] = 3
    out = Postprocessing.from_config({"largest_component": ["LV"]}, NAMES)(labels)
    assert np.count_nonzero(out == 2) == np.count_nonzero(_ball(labels.shape, (5, 5, 5), 3))
    assert np.count_nonzero(out == 3) == np.count_nonzero(labels == 3)   # RV untouched
    out = Postprocessing.from_config({"largest_component": "all"}, NAMES)(labels)
    assert np.count_nonzero(out == 3) == 8 and out[14, 14, 0] == 0


def test_fill_holes_fills_background_cavities_but_never_takes_another_structure():
    labels = np.zeros((16, 16, 16), np.uint8)
    shell = _ball(labels.shape, (8, 8, 8), 6) & ~_ball(labels.shape, (8, 8, 8), 3)
    labels[shell] = 1                                  # Myo: a hollow ball
    labels[_ball(labels.shape, (8, 8, 8), 1)] = 2      # LV inside it, the rest of the cavity background
    out = Postprocessing.from_config({"fill_holes": ["Myo"]}, NAMES)(labels)
    assert np.all(out[_ball(labels.shape, (8, 8, 8), 1)] == 2)
    cavity = _ball(labels.shape, (8, 8, 8), 3) & ~_ball(labels.shape, (8, 8, 8), 1)
    assert np.all(out[cavity] == 1) and np.all(out[shell] == 1)
    assert np.array_equal(Postprocessing.from_config(None, NAMES)(labels), labels)


def test_postprocessing_settings_are_checked():
    with pytest.raises(ValueError, match=r"postprocess.fill_holes names \['LA'\]"):
        Postprocessing.from_config({"fill_holes": ["LA"]}, NAMES)
    with pytest.raises(ValueError, match="unknown postprocess keys"):
        Postprocessing.from_config({"largest": "all"}, NAMES)


def _case(tmp_path, name="c1", uncertainty=True):
    image = np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32)
    labels = np.zeros((24, 24, 24), np.uint8)
    labels[_ball(labels.shape, (10, 12, 14), 5)] = 1
    labels[_ball(labels.shape, (10, 12, 14), 2)] = 2
    spread = np.linspace(0, 1, labels.size, dtype=np.float32).reshape(labels.shape) if uncertainty else None
    return qc.render_case(tmp_path, name, image, labels, len(NAMES), spread), labels


def test_planes_show_the_contours_through_the_heart(tmp_path):
    names, labels = _case(tmp_path)
    assert names == ["c1_planes.png", "c1_uncertainty.png"]
    assert qc.plane_indices(labels) == (10, 12, 14)
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / names[0])))
    factor = qc.PANEL_PX // 24
    assert png.shape == (24 * factor, 3 * 24 * factor + 2 * 4, 3)
    axial = png[:, : 24 * factor]
    myo = np.all(axial == qc.PALETTE[0], axis=-1)
    lv = np.all(axial == qc.PALETTE[1], axis=-1)
    assert myo.any() and lv.any()

    def radii(mask):
        rows, cols = np.nonzero(mask)
        return np.hypot((cols + 0.5) / factor - 10.5, (rows + 0.5) / factor - 12.5)

    # in the axial view, about (column i = 10, row j = 12): the Myo ring's outer outline at 5 voxels, the LV's
    # outline (drawn over the Myo's inner one) at 2
    assert 4.5 < radii(myo).max() < 6.5 and 1.0 < radii(lv).min() and radii(lv).max() < 3.5
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / names[1])))
    assert heat.shape == png.shape and heat.max() == 255


def test_volumes_csv_and_report_list_every_case(tmp_path):
    names, _ = _case(tmp_path)
    cases = [qc.CaseQC("c1", names, {"Myo": 12.5, "LV": 3.25, "RV": 0.0},
                       {"Myo": {"dice": 0.8123, "nsd": 0.5}, "LV": {"dice": 0.9, "nsd": float("nan")},
                        "RV": {"dice": float("nan"), "nsd": float("nan")}}, seconds=1.5),
             qc.CaseQC("bad<1>", error="cannot read the scan")]
    qc.write_volumes(tmp_path / qc.VOLUMES, cases, NAMES)
    assert (tmp_path / qc.VOLUMES).read_text(
        encoding="utf-8").splitlines() == ["case,Myo_ml,LV_ml,RV_ml", "c1,12.500,3.250,0.000"]
    page = qc.write_report(tmp_path, cases, NAMES, "run", {"roi": "auto"}).read_text(encoding="utf-8")
    assert "1 of 2 cases segmented" in page and "bad&lt;1&gt;" in page and "failed: cannot read the scan" in page
    assert re.findall(r"<img src='([^']+)'", page) == names
    assert "<td>81.2</td><td>50.0</td>" in page and "roi: auto" in page


CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_report_opens_from_disk_with_every_image_loaded(tmp_path):
    names, _ = _case(tmp_path, "c1")
    names2, _ = _case(tmp_path, "c2", uncertainty=False)
    cases = [qc.CaseQC("c1", names, {"Myo": 1.0}), qc.CaseQC("c2", names2, {"Myo": 2.0})]
    page = qc.write_report(tmp_path, cases, NAMES, "run")

    def loaded(path):
        done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                               "--dump-dom", path.resolve().as_uri()], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
        found = re.search(r'data-images-loaded="(\d+)" data-images-total="(\d+)"', done.stdout)
        assert found, done.stderr[-2000:]
        return int(found.group(1)), int(found.group(2))

    assert loaded(page) == (3, 3)
    (tmp_path / names[1]).unlink()          # a missing image is counted as not loaded
    assert loaded(page) == (2, 3)
