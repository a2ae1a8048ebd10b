"""Ablation of the DiffAtlas recipe on a prepared dataset: train variants, sampler variants, one table.

Each training variant is a list of Hydra overrides of ``configs/train.yaml`` (augmentation, decoupled noise
levels, learning rate, steps, ...), trained once per seed into ``Model/ablation/<dataset>_<split>/<variant>_s<seed>``
(resumed when present). Each sampler variant is a set of settings applied to every trained model: timestep plan
keys (``configs/sampler/``) and per-case keys (``configs/inference/``: ensemble, fusion, guidance), told apart by
``DiffAtlasSegmenter.CASE_KEYS``.
Every (variant, seed, sampler) row is scored on the split's test cases (mean Dice and NSD over structures and
cases, prepared grid), printed as a Markdown table, and appended to ``<out>/results.jsonl``.

Example (ACDC 2-shot at 32^3, two seeds, the default sampler and clean-image conditioning):

    python benchmarks/ablation.py --data outputs/data/acdc_ed --split 2shot --seeds 0 1 \\
        --train base aug aug_dec --sample ddim50 level0
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from diffatlas.builders import load_segmenter
from diffatlas.fitting import fit_denoiser
from diffatlas.data.datasets import PreparedData
from diffatlas.data.splits import load_split
from diffatlas.evaluation.metrics import evaluate_case
from diffatlas.methods.atlas import NearestAtlas
from diffatlas.methods.diffatlas import DiffAtlasSegmenter

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TRAIN_VARIANTS: dict[str, list[str]] = {
    "base": [],
    "aug": ["augment=default"],
    "dec": ["model.image_time=true"],
    "aug_dec": ["augment=default", "model.image_time=true"],
    "aug_dec_eq90": ["augment=default", "model.image_time=true", "diffusion.equal_levels_prob=0.9"],
    "aug_dec_long": ["augment=default", "model.image_time=true", "training.steps=3000"],
    "aug_dec_lr3e-4": ["augment=default", "model.image_time=true", "training.lr=3e-4"],
}

SAMPLE_VARIANTS: dict[str, dict] = {
    "ddim50": {},
    "ddim10": {"num_steps": 10},
    "level0.5": {"image_level": 0.5},
    "level0": {"image_level": 0.0},
    "mean5": {"ensemble_size": 5, "fusion": "mean_sdf"},
    "select5": {"ensemble_size": 5, "fusion": "select"},
    "ddim20_mean3": {"num_steps": 20, "ensemble_size": 3, "fusion": "mean_sdf"},
    "ddim20_select3": {"num_steps": 20, "ensemble_size": 3, "fusion": "select"},
    "level0_ddim20_mean3": {"image_level": 0.0, "num_steps": 20, "ensemble_size": 3, "fusion": "mean_sdf"},
    "level0_ddim20_select3": {"image_level": 0.0, "num_steps": 20, "ensemble_size": 3, "fusion": "select"},
    "level0_mean5": {"image_level": 0.0, "ensemble_size": 5, "fusion": "mean_sdf"},
    "guidance0.01": {"guidance_scale": 0.01},
    "repaint": {"plan": "repaint", "jump_length": 10, "jump_n_sample": 2},
    "refine_nearest100": {"start_t": 100, "coarse": "nearest"},
    "refine_nearest200": {"start_t": 200, "coarse": "nearest"},
}

log = logging.getLogger("ablation")


def train_config(args: argparse.Namespace, variant: str, seed: int):
    overrides = [
        f"dataset={args.dataset}", f"dataset.root={Path(args.data).resolve()}",
        f"dataset.splits_dir={Path(args.data).resolve() / 'splits'}", f"split={args.split}",
        f"training={args.training}", f"seed={seed}", "training.val_every=0",
        f"checkpoint_dir={Path(args.models) / f'{args.dataset}_{args.split}' / f'{variant}_s{seed}'}",
        *TRAIN_VARIANTS[variant], *args.override,
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    from omegaconf import OmegaConf
    return OmegaConf.to_container(cfg, resolve=True)


def sampler_config(name: str) -> tuple[dict, dict, str | None]:
    """A sampler variant as (timestep plan config, per-case settings, coarse mask source or None)."""
    spec = dict(SAMPLE_VARIANTS[name])
    coarse = spec.pop("coarse", None)
    inference = {"seed": 0} | {k: spec.pop(k) for k in DiffAtlasSegmenter.CASE_KEYS if k in spec}
    base = {"plan": "ddim", "num_steps": 50, "eta": 0.0, "start_t": None}
    if spec.get("plan") == "repaint":
        base = {"plan": "repaint", "start_t": None}
    if coarse:
        base.update(plan="ddpm")
    base.update(spec)
    return base, inference, coarse


def score(labels: np.ndarray, cases, structures) -> tuple[float, float]:
    dices, nsds = [], []
    for label, case in zip(labels, cases):
        metrics = evaluate_case(label, case.label, structures, case.spacing_mm, 2.0)
        dices.append(np.nanmean([m["dice"] for m in metrics.values()]))
        nsds.append(np.nanmean([m["nsd"] for m in metrics.values()]))
    return 100 * float(np.mean(dices)), 100 * float(np.mean(nsds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared dataset folder (with splits/ inside)")
    parser.add_argument("--dataset", default="acdc_ed", help="dataset config name")
    parser.add_argument("--split", default="2shot")
    parser.add_argument("--training", default="cpu_acdc")
    parser.add_argument("--train", nargs="+", default=["base"], choices=sorted(TRAIN_VARIANTS))
    parser.add_argument("--sample", nargs="+", default=["ddim50"], choices=sorted(SAMPLE_VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every variant")
    parser.add_argument("--models", default="Model/ablation")
    parser.add_argument("--out", default="outputs/ablation")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = PreparedData(args.data)
    split = load_split(Path(args.data) / "splits" / f"{args.split}.json")
    cases = [data.load_case(c) for c in split["test"]]
    images = torch.from_numpy(np.stack([c.image for c in cases])[:, None]).float()
    ids = [c.case for c in cases]
    nearest = NearestAtlas()
    nearest.fit(data, split["train"])
    coarse_nearest = np.stack([nearest.segment(c) for c in cases])
    rows = []
    for variant in args.train:
        for seed in args.seeds:
            cfg = train_config(args, variant, seed)
            start = time.perf_counter()
            ckpt = fit_denoiser(cfg, data, list(split["train"]), [], args.split)
            train_s = time.perf_counter() - start
            for name in args.sample:
                sampler, inference, coarse = sampler_config(name)
                if sampler.get("image_level", 1.0) < 1 and not cfg["model"].get("image_time"):
                    continue
                seg, _ = load_segmenter(ckpt, sampler, torch.device("cpu"), inference=inference)
                start = time.perf_counter()
                labels = []
                for i in range(0, len(cases), 5):
                    extra = {"coarse": coarse_nearest[i:i + 5]} if coarse else {}
                    labels.append(seg.segment(images[i:i + 5], ids[i:i + 5], **extra).numpy())
                dice, nsd = score(np.concatenate(labels), cases, data.structures)
                row = {"dataset": data.name, "split": args.split, "variant": variant, "seed": seed, "sampler": name,
                       "dice": dice, "nsd": nsd, "train_s": train_s,
                       "sample_s_per_case": (time.perf_counter() - start) / len(cases),
                       "overrides": TRAIN_VARIANTS[variant] + args.override, "sampler_cfg": sampler,
                       "inference_cfg": inference}
                rows.append(row)
                with open(out / "results.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                log.info("%s seed %d %s: Dice %.2f NSD %.2f", variant, seed, name, dice, nsd)
    print("| variant | seed | sampler | Dice (%) | NSD (%) | train (s) | sampling (s/case) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['seed']} | {r['sampler']} | {r['dice']:.2f} | {r['nsd']:.2f} | "
              f"{r['train_s']:.0f} | {r['sample_s_per_case']:.2f} |")


if __name__ == "__main__":
    main()
