"""Visual quality control of a segmentation run: per-case PNGs, ``volumes.csv`` and one ``report.html``.

For each case, ``<case>_planes.png`` shows the scan on the model grid with the label contours on the three
mid-planes through the heart (axial, coronal, sagittal; the centre of the predicted foreground), and
``<case>_uncertainty.png`` the ensemble's uncertainty map on the same planes (when the run sampled an ensemble).
Planes are drawn in the grid's voxel axes: with the prepared data's LPS axes, the axial view shows the patient's
left on the right and anterior at the top, the coronal and sagittal views superior at the top.
``report.html`` links every case with its images, volumes and, where a reference exists, Dice and NSD; it opens
from disk and counts the images the browser could load (``data-images-loaded`` on its body).
"""

from __future__ import annotations

import csv
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from diffatlas.data.geometry import mask_bounds, voxel_volume_ml

PANEL_PX = 192                      # each plane is scaled up by an integer factor to about this many pixels
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230))
REPORT = "report.html"
VOLUMES = "volumes.csv"


@dataclass
class CaseQC:
    """What the report shows of one case.

    Attributes:
        case: the case name.
        images: PNG paths relative to the report's folder.
        volumes_ml: structure -> volume in ml.
        metrics: structure -> {"dice": ..., "nsd": ...} where a reference exists.
        error: the one-line reason when the case failed (then nothing else is shown).
        seconds: time spent on the case.
    """

    case: str
    images: list[str] = field(default_factory=list)
    volumes_ml: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] | None = None
    error: str | None = None
    seconds: float | None = None


def plane_indices(labels: np.ndarray) -> tuple[int, int, int]:
    """The mid-planes through the heart: the centre of the foreground's box, or the grid centre if empty."""
    bounds = mask_bounds(labels)
    if bounds is None:
        return tuple(int(n) // 2 for n in labels.shape)  # type: ignore[return-value]
    return tuple(int((lo + hi) // 2) for lo, hi in zip(*bounds))  # type: ignore[return-value]


def _planes(volume: np.ndarray, centre: Sequence[int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices ``(rows, columns)`` through ``centre`` (superior at the top)."""
    i, j, k = centre
    return [volume[:, :, k].T, volume[:, j, :].T[::-1], volume[i, :, :].T[::-1]]


def _grey(plane: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = np.clip((plane - low) / max(high - low, 1e-6), 0.0, 1.0)
    return np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _heat(plane: np.ndarray, high: float) -> np.ndarray:
    """Black -> red -> yellow -> white for 0 .. ``high``."""
    v = np.clip(plane / max(high, 1e-6), 0.0, 1.0) * 3.0
    rgb = np.stack([np.clip(v, 0, 1), np.clip(v - 1, 0, 1), np.clip(v - 2, 0, 1)], axis=-1)
    return (rgb * 255).astype(np.uint8)


def _scale(plane: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(plane, factor, axis=0), factor, axis=1)


def _contours(rgb: np.ndarray, labels: np.ndarray, num_structures: int) -> np.ndarray:
    """Draw each structure's outline (its pixels with a neighbour outside it) on an upscaled slice."""
    out = rgb.copy()
    for k in range(1, num_structures + 1):
        mask = labels == k
        edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
        out[edge] = PALETTE[(k - 1) % len(PALETTE)]
    return out


def _row(panels: Sequence[np.ndarray], gap_px: int = 4) -> np.ndarray:
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, gap_px), (0, 0))) for p in panels]
    return np.concatenate(padded, axis=1)[:, :-gap_px]


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 image as PNG."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(rgb, dtype=np.uint8), isVector=True), str(path))


def render_case(out_dir: str | Path, case: str, image: np.ndarray, labels: np.ndarray, num_structures: int,
                uncertainty: np.ndarray | None = None) -> list[str]:
    """Write ``<case>_planes.png`` (and ``<case>_uncertainty.png``) into ``out_dir``; returns their file names.

    Args:
        image: float32 ``(X, Y, Z)``, the scan on the model grid (any intensity range).
        labels: uint8 ``(X, Y, Z)`` on the same grid.
        uncertainty: float32 ``(X, Y, Z)`` or None.
    """
    if image.shape != labels.shape or (uncertainty is not None and uncertainty.shape != labels.shape):
        raise ValueError(f"{case}: image {image.shape}, labels {labels.shape} and uncertainty must share a shape")
    out_dir = Path(out_dir)
    centre = plane_indices(labels)
    factor = max(1, PANEL_PX // max(image.shape))
    low, high = (float(v) for v in np.percentile(image, [1, 99]))
    panels = [_contours(_scale(_grey(p, low, high), factor), _scale(lab, factor), num_structures)
              for p, lab in zip(_planes(image, centre), _planes(labels, centre))]
    names = [f"{case}_planes.png"]
    write_png(out_dir / names[0], _row(panels))
    if uncertainty is not None:
        top = float(uncertainty.max())
        heat = [_scale(_heat(p, top), factor) for p in _planes(uncertainty, centre)]
        names.append(f"{case}_uncertainty.png")
        write_png(out_dir / names[1], _row(heat))
    return names


def label_volumes_ml(labels: np.ndarray, spacing_mm: Sequence[float], structures: Sequence[str]) -> dict[str, float]:
    """Each structure's volume in millilitres in a label map (value k is ``structures[k - 1]``) with voxel
    ``spacing_mm``."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64).ravel(), minlength=len(structures) + 1)
    voxel_ml = voxel_volume_ml(spacing_mm)
    return {name: float(counts[k]) * voxel_ml for k, name in enumerate(structures, start=1)}


def write_volumes(path: str | Path, cases: Sequence[CaseQC], structures: Sequence[str]) -> None:
    """``volumes.csv``: one row per segmented case, one column per structure (ml)."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", *[f"{name}_ml" for name in structures]])
        for qc in cases:
            if qc.error is None:
                writer.writerow([qc.case, *[f"{qc.volumes_ml.get(name, math.nan):.3f}" for name in structures]])


