"""What a modality's samples are on their way to the model: the inputs object of a data module.

A shard data module keeps what every modality shares (the sets, the classes, the loaders, the
evaluation suite, the noise); its inputs object owns what differs:

* :class:`ImageInputs`: the members read (``jpg;png;...``), the transform family and its
  normalisation, crop, views and augmentation (``data.image``, adopted from the backbone where unset),
  reduced JPEG decoding, device decoding and the batch-transfer hooks that finish the images on the
  training device.
* :class:`TextInputs`: the document member (``txt``); documents go to the model as they are (text
  backbones tokenise them), one view, no augmentation.

Each modality of :mod:`nml.data.modalities` names the inputs its data module builds.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from nml.data.options import ImageOptions, StreamOptions
from nml.data.transforms import (
    DEFAULT_IMAGE_SIZE,
    TransformFamily,
    build_transform,
    get_transforms,
    normalize,
)
from nml.shards.members import MemberSpec

log = logging.getLogger("nml.data.modules")


class ImageInputs:
    """Images: ``family`` (a transform family of :mod:`nml.data.transforms`: ``timm``, ``open_clip``)
    with the module's ``data.image`` options; ``glyph_safe``: the embedded benchmark's transform
    defaults (no flips, no centre crop) instead of the family's own."""

    def __init__(self, family: str, options: ImageOptions, glyph_safe: bool):
        self.family, self.options, self.glyph_safe = family, options, glyph_safe
        self._device_decoder = None  # decode_on_device: built once (device_decoder())

    @property
    def transform_family(self) -> TransformFamily:
        return get_transforms(self.family)

    def members(self, stream: StreamOptions, num_classes: int | None) -> MemberSpec:
        """What the evaluation and extraction streams read (labels checked against ``num_classes``)."""
        return MemberSpec(stream.image_keys, stream.label_key, num_classes)

    @property
    def input_size(self) -> int:
        return self.options.image_size or DEFAULT_IMAGE_SIZE

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) the images are normalised with: as configured (or adopted from the backbone),
        else the family's default."""
        default_mean, default_std = self.transform_family.normalization()
        return tuple(self.options.mean or default_mean), tuple(self.options.std or default_std)

    @property
    def eval_crop_pct(self) -> float | None:
        """timm's evaluation centre-crop fraction: as configured, else 1 (glyphs) or timm's 0.875
        (None for open_clip's transform, which resizes and crops to the image size)."""
        return self.transform_family.eval_crop_pct(self.options.eval_transform, self.glyph_safe)

    def describe(self) -> dict:
        """The preprocessing a model trained on these inputs saw (checkpoints and exports)."""
        mean, std = self.normalization()
        return {
            "image_size": self.input_size,
            "mean": list(mean),
            "std": list(std),
            "crop_pct": self.eval_crop_pct,
        }

    def settings(self) -> dict:
        """The preprocessing as set (or adopted from the backbone): what a feature cache records."""
        o = self.options
        return {
            "image_size": self.input_size,
            "mean": list(o.mean) if o.mean is not None else None,
            "std": list(o.std) if o.std is not None else None,
        }

    def transform(self, augment: bool, uint8: bool = False):
        """The train (augmenting) or eval transform (``uint8``: ending in uint8 tensors, normalised on
        the device by :meth:`after_transfer`)."""
        o = self.options
        return build_transform(
            self.family,
            self.input_size,
            augment,
            o.mean,
            o.std,
            o.train_transform if augment else o.eval_transform,
            glyph_safe=self.glyph_safe,
            uint8=uint8,
        )

    def stream_settings(self, train: bool) -> dict[str, Any]:
        """The :class:`~nml.data.pipeline.StreamConfig` fields of a training or evaluation stream."""
        o = self.options
        on_device = train and o.decode_on_device
        return {
            "reduced_decode": o.reduced_decode,
            "transform": self.transform(
                train and o.augment is not False, uint8=train and o.normalize_on_device and not on_device
            ),
            "device_decoder": self.device_decoder() if on_device else None,
            "views": (o.views or 1) if train else 1,
            "augment": o.augment if train else None,
        }

    def extraction_settings(self, views: int) -> dict[str, Any]:
        """The stream fields of a feature extraction: the eval transform (``views`` 0) or ``views``
        augmented views."""
        self.check_views(views)
        return {"transform": self.transform(views > 0), "views": max(views, 1), "augment": views > 0}

    def check_views(self, views: int) -> None:
        """Raise now if these inputs cannot give ``views`` augmented views (images can)."""

    def configure_views(self, views: int, augment: bool) -> None:
        """What a model asks of its training batches (tuning: LP one unaugmented view, NMTune two
        augmented views); settings given explicitly in the data config win."""
        if self.options.views is None:
            self.options.views = views
        if self.options.augment is None:
            self.options.augment = augment
        log.info(
            "training batches: %d view(s), %s",
            self.options.views,
            "augmented" if self.options.augment else "eval transform",
        )

    def match_preprocessing(
        self, image_size: int | None, mean, std, source: str, crop_pct: float | None = None
    ) -> None:
        """Adopt a backbone's input size and normalisation where the config left them unset (and, on
        your own shards, its evaluation ``crop_pct``); warn where an explicit setting differs from
        what the backbone was trained with."""
        o, adopted = self.options, []
        takes_crop = self.transform_family.has_eval_crop and not self.glyph_safe
        if crop_pct is not None and takes_crop and "crop_pct" not in (o.eval_transform or {}):
            o.eval_transform = {**(o.eval_transform or {}), "crop_pct": float(crop_pct)}
            adopted.append(f"eval crop_pct={float(crop_pct)}")
        for name, value in (("image_size", image_size), ("mean", mean), ("std", std)):
            if value is None:
                continue
            mine = getattr(o, name)
            value = value if name == "image_size" else tuple(float(v) for v in value)
            if mine is None:
                setattr(o, name, value)
                adopted.append(f"{name}={value}")
            elif (mine if name == "image_size" else tuple(float(v) for v in mine)) != value:
                log.warning(
                    "data.image.%s=%s differs from the %s the backbone %s was trained with",
                    name,
                    mine,
                    value,
                    source,
                )
        if adopted:
            log.info("data: %s from the backbone %s (unset in the data config)", ", ".join(adopted), source)

    def device_decoder(self):
        """The :class:`~nml.data.device_decode.DeviceDecoder` of the training transform, built once
        (``decode_on_device``); the same object goes to the workers and decodes on the device."""
        if self._device_decoder is None:
            from nml.data.device_decode import DeviceDecoder

            self._device_decoder = DeviceDecoder(self.transform(self.options.augment is not False))
        return self._device_decoder

    def before_transfer(self, batch: Any, device: torch.device) -> int:
        """``decode_on_device``: training images arrive encoded, with each view's crop and flip drawn
        in the worker; decoded, cropped and normalised here on the training device. Returns the
        number of undecodable images skipped (their places taken by a repeat, as on the CPU path)."""
        if not (isinstance(batch, dict) and "encoded" in batch):
            return 0
        keys = list(batch["key"])
        failed = self.device_decoder().decode(batch, device)
        if failed:
            log.warning("decode_on_device: skipped undecodable images %s", [keys[i] for i in failed])
        return len(failed)

    def after_transfer(self, batch: Any) -> Any:
        """Training images arrive as uint8 (``normalize_on_device``): scaled to [0, 1] and normalised
        here, on the training device (:func:`~nml.data.transforms.normalize`: the same result as the
        workers' ``ToTensor`` + ``Normalize`` on the CPU)."""
        image = batch.get("image") if isinstance(batch, dict) else None
        if image is not None and image.dtype == torch.uint8:
            batch["image"] = normalize(image, *self.normalization())
        return batch


