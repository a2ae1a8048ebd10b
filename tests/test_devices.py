"""Every method follows the run's device: ``auto`` by default, and the comparison passes its own device on."""

from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diffatlas.methods.icf import ICF
from diffatlas.methods.icmd import ICMD

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_method_configs_leave_the_device_to_the_run():
    for path in sorted((CONFIGS / "method").glob("*.yaml")):
        device = yaml.safe_load(path.read_text(encoding="utf-8")).get("device", "auto")
        assert device == "auto", f"{path.name} fixes device: {device}"


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_compare_passes_its_device_to_the_trained_baselines(device):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("compare", overrides=[f"device={device}"])
    baselines = OmegaConf.to_container(cfg.baselines, resolve=True)
    assert baselines["icf"]["device"] == baselines["icmd"]["device"] == device


@pytest.mark.parametrize("method", [ICF, ICMD])
def test_baselines_resolve_auto_and_refuse_a_missing_gpu(method, tmp_path):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert method(out_dir=tmp_path).device.type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            method(out_dir=tmp_path, device="cuda")


def _segmenter(bf16):
    from diffatlas.data.layout import ChannelLayout
    from diffatlas.diffusion.gaussian import GaussianDiffusion
    from diffatlas.methods.diffatlas import DiffAtlasSegmenter
    from diffatlas.sampling.plans import make_plan
    from tests.conftest import tiny_unet

    net = tiny_unet(3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():  # the output layer starts at zero: give the network something to say
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    diffusion = GaussianDiffusion(num_timesteps=20, prediction="x0")
    return DiffAtlasSegmenter(net, diffusion, ChannelLayout(2), make_plan("ddim", 20, num_steps=4),
                              sdf_clip=0.2, bf16=bf16)


def test_bf16_sampling_is_an_option_close_to_float32():
    images = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    full = _segmenter(False).sample_sdf(images, ["a", "b"])
    half = _segmenter(True).sample_sdf(images, ["a", "b"])
    assert full.dtype == half.dtype == torch.float32
    assert torch.equal(half, _segmenter(True).sample_sdf(images, ["a", "b"]))
    assert not torch.equal(half, full)
    assert (half - full).abs().max() < 0.05  # the SDF clip is 0.2
