"""Everything the entry points do, as plain functions of a config mapping (Hydra's, or a dict in tests).

``train(cfg)`` fits the joint image-mask denoiser on a split's training cases and writes checkpoints;
``test(cfg)`` loads the EMA weights, segments the split's test cases with the configured sampler, and writes
predictions (NIfTI, the input's affine; with an ensemble also ``<case>_uncertainty.nii.gz``), ``per_case.csv``, ``summary.json`` and ``table.md``. Cases prepared
from real scans are also mapped back onto their scan's own grid (``predictions_native/``) and scored there
with the native spacing; ``summary.json`` then holds that summary under ``"native"``.
The network, diffusion and SDF settings used at test time are read from the checkpoint, never re-typed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk
import torch
from tqdm.auto import tqdm

from diffatlas.data.datasets import JointDataset, PreparedData
from diffatlas.data.geometry import to_array
from diffatlas.data.io import write_volume
from diffatlas.data.layout import ChannelLayout
from diffatlas.data.phantom import write_phantom_dataset
from diffatlas.data.prepare import map_to_native, native_info, native_label
from diffatlas.data.sdf import default_sdf_scale
from diffatlas.data.splits import check_split_against, load_split, save_split, split_from_recipe
from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.evaluation.metrics import evaluate_case
from diffatlas.evaluation.report import CaseResult, summarize, write_reports
from diffatlas.methods.diffatlas import DiffAtlasSegmenter
from diffatlas.nets.unet import UNet, count_parameters
from diffatlas.sampling.plans import TimestepPlan, make_plan
from diffatlas.training.trainer import LAST, Trainer, TrainSettings, diffusion_objective, load_checkpoint

log = logging.getLogger(__name__)

NATIVE_PREDICTIONS = "predictions_native"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; an explicit ``cuda`` without a GPU is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but no CUDA device is available; use device=cpu or auto")
    return device


def build_denoiser(model_cfg: Mapping[str, Any], layout: ChannelLayout, spatial_dims: int = 3) -> UNet:
    """The joint denoiser: ``1 + K`` channels in and out."""
    return UNet(spatial_dims=spatial_dims, in_channels=layout.num_channels, out_channels=layout.num_channels,
                time_conditioned=True, **dict(model_cfg))


def build_diffusion(diffusion_cfg: Mapping[str, Any], layout: ChannelLayout) -> GaussianDiffusion:
    """The forward process; ``image_weight`` and ``mask_weight`` become per-channel loss weights."""
    cfg = dict(diffusion_cfg)
    image_w, mask_w = float(cfg.pop("image_weight", 1.0)), float(cfg.pop("mask_weight", 1.0))
    weights = [0.0] * layout.num_channels
    weights[layout.image] = [image_w]
    weights[layout.masks] = [mask_w] * layout.num_structures
    return GaussianDiffusion(channel_weights=weights, **cfg)


def build_plan(sampler_cfg: Mapping[str, Any], num_timesteps: int) -> TimestepPlan:
    """The timestep plan of a sampler config; the segmenter's own keys (seed, ensemble, guidance, coarse
    masks: ``DiffAtlasSegmenter.SAMPLER_KEYS``) are left out."""
    cfg = {k: v for k, v in dict(sampler_cfg).items() if k not in DiffAtlasSegmenter.SAMPLER_KEYS}
    return make_plan(cfg.pop("plan"), num_timesteps, **cfg)


def load_data_and_split(dataset_cfg: Mapping[str, Any],
                        split_cfg: Mapping[str, Any]) -> tuple[PreparedData, dict[str, Any]]:
    """The prepared data at ``dataset_cfg["root"]`` and the split file ``split_cfg["file"]``, checked against it.

    A missing split file is written first when the split config says how to make it (``make``: the keyword
    arguments of ``splits.make_split``, or ``{all: true}`` for the zero-shot ``all`` split), so a new
    few-shot setting is one YAML file in ``configs/split/``.
    """
    data = PreparedData(dataset_cfg["root"])
    path = Path(split_cfg["file"])
    if not path.is_file() and split_cfg.get("make"):
        save_split(split_from_recipe(split_cfg["make"], data.cases, name=split_cfg["name"], dataset=data.name), path)
        log.info("split %s written to %s from the recipe in its config", split_cfg["name"], path)
    split = load_split(path)
    check_split_against(split, data)
    return data, split


def sdf_settings(dataset_cfg: Mapping[str, Any], data: PreparedData) -> tuple[float, float]:
    """``(clip, scale_vox)``; a missing scale follows the grid (``max(shape) / 2``, the paper's 32 at 64^3)."""
    scale = dataset_cfg.get("sdf_scale_vox")
    return float(dataset_cfg["sdf_clip"]), float(scale if scale is not None else default_sdf_scale(data.shape))


def prepare_phantoms(cfg: Mapping[str, Any]) -> dict[str, list[str]]:
    """Write synthetic phantoms (train, test and validation parts, each from its own case indices) and their
    split file."""
    p = cfg["phantom"]
    out = Path(cfg["out_dir"])
    common = dict(modality=p["modality"], shape=tuple(p["shape"]), fov_mm=float(p["fov_mm"]), seed=int(p["seed"]))
    parts: dict[str, list[str]] = {}
    first_index = 0
    for part, count in (("train", int(p["num_train"])), ("test", int(p["num_test"])),
                        ("val", int(p.get("num_val", 0)))):
        parts[part] = write_phantom_dataset(out, count, prefix=f"{p['modality']}_{part}", first_index=first_index,
                                            **common) if count > 0 else []
        first_index += count
    split = {"name": cfg.get("split_name", "full"), "dataset": out.name,
             "train": parts["train"], "val": parts["val"], "test": parts["test"]}
    if cfg.get("split_file"):
        save_split(split, cfg["split_file"])
    log.info("phantoms: %d training, %d test and %d validation cases in %s", len(parts["train"]),
             len(parts["test"]), len(parts["val"]), out)
    return split


def train(cfg: Mapping[str, Any]) -> Path:
    """Train the joint denoiser; returns the path of the last checkpoint."""
    device = resolve_device(cfg["device"])
    data, split = load_data_and_split(cfg["dataset"], cfg["split"])
    layout = ChannelLayout(data.num_structures)
    clip, scale = sdf_settings(cfg["dataset"], data)
    if not split["train"]:
        raise ValueError(f"split {cfg['split']['file']} has no training cases (a test-only split?)")
    dataset = JointDataset(data, list(split["train"]), sdf_clip=clip, sdf_scale_vox=scale)
    torch.manual_seed(int(cfg["seed"]))
    model = build_denoiser(cfg["model"], layout)
    diffusion = build_diffusion(cfg["diffusion"], layout).to(device)
    settings = TrainSettings(**dict(cfg["training"]), seed=int(cfg["seed"]))
    log.info("training on %d cases of %s (%s), %d structures, grid %s, %s parameters, device %s",
             len(dataset), data.name, data.modality, layout.num_structures, data.shape,
             f"{count_parameters(model):,}", device)
    stored = {
        "model": dict(cfg["model"]), "diffusion": dict(cfg["diffusion"]),
        "structures": list(data.structures), "sdf_clip": clip, "sdf_scale_vox": scale,
        "shape": list(data.shape), "dataset": data.name, "modality": data.modality,
        "split": split.get("name", ""), "run": dict(cfg),
    }
    validate = None
    if settings.val_every and split.get("val"):
        validate = _validator(cfg, data, list(split["val"]), diffusion, layout, clip, device)
    trainer = Trainer(model, diffusion_objective(diffusion), dataset, cfg["checkpoint_dir"], settings,
                      config=stored, validate=validate, device=device)
    trainer.fit(resume=bool(cfg.get("resume", True)))
    return Path(cfg["checkpoint_dir"]) / LAST


def _validator(cfg: Mapping[str, Any], data: PreparedData, cases: list[str], diffusion: GaussianDiffusion,
               layout: ChannelLayout, clip: float, device: torch.device):
    plan = build_plan(cfg["validation_sampler"], diffusion.num_timesteps)
    loaded = [data.load_case(c) for c in cases]
    images = torch.from_numpy(np.stack([c.image for c in loaded])[:, None]).float().to(device)

    def validate(ema: torch.nn.Module, step: int) -> dict[str, float]:
        seg = DiffAtlasSegmenter(ema, diffusion, layout, plan, sdf_clip=clip, seed=0)
        labels = seg.segment(images, cases).cpu().numpy()
        dices = [np.nanmean([m["dice"] for m in evaluate_case(lab, c.label, data.structures, c.spacing_mm,
                                                               1.0).values()]) for lab, c in zip(labels, loaded)]
        return {"dice": float(np.mean(dices))}

    return validate


def load_segmenter(checkpoint: str | Path, sampler_cfg: Mapping[str, Any], device: torch.device,
                   progress: bool = False) -> tuple[DiffAtlasSegmenter, dict[str, Any]]:
    """Build the sampler around the checkpoint's EMA weights; returns it and the checkpoint's stored config."""
    ckpt = load_checkpoint(checkpoint, device)
    stored = ckpt["config"]
    layout = ChannelLayout(len(stored["structures"]))
    model = build_denoiser(stored["model"], layout).to(device)
    model.load_state_dict(ckpt["ema"])
    diffusion = build_diffusion(stored["diffusion"], layout).to(device)
    plan = build_plan(sampler_cfg, diffusion.num_timesteps)
    options = {k: sampler_cfg[k] for k in DiffAtlasSegmenter.SAMPLER_KEYS if sampler_cfg.get(k) is not None}
    seg = DiffAtlasSegmenter(model, diffusion, layout, plan, sdf_clip=stored["sdf_clip"],
                             sdf_scale_vox=stored["sdf_scale_vox"], progress=progress, **options)
    log.info("loaded EMA weights from %s (step %d)", checkpoint, ckpt["step"])
    return seg, stored


def test(cfg: Mapping[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Segment and score the split's test cases; returns the summary written to ``run_dir``."""
    device = resolve_device(cfg["device"])
    run_dir = Path(run_dir)
    data, split = load_data_and_split(cfg["dataset"], cfg["split"])
    checkpoint = Path(cfg["checkpoint"])
    seg, stored = load_segmenter(checkpoint, cfg["sampler"], device)
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
    tolerance = float(cfg["nsd_tolerance_mm"])
    natives = {c: native_info(data.root, c) for c in cases}
    score_native = all(info is not None for info in natives.values())
    results: list[CaseResult] = []
    native_results: list[CaseResult] = []
    pred_dir = run_dir / "predictions"
    for start in tqdm(range(0, len(cases), batch_size), desc="test", disable=None):
        chunk = [data.load_case(c) for c in cases[start:start + batch_size]]
        images = torch.from_numpy(np.stack([c.image for c in chunk])[:, None]).float().to(device)
        t0 = time.perf_counter()
        fused, spread = seg.segment_with_uncertainty(images, [c.case for c in chunk])
        labels = fused.cpu().numpy().astype(np.uint8)
        seconds = (time.perf_counter() - t0) / len(chunk)
        for n, (case, label) in enumerate(zip(chunk, labels)):
            write_volume(pred_dir / f"{case.case}.nii.gz", label, case.affine)
            if spread is not None:
                write_volume(pred_dir / f"{case.case}_uncertainty.nii.gz",
                             spread[n].cpu().numpy().astype(np.float32), case.affine)
            metrics = evaluate_case(label, case.label, data.structures, case.spacing_mm, tolerance)
            results.append(CaseResult(case.case, metrics, seconds))
            if score_native:
                native_results.append(_score_native(label, data, case.case, natives[case.case], tolerance,
                                                    run_dir / NATIVE_PREDICTIONS, seconds))
    sampler_info = {"plan": seg.plan.name, "network_evaluations": seg.network_evaluations, "eta": seg.plan.eta,
                    "seed": seg.seed, "ensemble_size": seg.ensemble_size, "fusion": seg.fusion,
                    "uncertainty": seg.uncertainty if seg.ensemble_size > 1 else None,
                    "guidance_scale": seg.guidance_scale}
    split_name = split.get("name", Path(cfg["split"]["file"]).stem)
    summary = summarize(results, data.structures, method="DiffAtlas", dataset=data.name, split=split_name,
                        tolerance_mm=tolerance, sampler=sampler_info)
    if native_results:
        summary["native"] = summarize(native_results, data.structures, method="DiffAtlas", dataset=data.name,
                                      split=split_name, tolerance_mm=tolerance, sampler=sampler_info,
                                      space="native")
    write_reports(run_dir, results, summary, native_results)
    log.info("results written to %s", run_dir)
    return summary


def _score_native(label: np.ndarray, data: PreparedData, case: str, info: Mapping[str, Any], tolerance_mm: float,
                  out_dir: Path, seconds: float) -> CaseResult:
    """Map a prepared-grid prediction back onto the scan's own grid, write it there (the scan's geometry) and
    score it against the native reference label with the native spacing."""
    pred = map_to_native(label, dict(info), data.num_structures)
    ref = native_label(data.root, dict(info))
    out_dir.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(pred, str(out_dir / f"{case}.nii.gz"), True)
    metrics = evaluate_case(to_array(pred), to_array(ref), data.structures, pred.GetSpacing(), tolerance_mm)
    return CaseResult(case, metrics, seconds)