class TextInputs:
    """Documents: the ``text_key`` member, non-empty UTF-8, handed to the model as they are."""

    def __init__(self, text_key: str = "txt"):
        self.text_key = text_key

    def members(self, stream: StreamOptions, num_classes: int | None) -> MemberSpec:
        return MemberSpec(None, stream.label_key, num_classes, self.text_key, require_caption=True)

    def describe(self) -> dict:
        return {"text_key": self.text_key}

    def settings(self) -> dict:
        return {"image_size": None, "mean": None, "std": None}

    def stream_settings(self, train: bool) -> dict[str, Any]:
        return {
            "reduced_decode": False,
            "transform": None,
            "device_decoder": None,
            "views": 1,
            "augment": None,
        }

    def extraction_settings(self, views: int) -> dict[str, Any]:
        self.check_views(views)
        return {"transform": None, "views": 1, "augment": False}

    def check_views(self, views: int) -> None:
        if views > 0:
            raise ValueError(f"--views {views}: text has no augmented views (use --views 0)")

    def configure_views(self, views: int, augment: bool) -> None:
        if views > 1:
            raise ValueError(
                f"{views} augmented views asked of text shards: text has no augmentation; tune NMTune on "
                "cached text features (its second view: tuning.view_noise)"
            )

    def match_preprocessing(self, *args, **kwargs) -> None:
        """Text backbones tokenise the documents themselves: nothing to adopt."""

    def before_transfer(self, batch: Any, device: torch.device) -> int:
        return 0

    def after_transfer(self, batch: Any) -> Any:
        return batch


Inputs = ImageInputs | TextInputs
