"""Multi-process training under ``torchrun``: which rank this process is and which device it trains on.

``torchrun --nproc_per_node=N -m diffatlas.train ...`` starts N processes and tells each its place through
the environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_distributed` joins that process group, NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``)
and gloo on the CPU; the :class:`~diffatlas.training.trainer.Trainer` then wraps its network in
``DistributedDataParallel``. A plain ``python -m diffatlas.train`` is a world of one and none of this runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` training processes; rank 0 writes checkpoints and logs."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    """The initialised process group's rank and size, or a world of one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_by_torchrun() -> bool:
    """True when the environment describes more than one process (``WORLD_SIZE > 1``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` describes; returns this process's training device.

    On CUDA each process takes ``cuda:LOCAL_RANK`` (an explicit ``cuda:N`` is replaced by it) and the
    backend is NCCL; on the CPU the backend is gloo. Without ``torchrun`` ``device`` is returned unchanged.
    """
    if not launched_by_torchrun():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"distributed training runs on cuda or cpu, not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    world = current_world()
    if world.is_main:
        log.info("distributed training: %d processes, backend %s", world.size, backend)
    return device


def close_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
