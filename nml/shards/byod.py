"""Bring your own data: ImageFolder trees and caption tables to WebDataset shards.

* ``write_imagefolder``: ``root/<class>/<image>`` -> timm-style classification shards
  (``jpg`` + ``cls`` + ``json``) with ``_info.json`` (class names) and ``sizes.json``.
* ``write_captions``: a CSV/TSV of (image path, caption) -> img2dataset-style image-text shards
  (``jpg`` + ``txt`` + ``json``) with ``sizes.json`` and ``_info.json``.

Keys are sequential numbers (never dots); the original path is kept in the ``json`` member.
Missing or unreadable images are skipped with a warning and counted, or raise with ``strict``.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from nml.shards.members import BadImage, to_8bit
from nml.shards.writer import ShardWriter, shard_spec, write_index_files

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageError(RuntimeError):
    pass


def jpeg_bytes(path: Path, quality: int = 95) -> bytes:
    """The image as JPEG bytes: JPEG files verbatim (after a full decode check), others re-encoded."""
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.format == "JPEG" and im.mode in ("RGB", "L"):
                return data
            im = to_8bit(im, str(path))
            im = im.convert("RGB") if im.mode not in ("RGB", "L") else im
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality)
            return buf.getvalue()
    except BadImage as e:
        raise ImageError(str(e)) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e


def prepare_output(out: Path, prefix: str, overwrite: bool) -> None:
    """Refuse to write split ``prefix`` over shards of the same split already in ``out`` (they would
    read as duplicates) unless ``overwrite``, which removes exactly those; other splits' shards stay
    (several splits in one directory, their index files merged, is the documented layout)."""
    existing = (
        sorted(p for p in out.glob(f"{prefix}-*") if p.suffix in (".tar", ".partial")) if out.is_dir() else []
    )
    if not existing:
        return
    if not overwrite:
        shown = ", ".join(p.name for p in existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise SystemExit(
            f"{str(out)!r} already holds shards of the split {prefix!r} ({shown}); choose "
            "another --out or --prefix, or pass --overwrite to replace that split (other splits stay)"
        )
    for p in existing:
        p.unlink()
    log.info("--overwrite: removed the %d shard(s) of split %r from %s", len(existing), prefix, out)


def _check_classes_of_other_splits(out: Path, prefix: str, classes: list[str]) -> None:
    """Before writing: the other splits indexed in ``out`` must have these classes (one label space
    per directory; timm reads one ``_info.json``)."""
    import json

    info_path = out / "_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    others = set(info.get("splits") or {}) - {prefix}
    if others and info.get("classes") not in (None, classes):
        raise ValueError(
            f"{info_path}: the splits already there ({', '.join(sorted(others))}) have other classes "
            f"({len(info['classes'])} vs {len(classes)} here): write this split to another directory"
        )


def _write(samples, out: Path, prefix: str, shard_size: int, strict: bool, progress: bool, total: int):
    skipped: list[str] = []
    w = ShardWriter(out / f"{prefix}-%06d.tar", shard_size)
    try:
        _write_samples(w, samples, strict, progress, total, prefix, skipped)
    except BaseException:  # a --strict stop, a crash, Ctrl-C: no partial dataset is left behind
        for path, _ in w.shards:
            Path(path).unlink(missing_ok=True)
        raise
    if skipped:
        log.warning(
            "skipped %d of %d images (missing or unreadable); first: %s", len(skipped), total, skipped[0]
        )
    if not w.shards:
        raise ImageError(f"no readable images: all {total} were skipped")
    return w.shards, skipped


def _write_samples(w: ShardWriter, samples, strict: bool, progress: bool, total: int, prefix: str, skipped):
    from tqdm import tqdm

    with w:
        index = 0
        for path, fields in tqdm(
            samples,
            total=total,
            desc=f"nml data write {prefix}",
            unit="img",
            disable=not progress,
            file=sys.stderr,
            mininterval=1.0,
        ):
            try:
                jpg = jpeg_bytes(path)
            except ImageError as e:
                if strict:
                    raise ImageError(
                        f"{e} (--strict: stopping; without it the image is skipped and counted)"
                    ) from e
                log.warning("skipping %s", e)
                skipped.append(str(path))
                continue
            w.write({"__key__": f"{index:09d}", "jpg": jpg, **fields})
            index += 1


def write_imagefolder(
    root: str | Path,
    out: str | Path,
    shard_size: int = 1000,
    prefix: str = "train",
    seed: int | None = 0,
    strict: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write an ImageFolder tree as classification shards; classes are the sorted folder names.

    Samples are written in a seeded random order (``seed=None`` keeps (class, file) order) so that
    shards mix classes, as streaming with a bounded shuffle buffer needs.
    """
    root, out = Path(root), Path(out)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not classes:
        raise SystemExit(f"{root} is not an ImageFolder tree (expected root/<class>/<image> folders)")
    items = [
        (p, c)
        for c, name in enumerate(classes)
        for p in sorted((root / name).rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise SystemExit(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    empty = [name for c, name in enumerate(classes) if not any(i == c for _, i in items)]
    if empty:  # as torchvision's ImageFolder: an empty class would still take a label (and flipped labels)
        raise SystemExit(
            f"class folder(s) {empty} under {root} hold no images ({', '.join(IMAGE_SUFFIXES)}); "
            "remove them or add images"
        )
    prepare_output(out, prefix, overwrite)
    _check_classes_of_other_splits(out, prefix, classes)
    if seed is not None:
        items = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    samples = (
        (p, {"cls": c, "json": {"path": str(p.relative_to(root)), "class_name": classes[c]}})
        for p, c in items
    )
    shards, skipped = _write(samples, out, prefix, shard_size, strict, progress, len(items))
    write_index_files(out, {prefix: shards}, root.name, {"num_classes": len(classes), "classes": classes})
    return _summary(out, prefix, shards, skipped, num_classes=len(classes))


def write_captions(
    table: str | Path,
    out: str | Path,
    shard_size: int = 1000,
    prefix: str = "train",
    image_column: str = "image",
    caption_column: str = "caption",
    strict: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write a CSV/TSV of (image path, caption) as image-text shards; paths are relative to the table.
    The table is UTF-8 text (a byte-order mark, as spreadsheet programs write, is accepted)."""
    table, out = Path(table), Path(out)
    delimiter = "\t" if table.suffix.lower() in (".tsv", ".tab") else ","
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            columns = reader.fieldnames or []
            for col in (image_column, caption_column):
                if col not in columns:
                    raise SystemExit(
                        f"{table} has no column {col!r} (columns: {columns}); "
                        "set --image_column / --caption_column"
                    )
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise SystemExit(
            f"{table} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): "
            "--source takes an ImageFolder directory or a UTF-8 CSV/TSV table of (image path, caption); "
            "re-save the table as UTF-8"
        ) from None
    except csv.Error as e:
        raise SystemExit(f"{table} is not a CSV/TSV table ({e})") from None
    prepare_output(out, prefix, overwrite)
    empty = [i + 2 for i, r in enumerate(rows) if not (r[caption_column] or "").strip()]
    if empty:
        msg = f"{table}: {len(empty)} rows with an empty caption (first at line {empty[0]})"
        if strict:
            raise SystemExit(f"{msg}")
        log.warning("skipping %s", msg)
    rows = [r for r in rows if (r[caption_column] or "").strip()]
    base = table.parent
    samples = (
        (
            base / r[image_column],
            {
                "txt": r[caption_column].strip(),
                "json": {
                    **{k: v for k, v in r.items() if k != caption_column},
                    "caption": r[caption_column].strip(),
                },
            },
        )
        for r in rows
    )
    shards, skipped = _write(samples, out, prefix, shard_size, strict, progress, len(rows))
    write_index_files(out, {prefix: shards}, table.stem)
    return _summary(out, prefix, shards, skipped, skipped_empty_captions=len(empty))


def _summary(out: Path, prefix: str, shards, skipped, **extra) -> dict:
    return {
        "out": str(out),
        "shards": shard_spec(shards),
        "num_shards": len(shards),
        "samples": sum(n for _, n in shards),
        "skipped": len(skipped),
        **extra,
    }
