"""Character sets and label spaces of the embedded benchmark.

Inherently ambiguous glyphs are merged into one class. Glyphs are rendered at a random size and
position, so a lowercase letter that is a scaled copy of its capital (c/C, s/S, o/O ...) or a
capital I drawn like a lowercase l cannot be told apart from the pixels: keeping them as separate
classes would hide label noise in the "clean" corpus, which is exactly the quantity under study.
"""

from __future__ import annotations

import string
import unicodedata

DIGITS = string.digits
# The pre-training corpus: Latin letters only, so that every downstream task's label space (digits,
# Greek, symbols) is disjoint from pre-training's, as CIFAR's or Flowers' is from ImageNet's.
LETTERS = string.ascii_uppercase + string.ascii_lowercase  # 52 characters

# Merged groups: every character of a group gets the group's class. The first member names it.
AMBIGUOUS_GROUPS: tuple[str, ...] = ("Oo", "Il", "Cc", "Ss", "Vv", "Ww", "Xx", "Zz")

# Novel classes for the downstream tasks: never seen in pre-training (the digits are novel too).
# Greek lowercase without omicron (an 'o') and final sigma (a variant of sigma).
GREEK = "".join(chr(c) for c in range(0x3B1, 0x3CA) if chr(c) not in "ος")
# Symbols whose shapes stay distinct under random size/position (no '-' vs '_', ',' vs '.').
SYMBOLS = "!#$%&()*+/<=>?@[]{}~^\\"


def glyph_classes() -> list[str]:
    """Class list of the glyph corpus (44 letter classes): each entry is the string of characters in
    that class."""
    grouped = {ch: g for g in AMBIGUOUS_GROUPS for ch in g}
    classes: list[str] = []
    for ch in LETTERS:
        g = grouped.get(ch, ch)
        if g not in classes:
            classes.append(g)
    return classes


def char_name(ch: str) -> str:
    """Human name of a character for captions and class names: 'digit 7', 'uppercase A' ..."""
    if ch.isdigit():
        return f"digit {ch}"
    if ch in string.ascii_letters:
        return f"{'uppercase' if ch.isupper() else 'lowercase'} {ch}"
    return unicodedata.name(ch, repr(ch)).lower()


def class_name(members: str) -> str:
    """Name of a (possibly merged) class, e.g. 'O/o' or 'A'."""
    return "/".join(members)
