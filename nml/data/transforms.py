"""Image transforms from timm (classification) or open_clip (image-text), with glyph-safe defaults.

Horizontal flips are off by default: they turn characters into other characters (b/d, p/q).
Evaluation transforms resize without cropping (``crop_pct=1``) so small glyphs are not clipped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

TIMM_TRAIN_DEFAULTS = {"hflip": 0.0, "scale": (0.6, 1.0), "ratio": (0.8, 1.25), "color_jitter": 0.2}
TIMM_EVAL_DEFAULTS = {"crop_pct": 1.0}


def build_transform(
    library: Literal["timm", "open_clip"],
    image_size: int,
    train: bool,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    overrides: Mapping | None = None,
) -> Callable:
    """PIL image -> normalised tensor. ``overrides`` go to timm's ``create_transform`` or to
    open_clip's ``image_transform`` (its ``aug_cfg`` for training)."""
    overrides = dict(overrides or {})
    if library == "timm":
        from timm.data import create_transform  # noqa: PLC0415
        from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: PLC0415

        kw = {**(TIMM_TRAIN_DEFAULTS if train else TIMM_EVAL_DEFAULTS), **overrides}
        for k in ("scale", "ratio"):
            if k in kw and kw[k] is not None:
                kw[k] = tuple(kw[k])
        return create_transform(
            input_size=image_size,
            is_training=train,
            mean=tuple(mean or IMAGENET_DEFAULT_MEAN),
            std=tuple(std or IMAGENET_DEFAULT_STD),
            **kw,
        )
    if library == "open_clip":
        from open_clip.transform import image_transform  # noqa: PLC0415

        return image_transform(
            image_size,
            is_train=train,
            mean=tuple(mean) if mean else None,
            std=tuple(std) if std else None,
            aug_cfg=overrides if train and overrides else None,
        )
    raise ValueError(f"transform library: expected 'timm' or 'open_clip', got {library!r}")
