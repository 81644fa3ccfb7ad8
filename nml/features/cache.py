"""Cached features on disk: what ``nml features`` writes and :class:`CachedFeatures` reads.

A cache directory (``nml features --out DIR``)::

    DIR/features.json              format, backbone provenance, feature_dim, task, classes, splits
    DIR/<split>/features.npy       (N, D) float32, eval transform
    DIR/<split>/views.npy          (N, K, D) float32, K augmented views (train split, --views K)
    DIR/<split>/labels.npy         (N,) int64
    DIR/<split>/keys.txt           sample keys, one per line (the shards' ``__key__``)

with splits ``train``, ``val`` and ``test/<name>``. Any split can also come from elsewhere (an
embedding API, another toolkit): a directory with ``features.npy`` + ``labels.npy``, an ``.npz``
with arrays ``features`` and ``labels`` (optionally ``views``), or a spec of feature shards (tars
whose samples hold a 1-D ``.npy`` feature and a ``cls`` label). Arrays are loaded with
``allow_pickle=False``; nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nml.shards.spec import expand_spec

log = logging.getLogger(__name__)
CACHE_META = "features.json"
CACHE_FORMAT = "nml-features/1"
IN_MEMORY_BYTES = 2 << 30  # smaller arrays are read into memory; larger ones stay memory-mapped


@dataclass
class FeatureSplit:
    """One split's features (N, D), optional augmented views (N, K, D), labels (N,) and keys."""

    features: np.ndarray
    labels: np.ndarray
    views: np.ndarray | None = None
    keys: list[str] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or "features"
        if self.features.ndim != 2:
            raise ValueError(f"{where}: features must be (N, D), got shape {self.features.shape}")
        if not np.issubdtype(self.features.dtype, np.floating):
            raise ValueError(f"{where}: features must be floating point, got {self.features.dtype}")
        n = self.features.shape[0]
        if self.labels.shape != (n,) or not np.issubdtype(self.labels.dtype, np.integer):
            raise ValueError(
                f"{where}: labels must be ({n},) integers to match the features, got "
                f"shape {self.labels.shape} dtype {self.labels.dtype}"
            )
        if self.views is not None and (
            self.views.ndim != 3 or self.views.shape[0] != n or self.views.shape[2] != self.dim
        ):
            raise ValueError(f"{where}: views must be (N={n}, K, D={self.dim}), got shape {self.views.shape}")
        if n and self.labels.min() < 0:
            raise ValueError(f"{where}: negative label {int(self.labels.min())}")

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def num_views(self) -> int:
        return 0 if self.views is None else self.views.shape[1]


def _array(path: Path) -> np.ndarray:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    return np.array(arr) if arr.nbytes <= IN_MEMORY_BYTES else arr  # a writable in-memory copy


def load_split(path: str | Path) -> FeatureSplit:
    """A split from a cache directory, an ``.npz`` or a feature-shard spec (see the module doc)."""
    p = Path(path)
    if p.is_dir():
        for name in ("features.npy", "labels.npy"):
            if not (p / name).is_file():
                raise FileNotFoundError(
                    f"feature split {str(p)!r}: no {name} (expected features.npy + labels.npy)"
                )
        keys = (p / "keys.txt").read_text().splitlines() if (p / "keys.txt").is_file() else None
        views = _array(p / "views.npy") if (p / "views.npy").is_file() else None
        return FeatureSplit(_array(p / "features.npy"), _array(p / "labels.npy"), views, keys, str(p))
    if p.suffix == ".npz":
        if not p.is_file():
            raise FileNotFoundError(f"feature split: no such file {str(p)!r}")
        with np.load(p, allow_pickle=False) as z:
            missing = {"features", "labels"} - set(z.files)
            if missing:
                raise ValueError(
                    f"{p}: no array {sorted(missing)} (arrays: {z.files}); expected features and labels"
                )
            return FeatureSplit(
                z["features"], z["labels"], z["views"] if "views" in z.files else None, None, str(p)
            )
    return _load_feature_shards(str(path))


