import pytest
import torch

from diffatlas.data.layout import ChannelLayout
from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.methods.diffatlas import DiffAtlasSegmenter
from diffatlas.sampling.guidance import ReconstructionGuidance
from diffatlas.sampling.loop import ImageReplacement, make_generators, reverse_process
from diffatlas.sampling.plans import TimestepPlan, ddim_plan, ddpm_plan, repaint_plan
from tests.conftest import tiny_unet

T = 20
LAYOUT = ChannelLayout(2)


class Recorder(torch.nn.Module):
    """Wraps a denoiser and keeps the image channel of every state it is called on."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x, t):
        self.seen.append((int(t[0]), x[:, LAYOUT.image].detach().clone()))
        return self.inner(x, t)


def _net():
    net = tiny_unet(LAYOUT.num_channels)
    torch.nn.init.normal_(net.head[-1].weight, std=0.1)
    return net


PLANS = [(ddpm_plan(T), False), (ddim_plan(T, 5, eta=0.5), False), (repaint_plan(T, 4, 2), False),
         (ddpm_plan(T, start_t=6), False), (ddim_plan(T, 3, start_t=12), False),
         (repaint_plan(T, 2, 2, start_t=5), False), (ddim_plan(T, 4, eta=0.5), True),
         (repaint_plan(T, 2, 2, start_t=5), True)]


@pytest.mark.parametrize("plan, guided", PLANS, ids=lambda p: p.name if hasattr(p, "name") else f"guided={p}")
def test_image_channel_is_q_sample_of_the_input_at_every_visited_step(plan, guided):
    diffusion = GaussianDiffusion(num_timesteps=T, prediction="x0")
    image = torch.rand(1, 1, 16, 16, 16) * 2 - 1
    net = Recorder(_net())
    (g,) = make_generators([7])
    x_start = torch.randn(1, LAYOUT.num_channels, 16, 16, 16, generator=g)
    guidance = ReconstructionGuidance(image, LAYOUT.image, LAYOUT.masks, scale=0.05) if guided else None
    states = list(reverse_process(net, diffusion, plan, x_start, [g], guidance=guidance,
                                  hooks=[ImageReplacement(diffusion, image, LAYOUT.image)]))
    # replay the generator: start noise, then per move the replacement noise and the step's own noise
    (replay,) = make_generators([7])
    torch.randn(x_start.shape, generator=replay)
    expected = {}
    for t, s in zip(plan.timesteps[:-1], plan.timesteps[1:]):
        noise = torch.randn(image.shape[1:], generator=replay)[None]
        expected.setdefault(t, []).append(diffusion.q_sample(image, torch.tensor([t]), noise))
        if s > t or (s >= 0 and plan.eta > 0):
            torch.randn(x_start.shape[1:], generator=replay)
    for state in states[:-1]:
        want = expected[state.t].pop(0)
        assert torch.allclose(state.x[:, LAYOUT.image], want, atol=1e-6)
    assert len(net.seen) == plan.network_evaluations
    assert torch.equal(states[-1].x[:, LAYOUT.image], image)  # the clean image at t = -1
    assert [s.t for s in states[:-1]] == list(plan.timesteps[:-1])


def test_repaint_up_moves_draw_from_q_of_the_next_step():
    """Going up from t to t + 1 is x_{t+1} = sqrt(1 - beta_{t+1}) x_t + sqrt(beta_{t+1}) z (Ho et al. eq. 2)."""
    diffusion = GaussianDiffusion(num_timesteps=T, prediction="x0")
    plan = TimestepPlan((5, 6, 7, 6, 5, 4, 3, 2, 1, 0, -1))
    (g,) = make_generators([3])
    x_start = torch.randn(1, LAYOUT.num_channels, 16, 16, 16, generator=g)
    states = list(reverse_process(_net(), diffusion, plan, x_start, [g]))
    (replay,) = make_generators([3])
    torch.randn(x_start.shape, generator=replay)
    for i, t in ((0, 5), (1, 6)):
        assert states[i].t == t and states[i].x0_hat is None and states[i].t_next == t + 1
        beta = diffusion.betas[t + 1]
        want = (1 - beta).sqrt() * states[i].x + beta.sqrt() * torch.randn(x_start.shape[1:], generator=replay)
        assert torch.allclose(states[i + 1].x, want, atol=1e-6)
    assert states[2].t == 7 and states[2].x0_hat is not None


def _segmenter(seed):
    diffusion = GaussianDiffusion(num_timesteps=T, prediction="x0")
    return DiffAtlasSegmenter(_net(), diffusion, LAYOUT, ddim_plan(T, 4, eta=1.0), sdf_clip=0.2, seed=seed)


def test_same_seed_same_labels_and_batch_independence():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 1, 16, 16, 16, generator=g) * 2 - 1
    a = _segmenter(3).sample_sdf(images, ["a", "b"])
    b = _segmenter(3).sample_sdf(images, ["a", "b"])
    assert torch.equal(a, b)
    alone = _segmenter(3).sample_sdf(images[1:], ["b"])
    # a case's noise does not depend on its batch mates (only float rounding of batched convolutions does)
    assert (alone[0] - a[1]).abs().max() < 1e-2
    other = _segmenter(4).sample_sdf(images, ["a", "b"])
    assert not torch.allclose(other, a)
    labels = _segmenter(3).segment(images, ["a", "b"])
    assert labels.shape == (2, 16, 16, 16) and labels.dtype == torch.int64
    assert a.abs().max() <= 0.2 + 1e-6


def test_segmenter_rejects_bad_input():
    seg = _segmenter(0)
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        seg.segment(torch.zeros(1, 2, 16, 16, 16), ["a"])
    with pytest.raises(ValueError, match="case ids"):
        seg.segment(torch.zeros(2, 1, 16, 16, 16), ["a"])
