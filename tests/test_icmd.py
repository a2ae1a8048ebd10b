"""ICMD image-conditional mask diffusion on tiny phantoms: the conditioning image is never changed, the loss
falls, labels are valid and repeat, the SDE samplers match their discretisations, bad options fail clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from diffatlas.data.datasets import JointDataset, PreparedData
from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.methods.base import SegmentationMethod
from diffatlas.methods.icmd import (ICMD, DiscreteSDE, JointDenoiser, KeepImage, Mode, mask_objective,
                                    predictor_corrector, ve_objective, ve_sigmas)
from diffatlas.sampling.plans import ddim_plan, ddpm_plan, repaint_plan

NETWORK = dict(base_channels=8, channel_mults=(1, 2), attention_levels=(), norm_groups=4)
DIFFUSION = dict(num_timesteps=20)
TRAINING = dict(steps=15, batch_size=2, lr=3e-3, ema_decay=0.9, checkpoint_every=1000, seed=3)
SAMPLER = dict(plan="ddim", num_steps=4)
MODES = [m.value for m in Mode]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tiny_ct_phantoms: PreparedData) -> PreparedData:
    return tiny_ct_phantoms


@pytest.fixture(scope="module")
def fitted(data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ICMD]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for mode in MODES:
        icmd = ICMD(out_dir=tmp_path_factory.mktemp(f"icmd_{mode}"), mode=mode, network=NETWORK,
                    diffusion=DIFFUSION, training=TRAINING, **SAMPLER)
        icmd.fit(data, list(data.cases[:2]))
        out[mode] = icmd
    torch.set_num_threads(threads)
    return out


class Spy(nn.Module):
    """Records channel 0 of every input the wrapped network sees."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(x[:, :1].clone())
        return self.net(x, t)


def _image(data: PreparedData, case: str) -> torch.Tensor:
    return torch.from_numpy(np.clip(data.load_case(case).image, -1, 1))[None, None]


@pytest.mark.parametrize("mode", MODES)
def test_sampler_never_overwrites_the_conditioning_image(mode: str, fitted: dict[str, ICMD],
                                                         data: PreparedData) -> None:
    icmd = fitted[mode]
    case = data.cases[2]
    image = _image(data, case)
    trained, icmd.model = icmd.model, Spy(icmd.model)
    try:
        states = list(icmd.sample_states(image, [case]))
        seen = icmd.model.seen
    finally:
        icmd.model = trained
    assert states[-1].t == -1 and len(states) == len(icmd.plan.timesteps)
    for state in states:
        assert torch.equal(state.x[:, :1], image), f"image channel changed at t={state.t}"
        if state.x0_hat is not None:
            torch.testing.assert_close(state.x0_hat[:, :1], image, rtol=0, atol=1e-4)
    assert len(seen) == icmd.network_evaluations > 0
    for x in seen:
        assert torch.equal(x, image)
    assert states[-1].x[:, 1:].abs().max() <= icmd.sdf_clip


def test_keep_image_hook_writes_the_clean_image() -> None:
    image = torch.randn(2, 1, 4, 4, 4)
    x = torch.randn(2, 3, 4, 4, 4)
    out = KeepImage(image, slice(0, 1))(x, 5, [])
    assert torch.equal(out[:, :1], image) and torch.equal(out[:, 1:], x[:, 1:])
    assert not torch.equal(x[:, :1], image)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_joint_denoiser_makes_the_image_its_own_clean_estimate(prediction: str) -> None:
    diffusion = GaussianDiffusion(num_timesteps=20, prediction=prediction)
    net = lambda x, t: torch.zeros(x.shape[0], 2, *x.shape[2:])  # noqa: E731
    joint = JointDenoiser(net, diffusion)
    x = torch.randn(3, 3, 4, 4, 4).clamp(-1, 1)
    t = torch.tensor([0, 7, 19])
    x0_hat, _ = diffusion.split_prediction(joint(x, t), x, t)
    torch.testing.assert_close(x0_hat[:, :1], x[:, :1], rtol=0, atol=1e-4)


