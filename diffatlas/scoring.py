"""Scoring predictions against reference labels and writing the reports of one method or a comparison.

Cases prepared from real scans are also mapped back onto their scan's own grid (``predictions_native/``) and
scored there with the native spacing; the summary then holds that summary under ``"native"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

from diffatlas.data.caseids import check_not_input
from diffatlas.data.datasets import CaseData, PreparedData, case_file, image_path, label_path
from diffatlas.data.geometry import to_array
from diffatlas.data.io import write_volume
from diffatlas.data.prepare import map_to_native, native_info, native_label
from diffatlas.evaluation.metrics import evaluate_case
from diffatlas.evaluation.report import CaseResult, format_comparison_table, summarize, write_reports

NATIVE_PREDICTIONS = "predictions_native"


class ScoreSheet:
    """Collects the scores of one method on one test set and writes its reports.

    Every prediction is written to ``<run_dir>/predictions/`` (the prepared grid's affine) and scored there;
    when every case was prepared from a raw scan, it is also mapped back onto the scan's own grid, written to
    ``<run_dir>/predictions_native/`` and scored with the native spacing.
    """

    def __init__(self, data: PreparedData, cases: list[str], tolerance_mm: float, run_dir: Path):
        self.data = data
        self.tolerance_mm = tolerance_mm
        self.run_dir = Path(run_dir)
        self.pred_dir = self.run_dir / "predictions"
        self.natives = {c: native_info(data.root, c) for c in cases}
        self.score_native = all(info is not None for info in self.natives.values())
        self.results: list[CaseResult] = []
        self.native_results: list[CaseResult] = []

    def prediction_path(self, case: CaseData, suffix: str = ".nii.gz", folder: Path | None = None) -> Path:
        """Where a prediction of ``case`` goes (``predictions/<case><suffix>``): inside the run folder, and never
        one of the files the case was read from."""
        path = case_file(folder or self.pred_dir, ".", case.case, suffix)
        info = self.natives.get(case.case) or {}
        inputs = [image_path(self.data.root, case.case), label_path(self.data.root, case.case),
                  info.get("source_image"), self.data.root / str(info["label"]) if info.get("label") else None]
        return check_not_input(path, inputs)

    def add(self, case: CaseData, label: np.ndarray, seconds: float) -> CaseResult:
        """Write and score the prediction ``label`` ``(X, Y, Z)`` of ``case``; returns its prepared-grid scores."""
        write_volume(self.prediction_path(case), label, case.affine)
        metrics = evaluate_case(label, case.label, self.data.structures, case.spacing_mm, self.tolerance_mm)
        self.results.append(CaseResult(case.case, metrics, seconds))
        if self.score_native:
            native_path = self.prediction_path(case, folder=self.run_dir / NATIVE_PREDICTIONS)
            self.native_results.append(_score_native(label, self.data, case.case, self.natives[case.case],
                                                     self.tolerance_mm, native_path, seconds))
        return self.results[-1]

    def add_failure(self, case: CaseData, reason: str, seconds: float) -> None:
        """Record that the method produced no segmentation of ``case``: scored as an empty prediction (nothing is
        written to ``predictions/``), with ``reason`` in the reports."""
        empty = np.zeros(case.label.shape, dtype=np.uint8)
        metrics = evaluate_case(empty, case.label, self.data.structures, case.spacing_mm, self.tolerance_mm)
        self.results.append(CaseResult(case.case, metrics, seconds, failed=reason))
        if self.score_native:
            native = _score_native(empty, self.data, case.case, self.natives[case.case], self.tolerance_mm, None,
                                   seconds)
            self.native_results.append(CaseResult(case.case, native.metrics, seconds, failed=reason))

    def finish(self, method: str, split_name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Summarise (with a ``native`` sub-summary when scored there), write the reports, return the summary."""
        summary = summarize(self.results, self.data.structures, method=method, dataset=self.data.name,
                            split=split_name, tolerance_mm=self.tolerance_mm, sampler=settings)
        if self.native_results:
            summary["native"] = summarize(self.native_results, self.data.structures, method=method,
                                          dataset=self.data.name, split=split_name,
                                          tolerance_mm=self.tolerance_mm, sampler=settings, space="native")
        write_reports(self.run_dir, self.results, summary, self.native_results)
        return summary


def _score_native(label: np.ndarray, data: PreparedData, case: str, info: Mapping[str, Any], tolerance_mm: float,
                  out_path: Path | None, seconds: float) -> CaseResult:
    """Map a prepared-grid prediction back onto the scan's own grid, write it to ``out_path`` (the scan's
    geometry; None writes nothing) and score it against the native reference label with the native spacing."""
    pred = map_to_native(label, dict(info), data.num_structures)
    ref = native_label(data.root, dict(info))
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(pred, str(out_path), True)
    metrics = evaluate_case(to_array(pred), to_array(ref), data.structures, pred.GetSpacing(), tolerance_mm)
    return CaseResult(case, metrics, seconds)


def write_comparison(run_dir: Path, summaries: list[dict[str, Any]]) -> str:
    """``table.md`` (prepared grid, then native space when every method was scored there) and ``summary.json``
    in ``run_dir``; returns the table text."""
    table = format_comparison_table(summaries)
    if all(s.get("native") for s in summaries):
        table += "\n" + format_comparison_table([s["native"] for s in summaries])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "table.md").write_text(table, encoding="utf-8")
    (run_dir / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n", encoding="utf-8")
    return table
