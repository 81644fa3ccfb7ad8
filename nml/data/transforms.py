"""Image transforms from timm (classification) or open_clip (image-text).

On the embedded benchmark (``glyph_safe``) horizontal flips are off (they turn characters into
other characters: b/d, p/q) and evaluation resizes without cropping (``crop_pct=1``) so small
glyphs are not clipped; on your own shards the libraries' own defaults apply.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch

DEFAULT_IMAGE_SIZE = 32  # the embedded benchmark's glyphs
TIMM_TRAIN_DEFAULTS = {"hflip": 0.0, "scale": (0.6, 1.0), "ratio": (0.8, 1.25), "color_jitter": 0.2}
TIMM_EVAL_DEFAULTS = {"crop_pct": 1.0}


class TransformFamily:
    """The image transforms of one library, looked up by name (:func:`get_transforms`): its default
    normalisation, its train / eval ``Compose`` and its evaluation crop. A backbone family names the
    transform family that suits it (``BackboneFamily.transforms``); data modules use it by name."""

    name: ClassVar[str]
    has_eval_crop: ClassVar[bool] = False  # whether evaluation centre-crops by a crop_pct

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        raise NotImplementedError

    def build(self, image_size: int, train: bool, mean, std, overrides: dict, glyph_safe: bool) -> Callable:
        raise NotImplementedError

    def eval_crop_pct(self, overrides: Mapping | None, glyph_safe: bool) -> float | None:
        """The evaluation centre-crop fraction: as configured in ``overrides``, else the default."""
        return None


class TimmTransforms(TransformFamily):
    """timm's ``create_transform``; ImageNet statistics; glyph-safe defaults under the overrides."""

    name = "timm"
    has_eval_crop = True

    def normalization(self):
        from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)

    def build(self, image_size, train, mean, std, overrides, glyph_safe):
        from timm.data import create_transform

        defaults = (TIMM_TRAIN_DEFAULTS if train else TIMM_EVAL_DEFAULTS) if glyph_safe else {}
        kw = {**defaults, **overrides}
        for k in ("scale", "ratio"):
            if k in kw and kw[k] is not None:
                kw[k] = tuple(kw[k])
        return create_transform(input_size=image_size, is_training=train, mean=mean, std=std, **kw)

    def eval_crop_pct(self, overrides, glyph_safe):
        """As configured, else 1 (glyphs) or timm's 0.875."""
        from timm.data import DEFAULT_CROP_PCT

        configured = (overrides or {}).get("crop_pct")
        return float(configured) if configured is not None else (1.0 if glyph_safe else DEFAULT_CROP_PCT)


class OpenClipTransforms(TransformFamily):
    """open_clip's ``image_transform`` (overrides: its ``aug_cfg`` for training); OpenAI's statistics;
    evaluation resizes and crops to the image size."""

    name = "open_clip"

    def normalization(self):
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        return tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)

    def build(self, image_size, train, mean, std, overrides, glyph_safe):
        from open_clip.transform import image_transform

        aug_cfg = overrides if train and overrides else None
        return image_transform(image_size, is_train=train, mean=mean, std=std, aug_cfg=aug_cfg)


TRANSFORM_FAMILIES: dict[str, TransformFamily] = {t.name: t() for t in (TimmTransforms, OpenClipTransforms)}


def get_transforms(name: str) -> TransformFamily:
    """The transform family registered under ``name`` (``timm``, ``open_clip``)."""
    try:
        return TRANSFORM_FAMILIES[name]
    except KeyError:
        raise ValueError(f"transforms: expected one of {sorted(TRANSFORM_FAMILIES)}, got {name!r}") from None


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 images (..., C, H, W) -> normalised float, on their device: the operations of
    torchvision's ``ToTensor`` + ``Normalize``, in the same order (the same result on the CPU)."""
    m, s = _normalization_tensors(tuple(mean), tuple(std), images.device)
    return images.float().div_(255).sub_(m).div_(s)


