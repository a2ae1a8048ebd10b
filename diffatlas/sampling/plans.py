"""Timestep plans: the sequence of timesteps the reverse loop visits.

A plan is data, not code. It is a tuple of integers that starts at the first noisy step and ends at -1
(the clean sample). Moving to a smaller timestep is a denoising step; moving to a larger one re-noises the
state with q(x_t' | x_t), as in RePaint's resampling jumps (Lugmayr et al. 2022, Alg. 1).

Timesteps are the code's 0-based indices: ``0 .. T-1`` are noise levels (``0`` the least noisy) and ``-1`` is
the clean sample (``x_0`` of Ho et al.'s 1-based notation). ``start_t = -1`` gives the empty plan ``(-1,)``:
no network call, the start state is returned as it is (refinement from the clean coarse mask, "t0 = 0").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class PlanKind(str, Enum):
    DDPM = "ddpm"
    DDIM = "ddim"
    REPAINT = "repaint"


@dataclass(frozen=True)
class TimestepPlan:
    """Visited timesteps and the stochasticity ``eta`` of denoising steps (1 = DDPM ancestral, 0 = DDIM).

    ``(-1,)`` is the empty plan: it visits only the clean sample and calls no network.
    """

    timesteps: tuple[int, ...]
    eta: float = 1.0
    name: str = "custom"

    def __post_init__(self) -> None:
        ts = self.timesteps
        if len(ts) < 1 or ts[-1] != -1 or -1 in ts[:-1]:
            raise ValueError(f"a plan must end at -1 and visit it only there, got {ts[:5]}...{ts[-3:]}")
        if any(a == b for a, b in zip(ts[:-1], ts[1:])):
            raise ValueError("a plan must not visit the same timestep twice in a row")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {self.eta}")

    @property
    def network_evaluations(self) -> int:
        """Denoising steps, each one network call (re-noising steps cost none)."""
        return sum(b < a for a, b in zip(self.timesteps[:-1], self.timesteps[1:]))

    @property
    def start_t(self) -> int:
        """The timestep of the start state (``-1`` for the empty plan)."""
        return self.timesteps[0]

    def check_range(self, num_timesteps: int) -> None:
        if max(self.timesteps) >= num_timesteps or min(self.timesteps) < -1:
            raise ValueError(f"plan visits timesteps outside -1..{num_timesteps - 1}")


EMPTY = (-1,)


def _start(num_timesteps: int, start_t: int | None) -> int:
    start = num_timesteps - 1 if start_t is None else int(start_t)
    if not -1 <= start < num_timesteps:
        raise ValueError(f"start_t must lie in -1..{num_timesteps - 1} (-1: no steps), got {start_t}")
    return start


def _name(base: str, num_timesteps: int, start: int) -> str:
    """Partial plans carry their start step in their name, e.g. ``ddpm_from50``."""
    return base if start == num_timesteps - 1 else f"{base}_from{start}"


def ddpm_plan(num_timesteps: int, start_t: int | None = None) -> TimestepPlan:
    """Every step from ``start_t`` (default ``T - 1``) down to the clean sample."""
    start = _start(num_timesteps, start_t)
    return TimestepPlan(tuple(range(start, -2, -1)), eta=1.0, name=_name("ddpm", num_timesteps, start))


def ddim_plan(num_timesteps: int, num_steps: int, eta: float = 0.0, start_t: int | None = None) -> TimestepPlan:
    """``num_steps`` evenly spaced timesteps from ``start_t`` down to 0, then the clean sample."""
    start = _start(num_timesteps, start_t)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if start < 0:
        return TimestepPlan(EMPTY, eta=eta, name=_name("ddim0", num_timesteps, start))
    ts = np.unique(np.round(np.linspace(0, start, min(num_steps, start + 1))).astype(int))[::-1]
    return TimestepPlan(tuple(int(t) for t in ts) + (-1,), eta=eta,
                        name=_name(f"ddim{len(ts)}", num_timesteps, start))


def repaint_plan(num_timesteps: int, jump_length: int, jump_n_sample: int, start_t: int | None = None
                 ) -> TimestepPlan:
    """DDPM steps with resampling: every ``jump_length`` steps, go back up ``jump_length`` steps one at a
    time and denoise again, so that each such stretch is traversed ``jump_n_sample`` times in all."""
    start = _start(num_timesteps, start_t)
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"jump_length and jump_n_sample must be >= 1, got {jump_length}, {jump_n_sample}")
    name = _name(f"repaint_j{jump_length}_n{jump_n_sample}", num_timesteps, start)
    if start < 0:
        return TimestepPlan(EMPTY, eta=1.0, name=name)
    jumps_left = {j: jump_n_sample - 1 for j in range(0, start + 1 - jump_length, jump_length)}
    ts = [start]
    t = start
    while t > 0:
        t -= 1
        ts.append(t)
        if jumps_left.get(t, 0) > 0:
            jumps_left[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    ts.append(-1)
    return TimestepPlan(tuple(ts), eta=1.0, name=name)


def make_plan(kind: str, num_timesteps: int, *, num_steps: int = 50, eta: float = 0.0, jump_length: int = 10,
              jump_n_sample: int = 2, start_t: int | None = None) -> TimestepPlan:
    """Build a plan by name (``ddpm``, ``ddim`` or ``repaint``): the config's entry point."""
    try:
        k = PlanKind(kind)
    except ValueError:
        raise ValueError(f"unknown plan {kind!r}; allowed: {', '.join(p.value for p in PlanKind)}") from None
    if k is PlanKind.DDPM:
        return ddpm_plan(num_timesteps, start_t)
    if k is PlanKind.DDIM:
        return ddim_plan(num_timesteps, num_steps, eta, start_t)
    return repaint_plan(num_timesteps, jump_length, jump_n_sample, start_t)
