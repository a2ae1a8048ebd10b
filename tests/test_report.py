"""Summary schema, nanmean behaviour, table formatting and report files of diffatlas.evaluation.report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from diffatlas.evaluation.report import (
    CaseResult,
    format_comparison_table,
    format_table,
    summarize,
    write_reports,
)

NAN = math.nan
STRUCTURES = ["Myo", "LV", "LA"]


def scores(dice: float, nsd: float, hd95: float) -> dict[str, float]:
    return {"dice": dice, "nsd": nsd, "hd95": hd95}


@pytest.fixture
def results() -> list[CaseResult]:
    """Three cases. LV is absent in case b and missed in case c; LA is absent everywhere."""
    absent = scores(NAN, NAN, NAN)
    return [
        CaseResult("a", {"Myo": scores(0.9, 0.6, 2.0), "LV": scores(0.9, 0.7, 1.0), "LA": absent}, 10.0),
        CaseResult("b", {"Myo": scores(0.7, 0.4, 4.0), "LV": absent, "LA": absent}, 20.0),
        CaseResult("c", {"Myo": scores(0.8, 0.5, 3.0), "LV": scores(0.0, 0.0, NAN), "LA": absent}, 30.0),
    ]


def make_summary(results: list[CaseResult], method: str = "DiffAtlas") -> dict:
    return summarize(
        results, STRUCTURES, method=method, dataset="MM-WHS CT", split="test",
        tolerance_mm=2.0, sampler={"steps": np.int64(50), "plan": "ddpm", "seed": 0},
    )


def test_summary_schema(results: list[CaseResult]) -> None:
    summary = make_summary(results)
    assert set(summary) == {
        "method", "dataset", "split", "space", "num_cases", "failed_cases", "structures", "per_structure", "mean",
        "nsd_tolerance_mm", "sampler", "seconds_per_case",
    }
    assert summary["space"] == "prepared grid"
    assert summary["structures"] == STRUCTURES
    assert set(summary["per_structure"]) == set(STRUCTURES)
    for entry in summary["per_structure"].values():
        assert set(entry) == {"dice_mean", "dice_std", "nsd_mean", "nsd_std", "hd95_mean", "hd95_undefined"}
    assert set(summary["mean"]) == {"dice", "nsd", "hd95"}
    assert summary["num_cases"] == 3
    assert summary["nsd_tolerance_mm"] == 2.0
    assert summary["sampler"] == {"steps": 50, "plan": "ddpm", "seed": 0}
    assert summary["seconds_per_case"] == pytest.approx(20.0)
    json.dumps(summary, allow_nan=False)  # strict JSON: NaN already replaced by None


def test_summary_uses_nanmean_and_population_std(results: list[CaseResult]) -> None:
    summary = make_summary(results)
    myo, lv, la = (summary["per_structure"][name] for name in STRUCTURES)
    assert myo["dice_mean"] == pytest.approx(0.8)
    assert myo["dice_std"] == pytest.approx(math.sqrt(0.02 / 3))  # population std of 0.9, 0.7, 0.8
    assert myo["hd95_mean"] == pytest.approx(3.0)
    # LV: case b absent (skipped), case c missed (Dice 0 counts, HD95 undefined)
    assert lv["dice_mean"] == pytest.approx(0.45)
    assert lv["dice_std"] == pytest.approx(0.45)
    assert lv["hd95_mean"] == pytest.approx(1.0)
    assert lv["hd95_undefined"] == 1
    assert myo["hd95_undefined"] == 0
    # LA absent everywhere: null, and left out of the mean over structures
    assert la["dice_mean"] is None and la["nsd_std"] is None and la["hd95_mean"] is None
    assert summary["mean"]["dice"] == pytest.approx((0.8 + 0.45) / 2)
    assert summary["mean"]["nsd"] == pytest.approx((0.5 + 0.35) / 2)
    assert summary["mean"]["hd95"] == pytest.approx(2.0)


def test_format_table_numbers(results: list[CaseResult]) -> None:
    table = format_table(make_summary(results))
    lines = table.splitlines()
    assert "MM-WHS CT" in lines[0] and "test" in lines[0] and "3 cases" in lines[0] and "2 mm" in lines[0]
    assert "| DiffAtlas | Dice (%) | NSD (%) |" in lines
    assert "| Myo | 80.00 ± 8.16 | 50.00 ± 8.16 |" in lines
    assert "| LV | 45.00 ± 45.00 | 35.00 ± 35.00 |" in lines
    assert "| LA | NaN ± NaN | NaN ± NaN |" in lines
    assert lines[-1] == "| Average | 62.50 | 42.50 |"


def test_format_comparison_table(results: list[CaseResult]) -> None:
    table = format_comparison_table([make_summary(results, "nnU-Net"), make_summary(results)])
    lines = table.splitlines()
    assert lines[2] == (
        "| Method | Myo Dice | Myo NSD | LV Dice | LV NSD | LA Dice | LA NSD | Average Dice | Average NSD |"
    )
    assert lines[4] == "| nnU-Net | 80.00 | 50.00 | 45.00 | 35.00 | NaN | NaN | 62.50 | 42.50 |"
    assert lines[5].startswith("| DiffAtlas |")
    other = summarize(results[:2], STRUCTURES, method="x", dataset="MM-WHS CT", split="test",
                      tolerance_mm=2.0, sampler={})
    with pytest.raises(ValueError, match="num_cases"):
        format_comparison_table([make_summary(results), other])


def test_write_reports(results: list[CaseResult], tmp_path: Path) -> None:
    summary = make_summary(results)
    run_dir = tmp_path / "run"
    paths = write_reports(run_dir, results, summary)
    assert set(paths) == {"per_case", "summary", "table"}
    with paths["per_case"].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(results) * len(STRUCTURES)
    assert rows[0] == {"case": "a", "structure": "Myo", "space": "grid", "dice": "0.9", "nsd": "0.6", "hd95": "2.0", "seconds": "10.0",
                       "failed": ""}
    assert math.isnan(float(rows[-1]["dice"]))
    assert json.loads(paths["summary"].read_text(encoding="utf-8")) == summary
    assert paths["table"].read_text(encoding="utf-8") == format_table(summary)
    assert sorted(p.name for p in run_dir.iterdir()) == ["per_case.csv", "summary.json", "table.md"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"results": []}, "empty"),
        ({"structures": ["Myo", "RV"]}, "RV"),
        ({"tolerance_mm": 0.0}, "tolerance_mm"),
        ({"sampler": {"hook": object()}}, "JSON"),
    ],
)
def test_summarize_rejects_bad_input(results: list[CaseResult], kwargs: dict, message: str) -> None:
    arguments = {
        "results": results, "structures": STRUCTURES, "method": "m", "dataset": "d", "split": "s",
        "tolerance_mm": 1.0, "sampler": {},
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        summarize(**arguments)


def test_native_scores_are_reported_beside_grid_scores(results: list[CaseResult], tmp_path: Path) -> None:
    summary = make_summary(results)
    native_results = [CaseResult(r.case, {name: {"dice": 0.5, "nsd": 0.25, "hd95": 3.0} for name in STRUCTURES}, 1.0)
                      for r in results]
    summary["native"] = summarize(native_results, STRUCTURES, method="DiffAtlas", dataset="MM-WHS CT",
                                  split="test", tolerance_mm=2.0, sampler={}, space="native")
    paths = write_reports(tmp_path, results, summary, native_results)
    table = paths["table"].read_text(encoding="utf-8")
    assert "scored on the prepared grid" in table and "scored on the native grid" in table
    assert table.strip().endswith("| Average | 50.00 | 25.00 |")
    with paths["per_case"].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["space"] for row in rows].count("native") == len(results) * len(STRUCTURES)
    assert json.loads(paths["summary"].read_text(encoding="utf-8"))["native"]["mean"]["dice"] == pytest.approx(0.5)
