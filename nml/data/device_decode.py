"""Decoding on the training device: JPEGs through nvJPEG (``torchvision.io.decode_jpeg``), then the
crop, resize and flip as tensors.

With ``decode_on_device: true`` a DataLoader worker no longer decodes or resamples an image. It reads
the image's size from its header, draws the crop and the flip of the configured transform with the
same seeded RNG and in the same order as the CPU path (so the same seed gives the same crops and
flips), and passes the encoded bytes on. The data module decodes the batch where it trains, in
``on_before_batch_transfer``:

* a JPEG is decoded with ``torchvision.io.decode_jpeg(..., device=<the training device>)`` (one
  batched nvJPEG call on a GPU, libjpeg-turbo on a CPU);
* any other image goes through PIL on the host, as on the CPU path;
* then each view is cropped to its box, resized to the model's input size (antialiased, with the
  transform's interpolation), flipped if drawn, and scaled and normalised.

Only the transform's geometry runs on the device: a random resized crop (timm's or torchvision's)
or a resize plus centre crop (evaluation), and a horizontal flip. Any other step, such as colour
jitter or RandAugment, is refused with its name. Evaluation's resize-then-crop is one
crop-and-resize here, so pixels differ from the CPU path by interpolation rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nml.data.transforms import is_random_resized_crop, is_rgb_conversion, normalize, side
from nml.shards.members import BadImage, decode_image


@dataclass(frozen=True)
class DevicePlan:
    """The geometry of a transform that the device path reproduces."""

    size: int  # output side
    crop: Callable | None  # a random resized crop step (its get_params draws the box), or None
    resize: int | None  # evaluation: the shorter side is resized to this, then centre-cropped to size
    flip: float  # probability of a horizontal flip
    interpolation: str  # "bilinear" or "bicubic"
    mean: tuple[float, ...]
    std: tuple[float, ...]


def device_plan(transform: Callable) -> DevicePlan:
    """The :class:`DevicePlan` of a torchvision ``Compose`` built by timm or open_clip; a ValueError
    naming the first step that the device path cannot reproduce."""
    from torchvision import transforms as T

    crop, resize, size, flip, mean, std, interpolation = None, None, None, 0.0, None, None, "bilinear"
    for t in getattr(transform, "transforms", [transform]):
        name = type(t).__name__
        if is_random_resized_crop(t):
            crop, size, interpolation = t, side(t.size), _interpolation(t)
        elif type(t) is T.Resize and (isinstance(t.size, int) or len(t.size) == 1) and crop is None:
            resize, interpolation = side(t.size), _interpolation(t)
        elif isinstance(t, T.CenterCrop) and resize is not None:
            size = side(t.size)
        elif isinstance(t, T.RandomHorizontalFlip) and size is not None:  # drawn after the crop
            flip = float(t.p)
        elif isinstance(t, T.ColorJitter) and not any((t.brightness, t.contrast, t.saturation, t.hue)):
            continue  # all factors 0: it does nothing
        elif isinstance(t, T.Normalize):
            mean, std = tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)
        elif name in ("ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor") or is_rgb_conversion(t):
            continue
        else:
            raise ValueError(
                f"decode_on_device: the transform step {name} cannot run on the device (supported: a random "
                "resized crop or a resize + centre crop, a horizontal flip, normalisation); turn it off in "
                "data.image.train_transform / data.image.eval_transform, or set decode_on_device: false"
            )
    if size is None or mean is None:
        raise ValueError(f"decode_on_device: no crop/resize or no normalisation in the transform {transform}")
    return DevicePlan(size, crop, resize, flip, interpolation, mean, std)


def _interpolation(t) -> str:
    name = str(getattr(t, "interpolation", "bilinear")).lower()
    return "bicubic" if "bicubic" in name else "bilinear"


def draw_view(plan: DevicePlan, width: int, height: int) -> torch.Tensor:
    """One view's (top, left, height, width, flip), drawn from the current RNG state in the order
    of the CPU transform: the crop's draws, then the flip's ``torch.rand(1)``."""
    if plan.crop is not None:
        from PIL import Image

        stand_in = Image.new("L", (width, height))  # get_params reads only the size
        top, left, h, w = plan.crop.get_params(stand_in, plan.crop.scale, plan.crop.ratio)
    else:  # resize the shorter side to plan.resize, then centre-crop plan.size: as a box in the source
        side = min(width, height) * plan.size / plan.resize
        h = w = max(1, min(round(side), width, height))
        top, left = int(round((height - h) / 2.0)), int(round((width - w) / 2.0))
    flip = bool(plan.flip) and bool(torch.rand(1) < plan.flip)
    return torch.tensor([top, left, h, w, int(flip)], dtype=torch.long)


def is_jpeg(data: torch.Tensor) -> bool:
    return len(data) > 2 and int(data[0]) == 0xFF and int(data[1]) == 0xD8


def decode_batch(
    encoded: list[torch.Tensor], boxes: torch.Tensor, plan: DevicePlan, device: torch.device
) -> tuple[torch.Tensor | None, list[int]]:
    """(images, failed): normalised float images on ``device``, (B, C, S, S) or (B, V, C, S, S) when
    ``boxes`` is (B, V, 5), and the rows whose image could not be decoded (their image is another
    row's: :func:`fill_failed` makes the rest of the row match); images is None when none decoded. JPEGs are decoded in one
    ``decode_jpeg`` call on ``device``, other images through PIL on the host."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    images: list[torch.Tensor | None] = [None] * len(encoded)
    jpeg = [i for i, data in enumerate(encoded) if is_jpeg(data)]
    if jpeg:
        try:
            decoded = decode_jpeg([encoded[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad image fails the call: decode them one by one
            decoded = [_decode_one_jpeg(encoded[i], device) for i in jpeg]
        for i, img in zip(jpeg, decoded, strict=True):
            images[i] = img
    for i, data in enumerate(encoded):
        if i not in jpeg:
            try:
                images[i] = F.pil_to_tensor(decode_image(bytes(data.numpy()))).to(device)
            except BadImage:
                pass
    failed = [i for i, img in enumerate(images) if img is None]
    if len(failed) == len(images):
        return None, failed  # the caller fills the batch from an earlier one (DeviceDecoder.decode)
    mode = InterpolationMode.BICUBIC if plan.interpolation == "bicubic" else InterpolationMode.BILINEAR
    per_view = (boxes if boxes.ndim == 3 else boxes[:, None]).tolist()  # boxes live on the host
    substitute = next(i for i, img in enumerate(images) if img is not None)
    out = []
    for i in range(len(images)):
        src = i if images[i] is not None else substitute
        crops = []
        for top, left, h, w, flip in per_view[src]:
            x = F.resized_crop(
                images[src].float(), top, left, h, w, [plan.size] * 2, interpolation=mode, antialias=True
            )
            crops.append(F.horizontal_flip(x) if flip else x)
        out.append(torch.stack(crops))
    x = normalize(torch.stack(out).clamp_(0, 255), plan.mean, plan.std)  # resampled floats in [0, 255]
    return (x if boxes.ndim == 3 else x[:, 0]), failed


def _decode_one_jpeg(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


class DeviceDecoder:
    """``decode_on_device``, built once from the training transform and handed to the stream: the
    workers call :meth:`draw_view` for each view's crop and flip, the data module calls
    :meth:`decode` on the training device. Picklable (spawn/forkserver workers)."""

    def __init__(self, transform: Callable):
        self.plan = device_plan(transform)
        self._spare: dict | None = None  # one decoded row of an earlier batch: fills a batch with none

    def draw_view(self, width: int, height: int) -> torch.Tensor:
        return draw_view(self.plan, width, height)

    def decode(self, batch: dict, device: torch.device) -> list[int]:
        """Turn a batch's ``encoded`` bytes and ``boxes`` into its normalised ``image`` on ``device``
        (in place); rows whose image did not decode become copies of a good row of the batch, or of
        an earlier batch when none decoded (as the CPU path repeats a sample it read before).
        Returns those rows."""
        encoded, boxes = batch.pop("encoded"), batch.pop("boxes")
        images, failed = decode_batch(encoded, boxes, self.plan, device)
        if images is None:  # not one image of the batch decoded
            if self._spare is None:
                raise BadImage(
                    f"decode_on_device: none of the batch's {len(encoded)} images could be decoded, and no "
                    "earlier batch to repeat a sample of"
                )
            n = len(batch["valid"])
            for k, v in self._spare.items():
                batch[k] = v.expand(n, *v.shape[1:]).clone() if isinstance(v, torch.Tensor) else v * n
            return failed
        batch["image"] = images
        if failed:
            fill_failed(batch, failed)
        good = next(i for i in range(len(images)) if i not in failed)
        self._spare = {
            k: (v[good : good + 1].clone() if isinstance(v, torch.Tensor) else [v[good]])
            for k, v in batch.items()
            if (isinstance(v, torch.Tensor) and v.ndim and len(v) == len(images))
            or (isinstance(v, list) and len(v) == len(images))
        }
        return failed


def fill_failed(batch: dict, failed: list[int]) -> dict:
    """Rows ``failed`` (images that did not decode) become copies of the batch's first good row in
    every per-sample field, as the CPU path fills a skipped sample's place with a repeat."""
    n = len(batch["valid"])
    good = next(i for i in range(n) if i not in failed)
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.ndim and len(value) == n:
            value[failed] = value[good].clone()
        elif isinstance(value, list) and len(value) == n:
            for i in failed:
                value[i] = value[good]
    return batch
