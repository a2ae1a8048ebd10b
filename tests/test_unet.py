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


@pytest.mark.parametrize("kernel, stride", [(3, 1), (3, 2), (1, 1)])
def test_single_volume_convolution_through_onednn_matches_the_reference(kernel, stride):
    """``unet.Conv3d`` sends a batch of one to oneDNN on the CPU; values and gradients match PyTorch's own kernel."""
    from diffatlas.nets.unet import Conv3d
    torch.manual_seed(0)
    conv = Conv3d(5, 7, kernel, stride=stride, padding=kernel // 2)
    x = torch.randn(1, 5, 12, 10, 8, requires_grad=True)
    out = conv(x)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.conv3d(ref_x, conv.weight, conv.bias, stride, kernel // 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    grad_w = conv.weight.grad.clone()
    conv.weight.grad = None
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grad_w, conv.weight.grad, atol=1e-3, rtol=1e-4)
    torch.backends.mkldnn.enabled = False                 # the plain path, when oneDNN is turned off
    try:
        torch.testing.assert_close(conv(x), ref, atol=1e-5, rtol=1e-5)
    finally:
        torch.backends.mkldnn.enabled = True
