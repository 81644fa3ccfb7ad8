"""Backbones: one factory (:func:`create_backbone`) over one adapter per family.

- :mod:`~nml.models.backbones.factory`: :class:`BackboneConfig`, :class:`Backbone`, :func:`create_backbone`
- :mod:`~nml.models.backbones.family`: the adapter base class and its registry
- :mod:`~nml.models.backbones.timm_family`, :mod:`~nml.models.backbones.open_clip_family`,
  :mod:`~nml.models.backbones.text_families`: the families
- :mod:`~nml.models.backbones.weights`: checkpoints and state dicts from local files
"""

from nml.models.backbones import open_clip_family, text_families, timm_family  # noqa: F401  (register the families)
from nml.models.backbones.factory import Backbone, BackboneConfig, create_backbone, load_export
from nml.models.backbones.family import BackboneFamily, get_family, list_families, register_family
from nml.models.backbones.weights import (
    EXPORT_META,
    EXPORT_WEIGHTS,
    check_checkpoint_file,
    load_state,
    read_checkpoint,
    resolve_checkpoint,
)

__all__ = [
    "EXPORT_META",
    "EXPORT_WEIGHTS",
    "Backbone",
    "BackboneConfig",
    "BackboneFamily",
    "check_checkpoint_file",
    "create_backbone",
    "get_family",
    "list_families",
    "load_export",
    "load_state",
    "read_checkpoint",
    "register_family",
    "resolve_checkpoint",
]
