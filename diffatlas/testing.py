"""Segmenting and scoring a split's test cases with a DiffAtlas checkpoint (``python -m diffatlas.test``).

With ``roi=label`` (the paper's protocol) the prepared crops are segmented; predictions are written as NIfTI with
the input's affine (with an ensemble also ``<case>_uncertainty.nii.gz``), with ``per_case.csv``, ``summary.json``
and ``table.md`` (see :class:`diffatlas.scoring.ScoreSheet`), and the QC report (``report.html``, ``qc/``,
``volumes.csv``) on the prepared grid. With ``roi=auto`` or ``roi=whole`` the cases' raw
scans are segmented by the label-free ``Segmenter`` instead and scored in native space, with the QC report.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from diffatlas import qc
from diffatlas.data.geometry import to_array
from diffatlas.data.io import write_volume
from diffatlas.data.prepare import native_info, native_label
from diffatlas.device import resolve_device
from diffatlas.evaluation.metrics import evaluate_case
from diffatlas.evaluation.report import CaseResult, summarize, write_reports
from diffatlas.inputs import load_data_and_split
from diffatlas.postprocess import Postprocessing
from diffatlas.scoring import NATIVE_PREDICTIONS, ScoreSheet
from diffatlas.segmenter import DiffAtlasGridModel, Segmenter, read_scan

log = logging.getLogger(__name__)


def test(cfg: Mapping[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Segment and score the split's test cases; returns the summary written to ``run_dir``."""
    inference = cfg["inference"]
    if inference["roi"] != "label":
        return test_on_scans(cfg, run_dir)
    device = resolve_device(cfg["device"])
    run_dir = Path(run_dir)
    data, split = load_data_and_split(cfg["dataset"], cfg["split"])
    postprocess = Postprocessing.from_config(inference.get("postprocess"), data.structures)
    checkpoint = Path(cfg["checkpoint"])
    model, stored = DiffAtlasGridModel.from_checkpoint(checkpoint, cfg["sampler"], device, inference)
    if list(stored["structures"]) != list(data.structures):
        raise ValueError(f"the checkpoint segments {stored['structures']} but {data.root} holds "
                         f"{list(data.structures)}; use a dataset with the same structures")
    if list(stored["shape"]) != list(data.shape):
        raise ValueError(f"the checkpoint was trained on grid {stored['shape']} but the data grid is "
                         f"{list(data.shape)}; prepare the data on the training grid")
    cases = list(split["test"])
    if not cases:
        raise ValueError(f"split {cfg['split']['file']} has no test cases")
    batch_size = int(cfg.get("batch_size", 4))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (cases sampled together), got {batch_size}")
    scores = ScoreSheet(data, cases, float(cfg["nsd_tolerance_mm"]), run_dir)
    views: list[qc.CaseQC] = []
    for start in tqdm(range(0, len(cases), batch_size), desc="test", disable=None):
        chunk = [data.load_case(c) for c in cases[start:start + batch_size]]
        t0 = time.perf_counter()
        fused, spread = model.segment_batch(np.stack([c.image for c in chunk]), [c.case for c in chunk])
        labels = np.stack([postprocess(label) for label in fused])
        seconds = (time.perf_counter() - t0) / len(chunk)
        for n, (case, label) in enumerate(zip(chunk, labels)):
            scored = scores.add(case, label, seconds)
            uncertainty = None if spread is None else spread[n]
            if uncertainty is not None:
                write_volume(scores.prediction_path(case, "_uncertainty.nii.gz"), uncertainty, case.affine)
            images = qc.render_case(run_dir / "qc", case.case, case.image, label, len(data.structures), uncertainty)
            views.append(qc.CaseQC(case.case, [f"qc/{name}" for name in images],
                                   qc.label_volumes_ml(label, case.spacing_mm, data.structures),
                                   scored.metrics, seconds=seconds))
    sampler_info = {**model.describe(), "roi": "label", "postprocess": postprocess.describe()}
    summary = scores.finish("DiffAtlas", split.get("name", Path(cfg["split"]["file"]).stem), sampler_info)
    qc.write_volumes(run_dir / qc.VOLUMES, views, data.structures)
    qc.write_report(run_dir, views, data.structures, f"{data.name} test cases, roi=label (prepared crops)",
                    sampler_info)
    log.info("results written to %s", run_dir)
    return summary


def test_on_scans(cfg: Mapping[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Segment the raw scans of the split's test cases with the label-free ``Segmenter`` (``cfg["roi"]``), score
    them against the reference labels on each scan's own grid, and write the reports and the QC report."""
    run_dir = Path(run_dir)
    data, split = load_data_and_split(cfg["dataset"], cfg["split"])
    segmenter = Segmenter.from_config(cfg)
    if segmenter.structures != data.structures:
        raise ValueError(f"the checkpoint segments {list(segmenter.structures)} but {data.root} holds "
                         f"{list(data.structures)}; use a dataset with the same structures")
    cases = list(split["test"])
    if not cases:
        raise ValueError(f"split {cfg['split']['file']} has no test cases")
    tolerance_mm = float(cfg["nsd_tolerance_mm"])
    results: list[CaseResult] = []
    views: list[qc.CaseQC] = []
    for case in tqdm(cases, desc=f"test roi={segmenter.roi}", disable=None):
        info = native_info(data.root, case)
        if info is None:
            raise ValueError(f"roi={segmenter.roi} segments the raw scans, but case {case} of {data.root} has no "
                             "native record: use data prepared from raw scans, or roi=label")
        result = segmenter.segment_image(read_scan(info["source_image"]), case)
        result.save(run_dir / NATIVE_PREDICTIONS / f"{case}.nii.gz")
        metrics = evaluate_case(result.labels, to_array(native_label(data.root, info)), data.structures,
                                result.scan_grid.spacing, tolerance_mm)
        results.append(CaseResult(case, metrics, result.seconds))
        images = qc.render_case(run_dir / "qc", case, result.image_grid, result.labels_grid, len(data.structures),
                                result.uncertainty_grid)
        views.append(qc.CaseQC(case, [f"qc/{name}" for name in images], result.volumes_ml(), metrics,
                               seconds=result.seconds))
    summary = summarize(results, data.structures, method="DiffAtlas", dataset=data.name,
                        split=split.get("name", Path(cfg["split"]["file"]).stem), tolerance_mm=tolerance_mm,
                        sampler=segmenter.describe(), space="native")
    write_reports(run_dir, [], summary, results)
    qc.write_volumes(run_dir / qc.VOLUMES, views, data.structures)
    qc.write_report(run_dir, views, data.structures, f"{data.name} test cases, roi={segmenter.roi}",
                    segmenter.describe())
    log.info("results written to %s", run_dir)
    return summary
