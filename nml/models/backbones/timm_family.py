"""timm models (by name): pooled pre-logits as features, the classifier head as logits."""

from __future__ import annotations

import torch
from torch import nn

from nml.models.backbones.family import BackboneFamily, register_family


@register_family
class TimmFamily(BackboneFamily):
    name = "timm"
    transforms = "timm"
    features_description = "timm pooled pre-logits"

    def instantiate(self, config) -> nn.Module:
        import timm

        import nml.models.flat_cnn  # noqa: F401  (registers nml_flat_cnn with timm)

        if config.model_cfg is not None:
            raise ValueError("backbone: model_cfg is for open_clip custom models")
        if config.name not in timm.list_models(config.name):
            raise ValueError(f"backbone: timm has no model {config.name!r} (see timm.list_models())")
        return timm.create_model(
            config.name, pretrained=False, num_classes=config.num_classes, **config.kwargs
        )

    def feature_dim(self, model: nn.Module, config) -> int:
        return int(getattr(model, "head_hidden_size", None) or model.num_features)

    def features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.forward_features(images), pre_logits=True)

    def has_classifier(self, config) -> bool:
        return bool(config.num_classes)

    def preprocessing(self, model: nn.Module):
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        size = cfg.get("input_size")
        return (size[-1] if size else None), cfg.get("mean"), cfg.get("std")

    def crop_pct(self, model: nn.Module) -> float | None:
        """timm's ``pretrained_cfg``: 0.95 for resnet50 (a1_in1k), 0.875 for resnet50.tv_in1k."""
        return (getattr(model, "pretrained_cfg", {}) or {}).get("crop_pct")

    def head_names(self, model: nn.Module) -> list[str]:
        names = model.pretrained_cfg.get("classifier", "fc") if hasattr(model, "pretrained_cfg") else "fc"
        return [names] if isinstance(names, str) else list(names)

    def pretraining_classes(self, config, hparams: dict) -> int | None:
        return hparams.get("num_classes")