def npy_vector(data: bytes, where: str) -> np.ndarray:
    """A 1-D feature vector from ``.npy`` bytes (never unpickled); errors name ``where``."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{where}: not a plain .npy array ({e})") from None
    if arr.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D feature vector, got shape {arr.shape}")
    return arr


def _shard_urls(spec: str) -> list[str]:
    urls = [u for src in expand_spec(spec) for u in src]
    if not urls:
        raise ValueError(f"features: {spec!r} is not a .npy, .npz, split directory or feature-shard spec")
    return urls


def iter_feature_tars(spec: str) -> Iterator[tuple[str, np.ndarray, int | None]]:
    """(key, feature vector, label or None) of every sample of a spec of feature shards, in order.

    The one reader of feature tars: members are read as bytes; only ``.npy`` (``allow_pickle=False``)
    and ``.cls`` are parsed."""
    for url in _shard_urls(spec):
        sample: dict[str, bytes] = {}
        with tarfile.open(url, "r|*") as tar:
            for m in tar:
                if not m.isreg():
                    continue
                key, _, ext = m.name.partition(".")
                if sample and key != sample["__key__"]:
                    yield _feature_sample(sample, url)
                    sample = {}
                sample["__key__"] = key
                sample[ext] = tar.extractfile(m).read()
        if sample:
            yield _feature_sample(sample, url)


def _feature_sample(sample: dict, url: str) -> tuple[str, np.ndarray, int | None]:
    where = f"{url}:{sample['__key__']}"
    if "npy" not in sample:
        raise ValueError(f"{where}: a feature shard sample needs a .npy member, got {sorted(sample)}")
    label = None
    if "cls" in sample:
        try:
            label = int(sample["cls"].decode().strip())
        except ValueError:
            raise ValueError(f"{where}.cls: expected an integer label, got {sample['cls'][:20]!r}") from None
    return sample["__key__"], npy_vector(sample["npy"], f"{where}.npy"), label


def _load_feature_shards(spec: str) -> FeatureSplit:
    feats, labels, keys = [], [], []
    for key, vec, label in iter_feature_tars(spec):
        if label is None:
            raise ValueError(f"{spec}: sample {key!r} has no .cls label (a training split needs labels)")
        feats.append(vec)
        labels.append(label)
        keys.append(key)
    return FeatureSplit(np.stack(feats), np.asarray(labels, dtype=np.int64), None, keys, spec)


def iter_feature_chunks(path: str, key: str | None = None, chunk: int = 8192) -> Iterator[np.ndarray]:
    """(rows, D) float chunks of the features at ``path``: .npy (memory-mapped), .npz (``key``:
    which array), a split directory, or a spec of feature tars."""
    p = Path(path)
    if p.is_dir():
        p = p / "features.npy"
    if p.suffix in (".npy", ".npz"):
        if not p.is_file():
            raise FileNotFoundError(f"features: no such file {str(p)!r}")
        if p.suffix == ".npy":
            arr, where = np.load(p, mmap_mode="r", allow_pickle=False), str(p)
        else:
            with np.load(p, allow_pickle=False) as z:
                names = list(z.files)
                name = key or (names[0] if len(names) == 1 else "features")
                if name not in names:
                    raise ValueError(f"{p}: no array {name!r} (arrays: {names}); pass --key")
                arr, where = z[name], f"{p}:{name}"
        if arr.ndim != 2:
            raise ValueError(f"{where}: expected an (N, D) feature matrix, got shape {arr.shape}")
        for a in range(0, arr.shape[0], chunk):
            yield np.asarray(arr[a : a + chunk])
        return
    buf: list[np.ndarray] = []
    for _, vec, _ in iter_feature_tars(str(path)):
        buf.append(vec)
        if len(buf) >= chunk:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


def write_split(directory: str | Path, split: FeatureSplit) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "features.npy", np.asarray(split.features, dtype=np.float32))
    np.save(d / "labels.npy", np.asarray(split.labels, dtype=np.int64))
    if split.views is not None:
        np.save(d / "views.npy", np.asarray(split.views, dtype=np.float32))
    if split.keys is not None:
        (d / "keys.txt").write_text("".join(f"{k}\n" for k in split.keys))


def read_cache_meta(root: str | Path) -> dict:
    path = Path(root) / CACHE_META
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(root)!r} is not a feature cache: no {CACHE_META} (write one with `nml features`, or give "
            "data.train / data.val / data.test paths to .npz files, split directories or feature shards)"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {CACHE_FORMAT!r}")
    return meta
