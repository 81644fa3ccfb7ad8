"""Optimizer parameter groups and the default warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Full names of the parameters that the model's own ``no_weight_decay()`` methods list (timm
    and open_clip: positional embeddings, class tokens ...), from every submodule that has one."""
    names: set[str] = set()
    for prefix, sub in module.named_modules():
        listed = getattr(sub, "no_weight_decay", None)
        if sub is module or not callable(listed):
            continue
        try:
            own = listed()
        except TypeError:  # a method with other arguments: not the timm/open_clip convention
            continue
        names |= {f"{prefix}.{n}" if prefix else n for n in own}
    return names


def param_groups(module: nn.Module) -> list[dict]:
    """Two groups, as timm's ``param_groups_weight_decay``: weights with the optimizer's decay, and
    without decay every <2-D parameter (biases, norms, ``logit_scale``) and every parameter the
    model lists in ``no_weight_decay()``. They are named ``decay`` and ``no_decay``: the suffixes of
    LearningRateMonitor's ``train/lr/*``."""
    from timm.optim import param_groups_weight_decay

    # timm returns the non-empty groups, the decayed one with weight_decay set to the value given
    # (1.0 here, a marker): it is dropped so that the optimizer's own weight decay applies
    groups = param_groups_weight_decay(module, 1.0, no_weight_decay_list=no_weight_decay_names(module))
    decay = [p for g in groups if g["weight_decay"] for p in g["params"]]
    no_decay = [p for g in groups if not g["weight_decay"] for p in g["params"]]
    return [{"params": decay, "name": "decay"}, {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


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
