"""ICMD: image-conditional mask diffusion, the paper's baseline (c) (MedSegDiff-v2-like), on SDF masks.

The denoiser is the project's time-conditioned ``UNet`` with ``1 + K`` input channels, the clean image
(``ChannelLayout.image``) beside the K noisy SDF channels, and ``K`` outputs for the mask channels only.
Unlike DiffAtlas it never models the image: the image is a condition, never noised and never changed.

Modes (``Mode``):

* ``ddpm`` (default): trained with the DDPM loss of ``GaussianDiffusion`` on the mask channels; sampled by
  the project's one reverse loop (``sampling.loop.reverse_process``) with any timestep plan. The loop sees
  the network through ``JointDenoiser`` (a ``1 + K``-channel model whose image output makes the image its own
  clean estimate) and the ``KeepImage`` hook writes the clean image into the image channel at every step.
* ``vp_sde``: the same network and training (DDPM's Markov chain is the discretised variance-preserving SDE,
  Song et al. 2021, "Score-based generative modeling through SDEs", eq. 11 and App. B), sampled by
  predictor-corrector (Song et al. Alg. 1): a reverse-diffusion predictor and a Langevin corrector.
* ``ve_sde``: a noise-conditional network trained by denoising score matching on ``x + sigma_i z`` with
  geometric noise levels ``sigma_i`` (the variance-exploding SDE, Song et al. eq. 9 and 30), sampled by the
  same predictor-corrector scheme, as in source document 004 (Bogensperger et al. 2023).

The SDE modes use ``predictor_corrector``, a separate update rule for the reverse-time SDE (a corrector
calls the network several times per level and the predictor is not the DDIM update), so they do not pass
through ``reverse_process``; they yield the same ``StepState`` per visited level.
"""

from __future__ import annotations

import logging
import math
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from diffatlas.data.datasets import CaseData, JointDataset, PreparedData
from diffatlas.data.layout import ChannelLayout
from diffatlas.data.sdf import decode_sdf_torch, default_sdf_scale
from diffatlas.device import resolve_device
from diffatlas.diffusion.gaussian import GaussianDiffusion, LossType, Prediction
from diffatlas.methods.base import check_segmenter_record, check_train_cases, plain, segmenter_record
from diffatlas.methods.diffatlas import case_seed
from diffatlas.nets.unet import UNet
from diffatlas.sampling.loop import StepState, make_generators, randn_like_per_sample, reverse_process, run_to_end
from diffatlas.sampling.plans import TimestepPlan, make_plan
from diffatlas.training.augment import make_augment
from diffatlas.training.trainer import Objective, Trainer, TrainSettings, load_checkpoint

logger = logging.getLogger(__name__)

_RESERVED_NETWORK_KEYS = ("in_channels", "out_channels", "time_conditioned")


class Mode(str, Enum):
    DDPM = "ddpm"
    VP_SDE = "vp_sde"
    VE_SDE = "ve_sde"


def _parse_mode(mode: str) -> Mode:
    try:
        return Mode(mode)
    except ValueError:
        raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(repr(m.value) for m in Mode)}") from None


