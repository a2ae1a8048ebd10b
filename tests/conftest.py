import pytest
import torch

from diffatlas.nets.unet import UNet


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


def tiny_unet(channels: int, time_conditioned: bool = True, spatial_dims: int = 3) -> UNet:
    torch.manual_seed(0)
    return UNet(spatial_dims=spatial_dims, in_channels=channels, out_channels=channels, base_channels=8,
                channel_mults=(1, 2), attention_levels=(1,), attention_heads=2, norm_groups=4,
                time_conditioned=time_conditioned)
