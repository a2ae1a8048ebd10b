import pytest
import torch

from tests.conftest import tiny_unet


@pytest.mark.parametrize("spatial_dims, shape", [(3, (2, 6, 16, 16, 16)), (2, (2, 6, 32, 32))])
def test_shapes_and_gradients(spatial_dims, shape):
    net = tiny_unet(6, spatial_dims=spatial_dims)
    torch.nn.init.normal_(net.head[-1].weight)  # the zero-initialised head would hide the rest
    x = torch.randn(shape, requires_grad=True)
    out = net(x, torch.tensor([3, 250]))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_time_conditioning_changes_the_output():
    net = tiny_unet(2)
    torch.nn.init.normal_(net.head[-1].weight)
    x = torch.randn(1, 2, 16, 16, 16)
    assert not torch.allclose(net(x, torch.tensor([0])), net(x, torch.tensor([200])))


def test_plain_segmenter_needs_no_time():
    net = tiny_unet(3, time_conditioned=False)
    assert net(torch.randn(1, 3, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_bad_input_is_explained():
    net = tiny_unet(2)
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(1, 2, 15, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="pass the timesteps"):
        net(torch.randn(1, 2, 16, 16, 16))