def _conditioned(model: nn.Module, image: torch.Tensor):
    """``model`` ``(B, 1 + K, ...) -> (B, K, ...)`` as a function of the K noisy mask channels alone."""

    def forward(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(torch.cat([image, x_t.to(image.dtype)], dim=1), t)

    return forward


def mask_objective(diffusion: GaussianDiffusion) -> Objective:
    """The DDPM loss (``GaussianDiffusion.loss``) on the mask channels of ``JointDataset`` batches
    ``(B, 1 + K, ...)``, the clean image fed as the condition. Timesteps and noise come from the trainer's
    generator."""

    def objective(model: nn.Module, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        image, sdf = batch[:, :1], batch[:, 1:]
        t = torch.randint(diffusion.num_timesteps, (batch.shape[0],), generator=generator, device=batch.device)
        noise = torch.randn(sdf.shape, generator=generator, device=batch.device)
        return diffusion.loss(_conditioned(model, image), sdf, t, noise)

    return objective


def ve_sigmas(num_levels: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Noise levels ``(N,)`` of the VE SDE, ``sigma_i = sigma_min (sigma_max / sigma_min)^(i / (N - 1))``
    (Song et al. eq. 30 at ``t = i / (N - 1)``), computed in float64, returned as float32."""
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    fraction = np.arange(num_levels, dtype=np.float64) / max(num_levels - 1, 1)
    return torch.from_numpy(sigma_min * (sigma_max / sigma_min) ** fraction).float()


def ve_objective(sigmas: torch.Tensor, loss: str = "l2") -> Objective:
    """Denoising score matching for the VE SDE (Song et al. eq. 7 with weight ``lambda = sigma^2``): the
    network gets ``x + sigma_i z`` and the level index ``i`` and predicts ``z = -sigma_i * score``, so
    ``sigma_i^2 |s + z / sigma_i|^2 = |sigma_i s + z|^2``; ``"l1"`` swaps the square for an absolute value."""
    if loss not in {e.value for e in LossType}:
        raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(repr(e.value) for e in LossType)}")
    loss_type = LossType(loss)

    def objective(model: nn.Module, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        image, sdf = batch[:, :1], batch[:, 1:]
        i = torch.randint(len(sigmas), (batch.shape[0],), generator=generator, device=batch.device)
        z = torch.randn(sdf.shape, generator=generator, device=batch.device)
        sigma = sigmas.to(batch.device)[i].view(-1, *([1] * (sdf.ndim - 1)))
        err = model(torch.cat([image, sdf + sigma * z], dim=1), i).float() - z
        return err.abs().mean() if loss_type is LossType.L1 else err.pow(2).mean()

    return objective


class JointDenoiser(nn.Module):
    """The conditional network seen by the reverse loop as a joint ``(B, 1 + K, ...) -> (B, 1 + K, ...)``
    denoiser. Channel 0 of the input is the clean image (``KeepImage`` puts it there); the image output is
    the prediction target for which the image is its own clean estimate (``x0_hat = image``)."""

    def __init__(self, net: nn.Module, diffusion: GaussianDiffusion):
        super().__init__()
        self.net = net
        self.diffusion = diffusion

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        image = x[:, :1]
        image_eps = self.diffusion.eps_from_x0(image, t, image)
        return torch.cat([self.diffusion.target(image, t, image_eps), self.net(x, t).float()], dim=1)


class KeepImage:
    """A reverse-loop hook that writes the clean conditioning ``image`` ``(B, 1, ...)`` into ``channel`` at
    every visited step, so that the network always sees it unchanged (never noised)."""

    def __init__(self, image: torch.Tensor, channel: slice):
        self.image = image
        self.channel = channel

    def __call__(self, x: torch.Tensor, t: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
        x = x.clone()
        x[:, self.channel] = self.image
        return x


class DiscreteSDE:
    """The forward chains of the VP and VE SDEs at levels ``-1 .. N-1`` (``-1`` the clean data).

    VP (Song et al. eq. 11): ``x_t = sqrt(ab_t / ab_s) x_s + sqrt(1 - ab_t / ab_s) z`` with DDPM's
    ``alpha_bar``; VE (eq. 9): ``x_t = x_s + sqrt(sigma_t^2 - sigma_s^2) z`` with ``sigma_{-1} = 0``.
    """

    def __init__(self, mode: Mode, diffusion: GaussianDiffusion, sigmas: torch.Tensor | None = None):
        if mode is Mode.DDPM:
            raise ValueError("DiscreteSDE is for the 'vp_sde' and 've_sde' modes")
        if mode is Mode.VE_SDE and (sigmas is None or len(sigmas) != diffusion.num_timesteps):
            raise ValueError("the VE SDE needs one sigma per timestep of the diffusion")
        self.mode = mode
        self.diffusion = diffusion
        self.alpha_bar = torch.cat([torch.ones(1), diffusion.alphas_cumprod.cpu()]).double()
        self.sigma = None if sigmas is None else torch.cat([torch.zeros(1), sigmas.cpu()]).double()

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior ``p_T``: 1 (VP) or ``sigma_max`` (VE)."""
        return 1.0 if self.mode is Mode.VP_SDE else float(self.sigma[-1])

    def forward_step(self, t: int, s: int) -> tuple[float, float]:
        """``(scale, var)`` of ``x_t = scale * x_s + sqrt(var) z`` for levels ``s < t`` (Song et al. eq. 45,
        ``f(x) = (scale - 1) x``, ``G^2 = var``)."""
        if self.mode is Mode.VP_SDE:
            ratio = float(self.alpha_bar[t + 1] / self.alpha_bar[s + 1])
            return math.sqrt(ratio), 1.0 - ratio
        return 1.0, float(self.sigma[t + 1] ** 2 - self.sigma[s + 1] ** 2)

    def corrector_alpha(self, t: int) -> float:
        """``alpha_i`` of the Langevin step size (Song et al. Alg. 4 and 5): ``1 - beta_t`` (VP) or 1 (VE)."""
        if self.mode is Mode.VP_SDE:
            return float(self.alpha_bar[t + 1] / self.alpha_bar[t])
        return 1.0

    def score(self, out: torch.Tensor, y: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(score, x0_hat)`` from the network output ``out`` at state ``y`` ``(B, K, ...)`` and level ``t``.

        VP: ``score = -eps_hat / sqrt(1 - ab_t)`` (Song et al. App. B); VE: ``score = -eps_hat / sigma_t``;
        both with Tweedie's clean estimate.
        """
        if self.mode is Mode.VP_SDE:
            bt = torch.full((y.shape[0],), t, device=y.device, dtype=torch.long)
            x0_hat, eps_hat = self.diffusion.split_prediction(out, y, bt)
            return -eps_hat / math.sqrt(1.0 - float(self.alpha_bar[t + 1])), x0_hat
        sigma = float(self.sigma[t + 1])
        return -out / sigma, y - sigma * out


def _moves_down(plan: TimestepPlan) -> bool:
    return all(b < a for a, b in zip(plan.timesteps[:-1], plan.timesteps[1:]))


def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))


def predictor_corrector(net: nn.Module, sde: DiscreteSDE, plan: TimestepPlan, image: torch.Tensor,
                        num_structures: int, generators: Sequence[torch.Generator], *, snr: float,
                        corrector_steps: int, sdf_clip: float) -> Iterator[StepState]:
    """Predictor-corrector sampling of the reverse-time SDE (Song et al. Alg. 1) of the K mask channels.

    At each visited level ``t`` (then ``s``, the next one), ``corrector_steps`` Langevin steps (Song et al.
    Alg. 4 and 5), then one reverse-diffusion predictor step to ``s`` (eq. 46); the last predictor step adds
    no noise. The image channel is never updated: every state is ``[image, y]``.

    Args:
        net: ``(B, 1 + K, ...), t -> (B, K, ...)``.
        sde: the discretised SDE the network was trained for.
        plan: levels to visit, strictly decreasing, ending at ``-1``.
        image: ``(B, 1, ...)`` the clean conditioning images.
        num_structures: K.
        generators: one per batch element; every draw comes from them.
        snr: the corrector's signal-to-noise ratio ``r``.
        corrector_steps: Langevin steps per level (0: predictor only).
        sdf_clip: the sample's mask channels are clipped to ``[-sdf_clip, sdf_clip]``.

    Yields:
        ``StepState(t, s, [image, y_t], [image, x0_hat])`` per visited level, then the sample at ``t = -1``.
    """
    plan.check_range(sde.diffusion.num_timesteps)
    if not _moves_down(plan):
        raise ValueError(f"predictor-corrector sampling needs a plan that only moves down, got {plan.name}")
    shape = (image.shape[0], num_structures, *image.shape[2:])
    y = sde.prior_std * randn_like_per_sample(torch.empty(shape, device=image.device), generators)

    def evaluate(y: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        bt = torch.full((y.shape[0],), t, device=y.device, dtype=torch.long)
        with torch.no_grad():
            return sde.score(net(torch.cat([image, y], dim=1), bt).float(), y, t)

    for t, s in zip(plan.timesteps[:-1], plan.timesteps[1:]):
        for _ in range(corrector_steps):
            # Langevin step: eps = 2 alpha (r |z| / |g|)^2, y <- y + eps g + sqrt(2 eps) z (Song et al. Alg. 4/5)
            g, _ = evaluate(y, t)
            z = randn_like_per_sample(y, generators)
            step = 2 * sde.corrector_alpha(t) * (snr * _per_sample_norm(z) / _per_sample_norm(g).clamp(min=1e-12)) ** 2
            y = y + step * g + (2 * step).sqrt() * z
        score, x0_hat = evaluate(y, t)
        yield StepState(t, s, torch.cat([image, y], dim=1), torch.cat([image, x0_hat], dim=1))
        # reverse diffusion: y_s = y_t - f(y_t) + G^2 score + G z, f(y) = (scale - 1) y (Song et al. eq. 46)
        scale, var = sde.forward_step(t, s)
        y = (2 - scale) * y + var * score
        if s >= 0:
            y = y + math.sqrt(var) * randn_like_per_sample(y, generators)
    y = y.clamp(-sdf_clip, sdf_clip)
    yield StepState(-1, -1, torch.cat([image, y], dim=1), torch.cat([image, y], dim=1))


class ICMD:
    """Image-conditional SDF mask diffusion.

    Args:
        out_dir: run folder for the trainer's checkpoints and TensorBoard logs; a run there resumes.
        mode: ``"ddpm"``, ``"vp_sde"`` or ``"ve_sde"`` (see the module docstring).
        network: ``UNet`` keyword arguments except ``in_channels``, ``out_channels`` and ``time_conditioned``
            (ICMD sets 1 + K, K and True).
        diffusion: ``GaussianDiffusion`` keyword arguments (``num_timesteps``, ``schedule``, ``prediction``,
            ``loss``). ``ve_sde`` uses only ``num_timesteps`` (the number of noise levels) and ``loss``, and
            needs ``prediction="eps"``.
        augment: an ``augment`` config (``configs/augment/``; ``None`` or ``enabled: false`` = none), applied to
            every training batch: the same augmentation DiffAtlas gets in a comparison.
        training: ``TrainSettings`` keyword arguments.
        sdf_clip: SDF clip value (paper: 0.2); samples are clipped to it.
        sdf_scale_vox: SDF scale in voxels; ``None`` uses ``default_sdf_scale`` of the dataset's grid.
        plan: ``"ddpm"``, ``"ddim"`` (``num_steps`` strided steps; ``eta`` its stochasticity) or, in ``ddpm``
            mode only, ``"repaint"``. The SDE modes visit the plan's levels and ignore ``eta``.
        num_steps, eta: passed to ``make_plan``.
        snr: the Langevin corrector's signal-to-noise ratio (SDE modes).
        corrector_steps: Langevin steps per level (SDE modes; 0 = predictor only).
        sigma_min, sigma_max: the VE noise levels (``ve_sde`` only).
        seed: base seed; each case's sampling noise is seeded from ``(seed, case id)``.
        device: where to train and segment: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    """

    name = "ICMD"

    def __init__(
        self,
        *,
        out_dir: str | Path,
        mode: str = "ddpm",
        network: dict[str, Any] | None = None,
        diffusion: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        augment: dict[str, Any] | None = None,
        sdf_clip: float = 0.2,
        sdf_scale_vox: float | None = None,
        plan: str = "ddpm",
        num_steps: int = 50,
        eta: float = 0.0,
        snr: float = 0.16,
        corrector_steps: int = 1,
        sigma_min: float = 0.002,
        sigma_max: float = 1.0,
        seed: int = 0,
        device: str = "auto",
    ):
        self.mode = _parse_mode(mode)
        self.network = dict(network or {})
        reserved = [key for key in _RESERVED_NETWORK_KEYS if key in self.network]
        if reserved:
            raise ValueError(f"network must not set {reserved}: ICMD sets them from the dataset")
        self.diffusion = GaussianDiffusion(**(diffusion or {}))
        if self.mode is Mode.VE_SDE and self.diffusion.prediction != Prediction.EPS.value:
            raise ValueError(f"mode 've_sde' trains a noise predictor: diffusion.prediction must be 'eps', "
                             f"got {self.diffusion.prediction!r}")
        self.diffusion_config = dict(diffusion or {})
        self.use_plan(make_plan(plan, self.diffusion.num_timesteps, num_steps=num_steps, eta=eta))
        self.sampling_config = {"plan": plan, "num_steps": int(num_steps), "eta": float(eta), "snr": float(snr),
                                "corrector_steps": int(corrector_steps), "sigma_min": float(sigma_min),
                                "sigma_max": float(sigma_max), "seed": int(seed)}
        if float(sdf_clip) <= 0:
            raise ValueError(f"sdf_clip must be positive, got {sdf_clip}")
        if sdf_scale_vox is not None and float(sdf_scale_vox) <= 0:
            raise ValueError(f"sdf_scale_vox must be positive, got {sdf_scale_vox}")
        if float(snr) <= 0:
            raise ValueError(f"snr must be positive, got {snr}")
        if int(corrector_steps) < 0:
            raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
        self.sigmas = ve_sigmas(self.diffusion.num_timesteps, float(sigma_min), float(sigma_max))
        self.settings = TrainSettings(**(training or {}))
        self.augment = make_augment(augment, image_channels=(0,))
        self.out_dir = Path(out_dir)
        self.sdf_clip = float(sdf_clip)
        self.sdf_scale_vox = None if sdf_scale_vox is None else float(sdf_scale_vox)
        self.snr = float(snr)
        self.corrector_steps = int(corrector_steps)
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.layout: ChannelLayout | None = None
        self.model: nn.Module | None = None

    def use_plan(self, plan: TimestepPlan) -> None:
        """Sample with ``plan`` from now on: one that starts from pure noise at ``T - 1`` and, in the SDE modes,
        only moves down."""
        plan.check_range(self.diffusion.num_timesteps)
        if plan.start_t < self.diffusion.num_timesteps - 1:
            raise ValueError(f"ICMD samples from pure noise at t={self.diffusion.num_timesteps - 1}; the plan "
                             f"{plan.name} starts at t={plan.start_t} (refining a coarse mask needs DiffAtlas)")
        if self.mode is not Mode.DDPM and not _moves_down(plan):
            raise ValueError(f"mode {self.mode.value!r} needs a plan that only moves down ('ddpm' or 'ddim'), "
                             f"got {plan.name}")
        self.plan = plan

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", **overrides: Any) -> "ICMD":
        """The fitted ICMD of a checkpoint written by ``fit`` (its EMA weights), ready to segment; ``overrides``
        replace its stored sampling settings (``plan``, ``num_steps``, ``eta``, ``snr``, ``corrector_steps``,
        ``seed``)."""
        ckpt = load_checkpoint(path)
        stored = ckpt["config"]
        check_segmenter_record(stored, path, cls.name,
                               extra=("mode", "network", "diffusion", "sampling", "sdf_clip", "sdf_scale_vox"))
        icmd = cls(out_dir=Path(path).parent, mode=stored["mode"], network=stored["network"],
                   diffusion=stored["diffusion"], sdf_clip=stored["sdf_clip"], sdf_scale_vox=stored["sdf_scale_vox"],
                   device=device, **{**stored["sampling"], **overrides})
        icmd.layout = ChannelLayout(len(stored["structures"]))
        model = icmd.build_network(icmd.layout.num_structures)
        model.load_state_dict(ckpt["ema"])
        icmd.model = model.to(icmd.device).eval()
        return icmd

    @property
    def network_evaluations(self) -> int:
        """Network calls per case."""
        steps = self.plan.network_evaluations
        return steps if self.mode is Mode.DDPM else steps * (1 + self.corrector_steps)

    def build_network(self, num_structures: int) -> UNet:
        """A freshly initialised network (weights drawn from ``training.seed``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.settings.seed)
            return UNet(**self.network, in_channels=1 + num_structures, out_channels=num_structures,
                        time_conditioned=True)

    def objective(self) -> Objective:
        """The training objective of the mode: the DDPM loss (``ddpm``, ``vp_sde``) or VE score matching."""
        if self.mode is Mode.VE_SDE:
            return ve_objective(self.sigmas, self.diffusion.loss_type)
        return mask_objective(self.diffusion)

    def fit(self, data: PreparedData, train_cases: Sequence[str]) -> None:
        """Train on ``train_cases`` for ``training.steps`` steps and keep the EMA network."""
        cases = check_train_cases(data, train_cases)
        if self.sdf_scale_vox is None:
            self.sdf_scale_vox = default_sdf_scale(data.shape)
        dataset = JointDataset(data, cases, sdf_clip=self.sdf_clip, sdf_scale_vox=self.sdf_scale_vox)
        trainer = Trainer(self.build_network(data.num_structures), self.objective(),
                          dataset, self.out_dir,
                          self.settings, config={"method": "ICMD", "mode": self.mode.value, "dataset": data.name,
                                                 "train_cases": list(cases), "sdf_clip": self.sdf_clip,
                                                 "sdf_scale_vox": self.sdf_scale_vox, "network": plain(self.network),
                                                 "diffusion": plain(self.diffusion_config),
                                                 "sampling": dict(self.sampling_config), **segmenter_record(data)},
                          device=self.device, augment=self.augment)
        scalars = trainer.fit()
        logger.info("ICMD (%s) trained on %d cases of %s: %s", self.mode.value, len(cases), data.name, scalars)
        self.layout = dataset.layout
        self.model = trainer.ema.eval()

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        x0 = x0.clone()
        x0[:, self.layout.masks] = x0[:, self.layout.masks].clamp(-self.sdf_clip, self.sdf_clip)
        return x0

    def sample_states(self, images: torch.Tensor, case_ids: Sequence[str]) -> Iterator[StepState]:
        """The per-step states of sampling masks for ``images`` ``(B, 1, *spatial)`` in [-1, 1]; each case's
        noise is seeded from ``(seed, case id)``. States are ``(B, 1 + K, *spatial)`` in ``ChannelLayout``
        order, the image channel always the clean image."""
        if self.model is None or self.layout is None:
            raise RuntimeError("ICMD has no trained network: call fit(data, train_cases) first")
        if images.ndim < 4 or images.shape[1] != 1:
            raise ValueError(f"expected images shaped (B, 1, *spatial), got {tuple(images.shape)}")
        if len(case_ids) != images.shape[0]:
            raise ValueError(f"{len(case_ids)} case ids for {images.shape[0]} images")
        generators = make_generators([case_seed(self.seed, c) for c in case_ids])
        if self.mode is Mode.DDPM:
            shape = (images.shape[0], self.layout.num_channels, *images.shape[2:])
            start = randn_like_per_sample(torch.empty(shape, device=images.device), generators)
            return reverse_process(JointDenoiser(self.model, self.diffusion), self.diffusion, self.plan, start,
                                   generators, hooks=[KeepImage(images, self.layout.image)], clip_x0=self._clip)
        sde = DiscreteSDE(self.mode, self.diffusion, self.sigmas if self.mode is Mode.VE_SDE else None)
        return predictor_corrector(self.model, sde, self.plan, images, self.layout.num_structures, generators,
                                   snr=self.snr, corrector_steps=self.corrector_steps, sdf_clip=self.sdf_clip)

    def sample_sdf(self, images: torch.Tensor, case_ids: Sequence[str]) -> torch.Tensor:
        """One sample per case: ``images`` ``(B, 1, *spatial)`` -> SDFs ``(B, K, *spatial)``."""
        return run_to_end(self.sample_states(images, case_ids))[:, self.layout.masks]

    def segment(self, case: CaseData) -> np.ndarray:
        """Label map ``(X, Y, Z)`` uint8 of the sampled SDFs (most negative SDF wins, background if none)."""
        return self.segment_grid(case.image, case.case)

    @torch.no_grad()
    def segment_grid(self, image: np.ndarray, case_id: str) -> np.ndarray:
        """Label map ``(X, Y, Z)`` uint8 of an image ``(X, Y, Z)`` in [-1, 1] on the training grid; ``case_id``
        seeds the sampling noise."""
        if image.ndim != 3:
            raise ValueError(f"expected a 3D (X, Y, Z) image, got shape {image.shape}")
        image = torch.from_numpy(np.clip(image, -1.0, 1.0).astype(np.float32))[None, None].to(self.device)
        return decode_sdf_torch(self.sample_sdf(image, [case_id]))[0].to(torch.uint8).cpu().numpy()
