"""A compact U-Net for 2D or 3D volumes, optionally conditioned on a diffusion timestep.

The same class serves as the diffusion denoiser (``time_conditioned=True``) and as a plain
segmentation network (``time_conditioned=False``). Widths, depth and where self-attention is used
all come from keyword arguments, so the config decides how heavy the network is.

Shapes: input ``(B, C_in, *spatial)`` with ``len(spatial) == spatial_dims``; every spatial size must be
divisible by ``2 ** (len(channel_mults) - 1)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn



class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that sends a single float32 volume on the CPU to oneDNN (mkldnn).

    PyTorch's CPU dispatch chooses its slow im2col kernel when the batch is one and ``N * C * D * H`` is small (a
    rule tuned on 2D images), so sampling one 32^3 volume ran about nine times slower per convolution than oneDNN,
    which gives the same result to float rounding. Larger batches already go to oneDNN."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (x.shape[0] == 1 and x.device.type == "cpu" and x.dtype == torch.float32 and self.padding_mode == "zeros"
                and isinstance(self.padding, tuple) and torch.backends.mkldnn.is_available()
                and torch.backends.mkldnn.enabled):
            return torch.ops.aten.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation,
                                                     self.groups)
        return super()._conv_forward(x, weight, bias)


_CONV = {2: nn.Conv2d, 3: Conv3d}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps ``(B,)`` -> ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _groups(channels: int, max_groups: int) -> int:
    g = min(max_groups, channels)
    while channels % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    """Two convolutions with GroupNorm/SiLU; the time embedding sets a per-channel scale and shift."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, emb_dim: int | None, groups: int, dropout: float):
        super().__init__()
        conv = _CONV[spatial_dims]
        self.norm1 = nn.GroupNorm(_groups(in_ch, groups), in_ch)
        self.conv1 = conv(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch) if emb_dim else None
        self.norm2 = nn.GroupNorm(_groups(out_ch, groups), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1)
        self.skip = conv(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None and emb is not None:
            scale, shift = self.emb(F.silu(emb)).chunk(2, dim=1)
            extra = (1,) * (h.ndim - 2)
            h = h * (1 + scale.view(*scale.shape, *extra)) + shift.view(*shift.shape, *extra)
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all spatial positions (used only at coarse levels)."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        tokens = rearrange(self.norm(x), "b c ... -> b (...) c")
        q, k, v = rearrange(self.qkv(tokens), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        attended = F.scaled_dot_product_attention(q, k, v)
        out = self.out(rearrange(attended, "b h n d -> b n (h d)"))
        out = out.transpose(1, 2).reshape(x.shape[0], -1, *spatial)
        return x + out


class _Level(nn.Module):
    """Residual blocks, each followed by its attention module (``nn.Identity`` where there is none)."""

    def __init__(self, blocks: list[ResBlock], attn: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attn)


class UNet(nn.Module):
    """U-Net with residual blocks, optional timestep conditioning and attention at chosen levels.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channel counts of input and output.
        base_channels: width of the first level; level ``i`` has ``base_channels * channel_mults[i]``.
        channel_mults: one multiplier per resolution level.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: indices of levels that get self-attention after each block (coarse ones are cheap).
        time_conditioned: whether ``forward`` takes a timestep.
        image_time: whether ``forward`` also takes a second timestep, the noise level of the image channel
            (``-1`` = clean), embedded like the first and added to it (decoupled image and mask noise levels).
        attention_heads, norm_groups, dropout: the usual knobs.
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int,
        out_channels: int,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (),
        time_conditioned: bool = True,
        image_time: bool = False,
        attention_heads: int = 4,
        norm_groups: int = 8,
        dropout: float = 0.0,
    ):
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not channel_mults:
            raise ValueError("channel_mults must name at least one level")
        bad = [i for i in attention_levels if not 0 <= i < len(channel_mults)]
        if bad:
            raise ValueError(f"attention_levels {bad} outside 0..{len(channel_mults) - 1}")
        if image_time and not time_conditioned:
            raise ValueError("image_time needs a time-conditioned network (time_conditioned=True)")
        conv = _CONV[spatial_dims]
        self.spatial_dims = spatial_dims
        self.num_levels = len(channel_mults)
        self.time_conditioned = time_conditioned
        emb_dim = 4 * base_channels if time_conditioned else None
        self.base_channels = base_channels
        if time_conditioned:
            self.time_mlp = nn.Sequential(
                nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )
        self.image_time = image_time
        if image_time:
            self.image_time_mlp = nn.Sequential(
                nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
            )

        def block(cin: int, cout: int) -> ResBlock:
            return ResBlock(spatial_dims, cin, cout, emb_dim, norm_groups, dropout)

        def attn(level: int, ch: int) -> nn.Module:
            return SelfAttention(ch, attention_heads, norm_groups) if level in attention_levels else nn.Identity()

        widths = [base_channels * m for m in channel_mults]
        self.stem = conv(in_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skip_widths = []
        ch = widths[0]
        for level, width in enumerate(widths):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(block(ch, width))
                ch = width
                attns.append(attn(level, ch))
            self.down.append(_Level(blocks, attns))
            skip_widths.append(ch)
            if level < self.num_levels - 1:
                self.downsamplers.append(conv(ch, ch, 3, stride=2, padding=1))
        self.mid = _Level([block(ch, ch), block(ch, ch)], [attn(self.num_levels - 1, ch), nn.Identity()])
        self.up = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(self.num_levels)):
            width = widths[level]
            blocks = [block(ch + skip_widths[level], width)]
            ch = width
            attns = [attn(level, ch)]
            for _ in range(num_res_blocks):
                blocks.append(block(ch, width))
                attns.append(attn(level, ch))
            self.up.append(_Level(blocks, attns))
            if level > 0:
                self.upsamplers.append(conv(ch, widths[level - 1], 3, padding=1))
                ch = widths[level - 1]
        self.head = nn.Sequential(nn.GroupNorm(_groups(ch, norm_groups), ch), nn.SiLU(), conv(ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    @staticmethod
    def _run(level: _Level, h: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        for blk, attn in zip(level.blocks, level.attn):
            h = attn(blk(h, emb))
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None,
                t_image: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(B, C_in, *spatial)``; ``t``: ``(B,)`` timesteps (required when time-conditioned);
        ``t_image``: ``(B,)`` the image channel's timesteps, ``-1 .. T-1`` (required with ``image_time``)."""
        factor = 2 ** (self.num_levels - 1)
        if x.ndim != self.spatial_dims + 2 or any(s % factor for s in x.shape[2:]):
            raise ValueError(
                f"expected input (B, C, {'x'.join(['S'] * self.spatial_dims)}) with sizes divisible by {factor}, "
                f"got {tuple(x.shape)}"
            )
        emb = None
        if self.time_conditioned:
            if t is None:
                raise ValueError("this network is time-conditioned: pass the timesteps t")
            emb = self.time_mlp(timestep_embedding(t, self.base_channels))
            if self.image_time:
                if t_image is None:
                    raise ValueError("this network takes the image's noise level too: pass t_image")
                emb = emb + self.image_time_mlp(timestep_embedding(t_image + 1, self.base_channels))
        h = self.stem(x)
        skips = []
        for level, lvl in enumerate(self.down):
            h = self._run(lvl, h, emb)
            skips.append(h)
            if level < self.num_levels - 1:
                h = self.downsamplers[level](h)
        h = self._run(self.mid, h, emb)
        for i, lvl in enumerate(self.up):
            h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(lvl, h, emb)
            if i < self.num_levels - 1:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
                h = self.upsamplers[i](h)
        return self.head(h)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
