"""Reading feature matrices in chunks: ``.npy`` (memory-mapped), ``.npz`` and feature shards.

Feature shards are WebDataset tars whose samples hold a ``.npy`` member with one feature vector
(float16/32/64, 1-D), optionally a ``cls`` label; they are read member by member, never unpickled
(``allow_pickle=False``). This is how embeddings from an API or ``nml features`` are stored.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nml.data.shards import expand_spec


def npy_vector(data: bytes, where: str) -> np.ndarray:
    """A 1-D feature vector from ``.npy`` bytes (never unpickled); errors name ``where``."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{where}: not a plain .npy array ({e})") from None
    if arr.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D feature vector, got shape {arr.shape}")
    return arr


def iter_feature_chunks(path: str, key: str | None = None, chunk: int = 8192) -> Iterator[np.ndarray]:
    """(rows, D) float chunks of the features at ``path``: .npy, .npz (``key``: which array), or
    a shard spec of feature tars."""
    p = Path(path)
    if p.suffix == ".npy":
        if not p.is_file():
            raise FileNotFoundError(f"features: no such file {path!r}")
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
        if arr.ndim != 2:
            raise ValueError(f"{path}: expected an (N, D) feature matrix, got shape {arr.shape}")
        for a in range(0, arr.shape[0], chunk):
            yield np.asarray(arr[a : a + chunk])
        return
    if p.suffix == ".npz":
        if not p.is_file():
            raise FileNotFoundError(f"features: no such file {path!r}")
        with np.load(p, allow_pickle=False) as z:
            names = list(z.files)
            name = key or (names[0] if len(names) == 1 else "features")
            if name not in names:
                raise ValueError(f"{path}: no array {name!r} (arrays: {names}); pass --key")
            arr = z[name]
        if arr.ndim != 2:
            raise ValueError(f"{path}:{name}: expected an (N, D) feature matrix, got shape {arr.shape}")
        for a in range(0, arr.shape[0], chunk):
            yield arr[a : a + chunk]
        return
    urls = [u for src in expand_spec(path) for u in src]
    buf: list[np.ndarray] = []
    for url in urls:
        with tarfile.open(url, "r|*") as tar:
            for m in tar:
                if m.isreg() and m.name.endswith(".npy"):
                    buf.append(npy_vector(tar.extractfile(m).read(), f"{url}:{m.name}"))
                    if len(buf) >= chunk:
                        yield np.stack(buf)
                        buf = []
    if buf:
        yield np.stack(buf)
    elif not urls:
        raise ValueError(f"features: {path!r} is not a .npy, .npz or shard spec")
