"""DiffAtlas: diffusion-based atlas segmentation. ``from diffatlas import Segmenter`` segments new scans."""

from typing import Any

__all__ = ["Segmenter"]


def __getattr__(name: str) -> Any:
    # imported on first use, so that ``import diffatlas.data.io`` does not load torch
    if name == "Segmenter":
        from diffatlas.segmenter import Segmenter
        return Segmenter
    raise AttributeError(f"module 'diffatlas' has no attribute {name!r}")
