"""The one backbone factory: pre-training, tuning, feature extraction and spectra all build here.

:func:`create_backbone` is the one public builder. A backbone is a model of a registered family
(:mod:`nml.models.backbones.family`: ``timm`` by name, ``open_clip`` by name or custom model-config
dict) or an nml export (``nml export``). Weights come only from local files (a state dict, a
timm/open_clip checkpoint, or an nml export directory): nothing is fetched from a hub. Methods are
named for what they return: :meth:`Backbone.features` (the feature extractor used everywhere later)
and :meth:`Backbone.logits` (classifiers); what each means is the family's (timm: pooled
pre-logits; open_clip: ``encode_image``, unnormalised).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from nml.models.backbones.family import BackboneFamily, get_family
from nml.models.backbones.weights import EXPORT_META, EXPORT_WEIGHTS, load_into, load_state

SPEC_KEYS = ("library", "name", "model_cfg", "pretrained", "partial", "kwargs")


@dataclass
class BackboneConfig:
    """A JSON-serialisable description of a backbone (stored in checkpoints and exports)."""

    library: str  # a registered family: timm, open_clip
    name: str
    model_cfg: dict | None = None  # open_clip custom config: embed_dim, vision_cfg, text_cfg
    num_classes: int = 0  # classifier head (0: features only)
    kwargs: dict = field(default_factory=dict)  # extra create_model keyword arguments

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def family(self) -> BackboneFamily:
        return get_family(self.library)


class Backbone(nn.Module):
    """A built model plus what nml needs to know about it.

    ``features(x) -> (B, D)`` (also what calling the module returns), ``logits(x) -> (B, C)`` for
    classifiers, ``preprocessing()`` the input it expects, and ``export_meta`` (the ``encoder.json``
    of an export it was loaded from, else None). What each means comes from the family adapter.
    """

    def __init__(self, config: BackboneConfig, model: nn.Module, export_meta: dict | None = None):
        super().__init__()
        self.config, self.model, self.export_meta = config, model, export_meta
        self.family = config.family
        self.feature_dim = self.family.feature_dim(model, config)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D): the family's features (timm pooled pre-logits; open_clip ``encode_image``)."""
        return self.family.features(self.model, images)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C) class logits of a classifier (a timm model built with ``num_classes`` > 0)."""
        if not self.family.has_classifier(self.config):
            raise ValueError(
                f"backbone {self.config.name!r} has no classifier head (library {self.config.library}, "
                f"num_classes {self.config.num_classes}): use features()"
            )
        return self.family.logits(self.model, images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def preprocessing(self) -> tuple[int | None, list | None, list | None]:
        """(image size, mean, std) the backbone expects: an export's recorded training data, else the
        architecture's defaults (timm ``pretrained_cfg``; open_clip its image size and the OpenAI
        statistics)."""
        if self.export_meta is not None:
            return tuple(self.export_meta.get(k) for k in ("image_size", "mean", "std"))
        return self.family.preprocessing(self.model)

    def crop_pct(self) -> float | None:
        """The evaluation centre-crop fraction: an export's recorded one, else the architecture's
        (timm ``pretrained_cfg``), or None (open_clip: resize and crop to the image size)."""
        if self.export_meta is not None:
            return self.export_meta.get("crop_pct")
        return self.family.crop_pct(self.model)

    @property
    def modality(self) -> str:
        """``image`` (tensors in) or ``text`` (documents in)."""
        return self.family.modality

    def pop_truncated(self) -> tuple[int, int | None] | None:
        """(documents truncated to the encoder's limit since the last call, the limit); None for
        families that never truncate their input."""
        return self.family.pop_truncated(self.model)

    @property
    def transforms(self) -> str:
        """The name of the transform family (:mod:`nml.data.transforms`) that suits this backbone."""
        return self.family.transforms

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights without the classifier head (what ``nml export`` writes)."""
        state = self.model.state_dict()
        if self.family.has_classifier(self.config):
            head = {f"{n}.{p}" for n in self.family.head_names(self.model) for p in ("weight", "bias")}
            state = {k: v for k, v in state.items() if k not in head}
        return state


def create_backbone(
    spec: str | Path | dict | BackboneConfig,
    num_classes: int = 0,
    pretrained: str | Path | None = None,
    partial: bool = False,
) -> Backbone:
    """The one backbone factory.

    Args:
        spec: An ``nml export`` directory; a dict ``{library, name, model_cfg, pretrained, partial,
            kwargs}`` (``kwargs`` go to the family's model constructor); or a :class:`BackboneConfig`
            (random init, as stored in checkpoints).
        num_classes: Classifier head (0: features only). Not for exports, which are encoders.
        pretrained: Initial weights: a local state dict, checkpoint or export directory (overrides a
            ``pretrained`` key of the dict). Every tensor of the model must be in it with its shape
            (a classifier head excepted: it is new when ``num_classes`` differs), else an error
            lists what differs.
        partial: Load what matches and log the list of what was skipped instead (a dict's
            ``partial`` key works too).
    """
    if isinstance(spec, str | Path):
        if num_classes or pretrained:
            raise ValueError(
                f"backbone {str(spec)!r}: an export is an encoder; num_classes/pretrained do not apply"
            )
        return load_export(Path(spec))
    if isinstance(spec, BackboneConfig):
        config = spec if not num_classes else BackboneConfig(**{**spec.to_dict(), "num_classes": num_classes})
    elif isinstance(spec, dict):
        unknown = set(spec) - set(SPEC_KEYS)
        if unknown:
            raise ValueError(f"backbone: unknown keys {sorted(unknown)}; expected {', '.join(SPEC_KEYS)}")
        partial = partial or bool(spec.get("partial"))
        library, name, model_cfg = spec.get("library", "timm"), spec.get("name"), spec.get("model_cfg")
        get_family(library)  # an unknown library is named before anything else
        if not name and model_cfg is None:
            raise ValueError(f"backbone: give a model name (library {library})")
        config = BackboneConfig(
            library, name or "custom", model_cfg, num_classes, dict(spec.get("kwargs") or {})
        )
        pretrained = pretrained or spec.get("pretrained")
    else:
        raise TypeError(
            f"backbone: expected an export directory, a dict or a BackboneConfig, got {type(spec).__name__}"
        )
    model = config.family.instantiate(config)
    if pretrained:
        load_into(model, load_state(pretrained), str(pretrained), config.family.head_names(model), partial)
    return Backbone(config, model)


def load_export(d: Path) -> Backbone:
    """A backbone from an ``nml export`` directory, its ``encoder.json`` as ``export_meta``."""
    meta_path = d / EXPORT_META
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"backbone {str(d)!r}: not an nml export directory (no {EXPORT_META}); export a checkpoint "
            "with `nml export`, or give {library, name, pretrained: <local weights>}"
        )
    try:
        meta = json.loads(meta_path.read_text())
        cfg = meta["backbone"]
        library, name = cfg["library"], cfg["name"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{meta_path}: not a readable nml export description ({type(e).__name__}: {str(e)[:120]}); "
            "export the checkpoint again with `nml export`"
        ) from None
    config = BackboneConfig(library, name, cfg.get("model_cfg"), 0, cfg.get("kwargs") or {})
    model = config.family.instantiate(config)
    state = load_state(d / EXPORT_WEIGHTS)
    missing, unexpected = model.load_state_dict(state, strict=False)
    heads = config.family.head_names(model)
    if unexpected or [k for k in missing if k.split(".")[0] not in heads]:
        raise ValueError(
            f"{d}: weights do not fit {cfg['name']} (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return Backbone(config, model, meta)
