"""``nml_flat_cnn``: a small CNN whose features come from the *flattened* conv map through a wide
fully-connected layer (no global pooling), registered as a timm model.

Why it exists: the study needs supervised pre-training in the paper's regime, where the network
fits (memorises) the noisy labels. Small global-average-pooled CNNs (timm's ``test_resnet``) do not
memorise 30 % flipped labels within a CPU budget; a flatten + wide Linear layer does (a CPU pilot
fitted ~100 % of the flipped samples after 15 epochs on 80 glyphs per class). Built by the one
backbone factory like any timm model (``create_backbone({"library": "timm", "name": "nml_flat_cnn"})``),
with timm's interface: ``forward_features``, ``forward_head(x, pre_logits=True)`` (the D-dim
feature), ``num_features``, ``get_classifier`` / ``reset_classifier``.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

TIMM_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_strict")


class FlatCNN(nn.Module):
    """``stages`` conv blocks (3x3 conv, BatchNorm, ReLU, 2x2 max-pool), widths doubling from
    ``width``; flatten; ``Linear(C*h*w, feature_dim)`` (+ ``BatchNorm1d`` with ``feature_norm``) +
    ReLU (the features); a linear classifier.

    ``feature_norm`` keeps every feature unit's pre-activation centred with unit variance over the
    batch, so a unit cannot drift to always-negative and die (without it, 50-75 % of the 256 units
    were dead after 20 epochs of AdamW at lr 3e-3 in a pilot, more with more label noise)."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 32,
        width: int = 32,
        stages: int = 3,
        feature_dim: int = 256,
        drop_rate: float = 0.0,
        feature_norm: bool = False,
        **kwargs,
    ):
        super().__init__()
        for key in TIMM_FACTORY_KWARGS:  # what timm.create_model passes to every model function
            kwargs.pop(key, None)
        if kwargs:
            raise TypeError(f"nml_flat_cnn: unexpected arguments {sorted(kwargs)}")
        blocks, c_in = [], in_chans
        for i in range(stages):
            c_out = width * 2**i
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features_net = nn.Sequential(*blocks)
        side = img_size // 2**stages
        if side < 1:
            raise ValueError(f"nml_flat_cnn: img_size {img_size} is too small for {stages} pooling stages")
        self.fc1 = nn.Linear(c_in * side * side, feature_dim, bias=not feature_norm)
        self.fc1_norm = nn.BatchNorm1d(feature_dim) if feature_norm else nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.num_features = self.head_hidden_size = feature_dim
        self.num_classes = num_classes
        self.fc = nn.Linear(feature_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = self.default_cfg = {
            "input_size": (in_chans, img_size, img_size),
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "classifier": "fc",
            "num_classes": num_classes,
        }

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_net(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(torch.relu(self.fc1_norm(self.fc1(x.flatten(1)))))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def nml_flat_cnn(pretrained: bool = False, **kwargs) -> FlatCNN:
    if pretrained:
        raise ValueError("nml_flat_cnn has no pretrained weights (nml never downloads weights)")
    return FlatCNN(**kwargs)
