"""open_clip models (by name, or a custom model-config dict so that tiny CPU towers work):
``encode_image`` (unnormalised) as features; no classifier (zero-shot heads come from prompts)."""

from __future__ import annotations

import torch
from torch import nn

from nml.models.backbones.family import BackboneFamily, register_family


@register_family
class OpenClipFamily(BackboneFamily):
    name = "open_clip"
    transforms = "open_clip"
    features_description = "open_clip encode_image (unnormalised)"

    def instantiate(self, config) -> nn.Module:
        import open_clip
        from open_clip.model import CLIP, CustomTextCLIP

        if config.model_cfg is not None:  # as open_clip.create_model builds a config
            cfg = dict(config.model_cfg)
            custom_text = cfg.pop("custom_text", False) or "hf_model_name" in (cfg.get("text_cfg") or {})
            return (CustomTextCLIP if custom_text else CLIP)(**cfg, **config.kwargs)
        if config.name not in open_clip.list_models():
            raise ValueError(
                f"backbone: open_clip has no model {config.name!r}; use one of open_clip.list_models() "
                "or give model_cfg (embed_dim, vision_cfg, text_cfg) for a custom one"
            )
        return open_clip.create_model(config.name, pretrained=None, **config.kwargs)

    def feature_dim(self, model: nn.Module, config) -> int:
        """The embedding dimension (a timm image tower has no ``output_dim``)."""
        out = getattr(model.visual, "output_dim", 0)
        if out:
            return int(out)
        import open_clip

        cfg = config.model_cfg or open_clip.get_model_config(config.name) or {}
        return int(config.kwargs.get("embed_dim") or cfg["embed_dim"])

    def features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return model.encode_image(images, normalize=False)

    def preprocessing(self, model: nn.Module):
        """Its image size and OpenAI's CLIP statistics."""
        from nml.data.transforms import get_transforms

        mean, std = get_transforms(self.transforms).normalization()
        size = model.visual.image_size
        return (size[0] if isinstance(size, tuple | list) else size), list(mean), list(std)
