"""A small, exact-resume training loop: AdamW, EMA, gradient accumulation, AMP, flips, atomic checkpoints,
TensorBoard scalars and a tqdm bar.

Every random draw of training (batch indices, flips, timesteps, noise) comes from one CPU
``torch.Generator`` whose state is saved in the checkpoint, so an interrupted and resumed run ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

Objective = Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor]
Validator = Callable[[nn.Module, int], dict[str, float]]

LAST = "checkpoint_last.pt"


@dataclass
class TrainSettings:
    """Optimisation settings. ``steps`` counts optimizer steps; each averages ``grad_accum`` micro-batches."""

    steps: int = 1000
    batch_size: int = 2
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    amp: bool = True
    flip_axes: Sequence[int] = field(default_factory=tuple)
    flip_prob: float = 0.5
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: bool = False
    val_every: int = 0

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        self.flip_axes = tuple(int(a) for a in self.flip_axes)

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then constant or cosine decay."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        cos = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cos)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :class:`Trainer` (tensors and plain types only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first (see training_scripts/) or pass its path")
    return torch.load(path, map_location=map_location, weights_only=True)


def random_flip(batch: torch.Tensor, axes: Sequence[int], prob: float, generator: torch.Generator) -> torch.Tensor:
    """Flip each sample of ``batch`` ``(B, C, *spatial)`` along each spatial axis in ``axes`` with ``prob``."""
    if not axes:
        return batch
    out = batch.clone()
    draws = torch.rand(batch.shape[0], len(axes), generator=generator)
    for b in range(batch.shape[0]):
        dims = [2 + a for a, d in zip(axes, draws[b]) if d < prob]
        if dims:
            out[b] = torch.flip(batch[b : b + 1], dims=dims)[0]
    return out


class Trainer:
    """Trains ``model`` on ``objective`` over ``dataset`` and writes checkpoints and logs to ``out_dir``.

    Args:
        model: the network.
        objective: ``(model, batch (B, C, ...), generator) -> scalar loss``; draws its randomness from
            ``generator``.
        dataset: items are tensors ``(C, *spatial)``.
        out_dir: run folder; holds ``checkpoint_last.pt`` and ``tb/``.
        settings: :class:`TrainSettings`.
        config: the resolved run config as plain types, stored in every checkpoint.
        validate: optional ``(ema_model, step) -> {name: value}`` called every ``val_every`` steps.
        device: where to train.
    """

    def __init__(self, model: nn.Module, objective: Objective, dataset: Dataset, out_dir: str | Path,
                 settings: TrainSettings, *, config: dict[str, Any] | None = None,
                 validate: Validator | None = None, device: str | torch.device = "cpu"):
        if len(dataset) == 0:
            raise ValueError("the training set is empty: check the split file and the data folder")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.objective = objective
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        self.s = settings
        self.config = config or {}
        self.validate = validate
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        self.generator = torch.Generator("cpu").manual_seed(settings.seed)
        self.step = 0

    @property
    def amp_enabled(self) -> bool:
        return self.s.amp and self.device.type == "cuda"

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "generator": self.generator.get_state(),
            "settings": asdict(self.s) | {"flip_axes": list(self.s.flip_axes)},
            "config": self.config,
        }

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.generator.set_state(ckpt["generator"])

    def resume_if_possible(self) -> bool:
        path = self.out_dir / LAST
        if not path.is_file():
            return False
        self.load_state(load_checkpoint(path, self.device))
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def save(self) -> Path:
        payload = self.state()
        save_checkpoint(self.out_dir / LAST, payload)
        if self.s.keep_checkpoints:
            save_checkpoint(self.out_dir / f"checkpoint_{self.step:07d}.pt", payload)
        return self.out_dir / LAST

    def _batch(self) -> torch.Tensor:
        idx = torch.randint(len(self.dataset), (self.s.batch_size,), generator=self.generator)
        batch = torch.stack([self.dataset[int(i)] for i in idx])
        batch = random_flip(batch, self.s.flip_axes, self.s.flip_prob, self.generator)
        return batch.to(self.device, non_blocking=True)

    @torch.no_grad()
    def _update_ema(self) -> None:
        # warm-up of the decay (as in common EMA implementations) so early averages are not dominated by init
        decay = min(self.s.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    def train_step(self) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.s.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(self.s.grad_accum):
            batch = self._batch()
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp_enabled):
                loss = self.objective(self.model, batch, self.generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.step}")
            (loss / self.s.grad_accum).backward()
            total += loss.item() / self.s.grad_accum
        if self.s.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip)
        self.optimizer.step()
        self.step += 1
        self._update_ema()
        return total

    def fit(self, stop_at: int | None = None, resume: bool = True) -> dict[str, float]:
        """Train until ``settings.steps`` (or ``stop_at``, to interrupt on purpose); returns the last scalars."""
        if resume:
            self.resume_if_possible()
        end = min(self.s.steps, stop_at) if stop_at is not None else self.s.steps
        writer = SummaryWriter(self.out_dir / "tb")
        scalars: dict[str, float] = {}
        start_time = time.perf_counter()
        first_step = self.step
        bar = tqdm(total=self.s.steps, initial=self.step, desc="train", dynamic_ncols=True, disable=None)
        try:
            running = 0.0
            while self.step < end:
                loss = self.train_step()
                running = loss if self.step == 1 else 0.98 * running + 0.02 * loss
                scalars = {"loss": loss, "lr": self.optimizer.param_groups[0]["lr"]}
                bar.update(1)
                bar.set_postfix(loss=f"{running:.4f}")
                if self.step % self.s.log_every == 0 or self.step == end:
                    writer.add_scalar("train/loss", loss, self.step)
                    writer.add_scalar("train/lr", scalars["lr"], self.step)
                if self.validate and self.s.val_every and self.step % self.s.val_every == 0:
                    for name, value in self.validate(self.ema, self.step).items():
                        writer.add_scalar(f"val/{name}", value, self.step)
                        scalars[f"val_{name}"] = value
                        log.info("step %d val %s = %.4f", self.step, name, value)
                if self.step % self.s.checkpoint_every == 0 or self.step == end:
                    self.save()
                    done = self.step - first_step
                    log.info("step %d/%d: loss %.4f, %.2f s/step", self.step, self.s.steps, running,
                             (time.perf_counter() - start_time) / max(done, 1))
        finally:
            bar.close()
            writer.close()
        log.info("trained to step %d in %.1f s", self.step, time.perf_counter() - start_time)
        return scalars


def diffusion_objective(diffusion: nn.Module) -> Objective:
    """The DDPM loss with uniform timesteps and Gaussian noise, both drawn from the trainer's generator."""

    def objective(model: nn.Module, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        t = torch.randint(diffusion.num_timesteps, (batch.shape[0],), generator=generator).to(batch.device)
        noise = torch.randn(batch.shape, generator=generator).to(batch.device)
        return diffusion.loss(model, batch, t, noise)

    return objective
