"""Checking a mode given by name (in a config or a constructor) against its Enum."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)


def parse_option(enum_cls: type[E], value: str, what: str) -> E:
    """``enum_cls(value)``, or a ``ValueError`` naming ``what`` and the allowed values."""
    try:
        return enum_cls(value)
    except ValueError:
        allowed = ", ".join(repr(e.value) for e in enum_cls)
        raise ValueError(f"unknown {what} {value!r}; allowed: {allowed}") from None
