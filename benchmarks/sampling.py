"""Dice against cost for every sampler of one trained model on one fixed test set.

    python benchmarks/sampling.py --checkpoint Model/phantom_ct/checkpoint_last.pt \
        --data outputs/data/phantom_ct --split data/splits/phantom_ct/full.json
    python benchmarks/sampling.py --quick      # small CT phantoms; trains a small model first

Rows: DDPM-300; DDIM with 10, 25, 50 and 100 steps (eta 0); RePaint with two jump settings; refinement of the
DDIM-10 masks by DDPM from three t0 (the coarse mask is the DDIM-10 result, what a user has at test time:
a degraded ground truth would leak the reference into the prediction, and its score would depend on how it was
degraded); ensembles of 1, 3 and 5 DDIM-10 members (mean-SDF fusion). Refinement rows count the coarse
sampler's network evaluations and seconds too. With ``--zero-shot-data`` (made by ``--quick``: MR phantoms),
DDIM-10 is also run on the other modality with and without reconstruction guidance.

Dice and NSD (at ``--tolerance-mm``, real spacing) are means over structures (NaN-skipping) and cases, in %.
The table is printed and ``sampling.json`` (a list of ``{"plan", "network_evaluations", "dice", "nsd",
"seconds_per_case"}``) is written to ``--out``.

Threads: ``--threads 1`` by default, which keeps timings stable when another job shares the cores (two threads
competing with it for two cores oversubscribe them); on an idle machine pass ``--threads 2``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffatlas.data.datasets import CaseData, PreparedData  # noqa: E402
from diffatlas.evaluation.metrics import evaluate_case  # noqa: E402
from diffatlas.methods.diffatlas import DiffAtlasSegmenter  # noqa: E402
from diffatlas.builders import load_segmenter  # noqa: E402
from diffatlas.fitting import train  # noqa: E402
from diffatlas.inputs import load_data_and_split, prepare_phantoms  # noqa: E402
from diffatlas.sampling.plans import TimestepPlan, make_plan  # noqa: E402

log = logging.getLogger("benchmarks.sampling")

QUICK = {
    "shape": [24, 24, 24], "fov_mm": 100.0, "num_train": 24, "num_test": 6,
    "sdf_scale_vox": 30.0,  # the demo's 8-voxel band at 32^3 is 25 mm; 30 voxels x 0.2 = 6 voxels = 25 mm here
    "steps": 1600, "batch_size": 4,
}
REFINE_T0 = (25, 50, 100)
ENSEMBLES = (1, 3, 5)
GUIDANCE_SCALES = (0.002, 0.01)


@dataclass
class Row:
    plan: str
    network_evaluations: int
    dice: float
    nsd: float
    seconds_per_case: float
    labels: np.ndarray | None = field(repr=False, default=None)

    def record(self) -> dict[str, Any]:
        return {"plan": self.plan, "network_evaluations": self.network_evaluations, "dice": round(self.dice, 2),
                "nsd": round(self.nsd, 2), "seconds_per_case": round(self.seconds_per_case, 3)}


class Bench:
    """Runs segmenters built around one loaded model over one test set, in batches."""

    def __init__(self, base: DiffAtlasSegmenter, cases: list[CaseData], structures: tuple[str, ...],
                 tolerance_mm: float, batch: int):
        self.base = base
        self.cases = cases
        self.structures = structures
        self.tolerance_mm = tolerance_mm
        self.batch = batch

    def segmenter(self, plan: TimestepPlan, **options: Any) -> DiffAtlasSegmenter:
        b = self.base
        return DiffAtlasSegmenter(b.denoiser, b.diffusion, b.layout, plan, sdf_clip=b.sdf_clip,
                                  sdf_scale_vox=b.sdf_scale_vox, seed=b.seed, **options)

    def run(self, name: str, seg: DiffAtlasSegmenter, coarse: Row | None = None) -> Row:
        labels = []
        t0 = time.perf_counter()
        for start in range(0, len(self.cases), self.batch):
            chunk = self.cases[start:start + self.batch]
            images = torch.from_numpy(np.stack([c.image for c in chunk])[:, None]).float()
            masks = None if coarse is None else coarse.labels[start:start + self.batch]
            labels.append(seg.segment(images, [c.case for c in chunk], coarse=masks).numpy().astype(np.uint8))
        seconds = (time.perf_counter() - t0) / len(self.cases)
        labels = np.concatenate(labels)
        dice, nsd = [], []
        for case, label in zip(self.cases, labels):
            metrics = evaluate_case(label, case.label, self.structures, case.spacing_mm, self.tolerance_mm)
            dice.append(np.nanmean([m["dice"] for m in metrics.values()]))
            nsd.append(np.nanmean([m["nsd"] for m in metrics.values()]))
        evaluations = seg.network_evaluations
        if coarse is not None:
            evaluations += coarse.network_evaluations
            seconds += coarse.seconds_per_case
        row = Row(name, evaluations, 100 * float(np.mean(dice)), 100 * float(np.mean(nsd)), seconds, labels)
        log.info("%s: %d evaluations, Dice %.2f, NSD %.2f, %.2f s per case", name, evaluations, row.dice, row.nsd,
                 seconds)
        return row


def _load_cases(data_root: str | Path, split_file: str | Path) -> tuple[PreparedData, list[CaseData]]:
    data, split = load_data_and_split({"root": str(data_root)}, {"name": Path(split_file).stem,
                                                                 "file": str(split_file)})
    if not split["test"]:
        raise ValueError(f"split {split_file} has no test cases")
    return data, [data.load_case(c) for c in split["test"]]


def _config(group: str, name: str) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / group / f"{name}.yaml"), resolve=True)


def _prepare_quick(out: Path, checkpoint: str | None) -> tuple[Path, Path, Path, Path, str]:
    """Phantoms (CT train/test, MR test-only) under ``out`` and, unless given, a small model trained on them."""
    common = {"shape": QUICK["shape"], "fov_mm": QUICK["fov_mm"], "num_val": 0}
    ct, ct_split = out / "data" / "phantom_ct", out / "data" / "phantom_ct_split.json"
    mr, mr_split = out / "data" / "phantom_mr", out / "data" / "phantom_mr_split.json"
    if not ct_split.is_file():
        prepare_phantoms({"out_dir": str(ct), "split_file": str(ct_split), "split_name": "full", "phantom": {
            **common, "modality": "ct", "num_train": QUICK["num_train"], "num_test": QUICK["num_test"], "seed": 0}})
    if not mr_split.is_file():
        prepare_phantoms({"out_dir": str(mr), "split_file": str(mr_split), "split_name": "zeroshot", "phantom": {
            **common, "modality": "mr", "num_train": 0, "num_test": QUICK["num_test"], "seed": 1}})
    if checkpoint is None:
        training = {**_config("training", "cpu_demo"), "steps": QUICK["steps"], "batch_size": QUICK["batch_size"],
                    "val_every": 0, "checkpoint_every": QUICK["steps"], "log_every": 100}
        cfg = {"device": "cpu", "seed": 0, "resume": True, "checkpoint_dir": str(out / "model"),
               "dataset": {"name": "phantom_ct", "root": str(ct), "sdf_clip": 0.2,
                           "sdf_scale_vox": QUICK["sdf_scale_vox"]},
               "split": {"name": "full", "file": str(ct_split)}, "model": _config("model", "unet_small"),
               "diffusion": _config("diffusion", "default"), "training": training,
               "validation_sampler": _config("sampler", "ddim_fast")}
        t0 = time.perf_counter()
        checkpoint = str(train(cfg))
        log.info("trained %d steps in %.0f s", QUICK["steps"], time.perf_counter() - t0)
    return ct, ct_split, mr, mr_split, checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint (EMA weights are used); --quick trains one when absent")
    parser.add_argument("--data", help="prepared dataset root")
    parser.add_argument("--split", help="split file; its test cases are segmented")
    parser.add_argument("--zero-shot-data", help="another prepared dataset (e.g. MR) for the guidance rows")
    parser.add_argument("--zero-shot-split", help="its split file")
    parser.add_argument("--quick", action="store_true", help="small phantom sets (and a small model) under --out")
    parser.add_argument("--out", help="output folder (default outputs/benchmarks/sampling[_quick])")
    parser.add_argument("--batch", type=int, default=6, help="cases sampled together")
    parser.add_argument("--tolerance-mm", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out or ROOT / "outputs" / "benchmarks" / ("sampling_quick" if args.quick else "sampling"))
    out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    if args.quick:
        data_root, split_file, args.zero_shot_data, args.zero_shot_split, checkpoint = _prepare_quick(
            out, args.checkpoint)
    else:
        if not (args.checkpoint and args.data and args.split):
            parser.error("give --checkpoint, --data and --split, or --quick")
        data_root, split_file, checkpoint = args.data, args.split, args.checkpoint

    data, cases = _load_cases(data_root, split_file)
    base, stored = load_segmenter(checkpoint, {"plan": "ddim", "num_steps": 10}, torch.device("cpu"),
                                  inference={"seed": args.seed})
    if list(stored["shape"]) != list(data.shape) or list(stored["structures"]) != list(data.structures):
        raise ValueError(f"the checkpoint ({stored['shape']}, {stored['structures']}) does not match {data.root}")
    T = base.diffusion.num_timesteps
    bench = Bench(base, cases, data.structures, args.tolerance_mm, args.batch)
    log.info("%d test cases of %s, grid %s, T = %d", len(cases), data.name, data.shape, T)

    jobs = [(f"ddpm{T}", make_plan("ddpm", T), {}, None)]
    jobs += [(f"ddim{n}", make_plan("ddim", T, num_steps=n, eta=0.0), {}, None) for n in (10, 25, 50, 100)]
    jobs += [(f"repaint_j{j}_n{r}", make_plan("repaint", T, jump_length=j, jump_n_sample=r), {}, None)
             for j, r in ((10, 2), (25, 2))]
    jobs += [(f"ddim10 + ddpm from t0={t0}", make_plan("ddpm", T, start_t=t0), {}, "ddim10") for t0 in REFINE_T0]
    jobs += [(f"ddim10 x{n} (mean_sdf)", make_plan("ddim", T, num_steps=10), {"ensemble_size": n}, None)
             for n in ENSEMBLES]
    rows: dict[str, Row] = {}
    for name, plan, options, coarse in tqdm(jobs, desc="samplers"):
        rows[name] = bench.run(name, bench.segmenter(plan, **options), rows[coarse] if coarse else None)

    if args.zero_shot_data:
        zdata, zcases = _load_cases(args.zero_shot_data, args.zero_shot_split)
        zbench = Bench(base, zcases, zdata.structures, args.tolerance_mm, args.batch)
        ddim10 = make_plan("ddim", T, num_steps=10)
        tag = f"{stored.get('modality', '?')}->{zdata.modality}"
        for scale in tqdm((0.0, *GUIDANCE_SCALES), desc="guidance"):
            name = f"ddim10 {tag}" + (f" + guidance {scale:g}" if scale else "")
            rows[name] = zbench.run(name, zbench.segmenter(ddim10, guidance_scale=scale))

    records = [r.record() for r in rows.values()]
    (out / "sampling.json").write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    print(f"{len(cases)} test cases of {data.name} at {'x'.join(map(str, data.shape))}, checkpoint {checkpoint}, "
          f"{args.threads} thread(s)")
    print("| plan | network evaluations | Dice (%) | NSD (%) | seconds per case |")
    print("|---|---:|---:|---:|---:|")
    for r in records:
        print(f"| {r['plan']} | {r['network_evaluations']} | {r['dice']:.2f} | {r['nsd']:.2f} | "
              f"{r['seconds_per_case']:.2f} |")
    print(f"wrote {out / 'sampling.json'}; wall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