@functools.lru_cache(maxsize=16)
def _normalization_tensors(
    mean: tuple, std: tuple, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as (C, 1, 1) tensors on ``device``, made once: made per batch from Python numbers
    they would be a host-to-device copy that the host waits for on every step."""
    return tuple(torch.tensor(v, dtype=torch.float32).view(-1, 1, 1).to(device) for v in (mean, std))


def build_transform(
    library: str,
    image_size: int,
    train: bool,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    overrides: Mapping | None = None,
    glyph_safe: bool = True,
    uint8: bool = False,
) -> Callable:
    """PIL image -> normalised tensor, by the transform family ``library``. ``overrides`` go to timm's
    ``create_transform`` or to open_clip's ``image_transform`` (its ``aug_cfg`` for training);
    ``glyph_safe``: the glyph defaults above under them, else timm's own. ``uint8``: end in a uint8
    tensor instead (:func:`uint8_output`), to be normalised where the batch lands."""
    family = get_transforms(library)
    default_mean, default_std = family.normalization()
    mean, std = tuple(mean or default_mean), tuple(std or default_std)
    transform = family.build(image_size, train, mean, std, dict(overrides or {}), glyph_safe)
    return uint8_output(transform) if uint8 else transform


def uint8_output(transform: Callable) -> Callable:
    """The same transform ending in ``PILToTensor`` (uint8, C x H x W) instead of ``ToTensor`` +
    ``Normalize``: what timm's ``use_prefetcher`` builds, for any library's ``Compose``. An error
    if anything other than ``Normalize`` follows the tensor conversion."""
    from torchvision import transforms as T

    steps = list(transform.transforms)
    at = next((i for i, t in enumerate(steps) if type(t).__name__ in ("ToTensor", "MaybeToTensor")), None)
    if at is None or not all(isinstance(t, T.Normalize) for t in steps[at + 1 :]):
        raise ValueError(
            f"cannot end this transform in uint8 (expected ToTensor then Normalize): {transform}"
        )
    return T.Compose([*steps[:at], T.PILToTensor()])


def is_random_resized_crop(step) -> bool:
    """torchvision's ``RandomResizedCrop`` or timm's ``RandomResizedCropAndInterpolation``."""
    return all(hasattr(step, a) for a in ("size", "scale", "ratio"))


def is_rgb_conversion(step) -> bool:
    """open_clip's ``_convert_to_rgb`` (a function) or ``MaybeConvertMode``: no change to RGB input."""
    return "rgb" in getattr(step, "__name__", "").lower() or type(step).__name__ == "MaybeConvertMode"


def side(size) -> int:
    """The larger side of a transform's ``size`` (an int or a sequence of one or two)."""
    return int(size if isinstance(size, int) else max(size))


def min_decode_side(transform: Callable | None) -> int | None:
    """The shortest image side that ``transform`` needs to lose no detail, or None when that is not
    known. A JPEG decoded at a reduced scale down to this side
    (:func:`~nml.shards.members.decode_image`'s ``min_side``) gives the transform's output at full
    quality.

    The first geometric step of a torchvision ``Compose`` (what timm and open_clip build) decides:

    * a random resized crop of output side ``s``, ``scale`` (a0, a1) and ``ratio`` (r0, r1): its
      smallest crop has a side of at least ``side * sqrt(a0 * min(r0, 1 / r1))``, which must be >= s.
      That is 915 px for timm's ImageNet default (224, 0.08, 3/4..4/3), so training images are
      rarely reduced;
    * a resize to a shorter side ``s`` (evaluation: ``image_size / crop_pct``): ``s``;
    * anything else before those, except flips, colour changes and RGB conversion: None.
    """
    from torchvision import transforms as T

    neutral = (T.RandomHorizontalFlip, T.RandomVerticalFlip, T.ColorJitter, T.RandomGrayscale)
    for t in getattr(transform, "transforms", []):
        if is_random_resized_crop(t):
            ratio = min(t.ratio[0], 1 / t.ratio[1], 1.0)
            return math.ceil(side(t.size) / math.sqrt(min(t.scale[0], 1.0) * ratio))
        if type(t) is T.Resize:
            return side(t.size)
        if not (isinstance(t, neutral) or is_rgb_conversion(t)):
            return None
    return None