def _number(value: float | None, scale: float = 1.0) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value * scale:.1f}"


def write_report(out_dir: str | Path, cases: Sequence[CaseQC], structures: Sequence[str], title: str,
                 settings: Mapping[str, object] | None = None) -> Path:
    """``report.html`` in ``out_dir``: one section per case with its images, volumes and scores."""
    out_dir = Path(out_dir)
    esc = html.escape
    failed = [qc for qc in cases if qc.error is not None]
    parts = [
        "<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}th{background:#eee}"
        "section{margin-bottom:2em}img{display:block;margin:4px 0;image-rendering:pixelated}"
        ".error{color:#b00}.key span{display:inline-block;padding:0 6px;margin-right:6px;color:#fff}</style>",
        "</head><body>", f"<h1>{esc(title)}</h1>",
        f"<p>{len(cases) - len(failed)} of {len(cases)} cases segmented. "
        "<span id='image-status'>Images: loading.</span></p>",
    ]
    if settings:
        parts.append("<p>" + "; ".join(f"{esc(str(k))}: {esc(str(v))}" for k, v in settings.items()) + "</p>")
    key = "".join(f"<span style='background:rgb{PALETTE[(k - 1) % len(PALETTE)]}'>{esc(name)}</span>"
                  for k, name in enumerate(structures, start=1))
    parts.append(f"<p class='key'>Contours: {key}</p>")
    parts.append("<nav><ul>" + "".join(f"<li><a href='#{esc(qc.case)}'>{esc(qc.case)}</a>"
                                       + (" (failed)" if qc.error else "") + "</li>" for qc in cases) + "</ul></nav>")
    for qc in cases:
        parts.append(f"<section id='{esc(qc.case)}'><h2>{esc(qc.case)}</h2>")
        if qc.error is not None:
            parts.append(f"<p class='error'>failed: {esc(qc.error)}</p></section>")
            continue
        if qc.seconds is not None:
            parts.append(f"<p>{qc.seconds:.1f} s</p>")
        parts.extend(f"<img src='{esc(name)}' alt='{esc(name)}'>" for name in qc.images)
        header = "<tr><th>structure</th><th>volume (ml)</th>" + \
            ("<th>Dice (%)</th><th>NSD (%)</th>" if qc.metrics else "") + "</tr>"
        rows = []
        for name in structures:
            cells = f"<td>{esc(name)}</td><td>{_number(qc.volumes_ml.get(name))}</td>"
            if qc.metrics:
                metric = qc.metrics.get(name, {})
                cells += f"<td>{_number(metric.get('dice'), 100)}</td><td>{_number(metric.get('nsd'), 100)}</td>"
            rows.append(f"<tr>{cells}</tr>")
        parts.append(f"<table>{header}{''.join(rows)}</table></section>")
    parts.append(
        "<script>window.addEventListener('load',function(){var imgs=document.images,ok=0;"
        "for(var n=0;n<imgs.length;n++){if(imgs[n].complete&&imgs[n].naturalWidth>0){ok++;}}"
        "document.body.setAttribute('data-images-loaded',ok);document.body.setAttribute('data-images-total',"
        "imgs.length);document.getElementById('image-status').textContent='Images: '+ok+' of '+imgs.length+"
        "' loaded.';});</script>")
    parts.append("</body></html>")
    path = out_dir / REPORT
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
