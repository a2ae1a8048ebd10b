"""Segmenting a scan or a folder of scans with a checkpoint (``python -m diffatlas.segment``).

Every scan gets ``<output>/<scan name>.nii.gz`` (the scan's geometry); with ``report`` also the QC images in
``<output>/qc/``, ``<output>/volumes.csv`` and ``<output>/report.html`` (``diffatlas.qc``). A scan that cannot be
segmented is reported in one line and skipped; the summary lists the failures.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import SimpleITK as sitk
from tqdm.auto import tqdm

from diffatlas import qc
from diffatlas.segmenter import Segmenter, list_scans, load_boxes, scan_name

log = logging.getLogger(__name__)

QC_DIR = "qc"
CASE_ERRORS = (ValueError, RuntimeError, FileNotFoundError, OSError, KeyError)
"""The errors of one scan (unreadable, not 3D, a bad box) that skip it instead of stopping the run."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def segment_scans(segmenter: Segmenter, input_path: str | Path, output: str | Path, *,
                  boxes: Mapping[str, Any] | None = None, report: bool = True) -> dict[str, Any]:
    """Segment the scans of ``input_path`` (a file, a DICOM series folder, or a folder of them) into ``output``.

    Returns ``{"segmented": [names], "failed": {name: reason}, "seconds": total}``.
    """
    sitk.ProcessObject.SetGlobalWarningDisplay(False)   # unreadable scans are reported in one line each
    scans = list_scans(input_path)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    boxes = dict(boxes or {})
    cases: list[qc.CaseQC] = []
    seen: set[str] = set()
    start = time.perf_counter()
    bar = tqdm(scans, desc="segment", unit="scan", disable=None)
    for number, path in enumerate(bar, start=1):
        name = scan_name(path)
        try:
            if name in seen:
                raise ValueError(f"another scan is also named {name!r}; its label map would be overwritten")
            seen.add(name)
            result = segmenter.segment_file(path, output / f"{name}.nii.gz", box=boxes.get(name))
            images = []
            if report:
                images = [f"{QC_DIR}/{image}" for image in qc.render_case(
                    output / QC_DIR, name, result.image_grid, result.labels_grid, len(segmenter.structures),
                    result.uncertainty_grid)]
            cases.append(qc.CaseQC(name, images, result.volumes_ml(), seconds=result.seconds))
        except CASE_ERRORS as err:
            log.error("%s failed: %s", name, _first_line(err))
            cases.append(qc.CaseQC(name, error=_first_line(err)))
        elapsed = time.perf_counter() - start
        log.info("%d/%d %s done, %.1f s elapsed, about %.0f s left", number, len(scans), name, elapsed,
                 elapsed / number * (len(scans) - number))
    failed = {c.case: c.error for c in cases if c.error is not None}
    if report:
        qc.write_volumes(output / qc.VOLUMES, cases, segmenter.structures)
        qc.write_report(output, cases, segmenter.structures, f"Segmentation of {Path(input_path).name}",
                        segmenter.describe())
    seconds = time.perf_counter() - start
    log.info("segmented %d of %d scans in %.1f s into %s%s", len(cases) - len(failed), len(cases), seconds, output,
             "; failed: " + ", ".join(failed) if failed else "")
    return {"segmented": [c.case for c in cases if c.error is None], "failed": failed, "seconds": seconds}


def segment(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``python -m diffatlas.segment``: build the segmenter from ``cfg`` and segment ``cfg["input"]``."""
    segmenter = Segmenter.from_config(cfg)
    boxes = load_boxes(cfg["inference"].get("box_file"))
    if segmenter.roi == "box" and not boxes:
        raise ValueError("inference.roi=box needs inference.box_file=<JSON {scan name: [[i0, i1], [j0, j1], "
                         "[k0, k1]]}>")
    return segment_scans(segmenter, cfg["input"], cfg["output"], boxes=boxes, report=bool(cfg.get("report", True)))
