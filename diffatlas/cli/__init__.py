"""Hydra entry points. Each reads its config and calls one function of :mod:`diffatlas.pipeline`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "configs")


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain dicts and lists (what checkpoints and the pipeline take)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
