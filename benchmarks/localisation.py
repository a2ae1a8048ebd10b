"""How far the label-free crop (``roi=auto``) lands from the label crop, per case and in summary, without sampling.

    python benchmarks/localisation.py CHECKPOINT --data outputs/data/acdc_ed \
        --split outputs/data/acdc_ed/splits/all.json [--exclude outputs/data/acdc_ed/splits/2shot.json] \
        [--json per_case.json]

The cases are the test list of ``--split`` less every case (train or test) of each ``--exclude`` split: with the
command above, the ACDC cases that a 2-shot model neither trained nor was tested on. Each case's scan is read from
its native record (so the data must be prepared from raw scans), oriented as the checkpoint was trained, and framed
as the checkpoint frames it: around the reference label (``roi=label``), around the registered atlas heart, and
around the heart network's outline where the checkpoint has one, each with the training margin alone (``roi=auto``
adds ``inference.roi_margin_mm`` to it, 5 mm by default; left out here so that the side compares with the label
crop's). Printed: a line per case, then one Markdown table
with the distance between each crop's centre and the label crop's (median, 90th percentile, maximum, cases beyond
20 mm) and the error of its side (``|log|`` of the side ratio, in %).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffatlas.data import geometry  # noqa: E402
from diffatlas.data.geometry import Grid  # noqa: E402
from diffatlas.data.prepare import native_info, native_label  # noqa: E402
from diffatlas.data.splits import load_split  # noqa: E402
from diffatlas.localise import locate  # noqa: E402
from diffatlas.segmenter import Segmenter, read_scan  # noqa: E402

FAR_MM = 20.0


def centre_mm(grid: Grid) -> np.ndarray:
    """The LPS position (mm) of the centre of ``grid``."""
    half = np.asarray(grid.spacing) * (np.asarray(grid.size) - 1) / 2.0
    return np.asarray(grid.origin) + np.asarray(grid.direction).reshape(3, 3) @ half


def side_mm(grid: Grid) -> float:
    return float(max(n * s for n, s in zip(grid.size, grid.spacing)))


def frame(segmenter: Segmenter, data: Path, case: str) -> dict[str, list[float]]:
    """Centre distance (mm) and side ratio of each label-free crop of ``case`` against its label crop."""
    info = native_info(data, case)
    if info is None:
        raise ValueError(f"{case}: no native record (prepare the data from raw scans)")
    oriented = sitk.DICOMOrient(read_scan(info["source_image"]), segmenter.orientation)
    reference = geometry.to_array(sitk.DICOMOrient(native_label(data, info), segmenter.orientation)) > 0
    label = segmenter.crop(oriented, reference)
    registered: list[np.ndarray] = []

    def outline(scan: sitk.Image, box: np.ndarray) -> np.ndarray | None:
        registered.append(box)
        return segmenter.heart_net.outline(scan, box)

    found = locate(oriented, segmenter.atlases, case_id=case,
                   outline=outline if segmenter.heart_net is not None else None)
    if found is None:
        raise ValueError(f"{case}: no atlas found the heart")
    crops = {"registration": found if not registered else registered[0]}
    if registered:
        crops["registration + heart network"] = found
    result = {}
    for name, mask in crops.items():
        grid = segmenter.crop(oriented, mask)
        result[name] = [float(np.linalg.norm(centre_mm(grid) - centre_mm(label))), side_mm(grid) / side_mm(label)]
    return result


def summary(per_case: dict[str, dict[str, list[float]]]) -> str:
    names = list(next(iter(per_case.values())))
    rows = ["| crop | centre median / 90 % / max (mm) | cases > 20 mm | side error median / 90 % / max (%) |",
            "|---|---:|---:|---:|"]
    for name in names:
        centre = np.array([case[name][0] for case in per_case.values()])
        side = 100 * np.abs(np.log([case[name][1] for case in per_case.values()]))
        rows.append(f"| {name} | {np.median(centre):.1f} / {np.percentile(centre, 90):.1f} / {centre.max():.1f} | "
                    f"{int(np.sum(centre > FAR_MM))} | {np.median(side):.1f} / {np.percentile(side, 90):.1f} / "
                    f"{side.max():.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="the prepared dataset (with native records)")
    parser.add_argument("--split", type=Path, required=True, help="a split file; its test cases are framed")
    parser.add_argument("--exclude", type=Path, action="append", default=[],
                        help="a split file whose train and test cases are left out (repeatable)")
    parser.add_argument("--json", type=Path, help="write the per-case figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        segmenter = Segmenter.from_checkpoint(args.checkpoint, device="cpu")
        if not segmenter.atlases:
            raise ValueError(f"{args.checkpoint} has no localiser atlases; train on data prepared from raw scans")
        left_out = {case for path in args.exclude for part in ("train", "test") for case in load_split(path)[part]}
        cases = [case for case in load_split(args.split)["test"] if case not in left_out]
        if not cases:
            raise ValueError("no cases left to frame")
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    per_case = {}
    for case in cases:
        try:
            per_case[case] = frame(segmenter, args.data, case)
        except (OSError, ValueError, RuntimeError) as err:
            print(f"{case}: skipped ({err})", file=sys.stderr)
            continue
        print(case, "  ".join(f"{name}: {d:.1f} mm, x{r:.2f}" for name, (d, r) in per_case[case].items()),
              flush=True)
    if not per_case:
        print("error: no case could be framed", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(per_case, indent=1))
    print(f"\n{len(per_case)} cases, {args.checkpoint}\n")
    print(summary(per_case))
    return 0


if __name__ == "__main__":
    sys.exit(main())
