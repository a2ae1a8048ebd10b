import math

import numpy as np
import pytest
import torch

from diffatlas.diffusion.gaussian import GaussianDiffusion, extract, make_betas


def test_cosine_schedule_matches_hand_computed_values():
    T, s = 300, 0.008
    betas = make_betas("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    assert betas[0] == pytest.approx(1 - f(1) / f(0), rel=1e-12)
    assert betas[149] == pytest.approx(1 - f(150) / f(149), rel=1e-12)
    assert betas[-1] == pytest.approx(0.999)  # f(T) = 0, so the last beta is clipped
    ab = np.cumprod(1 - betas)
    assert ab[149] == pytest.approx(f(150) / f(0), rel=1e-9)
    assert ab[0] == pytest.approx(0.99984, abs=1e-5)


def test_linear_schedule_and_stored_float32_buffers():
    d = GaussianDiffusion(num_timesteps=10, schedule="linear", beta_start=0.1, beta_end=0.2)
    assert d.betas.dtype == torch.float32
    assert d.betas[0].item() == pytest.approx(0.1) and d.betas[-1].item() == pytest.approx(0.2)
    assert d.alphas_cumprod[1].item() == pytest.approx(0.9 * (1 - (0.1 + 0.1 / 9)), rel=1e-6)
    assert d.posterior_variance[0].item() == pytest.approx(0.0)


def test_extract_broadcasts_per_sample():
    arr = torch.arange(5.0)
    out = extract(arr, torch.tensor([4, 1]), (2, 3, 8, 8))
    assert out.shape == (2, 1, 1, 1) and out.flatten().tolist() == [4.0, 1.0]


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_split_prediction_inverts_the_target(prediction):
    d = GaussianDiffusion(num_timesteps=50, prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 2, 4, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 20, 49])
    x_t = d.q_sample(x0, t, noise)
    x0_hat, eps_hat = d.split_prediction(d.target(x0, t, noise), x_t, t)
    assert torch.allclose(x0_hat, x0, atol=1e-3) and torch.allclose(eps_hat, noise, atol=1e-3)


def test_channel_weights_weight_the_loss():
    d = GaussianDiffusion(num_timesteps=10, prediction="x0", loss="l1", channel_weights=[0.0, 1.0])
    x0 = torch.zeros(1, 2, 4, 4, 4)
    x0[:, 1] = 1.0

    class Zero(torch.nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    loss = d.loss(Zero(), x0, torch.tensor([3]), torch.randn_like(x0))
    assert loss.item() == pytest.approx(1.0)  # only channel 1 counts, and its error is exactly 1


@pytest.mark.parametrize("kwargs, match", [
    ({"schedule": "quadratic"}, "schedule"), ({"prediction": "score"}, "prediction"),
    ({"loss": "huber"}, "loss"), ({"channel_weights": [-1.0, 1.0]}, "channel_weights"),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianDiffusion(**kwargs)
