"""Rendering of one glyph image, and ImageNet-C-style corruptions, as pure functions of an RNG.

A glyph is drawn at twice the output size on the font's metric box (so the baseline and x-height
survive: 'p' still hangs below 'P'), then one affine warp applies scale, rotation and shift, and a
2x box reduction gives the output. No torch: the embedded benchmark builds without it.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

EM_FRACTION = 0.72  # font size as a fraction of the (2x) canvas before random scaling
SCALE_RANGE = (0.8, 1.2)
ROTATION_DEG = 15.0
SHIFT_FRACTION = 0.09  # max shift as a fraction of the output size, per axis
STROKE_CHOICES = (0, 0, 0, 1)  # synthetic bolding at 2x, in px (2 px fills the gap of "=" at 32 px)
MIN_CONTRAST = 90


@dataclass(frozen=True)
class RenderParams:
    scale: float
    rotation: float
    dx: float
    dy: float
    stroke: int
    fg: int
    bg: int

    def to_json(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def sample_params(rng: np.random.Generator, size: int) -> RenderParams:
    """Draw scale, rotation, shift, weight and intensities (contrast at least MIN_CONTRAST)."""
    scale = float(rng.uniform(*SCALE_RANGE))
    rotation = float(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    dx, dy = (float(v) for v in rng.uniform(-SHIFT_FRACTION, SHIFT_FRACTION, 2) * size)
    stroke = int(STROKE_CHOICES[rng.integers(len(STROKE_CHOICES))])
    dark = int(rng.integers(0, 256 - MIN_CONTRAST))
    light = int(rng.integers(dark + MIN_CONTRAST, 256))
    fg, bg = (light, dark) if rng.random() < 0.5 else (dark, light)
    return RenderParams(scale, rotation, dx, dy, stroke, fg, bg)


@lru_cache(maxsize=4096)
def load_font(path: str, px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, px)


def render_glyph(font_path: str, ch: str, p: RenderParams, size: int = 32) -> np.ndarray:
    """Render ``ch`` with ``font_path`` under ``p``; returns a (size, size) uint8 array."""
    canvas = 2 * size
    font = load_font(font_path, round(EM_FRACTION * canvas))
    im = Image.new("L", (canvas, canvas), p.bg)
    c = canvas / 2
    ImageDraw.Draw(im).text(
        (c, c), ch, fill=p.fg, font=font, anchor="mm", stroke_width=p.stroke, stroke_fill=p.fg
    )
    # Inverse affine map (output -> input): x_in = c + R(-theta) (x_out - c - t) / s.
    th = math.radians(p.rotation)
    cos, sin = math.cos(th) / p.scale, math.sin(th) / p.scale
    tx, ty = c + 2 * p.dx, c + 2 * p.dy
    coeffs = (cos, sin, c - cos * tx - sin * ty, -sin, cos, c + sin * tx - cos * ty)
    im = im.transform((canvas, canvas), Image.AFFINE, coeffs, resample=Image.BICUBIC, fillcolor=p.bg)
    return np.asarray(im.reduce(2))


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# ----------------------------------------------------------------------------- corruptions
# Three severities each, chosen on the pilot so that a probe keeps signal at every level
# (Gaussian noise std 0.3 and contrast x0.3 sat at chance there).
CORRUPTIONS: dict[str, tuple[float, float, float]] = {
    "blur": (0.6, 0.9, 1.3),  # Gaussian sigma, px at 32 px
    "noise": (0.06, 0.12, 0.18),  # Gaussian std, fraction of 255
    "contrast": (0.7, 0.5, 0.35),  # factor around the image mean
    "elastic": (0.4, 0.7, 1.0),  # displacement std, px (field smoothed with sigma 4 px)
}


def corrupt(a: np.ndarray, kind: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply corruption ``kind`` at ``severity`` (1..3) to a uint8 image; returns uint8."""
    from scipy import ndimage

    if kind not in CORRUPTIONS:
        raise ValueError(f"corruption {kind!r} unknown; expected one of {sorted(CORRUPTIONS)}")
    if severity not in (1, 2, 3):
        raise ValueError(f"corruption severity must be 1, 2 or 3, got {severity}")
    level = CORRUPTIONS[kind][severity - 1]
    x = a.astype(np.float32)
    if kind == "blur":
        x = ndimage.gaussian_filter(x, level, mode="nearest")
    elif kind == "noise":
        x = x + rng.normal(0.0, level * 255.0, x.shape)
    elif kind == "contrast":
        m = x.mean()
        x = (x - m) * level + m
    elif kind == "elastic":
        h, w = x.shape
        fields = [ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), 4.0, mode="constant") for _ in range(2)]
        dy, dx = (f / (f.std() + 1e-8) * level for f in fields)
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        x = ndimage.map_coordinates(x, [yy + dy, xx + dx], order=1, mode="nearest")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
