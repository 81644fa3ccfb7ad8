"""Which members of a WebDataset sample nml reads, and how (never by unpickling).

Only image (``jpg;png;jpeg;webp`` or as configured), ``cls`` (an integer), text (``txt``) and
``json`` members are ever parsed; every other member (``.pth``, ``.pyd``, ``.pickle`` ...) is
dropped unread. Format errors (a dotted key, a missing member, a label that is not an integer in
``[0, num_classes)``) raise :class:`ShardFormatError` naming the shard and sample; an undecodable
image is reported separately (:class:`BadImage`) so the pipeline can skip and count it.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass


class ShardFormatError(ValueError):
    """A sample that does not match what the pipeline was told to read."""


class BadImage(ValueError):
    """An image member that PIL cannot decode."""


IMAGE_KEYS = "jpg;png;jpeg;webp"  # image member extensions tried in order: the one default


@dataclass(frozen=True)
class MemberSpec:
    """What to read from each sample.

    Args:
        image_keys: Image member extensions to try, in order, ';'-separated (None: text samples, no
            image; their ``caption_key`` member is the document, which must be non-empty UTF-8).
        label_key: Member with the integer class (None: no labels).
        num_classes: Labels must be in [0, num_classes) (None: unchecked).
        caption_key: Member with the caption: an extension (``txt``) or ``json:<field>`` (None: none).
        require_caption: Missing captions are an error (else the sample has no caption).
    """

    image_keys: str | None = IMAGE_KEYS
    label_key: str | None = "cls"
    num_classes: int | None = None
    caption_key: str | None = None
    require_caption: bool = False

    @property
    def image_exts(self) -> list[str]:
        return [e.strip().lower() for e in (self.image_keys or "").split(";") if e.strip()]

    @property
    def text_only(self) -> bool:
        return self.image_keys is None


def _where(raw: dict) -> str:
    return f"shard {raw.get('__url__', '?')!r}, sample {raw.get('__key__', '?')!r}"


def parse_sample(raw: dict, spec: MemberSpec, index: int) -> dict:
    """The record nml works with: key, url, index in shard, image bytes, clean label, caption."""
    dotted = [k for k in raw if not k.startswith("__") and "." in k]
    if dotted:
        raise ShardFormatError(
            f"{_where(raw)}: member {raw['__key__']}.{dotted[0]} suggests a sample key with a dot "
            f"({raw['__key__']}.{dotted[0].rsplit('.', 1)[0]!r}); webdataset splits names at the first "
            "dot, so keys must not contain dots (rewrite the shards, e.g. with `nml data write`)"
        )
    rec = {"__key__": raw["__key__"], "__url__": raw.get("__url__", ""), "__index__": index}
    if spec.text_only:
        rec["caption"] = parse_document(raw, spec.caption_key or "txt")
        if spec.label_key is not None:
            rec["cls"] = parse_label(raw, spec)
        return rec
    for ext in spec.image_exts:
        if ext in raw:
            rec["image"] = raw[ext]
            break
    else:
        members = sorted(k for k in raw if not k.startswith("__"))
        raise ShardFormatError(
            f"{_where(raw)}: no image member (looked for {spec.image_keys!r}; found {members})"
        )
    if spec.label_key is not None:
        rec["cls"] = parse_label(raw, spec)
    if spec.caption_key is not None:
        cap = parse_caption(raw, spec.caption_key)
        if cap is None and spec.require_caption:
            members = sorted(k for k in raw if not k.startswith("__"))
            raise ShardFormatError(f"{_where(raw)}: missing caption {spec.caption_key!r} (found {members})")
        if cap is not None:
            rec["caption"] = cap
    return rec


def parse_label(raw: dict, spec: MemberSpec) -> int:
    if spec.label_key not in raw:
        members = sorted(k for k in raw if not k.startswith("__"))
        raise ShardFormatError(f"{_where(raw)}: missing label member {spec.label_key!r} (found {members})")
    value = raw[spec.label_key]
    text = value.decode("utf-8", "replace").strip() if isinstance(value, bytes) else str(value).strip()
    try:
        c = int(text)
    except ValueError:
        raise ShardFormatError(
            f"{_where(raw)}: .{spec.label_key} must be an integer class index, got {text[:40]!r}"
        ) from None
    if c < 0 or (spec.num_classes is not None and c >= spec.num_classes):
        raise ShardFormatError(
            f"{_where(raw)}: .{spec.label_key} = {c} is outside [0, {spec.num_classes}) "
            "(num_classes comes from the data module / _info.json)"
        )
    return c


def parse_document(raw: dict, key: str) -> str:
    """The document of a text sample: member ``key``, which must be non-empty UTF-8 text."""
    if key not in raw:
        members = sorted(k for k in raw if not k.startswith("__"))
        raise ShardFormatError(f"{_where(raw)}: missing text member {key!r} (found {members})")
    try:
        text = raw[key].decode("utf-8") if isinstance(raw[key], bytes) else str(raw[key])
    except UnicodeDecodeError as e:
        raise ShardFormatError(
            f"{_where(raw)}: .{key} is not UTF-8 text (byte {raw[key][e.start]:#04x} at offset {e.start}); "
            "re-encode the documents as UTF-8"
        ) from None
    text = text.strip()
    if not text:
        raise ShardFormatError(f"{_where(raw)}: .{key} is empty (a text sample needs a document)")
    return text


def parse_caption(raw: dict, caption_key: str) -> str | None:
    if caption_key.startswith("json:"):
        field = caption_key[5:]
        if "json" not in raw:
            return None
        try:
            meta = json.loads(raw["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardFormatError(f"{_where(raw)}: .json member is not valid JSON ({e})") from None
        value = meta.get(field) if isinstance(meta, dict) else None
        return value if isinstance(value, str) and value.strip() else None
    if caption_key not in raw:
        return None
    text = raw[caption_key].decode("utf-8", "replace").strip()
    return text or None


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_8bit(img, where: str = ""):
    """A 16-bit, 32-bit integer or float single-channel PIL image as 8-bit ``L``, scaled by the
    range of its type (16-bit: /257; 32-bit integers within 0..255 or 0..65535; floats in [0, 1] or
    [0, 255]); PIL's own conversion clips them (near-white or black images). Values outside those
    ranges raise :class:`BadImage` naming ``where``. Other modes are returned unchanged."""
    if img.mode not in HIGH_DEPTH_MODES:
        return img
    import numpy as np
    from PIL import Image

    a = np.asarray(img, dtype=np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode.startswith("I;16"):
        scale = 257.0
    elif not np.isfinite(a).all() or lo < 0:
        scale = None
    elif img.mode == "I":
        scale = 1.0 if hi <= 255 else 257.0 if hi <= 65535 else None
    else:
        scale = 1 / 255 if hi <= 1.0 else 1.0 if hi <= 255 else None
    if scale is None:
        raise BadImage(
            f"{where}: {img.mode!r} image with values in [{lo:g}, {hi:g}]: expected 0..65535 (integers) or "
            "[0, 1] / [0, 255] (floats); convert it to 8 or 16 bits first"
        )
    return Image.fromarray(np.clip(np.rint(a / scale), 0, 255).astype(np.uint8), "L")


def _pil_errors() -> tuple[type[BaseException], ...]:
    """What PIL raises on bytes that are not a (decodable, reasonably sized) image."""
    from PIL import Image, UnidentifiedImageError

    return (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def image_header_size(data: bytes, where: str = "") -> tuple[int, int]:
    """(width, height) from an image's header, without decoding it; :class:`BadImage` if the
    header does not read."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except _pil_errors() as e:
        raise BadImage(f"{where}: cannot read the image header ({type(e).__name__}: {e})") from None


def decode_image(data: bytes, where: str = "", min_side: int | None = None):
    """PIL RGB image from encoded bytes (high bit depths scaled, :func:`to_8bit`); :class:`BadImage`
    if it cannot be decoded or is too large (PIL's decompression-bomb limit).

    ``min_side``: a JPEG whose sides are both at least twice that is decoded at 1/2, 1/4 or 1/8 of
    its size (PIL's ``draft``: the reduction happens in the DCT, 1.5-2x faster), keeping both sides
    >= ``min_side``. Other formats are decoded whole."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            if min_side and img.format == "JPEG":
                img.draft("RGB", (min_side, min_side))
            img.load()
            return to_8bit(img, where).convert("RGB")
    except _pil_errors() as e:
        raise BadImage(f"{where}: cannot decode image ({type(e).__name__}: {e})") from None
