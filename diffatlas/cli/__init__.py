"""Hydra entry points. Each reads its config and calls one function of the package (``diffatlas.fitting``,
``diffatlas.testing``, ``diffatlas.comparison``, ...)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_PATH = str(Path(__file__).resolve().parents[2] / "configs")


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain dicts and lists (what checkpoints and the package take)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def quiet_other_ranks() -> None:
    """Under ``torchrun``, only rank 0 keeps Hydra's run folder, saved config and log file: the other ranks get
    no log file, no saved config, and the checkpoint folder (which rank 0 writes anyway) as their run folder,
    so they leave nothing behind; their Python logging shows warnings and errors only. Call before the Hydra
    entry point; overrides given on the command line win."""
    if int(os.environ.get("RANK", "0")) == 0:
        return
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in sys.argv[1:] if "=" in arg}
    for key, value in (("hydra/job_logging", "disabled"), ("hydra.output_subdir", "null"),
                       ("hydra.run.dir", "${checkpoint_dir}")):
        if key not in given:
            sys.argv.append(f"{key}={value}")


def run_or_explain(func: Callable[[], Any]) -> Any:
    """Run an entry point's work; turn the errors a user can fix (missing files, bad settings) into a one-line
    message and exit status 1 instead of a traceback. Set ``DIFFATLAS_DEBUG=1`` to see the traceback."""
    try:
        return func()
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, OmegaConfBaseException) as err:
        if os.environ.get("DIFFATLAS_DEBUG"):
            raise
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        raise SystemExit(1) from None
