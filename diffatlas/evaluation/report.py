"""Run summaries, Markdown tables in the paper's layout, and the report files of a test run.

Per-case scores come from :func:`diffatlas.evaluation.metrics.evaluate_case` and follow its empty-mask
rule: NaN marks an absent structure (both masks empty) or an undefined HD95 (exactly one mask empty).
Every average here is a ``nanmean`` and every spread a population ``nanstd`` over cases, so absent
structures are skipped rather than counted as zero. In the summary dict NaN becomes ``None`` so that
it is strict JSON (``null``); tables print it as ``NaN``, as the paper does.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

METRIC_NAMES = ("dice", "nsd", "hd95")
PER_CASE_FILENAME = "per_case.csv"
SUMMARY_FILENAME = "summary.json"
TABLE_FILENAME = "table.md"


@dataclass(frozen=True)
class CaseResult:
    """Scores of one test case.

    Attributes:
        case: case identifier.
        metrics: ``{structure: {"dice", "nsd", "hd95"}}`` as returned by ``evaluate_case``.
        seconds: wall-clock seconds spent segmenting the case.
        failed: why the method produced no segmentation of the case, or None. A failed case is scored as an
            empty prediction (Dice and NSD 0 for every structure present), so it counts against the method.
    """

    case: str
    metrics: dict[str, dict[str, float]]
    seconds: float
    failed: str | None = None


def _nanmean(values: Sequence[float]) -> float:
    """Mean ignoring NaN; NaN (without a warning) when every value is NaN."""
    array = np.asarray(values, dtype=np.float64)
    return math.nan if np.isnan(array).all() else float(np.nanmean(array))


def _nanstd(values: Sequence[float]) -> float:
    """Population standard deviation (ddof 0) ignoring NaN; NaN when every value is NaN."""
    array = np.asarray(values, dtype=np.float64)
    return math.nan if np.isnan(array).all() else float(np.nanstd(array, ddof=0))


def _to_json(value: Any) -> Any:
    """Copy of ``value`` with numpy types made native and non-finite floats made ``None``."""
    if isinstance(value, Mapping):
        return {str(key): _to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return _to_json(value.tolist())
    if isinstance(value, np.generic):
        return _to_json(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize(
    results: Sequence[CaseResult],
    structures: Sequence[str],
    *,
    method: str,
    dataset: str,
    split: str,
    tolerance_mm: float,
    sampler: Mapping[str, Any],
    space: str = "prepared grid",
) -> dict[str, Any]:
    """Aggregate per-case scores into the run summary written to ``summary.json``.

    Args:
        results: one :class:`CaseResult` per test case; each must score every structure.
        structures: structure names in label order.
        method: method name shown in tables, e.g. ``"DiffAtlas"``.
        dataset: dataset name, e.g. ``"MM-WHS CT"``.
        split: split name, e.g. ``"test"``.
        tolerance_mm: the NSD tolerance the scores were computed with, in mm.
        sampler: sampler settings (steps, plan, seed, ...); must be JSON-serialisable.
        space: where the scores were computed: ``"prepared grid"`` (the paper's protocol) or
            ``"native"`` (predictions mapped back onto each scan's own grid and spacing).

    Returns:
        ``{"method", "dataset", "split", "space", "num_cases", "failed_cases", "structures", "per_structure",
        "mean", "nsd_tolerance_mm", "sampler", "seconds_per_case"}``; ``failed_cases`` maps each failed case
        (counted in ``num_cases``, scored as an empty prediction) to its reason. ``per_structure[name]`` holds
        ``dice_mean``, ``dice_std``, ``nsd_mean``, ``nsd_std``, ``hd95_mean`` and ``hd95_undefined``
        (the number of cases where exactly one mask was empty). Dice and NSD are fractions in [0, 1],
        HD95 is in mm; ``mean`` is the mean over structures of the per-structure means. NaN is None.
    """
    names = list(structures)
    if not results:
        raise ValueError("results is empty: nothing to summarize")
    if not names:
        raise ValueError("structures must name at least one structure")
    if not (math.isfinite(tolerance_mm) and tolerance_mm > 0):
        raise ValueError(f"tolerance_mm must be finite and positive, got {tolerance_mm}")
    for result in results:
        missing = [name for name in names if name not in result.metrics]
        if missing:
            raise ValueError(f"case {result.case!r} has no scores for structures {missing}")
        for name in names:
            absent = [metric for metric in METRIC_NAMES if metric not in result.metrics[name]]
            if absent:
                raise ValueError(f"case {result.case!r}, structure {name!r} lacks metrics {absent}")
    sampler_json = _to_json(sampler)
    try:
        json.dumps(sampler_json, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"sampler must be JSON-serialisable: {error}") from error

    per_structure: dict[str, dict[str, float | int]] = {}
    for name in names:
        columns = {
            metric: np.array([result.metrics[name][metric] for result in results], dtype=np.float64)
            for metric in METRIC_NAMES
        }
        # exactly one mask empty: Dice is 0 (not NaN) while HD95 is NaN
        undefined_hd95 = np.isnan(columns["hd95"]) & ~np.isnan(columns["dice"])
        per_structure[name] = {
            "dice_mean": _nanmean(columns["dice"]),
            "dice_std": _nanstd(columns["dice"]),
            "nsd_mean": _nanmean(columns["nsd"]),
            "nsd_std": _nanstd(columns["nsd"]),
            "hd95_mean": _nanmean(columns["hd95"]),
            "hd95_undefined": int(np.count_nonzero(undefined_hd95)),
        }
    mean = {
        metric: _nanmean([per_structure[name][f"{metric}_mean"] for name in names])
        for metric in METRIC_NAMES
    }
    summary = {
        "method": method,
        "dataset": dataset,
        "split": split,
        "space": space,
        "num_cases": len(results),
        "failed_cases": {result.case: result.failed for result in results if result.failed is not None},
        "structures": names,
        "per_structure": per_structure,
        "mean": mean,
        "nsd_tolerance_mm": float(tolerance_mm),
        "sampler": sampler_json,
        "seconds_per_case": _nanmean([result.seconds for result in results]),
    }
    logger.info(
        "%s on %s/%s (%d cases, %s): mean Dice %.4f, NSD %.4f",
        method, dataset, split, len(results), space, mean["dice"], mean["nsd"],
    )
    return _to_json(summary)


def _percent(fraction: float | None) -> str:
    """A fraction as a percentage with 2 decimals; ``NaN`` for a missing value."""
    return "NaN" if fraction is None else f"{100.0 * fraction:.2f}"


def _percent_with_std(mean: float | None, std: float | None) -> str:
    """``mean ± std`` in percent with 2 decimals, e.g. ``83.25 ± 4.10``."""
    return f"{_percent(mean)} ± {_percent(std)}"


def _cell(text: str) -> str:
    """Escape a free-text value for a Markdown table cell."""
    return str(text).replace("|", r"\|")


def _caption(summary: Mapping[str, Any]) -> str:
    """One-line caption naming dataset, split, number of cases and NSD tolerance."""
    space = summary.get("space", "prepared grid")
    return (
        f"{summary['dataset']}, {summary['split']} split, {summary['num_cases']} cases, scored on the {space}"
        f"{' grid' if space == 'native' else ''}; "
        f"NSD tolerance {summary['nsd_tolerance_mm']:g} mm; Dice and NSD in %."
    )


def _failures(summary: Mapping[str, Any]) -> str:
    """`` (2 of 10 cases failed)`` when the method failed on some cases, else empty."""
    failed = len(summary.get("failed_cases") or {})
    return f" ({failed} of {summary['num_cases']} cases failed)" if failed else ""


def _failure_lines(summary: Mapping[str, Any]) -> list[str]:
    failed = summary.get("failed_cases") or {}
    if not failed:
        return []
    lines = ["", f"{summary['method']}: {len(failed)} of {summary['num_cases']} cases failed and are scored as empty "
                 "predictions:"]
    return lines + [f"- {_cell(case)}: {_cell(reason)}" for case, reason in failed.items()]


def format_table(summary: Mapping[str, Any]) -> str:
    """Markdown table of one run: rows are the structures and ``Average``, columns Dice and NSD.

    Structure cells read ``mean ± std`` over cases; the ``Average`` row is the mean over structures
    of the per-structure means (the paper's "Average" column) and carries no std. A summary holding a
    ``"native"`` sub-summary gets its table too, below the first.
    """
    lines = [
        _caption(summary),
        "",
        f"| {_cell(summary['method'] + _failures(summary))} | Dice (%) | NSD (%) |",
        "| --- | ---: | ---: |",
    ]
    for name in summary["structures"]:
        scores = summary["per_structure"][name]
        lines.append(
            f"| {_cell(name)} | {_percent_with_std(scores['dice_mean'], scores['dice_std'])} "
            f"| {_percent_with_std(scores['nsd_mean'], scores['nsd_std'])} |"
        )
    lines.append(f"| Average | {_percent(summary['mean']['dice'])} | {_percent(summary['mean']['nsd'])} |")
    lines += _failure_lines(summary)
    text = "\n".join(lines) + "\n"
    if summary.get("native"):
        text += "\n" + format_table(summary["native"])
    return text


def format_comparison_table(summaries: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table comparing methods in the layout of the paper's Tables 1-3.

    Rows are methods; columns are each structure's Dice and NSD, then the average Dice and NSD, all
    means in percent. All summaries must share structures, dataset, split, case count and tolerance. A method
    that failed on some cases says how many in its row, and the failures are listed below the table.
    """
    if not summaries:
        raise ValueError("summaries is empty: nothing to compare")
    first = summaries[0]
    for key in ("structures", "dataset", "split", "num_cases", "nsd_tolerance_mm"):
        values = [summary[key] for summary in summaries]
        if any(value != values[0] for value in values):
            raise ValueError(f"summaries differ in {key!r}: {values}; compare runs on the same test set")
    names = first["structures"]
    header = ["Method"] + [f"{name} {metric}" for name in names for metric in ("Dice", "NSD")]
    header += ["Average Dice", "Average NSD"]
    lines = [
        _caption(first),
        "",
        "| " + " | ".join(_cell(column) for column in header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
    ]
    for summary in summaries:
        row = [_cell(summary["method"] + _failures(summary))]
        for name in names:
            scores = summary["per_structure"][name]
            row += [_percent(scores["dice_mean"]), _percent(scores["nsd_mean"])]
        row += [_percent(summary["mean"]["dice"]), _percent(summary["mean"]["nsd"])]
        lines.append("| " + " | ".join(row) + " |")
    for summary in summaries:
        lines += _failure_lines(summary)
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _per_case_csv(results: Sequence[CaseResult], structures: Sequence[str],
                  native: Sequence[CaseResult] | None = None) -> str:
    """CSV text with one row per case, structure and space; NaN written as ``nan``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "structure", "space", *METRIC_NAMES, "seconds", "failed"])
    for space, rows in (("grid", results), ("native", native or [])):
        for result in rows:
            for name in structures:
                scores = result.metrics[name]
                writer.writerow(
                    [result.case, name, space, *(repr(float(scores[metric])) for metric in METRIC_NAMES),
                     repr(float(result.seconds)), result.failed or ""]
                )
    return buffer.getvalue()


def write_reports(
    run_dir: str | os.PathLike[str],
    results: Sequence[CaseResult],
    summary: Mapping[str, Any],
    native_results: Sequence[CaseResult] | None = None,
) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.json`` and ``table.md`` into ``run_dir`` (created if needed).

    ``native_results`` are the same cases scored in native space (their summary is ``summary["native"]``);
    ``per_case.csv`` has a ``space`` column telling the two apart.

    Each file is written atomically, so a reader never sees a half-written report.

    Returns:
        ``{"per_case": path, "summary": path, "table": path}``.
    """
    directory = Path(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "per_case": directory / PER_CASE_FILENAME,
        "summary": directory / SUMMARY_FILENAME,
        "table": directory / TABLE_FILENAME,
    }
    _write_atomic(paths["per_case"], _per_case_csv(results, summary["structures"], native_results))
    _write_atomic(paths["summary"], json.dumps(_to_json(summary), indent=2, allow_nan=False) + "\n")
    _write_atomic(paths["table"], format_table(summary))
    logger.info("reports written to %s", directory)
    return paths