def test_objective_is_the_ddpm_loss_on_the_masks_with_a_clean_image() -> None:
    diffusion = GaussianDiffusion(num_timesteps=20, loss="l1")
    batch = torch.randn(2, 4, 4, 4, 4)
    spy = Spy(lambda x, t: torch.zeros(x.shape[0], 3, *x.shape[2:]))
    loss = mask_objective(diffusion)(spy, batch, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(1)
    torch.randint(20, (2,), generator=gen)
    noise = torch.randn(2, 3, 4, 4, 4, generator=gen)
    assert float(loss) == pytest.approx(float(noise.abs().mean()), rel=1e-6)
    assert torch.equal(spy.seen[0], batch[:, :1])


def test_training_lowers_the_loss(data: PreparedData, tmp_path: Path) -> None:
    cases = list(data.cases[:2])
    icmd = ICMD(out_dir=tmp_path / "run", network=NETWORK, diffusion=DIFFUSION, training=dict(TRAINING, steps=40))
    batch = torch.stack(list(JointDataset(data, cases)))
    batch = torch.cat([batch] * 8)

    def loss(model: nn.Module) -> float:
        with torch.no_grad():
            return float(icmd.objective()(model.eval(), batch, torch.Generator().manual_seed(0)))

    before = loss(icmd.build_network(data.num_structures))
    icmd.fit(data, cases)
    after = loss(icmd.model)
    assert np.isfinite(after) and after < 0.8 * before
    assert (tmp_path / "run" / "checkpoint_last.pt").is_file()


@pytest.mark.parametrize("mode", MODES)
def test_segment_gives_valid_repeatable_labels(mode: str, fitted: dict[str, ICMD], data: PreparedData) -> None:
    icmd = fitted[mode]
    assert isinstance(icmd, SegmentationMethod)
    case = data.load_case(data.cases[2])
    first = icmd.segment(case)
    assert first.shape == data.shape and first.dtype == np.uint8
    assert first.max() <= data.num_structures
    np.testing.assert_array_equal(first, icmd.segment(case))
    image = torch.from_numpy(case.image)[None, None]
    other_seed = icmd.sample_sdf(image, ["another_case_id"])
    assert not torch.equal(other_seed, icmd.sample_sdf(image, [case.case]))


def test_same_seed_same_labels_across_runs(data: PreparedData, tmp_path: Path) -> None:
    preds = []
    for run in ("a", "b"):
        icmd = ICMD(out_dir=tmp_path / run, network=NETWORK, diffusion=DIFFUSION, training=dict(TRAINING, steps=3),
                    **SAMPLER)
        icmd.fit(data, list(data.cases[:2]))
        preds.append(icmd.segment(data.load_case(data.cases[2])))
    np.testing.assert_array_equal(preds[0], preds[1])


def test_sde_discretisations() -> None:
    diffusion = GaussianDiffusion(num_timesteps=10)
    vp = DiscreteSDE(Mode.VP_SDE, diffusion)
    betas = diffusion.betas.double()
    for t in (0, 4, 9):
        scale, var = vp.forward_step(t, t - 1)
        assert scale**2 == pytest.approx(1 - float(betas[t]), abs=1e-6)
        assert var == pytest.approx(float(betas[t]), abs=1e-6)
        assert vp.corrector_alpha(t) == pytest.approx(1 - float(betas[t]), abs=1e-6)
    assert vp.prior_std == 1.0
    sigmas = ve_sigmas(10, 0.01, 1.0)
    assert float(sigmas[0]) == pytest.approx(0.01) and float(sigmas[-1]) == pytest.approx(1.0)
    assert float(sigmas[5] / sigmas[4]) == pytest.approx(100 ** (1 / 9), rel=1e-5)
    ve = DiscreteSDE(Mode.VE_SDE, diffusion, sigmas)
    assert ve.forward_step(3, 1) == (1.0, pytest.approx(float(sigmas[3] ** 2 - sigmas[1] ** 2), rel=1e-5))
    assert ve.forward_step(0, -1)[1] == pytest.approx(float(sigmas[0] ** 2), rel=1e-5)
    assert ve.prior_std == pytest.approx(1.0) and ve.corrector_alpha(5) == 1.0
    # score of an exact noise prediction: -z / sigma, and Tweedie's estimate recovers x0
    x0, z = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    score, x0_hat = ve.score(z, x0 + sigmas[6] * z, 6)
    torch.testing.assert_close(score, -z / sigmas[6])
    torch.testing.assert_close(x0_hat, x0)


def test_ve_objective_by_hand() -> None:
    sigmas = ve_sigmas(5, 0.1, 1.0)
    batch = torch.randn(2, 3, 4, 4, 4)
    zero = lambda x, t: torch.zeros(x.shape[0], 2, *x.shape[2:])  # noqa: E731
    loss = ve_objective(sigmas, "l2")(zero, batch, torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    torch.randint(5, (2,), generator=gen)
    z = torch.randn(2, 2, 4, 4, 4, generator=gen)
    assert float(loss) == pytest.approx(float(z.pow(2).mean()), rel=1e-6)


def test_errors(data: PreparedData, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown mode 'sde'; allowed: 'ddpm', 'vp_sde', 've_sde'"):
        ICMD(out_dir=tmp_path, mode="sde")
    with pytest.raises(ValueError, match=r"must not set \['in_channels'\]"):
        ICMD(out_dir=tmp_path, network={"in_channels": 3})
    with pytest.raises(ValueError, match="prediction must be 'eps'"):
        ICMD(out_dir=tmp_path, mode="ve_sde", diffusion={"prediction": "x0"})
    with pytest.raises(ValueError, match="only moves down"):
        ICMD(out_dir=tmp_path, mode="vp_sde", plan="repaint")
    with pytest.raises(ValueError, match="unknown plan"):
        ICMD(out_dir=tmp_path, plan="euler")
    with pytest.raises(ValueError, match="snr must be positive"):
        ICMD(out_dir=tmp_path, snr=0.0)
    with pytest.raises(ValueError, match="corrector_steps must be >= 0"):
        ICMD(out_dir=tmp_path, corrector_steps=-1)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        ICMD(out_dir=tmp_path, mode="ve_sde", sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="sdf_clip must be positive"):
        ICMD(out_dir=tmp_path, sdf_clip=0.0)
    with pytest.raises(ValueError, match="unknown loss 'huber'"):
        ve_objective(ve_sigmas(3, 0.1, 1.0), "huber")
    with pytest.raises(RuntimeError, match="call fit"):
        ICMD(out_dir=tmp_path).segment(data.load_case(data.cases[0]))
    with pytest.raises(ValueError, match="not in dataset"):
        ICMD(out_dir=tmp_path).fit(data, ["nope"])
    with pytest.raises(ValueError, match="'vp_sde' and 've_sde'"):
        DiscreteSDE(Mode.DDPM, GaussianDiffusion(num_timesteps=5))
    icmd = ICMD(out_dir=tmp_path, mode="vp_sde", diffusion=DIFFUSION)
    with pytest.raises(ValueError, match="only moves down"):
        next(predictor_corrector(nn.Identity(), DiscreteSDE(Mode.VP_SDE, icmd.diffusion),
                                 repaint_plan(20, 2, 2), torch.zeros(1, 1, 4, 4, 4), 1, [torch.Generator()],
                                 snr=0.1, corrector_steps=1, sdf_clip=0.2))
    assert ddim_plan(20, 4).network_evaluations * 2 == ICMD(out_dir=tmp_path, mode="ve_sde", diffusion=DIFFUSION,
                                                             **SAMPLER).network_evaluations


@pytest.mark.parametrize("mode", ["vp_sde", "ve_sde"])
@pytest.mark.parametrize("corrector_steps", [0, 1])
def test_predictor_corrector_samples_a_gaussian_with_its_exact_score(mode: str, corrector_steps: int) -> None:
    """Data ``x0 ~ N(mu, c^2)`` per voxel: the exact noise predictor is known in closed form, so the sampler
    must return draws with that mean and standard deviation."""
    mu, c, num_levels = 0.05, 0.1, 100
    diffusion = GaussianDiffusion(num_timesteps=num_levels)
    sigmas = ve_sigmas(num_levels, 0.001, 2.0)
    sde = DiscreteSDE(Mode(mode), diffusion, sigmas if mode == "ve_sde" else None)

    def exact(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y = x[:, 1:].double()
        if mode == "vp_sde":
            ab = diffusion.alphas_cumprod.double()[t].view(-1, 1, 1, 1, 1)
            a, s2 = ab.sqrt(), 1 - ab
            return (s2.sqrt() * (y - a * mu) / (ab * c**2 + s2)).float()
        sigma = sigmas.double()[t].view(-1, 1, 1, 1, 1)
        return (sigma * (y - mu) / (c**2 + sigma**2)).float()

    image = torch.zeros(2, 1, 16, 16, 16)
    states = list(predictor_corrector(exact, sde, ddpm_plan(num_levels), image, 1,
                                      [torch.Generator().manual_seed(s) for s in (0, 1)], snr=0.16,
                                      corrector_steps=corrector_steps, sdf_clip=10.0))
    sample = states[-1].x[:, 1:]
    assert float(sample.mean()) == pytest.approx(mu, abs=0.01)
    assert float(sample.std()) == pytest.approx(c, rel=0.1)


def test_config_builds_the_method(tmp_path: Path) -> None:
    config = yaml.safe_load((Path(__file__).parents[1] / "configs" / "method" / "icmd.yaml").read_text(
        encoding="utf-8"))
    assert config.pop("_target_") == "diffatlas.methods.icmd.ICMD"
    # the SDF settings follow the dataset config (interpolations resolved by Hydra in the main config)
    assert config["sdf_clip"] == "${dataset.sdf_clip}" and config["sdf_scale_vox"] == "${dataset.sdf_scale_vox}"
    config.update(out_dir=tmp_path, sdf_clip=0.2, sdf_scale_vox=None)
    icmd = ICMD(**config)
    assert icmd.mode is Mode.DDPM and icmd.diffusion.num_timesteps == 300 and icmd.plan.network_evaluations == 50
    assert icmd.diffusion.prediction == "x0"
    eps = dict(config["diffusion"], prediction="eps")
    for mode in ("vp_sde", "ve_sde"):
        assert ICMD(**dict(config, mode=mode, diffusion=eps)).network_evaluations == 100
