"""Optimizer parameter groups and the default warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(module: nn.Module) -> list[dict]:
    """Two groups: weights with decay, and every <2-D parameter (biases, norms, logit_scale) without."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.05, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup`` (a fraction of the steps if < 1, else a step count), then cosine."""
    total = max(1, int(total_steps))
    warm = int(warmup * total) if warmup < 1 else int(warmup)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
