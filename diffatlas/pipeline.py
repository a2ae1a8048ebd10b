"""Everything the entry points do, as plain functions of a config mapping (Hydra's, or a dict in tests).

``train(cfg)`` fits the joint image-mask denoiser on a split's training cases and writes checkpoints;
``test(cfg)`` loads the EMA weights, segments the split's test cases with the configured sampler, and writes
predictions (NIfTI, the input's affine; with an ensemble also ``<case>_uncertainty.nii.gz``), ``per_case.csv``, ``summary.json`` and ``table.md``. Cases prepared
from real scans are also mapped back onto their scan's own grid (``predictions_native/``) and scored there
with the native spacing; ``summary.json`` then holds that summary under ``"native"``.
The network, diffusion and SDF settings used at test time are read from the checkpoint, never re-typed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk
import torch
from hydra.utils import instantiate
from tqdm.auto import tqdm

from diffatlas.data.datasets import CaseData, JointDataset, PreparedData
from diffatlas.data.geometry import to_array
from diffatlas.data.io import write_volume
from diffatlas.data.layout import ChannelLayout
from diffatlas.data.phantom import write_phantom_dataset
from diffatlas.data.prepare import map_to_native, native_info, native_label
from diffatlas.data.sdf import default_sdf_scale
from diffatlas.data.splits import check_split_against, load_split, save_split, split_from_recipe
from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.evaluation.metrics import evaluate_case
from diffatlas.evaluation.report import CaseResult, format_comparison_table, summarize, write_reports
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
    """Train the joint denoiser on the split's training cases; returns the path of the last checkpoint."""
    data, split = load_data_and_split(cfg["dataset"], cfg["split"])
    if not split["train"]:
        raise ValueError(f"split {cfg['split']['file']} has no training cases (a test-only split?)")
    return fit_denoiser(cfg, data, list(split["train"]), list(split.get("val", [])), split.get("name", ""))


def fit_denoiser(cfg: Mapping[str, Any], data: PreparedData, train_cases: list[str], val_cases: list[str],
                 split_name: str) -> Path:
    """Train the joint denoiser on ``train_cases`` of ``data`` (validation Dice on ``val_cases``) with the
    ``model``, ``diffusion`` and ``training`` settings of ``cfg``; returns the path of the last checkpoint."""
    device = resolve_device(cfg["device"])
    layout = ChannelLayout(data.num_structures)
    clip, scale = sdf_settings(cfg["dataset"], data)
    dataset = JointDataset(data, train_cases, sdf_clip=clip, sdf_scale_vox=scale)
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
        "split": split_name, "run": dict(cfg),
    }
    validate = None
    if settings.val_every and val_cases:
        validate = _validator(cfg, data, val_cases, diffusion, layout, clip, device)
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
    scores = ScoreSheet(data, cases, float(cfg["nsd_tolerance_mm"]), run_dir)
    for start in tqdm(range(0, len(cases), batch_size), desc="test", disable=None):
        chunk = [data.load_case(c) for c in cases[start:start + batch_size]]
        images = torch.from_numpy(np.stack([c.image for c in chunk])[:, None]).float().to(device)
        t0 = time.perf_counter()
        fused, spread = seg.segment_with_uncertainty(images, [c.case for c in chunk])
        labels = fused.cpu().numpy().astype(np.uint8)
        seconds = (time.perf_counter() - t0) / len(chunk)
        for n, (case, label) in enumerate(zip(chunk, labels)):
            scores.add(case, label, seconds)
            if spread is not None:
                write_volume(scores.pred_dir / f"{case.case}_uncertainty.nii.gz",
                             spread[n].cpu().numpy().astype(np.float32), case.affine)
    sampler_info = {"plan": seg.plan.name, "network_evaluations": seg.network_evaluations, "eta": seg.plan.eta,
                    "seed": seg.seed, "ensemble_size": seg.ensemble_size, "fusion": seg.fusion,
                    "uncertainty": seg.uncertainty if seg.ensemble_size > 1 else None,
                    "guidance_scale": seg.guidance_scale}
    summary = scores.finish("DiffAtlas", split.get("name", Path(cfg["split"]["file"]).stem), sampler_info)
    log.info("results written to %s", run_dir)
    return summary


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

    def add(self, case: CaseData, label: np.ndarray, seconds: float) -> None:
        """Write and score the prediction ``label`` ``(X, Y, Z)`` of ``case``."""
        write_volume(self.pred_dir / f"{case.case}.nii.gz", label, case.affine)
        metrics = evaluate_case(label, case.label, self.data.structures, case.spacing_mm, self.tolerance_mm)
        self.results.append(CaseResult(case.case, metrics, seconds))
        if self.score_native:
            self.native_results.append(_score_native(label, self.data, case.case, self.natives[case.case],
                                                     self.tolerance_mm, self.run_dir / NATIVE_PREDICTIONS, seconds))

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
                  out_dir: Path, seconds: float) -> CaseResult:
    """Map a prepared-grid prediction back onto the scan's own grid, write it there (the scan's geometry) and
    score it against the native reference label with the native spacing."""
    pred = map_to_native(label, dict(info), data.num_structures)
    ref = native_label(data.root, dict(info))
    out_dir.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(pred, str(out_dir / f"{case}.nii.gz"), True)
    metrics = evaluate_case(to_array(pred), to_array(ref), data.structures, pred.GetSpacing(), tolerance_mm)
    return CaseResult(case, metrics, seconds)


