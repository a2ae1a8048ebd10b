"""The effect of postprocessing on a test run's predictions: Dice and NSD per structure with each step.

    python benchmarks/postprocess.py outputs/test/<run>/<date> --data outputs/data/acdc_ed

Reads the run's prepared-grid predictions (``predictions/<case>.nii.gz``), applies every variant (none, largest
connected component, fill holes, both; each to every structure), scores them against the prepared reference
labels, and prints one Markdown table (mean Dice and NSD in %, and the change against no postprocessing).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffatlas.data.datasets import PreparedData  # noqa: E402
from diffatlas.data.io import read_volume  # noqa: E402
from diffatlas.evaluation.metrics import evaluate_case  # noqa: E402
from diffatlas.postprocess import Postprocessing  # noqa: E402

VARIANTS = {"none": {}, "largest component": {"largest_component": "all"}, "fill holes": {"fill_holes": "all"},
            "both": {"largest_component": "all", "fill_holes": "all"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a test run folder holding predictions/ and per_case.csv")
    parser.add_argument("--data", type=Path, required=True, help="the prepared dataset the run was scored on")
    parser.add_argument("--tolerance-mm", type=float, default=2.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = PreparedData(args.data)
    with open(args.run_dir / "per_case.csv", encoding="utf-8") as handle:
        cases = sorted({row["case"] for row in csv.DictReader(handle)})
    names = list(data.structures)
    scores = {v: {n: {"dice": [], "nsd": []} for n in names} for v in VARIANTS}
    for case in cases:
        pred = read_volume(args.run_dir / "predictions" / f"{case}.nii.gz")[0].astype(np.uint8)
        ref = data.load_case(case)
        for variant, cfg in VARIANTS.items():
            metrics = evaluate_case(Postprocessing.from_config(cfg, names)(pred), ref.label, names, ref.spacing_mm,
                                    args.tolerance_mm)
            for name in names:
                for key in ("dice", "nsd"):
                    scores[variant][name][key].append(metrics[name][key])
    header = "| postprocessing | " + " | ".join(f"{n} Dice | {n} NSD" for n in names) + " | mean Dice | mean NSD |"
    lines = [f"{data.name}, {len(cases)} test cases of {args.run_dir}, prepared grid, NSD {args.tolerance_mm:g} mm",
             "", header, "|" + "---|" * (2 * len(names) + 3)]
    base = {n: np.nanmean(scores["none"][n]["dice"]) for n in names}
    for variant in VARIANTS:
        cells, dices, nsds = [], [], []
        for name in names:
            dice = 100 * np.nanmean(scores[variant][name]["dice"])
            nsd = 100 * np.nanmean(scores[variant][name]["nsd"])
            change = dice - 100 * base[name]
            cells.append(f"{dice:.2f} ({change:+.2f}) | {nsd:.2f}")
            dices.append(dice)
            nsds.append(nsd)
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {np.mean(dices):.2f} | {np.mean(nsds):.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
