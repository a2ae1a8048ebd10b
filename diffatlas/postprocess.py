"""Label-map postprocessing, chosen per structure: keep the largest connected component, fill holes.

Both work on one structure at a time and never take voxels from another structure: the voxels removed from a
structure become background, and a filled hole takes only background voxels (so filling the myocardium does not
swallow the left-ventricle cavity it encloses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)   # 26-neighbourhood in 3D


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean 3D mask (an empty mask stays empty)."""
    components, count = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its enclosed background cavities filled (6-connected background, 3D)."""
    return ndimage.binary_fill_holes(mask)


@dataclass(frozen=True)
class Postprocessing:
    """Which structures get which step.

    Args:
        structures: the label names ``1..K`` in order.
        largest_component: names of the structures reduced to their largest connected component.
        fill_holes: names of the structures whose enclosed holes are filled with background voxels.
    """

    structures: tuple[str, ...]
    largest_component: tuple[str, ...] = ()
    fill_holes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for what, names in (("largest_component", self.largest_component), ("fill_holes", self.fill_holes)):
            unknown = [name for name in names if name not in self.structures]
            if unknown:
                raise ValueError(f"postprocess.{what} names {unknown}, which are not structures; "
                                 f"allowed: {list(self.structures)}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, structures: Sequence[str]) -> "Postprocessing":
        """From ``{largest_component: [...], fill_holes: [...]}``; ``all`` (or ``[all]``) means every structure."""
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - {"largest_component", "fill_holes"})
        if unknown:
            raise ValueError(f"unknown postprocess keys {unknown}; allowed: largest_component, fill_holes")
        return cls(tuple(structures), _names(cfg.get("largest_component"), structures),
                   _names(cfg.get("fill_holes"), structures))

    @property
    def active(self) -> bool:
        return bool(self.largest_component or self.fill_holes)

    def describe(self) -> dict[str, list[str]]:
        return {"largest_component": list(self.largest_component), "fill_holes": list(self.fill_holes)}

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        """The postprocessed copy of a label map ``(X, Y, Z)`` (0 background, 1..K)."""
        out = np.array(labels, copy=True)
        for k, name in enumerate(self.structures, start=1):
            if name in self.largest_component:
                mask = out == k
                out[mask & ~largest_component(mask)] = 0
            if name in self.fill_holes:
                out[fill_holes(out == k) & (out == 0)] = k
        return out


def _names(value: Any, structures: Sequence[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    if "all" in items:
        return tuple(structures)
    return tuple(str(item) for item in items)
