"""Option groups as typed dataclasses (``data.loader``, ``model.head`` ...): what a constructor
accepts for one, from YAML (jsonargparse builds the dataclass) or from Python (an instance, a dict
of its fields, or None for the defaults)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def as_options(cls: type[T], value: Any, where: str) -> T:
    """``value`` as an instance of the dataclass ``cls``; an error naming ``where`` (``data.loader``)
    and the unknown keys otherwise."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
        return cls(**value)
    raise TypeError(f"{where}: expected a {cls.__name__} or a dict, got {type(value).__name__}")
