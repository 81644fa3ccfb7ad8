"""Caption templates for the glyph corpus (the ``txt`` member used by CLIP pre-training).

Captions name the character and describe its rendering in varied wording, as alt-text would.
The template and wording are drawn from the sample's own RNG, so captions are deterministic.
"""

from __future__ import annotations

import numpy as np

from nml.benchmark.charsets import char_name

TEMPLATES: tuple[str, ...] = (
    "the {name} in {family} {style}",
    "a {weight} {name} set in {family}",
    "{name}, {family} typeface, {tone}",
    "a printed {name}, {slant}, {tone}",
    "an image of the character '{ch}' in {family}",
    "{family} {style}: {name}",
    "a {tone} rendering of the {name}",
    "the glyph '{ch}' ({name}), {weight}, {slant}",
    "a {slant} {name} in a {weight} {family} font",
    "close-up of a {name}, {tone}",
)


# Zero-shot prompt templates, worded like the captions; written into each dataset's _info.json with
# the per-class fields they take ({name}: "uppercase A", {ch}: "A"), so that models need no charset.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "the {name}",
    "a printed {name}",
    "an image of the character '{ch}'",
    "close-up of a {name}",
)


def prompt_fields(members: str) -> list[dict[str, str]]:
    """Template fields of one (possibly merged) class: one dict per member character."""
    return [{"name": char_name(ch), "ch": ch} for ch in members]


def _tone(fg: int, bg: int) -> str:
    return "light on a dark background" if fg > bg else "dark on a light background"


def _slant(rotation: float) -> str:
    if abs(rotation) < 4:
        return "upright"
    return "tilted left" if rotation > 0 else "tilted right"


def caption(
    rng: np.random.Generator, ch: str, family: str, style: str, stroke: int, fg: int, bg: int, rotation: float
) -> str:
    weight = "bold" if stroke > 0 or "bold" in style.lower() or "black" in style.lower() else "regular"
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return template.format(
        name=char_name(ch),
        ch=ch,
        family=family,
        style=style.lower() or "regular",
        weight=weight,
        tone=_tone(fg, bg),
        slant=_slant(rotation),
    )
