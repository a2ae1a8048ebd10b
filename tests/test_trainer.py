import pytest
import torch

from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.training.trainer import LAST, Trainer, TrainSettings, diffusion_objective, load_checkpoint, random_flip
from tests.conftest import tiny_unet


def _data():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 16, 16, 16, generator=g) * 2 - 1 for _ in range(4)]


def _trainer(out_dir, steps=4, **kw):
    settings = TrainSettings(steps=steps, batch_size=2, grad_accum=2, lr=1e-3, warmup_steps=1, ema_decay=0.9,
                             checkpoint_every=100, flip_axes=(0, 2), seed=5, **kw)
    diffusion = GaussianDiffusion(num_timesteps=10, prediction="v", loss="l2")
    return Trainer(tiny_unet(3), diffusion_objective(diffusion), _data(), out_dir, settings, config={"k": [1, 2]})


def test_interrupted_and_resumed_training_equals_uninterrupted(tmp_path):
    full = _trainer(tmp_path / "full")
    full.fit()
    part = _trainer(tmp_path / "part")
    part.fit(stop_at=2)
    assert (tmp_path / "part" / LAST).is_file()
    resumed = _trainer(tmp_path / "part")  # a fresh process would build it like this
    resumed.fit()
    assert resumed.step == full.step == 4
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in full.ema.state_dict().items():
        assert torch.equal(value, resumed.ema.state_dict()[key]), key
    assert not torch.equal(full.ema.state_dict()["stem.weight"], full.model.state_dict()["stem.weight"])


def test_checkpoint_holds_plain_types_and_the_true_step(tmp_path):
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit()
    ckpt = load_checkpoint(tmp_path / LAST)  # weights_only=True inside
    assert ckpt["step"] == 2 and ckpt["config"] == {"k": [1, 2]}
    assert set(ckpt) >= {"model", "ema", "optimizer", "step", "generator", "settings", "config"}
    assert not list(tmp_path.glob(".*.tmp"))
    assert list((tmp_path / "tb").glob("events.out.tfevents*"))


def test_missing_checkpoint_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        load_checkpoint(tmp_path / "none.pt")


def test_learning_rate_schedule():
    s = TrainSettings(steps=10, lr=1.0, warmup_steps=2, lr_schedule="cosine", min_lr_ratio=0.1)
    assert [round(s.lr_at(i), 3) for i in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert s.lr_at(10) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainSettings(lr_schedule="step")


def test_random_flip_is_seeded_and_flips_whole_samples():
    x = torch.arange(2 * 1 * 4 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4, 4)
    a = random_flip(x, (0, 1, 2), 0.5, torch.Generator().manual_seed(3))
    b = random_flip(x, (0, 1, 2), 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(random_flip(x, (0,), 1.0, torch.Generator()), torch.flip(x, dims=[2]))
    assert torch.equal(random_flip(x, (), 1.0, torch.Generator()), x)
