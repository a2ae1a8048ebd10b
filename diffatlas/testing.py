"""Segmenting and scoring a split's test cases with a DiffAtlas checkpoint (``python -m diffatlas.test``).

Predictions are written as NIfTI with the input's affine (with an ensemble also ``<case>_uncertainty.nii.gz``),
with ``per_case.csv``, ``summary.json`` and ``table.md`` (see :class:`diffatlas.scoring.ScoreSheet`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from diffatlas.builders import load_segmenter
from diffatlas.data.io import write_volume
from diffatlas.device import resolve_device
from diffatlas.inputs import load_data_and_split
from diffatlas.scoring import ScoreSheet

log = logging.getLogger(__name__)


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
