"""The channel layout of the joint image-mask tensor, named once for the whole package.

A sample is a float tensor of shape ``(1 + K, *spatial)``: channel 0 holds the image scaled to
[-1, 1], channels ``1 .. K`` hold one signed distance map per structure (negative inside).
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_CHANNEL = 0


@dataclass(frozen=True)
class ChannelLayout:
    """Where the image and the K mask channels live in a ``(B, 1 + K, ...)`` tensor."""

    num_structures: int

    def __post_init__(self) -> None:
        if self.num_structures < 1:
            raise ValueError(f"num_structures must be >= 1, got {self.num_structures}")

    @property
    def num_channels(self) -> int:
        return 1 + self.num_structures

    @property
    def image(self) -> slice:
        return slice(IMAGE_CHANNEL, IMAGE_CHANNEL + 1)

    @property
    def masks(self) -> slice:
        return slice(IMAGE_CHANNEL + 1, IMAGE_CHANNEL + 1 + self.num_structures)
