import pytest
import torch

from diffatlas.data.datasets import PreparedData
from diffatlas.data.phantom import write_phantom_dataset
from diffatlas.nets.unet import UNet


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


def tiny_unet(channels: int, time_conditioned: bool = True, spatial_dims: int = 3) -> UNet:
    torch.manual_seed(0)
    return UNet(spatial_dims=spatial_dims, in_channels=channels, out_channels=channels, base_channels=8,
                channel_mults=(1, 2), attention_levels=(1,), attention_heads=2, norm_groups=4,
                time_conditioned=time_conditioned)


@pytest.fixture()
def one_thread():
    """One torch thread for tests that train: on a busy 2-core machine, spinning intra-op threads slow them
    tenfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_ct_phantoms(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    """Three 16^3 CT phantoms (``ct_0000`` .. ``ct_0002``) on a 128 mm field of view."""
    root = tmp_path_factory.mktemp("ct_phantoms")
    write_phantom_dataset(root, 3, "ct", shape=(16, 16, 16), fov_mm=128.0, seed=0)
    return PreparedData(root)
