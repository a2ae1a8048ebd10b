"""Reconstruction guidance: nudge the mask channels so that the clean image the denoiser predicts from the
current state agrees with the scan being segmented.

Agreement is measured by local normalised cross-correlation (LNCC), which ignores local brightness and contrast
(and, squared, their sign), so it also works when the scan's modality differs from the training data's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lncc(a: torch.Tensor, b: torch.Tensor, window: int = 5, eps: float = 1e-5) -> torch.Tensor:
    """Mean squared local normalised cross-correlation of each sample pair.

    For every voxel, over the ``window``-wide cube around it (truncated at the border),
    ``cc = cov(a, b)^2 / (var(a) var(b) + eps)``, which lies in [0, 1) and is 1 where ``b`` is locally an
    affine function of ``a``.

    Args:
        a, b: ``(B, 1, *spatial)`` with 2 or 3 spatial axes.
        window: odd side length of the local window, in voxels.
        eps: keeps flat windows (zero variance) at cc = 0.

    Returns:
        ``(B,)``: the voxel mean of ``cc`` for each sample.
    """
    if a.shape != b.shape or a.ndim not in (4, 5) or a.shape[1] != 1:
        raise ValueError(f"expected two (B, 1, *spatial) tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    pool = F.avg_pool3d if a.ndim == 5 else F.avg_pool2d

    def mean(x: torch.Tensor) -> torch.Tensor:
        return pool(x, window, stride=1, padding=window // 2, count_include_pad=False)

    mu_a, mu_b = mean(a), mean(b)
    cov = mean(a * b) - mu_a * mu_b
    var_a = (mean(a * a) - mu_a**2).clamp(min=0)
    var_b = (mean(b * b) - mu_b**2).clamp(min=0)
    cc = cov**2 / (var_a * var_b + eps)
    return cc.flatten(1).mean(dim=1)


class ReconstructionGuidance:
    """Gradient ascent on ``LNCC(x0_hat[image], input)`` with respect to the mask channels of ``x_t``.

    The correction for sample ``b`` is ``scale * g_b / rms(g_b)``, where ``g_b`` is the gradient restricted to
    the mask channels: ``scale`` is the root-mean-square step in SDF units per denoising move, whatever the
    gradient's raw size. The image channel is never changed.

    Args:
        image: ``(B, 1, *spatial)`` the scans being segmented, in [-1, 1].
        image_channel: slice of the image in the state (``ChannelLayout.image``).
        mask_channels: slice of the SDFs in the state (``ChannelLayout.masks``).
        scale: step size; must be positive (a scale of 0 means "no guidance": do not build this object).
        window: LNCC window side in voxels (odd).
    """

    def __init__(self, image: torch.Tensor, image_channel: slice, mask_channels: slice, *, scale: float,
                 window: int = 5):
        if scale <= 0:
            raise ValueError(f"guidance scale must be > 0 (0 disables guidance and installs none), got {scale}")
        if window < 1 or window % 2 == 0:
            raise ValueError(f"guidance window must be a positive odd number, got {window}")
        self.image = image
        self.image_channel = image_channel
        self.mask_channels = mask_channels
        self.scale = float(scale)
        self.window = int(window)

    def __call__(self, x_t: torch.Tensor, x0_hat: torch.Tensor, t: int) -> torch.Tensor:
        score = lncc(x0_hat[:, self.image_channel], self.image, self.window).sum()
        (grad,) = torch.autograd.grad(score, x_t)
        step = torch.zeros_like(x_t)
        g = grad[:, self.mask_channels]
        rms = g.flatten(1).pow(2).mean(dim=1).sqrt().view(-1, *([1] * (g.ndim - 1)))
        step[:, self.mask_channels] = self.scale * g / (rms + 1e-12)
        return step.detach()
