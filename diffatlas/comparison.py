"""The paper's comparison (``python -m diffatlas.compare``): every method fitted on the same training cases,
then segmenting and scoring the same test cases; DiffAtlas behind the baselines' interface."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from hydra.utils import instantiate
from tqdm.auto import tqdm

from diffatlas.data.datasets import CaseData, PreparedData
from diffatlas.device import resolve_device
from diffatlas.fitting import fit_denoiser
from diffatlas.inputs import load_data_and_split
from diffatlas.postprocess import Postprocessing
from diffatlas.scoring import ScoreSheet, write_comparison
from diffatlas.segmenter import DiffAtlasGridModel

log = logging.getLogger(__name__)


PAPER_ROWS = {"icf": "(a) ICF", "rba": "(b) RBA", "icmd": "(c) ICMD", "diffatlas": "(d) DiffAtlas",
              "mean_atlas": "mean atlas", "nearest_atlas": "nearest atlas"}
"""Row labels of the paper's comparison tables, by method key."""


class DiffAtlasMethod:
    """DiffAtlas behind the baselines' ``fit`` / ``segment`` interface (``diffatlas.methods.base``): ``fit``
    trains the joint denoiser with ``cfg``'s model, diffusion and training settings into
    ``cfg["checkpoint_dir"]``, with the SDF settings of ``dataset_cfg`` (the training dataset's config);
    ``segment`` samples with the EMA weights, the plan ``cfg["sampler"]`` and the per-case settings
    ``cfg["inference"]`` (seed, ensemble, guidance, bf16)."""

    name = "DiffAtlas"

    def __init__(self, cfg: Mapping[str, Any], dataset_cfg: Mapping[str, Any] | None = None):
        self.cfg = {**cfg, "dataset": dataset_cfg or cfg["dataset"]}
        self.device = resolve_device(cfg["device"])
        self.segmenter: DiffAtlasGridModel | None = None

    def fit(self, data: PreparedData, train_cases: list[str]) -> None:
        checkpoint = fit_denoiser(self.cfg, data, list(train_cases), [], self.cfg["split"]["name"])
        self.segmenter, _ = DiffAtlasGridModel.from_checkpoint(checkpoint, self.cfg["sampler"], self.device,
                                                               self.cfg.get("inference"))

    def segment(self, case: CaseData) -> np.ndarray:
        if self.segmenter is None:
            raise RuntimeError("DiffAtlasMethod.segment called before fit")
        return self.segmenter.segment_grid(case.image, case.case)[0]


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
    ``cfg["methods"]`` order. Every method's labels get the same postprocessing, ``inference.postprocess``.
    """
    inference = dict(cfg.get("inference") or {})
    if inference.get("roi", "label") != "label":
        raise ValueError(f"compare scores the prepared crops: inference.roi must be label, got {inference['roi']}")
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
    postprocess = Postprocessing.from_config(inference.get("postprocess"), data.structures)
    methods = {key: build_method(key, cfg) for key in keys}
    summaries = []
    for key, method in methods.items():
        log.info("%s: fitting on %d training cases of %s", key, len(train_cases), train_data.name)
        start = time.perf_counter()
        fit_failure = _attempt(lambda: method.fit(train_data, train_cases), f"{key}: fitting")
        fit_seconds = time.perf_counter() - start
        scores = ScoreSheet(data, test_cases, float(cfg["nsd_tolerance_mm"]), run_dir / key)
        for case_id in tqdm(test_cases, desc=key, disable=None):
            case = data.load_case(case_id)
            start = time.perf_counter()
            if fit_failure:
                scores.add_failure(case, f"not fitted ({fit_failure})", 0.0)
                continue
            segmented: list[np.ndarray] = []
            failure = _attempt(lambda: segmented.append(np.asarray(method.segment(case), dtype=np.uint8)),
                               f"{key}: case {case_id}")
            if failure:
                scores.add_failure(case, failure, time.perf_counter() - start)
            else:
                scores.add(case, postprocess(segmented[0]).astype(np.uint8), time.perf_counter() - start)
        settings = {"fit_seconds": fit_seconds, "train_cases": len(train_cases), "train_dataset": train_data.name,
                    "postprocess": postprocess.describe()}
        if isinstance(method, DiffAtlasMethod) and method.segmenter is not None:
            settings.update(method.segmenter.describe())
        summaries.append(scores.finish(PAPER_ROWS.get(key, key), cfg["split"]["name"], settings))
    write_comparison(run_dir, summaries)
    return summaries


def _attempt(step: Callable[[], Any], what: str) -> str | None:
    """Run one method's step; return None, or the whole error message on one line when it fails (logged, so the
    comparison goes on with the next case or method). ``DIFFATLAS_DEBUG=1`` lets the error through instead."""
    try:
        step()
    except Exception as err:  # a method failing on a case is a result to report, whatever the error
        if os.environ.get("DIFFATLAS_DEBUG"):
            raise
        reason = f"{type(err).__name__}: {' '.join(str(err).split())}"
        log.warning("%s failed and is recorded as failed: %s", what, reason)
        log.debug("%s failed", what, exc_info=True)
        return reason
    return None