PAPER_ROWS = {"icf": "(a) ICF", "rba": "(b) RBA", "icmd": "(c) ICMD", "diffatlas": "(d) DiffAtlas"}
"""Row labels of the paper's comparison tables, by method key."""


class DiffAtlasMethod:
    """DiffAtlas behind the baselines' ``fit`` / ``segment`` interface (``diffatlas.methods.base``): ``fit``
    trains the joint denoiser with ``cfg``'s model, diffusion and training settings into
    ``cfg["checkpoint_dir"]``, with the SDF settings of ``dataset_cfg`` (the training dataset's config);
    ``segment`` samples with ``cfg["sampler"]`` and the EMA weights."""

    name = "DiffAtlas"

    def __init__(self, cfg: Mapping[str, Any], dataset_cfg: Mapping[str, Any] | None = None):
        self.cfg = {**cfg, "dataset": dataset_cfg or cfg["dataset"]}
        self.device = resolve_device(cfg["device"])
        self.segmenter: DiffAtlasSegmenter | None = None

    def fit(self, data: PreparedData, train_cases: list[str]) -> None:
        checkpoint = fit_denoiser(self.cfg, data, list(train_cases), [], self.cfg["split"]["name"])
        self.segmenter, _ = load_segmenter(checkpoint, self.cfg["sampler"], self.device)

    def segment(self, case: CaseData) -> np.ndarray:
        if self.segmenter is None:
            raise RuntimeError("DiffAtlasMethod.segment called before fit")
        image = torch.from_numpy(case.image[None, None]).float().to(self.device)
        return self.segmenter.segment(image, [case.case])[0].cpu().numpy().astype(np.uint8)


def build_method(key: str, cfg: Mapping[str, Any]) -> Any:
    """The method ``key`` of a compare config: ``diffatlas``, or a baseline configured under ``baselines``."""
    if key == "diffatlas":
        return DiffAtlasMethod(cfg, cfg.get("train_dataset"))
    baselines = dict(cfg.get("baselines") or {})
    if key not in baselines:
        raise ValueError(f"unknown method {key!r}; configured: {['diffatlas', *baselines]}")
    return instantiate(baselines[key])


def compare(cfg: Mapping[str, Any], run_dir: str | Path) -> list[dict[str, Any]]:
    """Fit every method of ``cfg["methods"]`` on the training cases, segment and score the test cases.

    The test cases are those of ``split`` in ``dataset``. The training cases are those of the same split, or,
    for a zero-shot comparison, those of the split file ``train_split_file`` in ``train_dataset`` (another
    dataset with the same structures, e.g. CT training cases for MR test cases). Each method's predictions and
    reports go to ``<run_dir>/<method>/``; the combined table (the paper's layout, rows (a)-(d)) to
    ``<run_dir>/table.md`` and the summaries to ``<run_dir>/summary.json``. Returns the summaries, in
    ``cfg["methods"]`` order.
    """
    run_dir = Path(run_dir)
    data, split = load_data_and_split(cfg["dataset"], cfg["split"])
    train_data, train_split = data, split
    if cfg.get("train_dataset"):
        if not cfg.get("train_split_file"):
            raise ValueError("train_dataset is set: give its training split too, train_split_file=<split file>")
        train_data, train_split = load_data_and_split(
            cfg["train_dataset"], {"name": "train", "file": cfg["train_split_file"]})
        if train_data.structures != data.structures:
            raise ValueError(f"train_dataset {train_data.name} has structures {list(train_data.structures)} but "
                             f"{data.name} has {list(data.structures)}")
    train_cases, test_cases = list(train_split["train"]), list(split["test"])
    if not train_cases or not test_cases:
        raise ValueError(f"no training cases ({len(train_cases)}) or no test cases ({len(test_cases)}) to compare "
                         "methods on")
    keys = list(cfg["methods"])
    if not keys or len(set(keys)) != len(keys):
        raise ValueError(f"methods must list distinct methods, got {keys}")
    methods = {key: build_method(key, cfg) for key in keys}
    summaries = []
    for key, method in methods.items():
        log.info("%s: fitting on %d training cases of %s", key, len(train_cases), train_data.name)
        start = time.perf_counter()
        method.fit(train_data, train_cases)
        fit_seconds = time.perf_counter() - start
        scores = ScoreSheet(data, test_cases, float(cfg["nsd_tolerance_mm"]), run_dir / key)
        for case_id in tqdm(test_cases, desc=key, disable=None):
            case = data.load_case(case_id)
            start = time.perf_counter()
            label = np.asarray(method.segment(case), dtype=np.uint8)
            scores.add(case, label, time.perf_counter() - start)
        settings = {"fit_seconds": fit_seconds, "train_cases": len(train_cases), "train_dataset": train_data.name}
        summaries.append(scores.finish(PAPER_ROWS.get(key, key), cfg["split"]["name"], settings))
    write_comparison(run_dir, summaries)
    return summaries


def write_comparison(run_dir: Path, summaries: list[dict[str, Any]]) -> str:
    """``table.md`` (prepared grid, then native space when every method was scored there) and ``summary.json``
    in ``run_dir``; returns the table text."""
    table = format_comparison_table(summaries)
    if all(s.get("native") for s in summaries):
        table += "\n" + format_comparison_table([s["native"] for s in summaries])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "table.md").write_text(table)
    (run_dir / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    return table
