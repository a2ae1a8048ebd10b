import pytest
import torch

from diffatlas.diffusion.gaussian import GaussianDiffusion
from diffatlas.training.trainer import LAST, Trainer, TrainSettings, diffusion_objective, load_checkpoint, random_flip
from tests.conftest import tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_extras_are_stored_in_every_checkpoint_and_not_compared_on_resume(tmp_path):
    trainer = _trainer(tmp_path, steps=2)
    trainer.extras = {"localiser": [{"case": "a", "image": torch.ones(2, 2, 2)}]}
    trainer.fit()
    ckpt = load_checkpoint(tmp_path / LAST)
    assert ckpt["localiser"][0]["case"] == "a" and torch.equal(ckpt["localiser"][0]["image"], torch.ones(2, 2, 2))
    resumed = _trainer(tmp_path, steps=3)   # other extras (here none): resumes, and its checkpoints hold its own
    resumed.fit()
    assert resumed.step == 3 and "localiser" not in load_checkpoint(tmp_path / LAST)


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


_GPU_TAGS = {"on": False}


def _tag_as_gpu(storage):
    return "cuda:0" if _GPU_TAGS["on"] else None


torch.serialization.register_package(1, _tag_as_gpu, lambda storage, location: None)


def _save_as_from_gpu(path, payload):
    """Write ``payload`` the way a CUDA run writes it: every storage tagged ``cuda:0`` in the file."""
    _GPU_TAGS["on"] = True
    try:
        torch.save(payload, path)
    finally:
        _GPU_TAGS["on"] = False


def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu(tmp_path):
    full = _trainer(tmp_path / "full")
    full.fit()
    part = _trainer(tmp_path / "part")
    part.fit(stop_at=2)
    ckpt_path = tmp_path / "part" / LAST
    _save_as_from_gpu(ckpt_path, load_checkpoint(ckpt_path))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(ckpt_path, weights_only=True)  # the file's tensors really claim a GPU
    resumed = _trainer(tmp_path / "part")
    resumed.fit()
    assert resumed.seed_stream.get_state().device.type == "cpu"
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_optimizer_step_counts_land_where_the_optimizer_keeps_them(tmp_path):
    trainer = _trainer(tmp_path, steps=1)
    trainer.fit()
    ckpt = load_checkpoint(tmp_path / LAST)
    for state in ckpt["optimizer"]["state"].values():  # as a fused optimizer saves them: float32 tensors
        state["step"] = state["step"].to(torch.float64)
    ckpt["optimizer"]["param_groups"][0]["foreach"] = True
    fresh = _trainer(tmp_path / "other", steps=2)
    fresh.load_state(ckpt)
    assert fresh.optimizer.param_groups[0]["foreach"] is None
    steps = [s["step"] for s in fresh.optimizer.state.values()]
    assert steps and all(s.device.type == "cpu" and s.dtype == torch.float32 and float(s) == 1.0 for s in steps)
    fresh.fit()
    assert fresh.step == 2


def test_vectorised_flips_follow_the_per_sample_draws():
    x = torch.randn(8, 2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    axes = (0, 2)
    out = random_flip(x, axes, 0.5, torch.Generator().manual_seed(7))
    draws = torch.rand(8, len(axes), generator=torch.Generator().manual_seed(7)) < 0.5
    assert 0 < int(draws.sum()) < draws.numel()
    for b in range(8):
        dims = [2 + a for a, d in zip(axes, draws[b]) if d]
        expected = torch.flip(x[b : b + 1], dims=dims)[0] if dims else x[b]
        assert torch.equal(out[b], expected), b


def _noise_augment(calls):
    def augment(batch, generator):
        calls.append((tuple(batch.shape), generator))
        return batch + 0.05 * torch.randn(batch.shape, generator=generator, device=batch.device)

    return augment


def test_augmentation_runs_on_every_micro_batch_and_resumes_exactly(tmp_path):
    def make(out_dir, calls):
        settings = TrainSettings(steps=4, batch_size=2, grad_accum=2, lr=1e-3, ema_decay=0.9, seed=5,
                                 checkpoint_every=100, flip_axes=(1,))
        diffusion = GaussianDiffusion(num_timesteps=10, prediction="x0", loss="l1")
        return Trainer(tiny_unet(3), diffusion_objective(diffusion), _data(), out_dir, settings,
                       augment=_noise_augment(calls))

    calls = []
    full = make(tmp_path / "full", calls)
    full.fit()
    assert len(calls) == 8 and all(shape == (2, 3, 16, 16, 16) and g is full.generator for shape, g in calls)
    make(tmp_path / "part", []).fit(stop_at=3)
    resumed = make(tmp_path / "part", [])
    resumed.fit()
    plain = _trainer(tmp_path / "plain")
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert not torch.equal(full.model.state_dict()["stem.weight"], plain.model.state_dict()["stem.weight"])


def test_a_non_finite_loss_stops_training_before_a_checkpoint(tmp_path):
    def broken(model, batch, generator):
        return model(batch, torch.zeros(batch.shape[0], dtype=torch.long)).mean() * float("nan")

    settings = TrainSettings(steps=3, batch_size=1, log_every=2, checkpoint_every=2)
    trainer = Trainer(tiny_unet(3), broken, _data(), tmp_path, settings)
    with pytest.raises(FloatingPointError, match="steps 1-2"):
        trainer.fit()
    assert not (tmp_path / LAST).exists()


def test_logged_loss_is_the_mean_of_the_steps_since_the_last_log(tmp_path):
    losses = []

    def counting(model, batch, generator):
        loss = model(batch, torch.zeros(batch.shape[0], dtype=torch.long)).pow(2).mean()
        losses.append(float(loss.detach()))
        return loss

    settings = TrainSettings(steps=3, batch_size=1, grad_accum=2, log_every=2, checkpoint_every=100)
    scalars = Trainer(tiny_unet(3), counting, _data(), tmp_path, settings).fit()
    assert len(losses) == 6
    assert scalars["loss"] == pytest.approx(sum(losses[4:]) / 2, rel=1e-6)


def test_channels_last_trains_to_the_same_weights(tmp_path):
    plain = _trainer(tmp_path / "plain", steps=2)
    plain.fit()
    fast = _trainer(tmp_path / "fast", steps=2, channels_last=True)
    fast.fit()
    assert fast.model.stem.weight.is_contiguous(memory_format=torch.channels_last_3d)
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(fast.model.state_dict()[key], value, rtol=1e-4, atol=1e-5)
