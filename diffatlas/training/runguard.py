"""What keeps a run folder consistent: one writer at a time, and a resume that continues the same experiment.

``RunLock`` holds ``<run folder>/run.lock`` (the process id, host and start time) while a run writes the folder; a
second run into it stops with a one-line error, and a lock left by a process that no longer exists (a run killed
with ``kill -9``) is taken over with a warning.

``check_resume`` compares a checkpoint with the run about to continue it: the stored config (network, diffusion,
SDF settings, data; everything but the ``run`` entry, which holds the whole command line) must be equal, and the
parameter shapes must match; optimisation settings that may change (steps, learning rate, checkpoint interval...)
are logged when they do. ``load_checkpoint`` reads a checkpoint as tensors and plain types only.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
MUTABLE_CONFIG_KEYS = ("run", "split", "augment")
"""Stored config entries a resumed run may change: ``run`` (the whole command-line config), ``split`` (a name: a
zero-shot comparison continues the checkpoint of a few-shot split under its own split's name; the training cases
themselves are compared) and ``augment`` (the training augmentation). Changes of the last two are logged."""
CHECKPOINT_KEYS = ("model", "ema", "optimizer", "step", "generator", "settings", "config")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by the trainer (tensors and plain types only; nothing that could run code) onto
    the CPU, whichever device it was saved from; ``load_state_dict`` then copies each tensor onto its module's or
    optimizer's device.

    Raises FileNotFoundError, or ValueError naming ``path`` for an empty, truncated, foreign or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first (see training_scripts/) or pass its path")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes); delete it and train again")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"checkpoint {path} holds objects other than tensors and plain types, so it was not "
                         "loaded (unpickling it could run code); use a checkpoint written by diffatlas") from err
    except (EOFError, RuntimeError, OSError) as err:
        raise ValueError(f"checkpoint {path} is truncated or not a torch checkpoint "
                         f"({type(err).__name__}: {' '.join(str(err).split())})") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a diffatlas checkpoint")
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} was not written by diffatlas (missing {', '.join(missing)})")
    return ckpt


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, tuple):
        value = list(value)
    return {prefix: value}


def differing_keys(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two nested mappings (a key present in one only counts)."""
    a, b = _flatten(stored), _flatten(current)
    return sorted(key for key in set(a) | set(b) if a.get(key, "<unset>") != b.get(key, "<unset>"))


def check_resume(path: Path, ckpt: Mapping[str, Any], config: Mapping[str, Any], settings: Mapping[str, Any],
                 model: nn.Module) -> None:
    """Refuse to resume ``ckpt`` (read from ``path``) with another experiment; log changed optimisation settings.

    Args:
        config: the run's config as it would be stored (``Trainer.config``).
        settings: the run's optimisation settings as stored (``Trainer.state()["settings"]``).
        model: the run's network, to compare parameter shapes with the checkpoint's.
    """
    fresh = f"use another checkpoint_dir, or resume=false to start again from step 0 in {path.parent}"
    stored = {k: v for k, v in dict(ckpt["config"]).items() if k not in MUTABLE_CONFIG_KEYS}
    unrecorded = sorted(k for k in config if k not in stored and k not in MUTABLE_CONFIG_KEYS)
    if unrecorded:
        log.info("%s does not record %s (an older checkpoint); not compared", path, ", ".join(unrecorded))
    current = {k: v for k, v in dict(config).items() if k in stored}
    changed = differing_keys(stored, current)
    if changed:
        shown = ", ".join(f"{k} ({_get(stored, k)!r} there, {_get(current, k)!r} now)" for k in changed[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        raise ValueError(f"cannot resume {path}: it was trained with other settings: {shown}{more}; {fresh}")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
    if shapes != saved:
        keys = sorted(k for k in set(shapes) | set(saved) if shapes.get(k) != saved.get(k))
        raise ValueError(f"cannot resume {path}: its network differs from this run's ({len(keys)} parameters, e.g. "
                         f"{keys[0]} {saved.get(keys[0])} there, {shapes.get(keys[0])} now); {fresh}")
    for key in differing_keys(dict(ckpt["settings"]), dict(settings)):
        log.info("resuming with changed training setting %s: %r -> %r", key, _get(ckpt["settings"], key),
                 _get(settings, key))
    logged = [k for k in MUTABLE_CONFIG_KEYS if k != "run"]
    before = {k: v for k, v in dict(ckpt["config"]).items() if k in logged}
    for key in differing_keys(before, {k: v for k, v in dict(config).items() if k in before}):
        log.info("resuming with changed setting %s: %r -> %r", key, _get(before, key), _get(config, key))
    step, steps = int(ckpt["step"]), int(settings["steps"])
    if step > steps:
        log.warning("%s is at step %d, past training.steps=%d: nothing to train (raise training.steps to continue)",
                    path, step, steps)
    elif step == steps:
        log.info("%s is already trained to training.steps=%d", path, steps)


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    return _flatten(tree).get(dotted, "<unset>")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(folder):`` holds ``<folder>/run.lock`` for one process; see the module docstring."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale()
                continue
            with os.fdopen(handle, "w") as out:
                out.write(record + "\n")
            self.held = True
            return self
        raise RuntimeError(f"could not take the run lock {self.path}")

    def _clear_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            owner = {}
        pid, host = owner.get("pid"), owner.get("host")
        if isinstance(pid, int) and host not in (None, socket.gethostname()):
            raise RuntimeError(f"{self.path.parent} is being written by another run (pid {pid} on {host}, started "
                               f"{owner.get('started')}); use another folder, or delete {self.path} if that run "
                               "has ended")
        if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
            raise RuntimeError(f"{self.path.parent} is being written by another run (pid {pid}, started "
                               f"{owner.get('started')}); wait for it to end or use another folder")
        age_s = time.time() - self.path.stat().st_mtime if self.path.exists() else 0.0
        if not isinstance(pid, int) and age_s < 5.0:
            raise RuntimeError(f"{self.path.parent} is being written by another run (its lock {self.path} is being "
                               "created); wait for it to end or use another folder")
        log.warning("taking over the stale lock %s (pid %s is no longer running)", self.path, pid)
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
