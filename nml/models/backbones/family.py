"""What a backbone family is: one adapter class per library, looked up by name.

A family knows how to build a model from a :class:`~nml.models.backbones.factory.BackboneConfig`,
what its features and logits are, the input it expects, its evaluation crop, the names of its
classifier head and which image transforms (:mod:`nml.data.transforms`) suit it. Everything that
differs between libraries lives in the family's class; the factory and the rest of nml only call
these methods (as timm's ``create_model`` looks a model up in its registry instead of branching).

Adding a family: subclass :class:`BackboneFamily`, decorate it with :func:`register_family`, and
import its module in ``nml/models/backbones/__init__.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from nml.models.backbones.factory import BackboneConfig

_FAMILIES: dict[str, BackboneFamily] = {}


class BackboneFamily:
    """The adapter of one library. Stateless: one instance per family, shared."""

    name: ClassVar[str]
    transforms: ClassVar[str]  # the transform family in nml.data.transforms (its name)
    features_description: ClassVar[str]  # what features() returns, written into encoder.json
    modality: ClassVar[str] = "image"  # what features() takes: image tensors, or documents ("text")

    def instantiate(self, config: BackboneConfig) -> nn.Module:
        raise NotImplementedError

    def feature_dim(self, model: nn.Module, config: BackboneConfig) -> int:
        raise NotImplementedError

    def features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def has_classifier(self, config: BackboneConfig) -> bool:
        return False

    def logits(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model(images)

    def preprocessing(self, model: nn.Module) -> tuple[int | None, list | None, list | None]:
        """(image size, mean, std) the architecture expects."""
        raise NotImplementedError

    def crop_pct(self, model: nn.Module) -> float | None:
        """The evaluation centre-crop fraction the architecture was trained with, if it has one."""
        return None

    def head_names(self, model: nn.Module) -> list[str]:
        """Module names of the classifier head (not part of an exported encoder)."""
        return []

    def pretraining_classes(self, config: BackboneConfig, hparams: dict) -> int | None:
        """The class count a pre-training run of this family trained on (None: not a classifier)."""
        return None

    def pop_truncated(self, model: nn.Module) -> tuple[int, int | None] | None:
        """(inputs truncated since the last call, the limit) for families that truncate (text)."""
        return None


def register_family(cls: type[BackboneFamily]) -> type[BackboneFamily]:
    """Class decorator: make ``cls`` the adapter of ``cls.name``."""
    if cls.name in _FAMILIES:
        raise ValueError(f"backbone family {cls.name!r} is already registered")
    _FAMILIES[cls.name] = cls()
    return cls


def get_family(name: str) -> BackboneFamily:
    """The adapter registered under ``name``; an error listing the known ones otherwise."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"backbone library: expected one of {list_families()}, got {name!r}") from None


def list_families() -> list[str]:
    return sorted(_FAMILIES)
