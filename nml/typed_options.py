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


def flat_key_moves(groups: dict[str, type]) -> dict[str, str]:
    """``field -> group.field`` for every field of the option groups: where a key of the flat layout
    (``batch_size``) now lives (``loader.batch_size``)."""
    return {f.name: f"{group}.{f.name}" for group, cls in groups.items() for f in fields(cls)}


def moved_keys(section: Any, moves: dict[str, str], name: str) -> list[str]:
    """``name.old -> name.new`` for each flat key of the old layout in a config section (its
    ``init_args``, or the section itself)."""
    args = section.get("init_args", section) if isinstance(section, dict) else {}
    if not isinstance(args, dict):
        return []
    return [f"{name}.{k} -> {name}.{moves[k]}" for k in args if k in moves]
