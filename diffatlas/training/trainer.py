"""An exact-resume training loop that keeps an accelerator busy: AdamW, EMA, gradient accumulation, AMP,
flips and an optional augmentation, atomic checkpoints, TensorBoard scalars, a tqdm bar, and
``DistributedDataParallel`` when run under ``torchrun``.

Speed: the training volumes live on the training device, where batches are assembled, flipped and
augmented; the objective draws its timesteps and noise there too; losses are summed on the device and read
once every ``log_every`` steps, so the host never waits for the device inside a step. On CUDA the optimizer
is fused AdamW; the EMA update is one foreach call on every device; ``compile`` and ``channels_last`` are
options.

Randomness: one CPU generator, the seed stream, draws a seed for every micro-batch of every process; each
micro-batch's draws (case indices, flips, augmentation, the objective's timesteps and noise) come from a
generator on the training device seeded with it. The seed stream's state is saved in the checkpoint, so an
interrupted and resumed run ends with the same weights as an uninterrupted one on the same device, and N
processes of batch ``b`` with accumulation ``a`` draw exactly the micro-batches that one process of batch
``b`` with accumulation ``a * N`` draws.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from diffatlas.training.distributed import World, current_world
from diffatlas.training.runguard import RunLock, check_resume, load_checkpoint

log = logging.getLogger(__name__)

Objective = Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor]
Validator = Callable[[nn.Module, int], dict[str, float]]
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

LAST = "checkpoint_last.pt"
_SEED_HIGH = 2**62


@dataclass
class TrainSettings:
    """Optimisation settings. ``steps`` counts optimizer steps; each averages ``grad_accum`` micro-batches of
    ``batch_size`` per process (the effective batch is ``batch_size * grad_accum * processes``)."""

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
    compile: bool = False
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        for name in ("steps", "batch_size", "grad_accum", "log_every", "checkpoint_every"):
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


def random_flip(batch: torch.Tensor, axes: Sequence[int], prob: float, generator: torch.Generator) -> torch.Tensor:
    """Flip each sample of ``batch`` ``(B, C, *spatial)`` along each spatial axis in ``axes`` with ``prob``.

    The draws come from ``generator``, which must live on ``batch``'s device; nothing waits for the device.
    """
    if not axes:
        return batch
    flip = torch.rand(batch.shape[0], len(axes), generator=generator, device=batch.device) < prob
    per_sample = (batch.shape[0],) + (1,) * (batch.ndim - 1)
    for i, axis in enumerate(axes):
        batch = torch.where(flip[:, i].view(per_sample), batch.flip(2 + axis), batch)
    return batch


def _memory_format(ndim: int) -> torch.memory_format:
    """Channels-last layout for a batch of ``ndim`` dimensions (``(B, C, D, H, W)`` or ``(B, C, H, W)``)."""
    if ndim == 5:
        return torch.channels_last_3d
    if ndim == 4:
        return torch.channels_last
    raise ValueError(f"channels_last needs 2D or 3D batches, got {ndim} dimensions")


class Trainer:
    """Trains ``model`` on ``objective`` over ``dataset`` and writes checkpoints and logs to ``out_dir``.

    Args:
        model: the network.
        objective: ``(model, batch (B, C, ...), generator) -> scalar loss``; draws its randomness from
            ``generator``, which lives on the training device (``generator.device``).
        dataset: items are tensors ``(C, *spatial)``, all of one shape; they are stacked and kept on
            ``device`` for the whole run.
        out_dir: run folder; holds ``checkpoint_last.pt`` and ``tb/``.
        settings: :class:`TrainSettings`.
        config: the resolved run config as plain types, stored in every checkpoint.
        validate: optional ``(ema_model, step) -> {name: value}`` called every ``val_every`` steps (rank 0).
        device: where to train.
        augment: optional ``(batch (B, C, *spatial), generator) -> batch`` applied on ``device`` to every
            micro-batch after the flips, drawing from the same generator.
        extras: more top-level entries (tensors and plain types) stored in every checkpoint as they are and not
            compared on resume, e.g. ``localiser`` (``diffatlas.localise``).

    Under an initialised process group (see :mod:`diffatlas.training.distributed`) every process trains its
    own part of each batch and gradients are averaged by ``DistributedDataParallel``; rank 0 alone writes
    checkpoints, TensorBoard scalars and progress.
    """

    def __init__(self, model: nn.Module, objective: Objective, dataset: Dataset, out_dir: str | Path,
                 settings: TrainSettings, *, config: dict[str, Any] | None = None,
                 validate: Validator | None = None, device: str | torch.device = "cpu",
                 augment: Augment | None = None, extras: dict[str, Any] | None = None):
        if len(dataset) == 0:
            raise ValueError("the training set is empty: check the split file and the data folder")
        self.device = torch.device(device)
        self.world: World = current_world()
        self.s = settings
        self.objective = objective
        self.augment = augment
        self.out_dir = Path(out_dir)
        self.config = config or {}
        self.extras = dict(extras or {})
        self.validate = validate
        self.data = torch.stack([dataset[i] for i in range(len(dataset))]).to(self.device)
        self.memory_format = _memory_format(self.data.ndim) if settings.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.ddp: DistributedDataParallel | None = None
        self.net: nn.Module = self.model
        if self.world.size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = self.net = DistributedDataParallel(self.model, device_ids=ids)
        if settings.compile:
            self.net = torch.compile(self.net)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                                           fused=True if self.device.type == "cuda" else None)
        self.seed_stream = torch.Generator("cpu").manual_seed(settings.seed)
        self.generator = torch.Generator(self.device)
        self.step = 0
        self._ema_params = list(self.ema.parameters())
        self._model_params = [p.detach() for p in self.model.parameters()]
        self._ema_buffers = list(self.ema.buffers())
        self._model_buffers = list(self.model.buffers())

    @property
    def amp_enabled(self) -> bool:
        return self.s.amp and self.device.type == "cuda"

    @property
    def effective_batch(self) -> int:
        return self.s.batch_size * self.s.grad_accum * self.world.size

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "generator": self.seed_stream.get_state(),
            "settings": asdict(self.s) | {"flip_axes": list(self.s.flip_axes)},
            "config": self.config,
            **self.extras,
        }

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore a :meth:`state`, whichever device its tensors were saved from or mapped to."""
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        own = {key: self.optimizer.param_groups[0].get(key) for key in ("fused", "foreach", "capturable")}
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group in self.optimizer.param_groups:
            group.update(own)
        self._place_optimizer_steps()
        self.step = int(ckpt["step"])
        self.seed_stream.set_state(ckpt["generator"].to("cpu", torch.uint8))

    def _place_optimizer_steps(self) -> None:
        """Fused and capturable AdamW keep their step counts beside the parameters, the others on the CPU;
        a checkpoint from another device or optimizer mode may hold them elsewhere."""
        for group in self.optimizer.param_groups:
            on_device = bool(group.get("fused") or group.get("capturable"))
            for p in group["params"]:
                state = self.optimizer.state.get(p)
                if state and torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].to(p.device if on_device else "cpu", torch.float32)

    def resume_if_possible(self) -> bool:
        path = self.out_dir / LAST
        if not path.is_file():
            return False
        ckpt = load_checkpoint(path)
        check_resume(path, ckpt, self.config, self.state()["settings"], self.model)
        self.load_state(ckpt)
        if self.world.is_main:
            log.info("resumed from %s at step %d", path, self.step)
        return True

    def save(self) -> Path:
        payload = self.state()
        save_checkpoint(self.out_dir / LAST, payload)
        if self.s.keep_checkpoints:
            save_checkpoint(self.out_dir / f"checkpoint_{self.step:07d}.pt", payload)
        return self.out_dir / LAST

    def micro_batch_seeds(self) -> list[int]:
        """This process's micro-batch seeds for one optimizer step: its share of ``grad_accum * processes``
        seeds drawn from the seed stream (every process draws all of them, so the streams stay equal)."""
        a = self.s.grad_accum
        seeds = torch.randint(_SEED_HIGH, (a * self.world.size,), generator=self.seed_stream).tolist()
        return seeds[self.world.rank * a:(self.world.rank + 1) * a]

    def draw_batch(self) -> torch.Tensor:
        """A micro-batch ``(batch_size, C, *spatial)`` on the training device: cases drawn with replacement,
        flipped, augmented; every draw from :attr:`generator`."""
        idx = torch.randint(self.data.shape[0], (self.s.batch_size,), generator=self.generator, device=self.device)
        batch = self.data.index_select(0, idx)
        batch = random_flip(batch, self.s.flip_axes, self.s.flip_prob, self.generator)
        if self.augment is not None:
            batch = self.augment(batch, self.generator)
        return batch.contiguous(memory_format=self.memory_format)

    @torch.no_grad()
    def update_ema(self) -> None:
        # warm-up of the decay (as in common EMA implementations) so early averages are not dominated by init
        decay = min(self.s.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self._ema_params, self._model_params, 1 - decay)
        if self._ema_buffers:
            torch._foreach_copy_(self._ema_buffers, self._model_buffers)

    def train_step(self) -> torch.Tensor:
        """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss as a 0-d tensor on the
        training device (reading it waits for the device)."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.s.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        seeds = self.micro_batch_seeds()
        total = torch.zeros((), device=self.device)
        for i, seed in enumerate(seeds):
            self.generator.manual_seed(seed)
            batch = self.draw_batch()
            last = i == len(seeds) - 1
            with self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext():
                with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp_enabled):
                    loss = self.objective(self.net, batch, self.generator)
                (loss / len(seeds)).backward()
            total += loss.detach().float()
        if self.s.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip, foreach=True)
        self.optimizer.step()
        self.step += 1
        self.update_ema()
        return total / len(seeds)

    def _read_loss(self, window: torch.Tensor, steps: int, first: int) -> float:
        """The mean loss of the last ``steps`` steps over all processes: the one place the host waits."""
        if self.world.size > 1:
            window = window.clone()
            dist.all_reduce(window)
            window /= self.world.size
        loss = window.item() / steps
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss} in steps {first + 1}-{self.step}")
        return loss

    def fit(self, stop_at: int | None = None, resume: bool = True) -> dict[str, float]:
        """Train until ``settings.steps`` (or ``stop_at``, to interrupt on purpose); returns the last scalars.
        The run folder is locked meanwhile by the process that writes it (``runguard.RunLock``)."""
        with RunLock(self.out_dir) if self.world.is_main else contextlib.nullcontext():
            return self._fit(stop_at, resume)

    def _fit(self, stop_at: int | None, resume: bool) -> dict[str, float]:
        if resume:
            self.resume_if_possible()
        end = min(self.s.steps, stop_at) if stop_at is not None else self.s.steps
        main = self.world.is_main
        if main:
            log.info("effective batch %d = batch %d x accumulation %d x %d process(es), device %s",
                     self.effective_batch, self.s.batch_size, self.s.grad_accum, self.world.size, self.device)
        writer = SummaryWriter(self.out_dir / "tb") if main else None
        scalars: dict[str, float] = {}
        start_time = time.perf_counter()
        first_step = self.step
        bar = tqdm(total=self.s.steps, initial=self.step, desc="train", dynamic_ncols=True, disable=None if main else True)
        window, window_first = torch.zeros((), device=self.device), self.step
        try:
            while self.step < end:
                window += self.train_step()
                bar.update(1)
                checkpoint_now = self.step % self.s.checkpoint_every == 0 or self.step == end
                if self.step % self.s.log_every == 0 or checkpoint_now:
                    loss = self._read_loss(window, self.step - window_first, window_first)
                    window.zero_()
                    window_first = self.step
                    scalars = {"loss": loss, "lr": self.optimizer.param_groups[0]["lr"]}
                    bar.set_postfix(loss=f"{loss:.4f}")
                    if writer is not None:
                        writer.add_scalar("train/loss", loss, self.step)
                        writer.add_scalar("train/lr", scalars["lr"], self.step)
                if main and self.validate and self.s.val_every and self.step % self.s.val_every == 0:
                    for name, value in self.validate(self.ema, self.step).items():
                        writer.add_scalar(f"val/{name}", value, self.step)
                        scalars[f"val_{name}"] = value
                        log.info("step %d val %s = %.4f", self.step, name, value)
                if checkpoint_now and main:
                    self.save()
                    log.info("step %d/%d: loss %.4f, %.3f s/step", self.step, self.s.steps, scalars["loss"],
                             (time.perf_counter() - start_time) / max(self.step - first_step, 1))
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if self.world.size > 1:
            dist.barrier()
        if main and self.step > first_step:
            log.info("trained to step %d in %.1f s", self.step, time.perf_counter() - start_time)
        return scalars


def diffusion_objective(diffusion: nn.Module) -> Objective:
    """The DDPM loss with uniform timesteps and Gaussian noise, both drawn on the batch's device from the
    trainer's generator."""

    def objective(model: nn.Module, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        t = torch.randint(diffusion.num_timesteps, (batch.shape[0],), generator=generator, device=batch.device)
        noise = torch.randn(batch.shape, generator=generator, device=batch.device, dtype=batch.dtype)
        return diffusion.loss(model, batch, t, noise)

    return objective
