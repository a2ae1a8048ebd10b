"""Hydra entry points. Each reads its config and calls one function of the package (``diffatlas.fitting``,
``diffatlas.testing``, ``diffatlas.comparison``, ...)."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any, Callable

from nibabel.filebasedimages import ImageFileError
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


MOVED_TO_INFERENCE = ("roi", "roi_passes", "box_file", "postprocess")
"""Top-level keys of the test and segment configs that moved into the ``inference`` group (``configs/inference/``),
beside the per-case sampler settings (``DiffAtlasSegmenter.CASE_KEYS``)."""


def moved_override(args: list[str]) -> str | None:
    """The message for the first command-line override that names a key moved to the ``inference`` group
    (``sampler.ensemble_size=3``, ``roi=auto``, ``postprocess.fill_holes=[LV]``), or None."""
    from diffatlas.methods.diffatlas import DiffAtlasSegmenter

    for arg in args:
        if "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        group, _, rest = key.partition(".")
        if group == "sampler" and rest in DiffAtlasSegmenter.CASE_KEYS:
            return f"{key} moved to inference.{rest} (the sampler config holds the timestep plan only)"
        if group in MOVED_TO_INFERENCE:
            return f"{key} moved to inference.{key} (configs/inference/)"
    return None


def reject_moved_overrides(args: list[str] | None = None) -> None:
    """Exit with a one-line error, before Hydra reads the config, when an override names a moved key."""
    message = moved_override(sys.argv[1:] if args is None else args)
    if message:
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1)


USER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # FileNotFoundError, PermissionError, IsADirectoryError, a full disk ...
    ValueError,  # bad settings and bad files
    KeyError, RuntimeError, EOFError, ArithmeticError, pickle.UnpicklingError, ImageFileError, OmegaConfBaseException,
)
"""What a user can fix (files, folders, permissions, settings, data): reported in one line."""


def one_line(err: BaseException) -> str:
    """The whole message of ``err`` on one line (a KeyError without its quotes; the type when it has no text)."""
    text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    text = " ".join(str(text).split())
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    return text or type(err).__name__


def run_or_explain(func: Callable[[], Any]) -> Any:
    """Run an entry point's work; turn the errors a user can fix (missing or unreadable files, folders that cannot
    be written, bad settings or data) into a one-line message (the whole message, with the path involved) and exit
    status 1 instead of a traceback. Set ``DIFFATLAS_DEBUG=1`` to see the traceback."""
    try:
        return func()
    except USER_ERRORS as err:
        if os.environ.get("DIFFATLAS_DEBUG"):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None
