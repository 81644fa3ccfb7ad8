"""Label and caption noise, fixed per sample: the same sample gets the same wrong label every epoch.

Noise is decided while a shard is read, before any shuffling, in consecutive blocks of ``block``
samples (the last block of a shard takes the remainder, so blocks hold ``block`` to ``2*block-1``
samples). Every decision is a pure function of ``(seed, sample key)`` and of the keys in the same
block, so it does not depend on epochs, workers, ranks, restarts or the shuffle order:

* Each sample gets three 64-bit hashes of ``(seed, key)``. Within its block, samples are ranked by
  the first hash; rank ``r`` and the second hash ``v`` give a stratified uniform
  ``u = (r + v) / n`` (``n`` = block size). A sample is noisy iff ``u < rate(clean class)``.
  Stratification makes the realised fraction of noisy samples ``rate`` up to one sample per block
  (Bernoulli draws would miss a +-0.5 point target on 10k samples about one time in five).
* The third hash picks the wrong label (``symmetric``: uniform over the other classes; ``pair``:
  ``class_map[c]``, default ``c+1 mod C``; ``matrix``: row ``c`` of a transition matrix without its
  diagonal) or, for ``caption_swap``, the donor: another sample of the same block, preferring one
  whose caption text differs. A sample is never its own donor.

Nothing here imports torch: ``nml data audit`` and the tests use it directly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from nml.noise.config import LABEL_KINDS, NoiseConfig

_U64 = float(2**64)


def sample_hashes(seed: int, key: str) -> tuple[int, float, int]:
    """(rank hash, jitter in [0, 1), choice hash) of a sample: a pure function of (seed, key)."""
    d = hashlib.blake2b(key.encode(), digest_size=24, key=str(int(seed)).encode()).digest()
    return (
        int.from_bytes(d[:8], "little"),
        int.from_bytes(d[8:16], "little") / _U64,
        int.from_bytes(d[16:], "little"),
    )


def load_transition_matrix(path: str | Path, num_classes: int) -> np.ndarray:
    """A row-stochastic ``num_classes`` x ``num_classes`` matrix from .npy/.csv/.txt/.json."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"noise.matrix: no such file {str(p)!r}")
    try:
        if p.suffix == ".npy":
            m = np.load(p, allow_pickle=False)
        elif p.suffix == ".json":
            m = np.asarray(json.loads(p.read_text()), dtype=np.float64)
        else:
            text = p.read_text().replace(",", " ")
            m = np.asarray([[float(x) for x in line.split()] for line in text.splitlines() if line.strip()])
    except (ValueError, OSError) as e:
        raise ValueError(f"noise.matrix {str(p)!r}: cannot read a numeric matrix ({e})") from e
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (num_classes, num_classes):
        raise ValueError(
            f"noise.matrix {str(p)!r}: expected a {num_classes} x {num_classes} matrix (one row per class), "
            f"got shape {m.shape}"
        )
    if not np.isfinite(m).all():
        r, c = np.argwhere(~np.isfinite(m))[0]
        raise ValueError(f"noise.matrix {str(p)!r}: entry [{r}, {c}] = {m[r, c]} is not a finite number")
    if (m < 0).any():
        r, c = np.argwhere(m < 0)[0]
        raise ValueError(f"noise.matrix {str(p)!r}: entry [{r}, {c}] = {m[r, c]} is negative")
    bad = np.flatnonzero(np.abs(m.sum(1) - 1.0) > 1e-6)
    if bad.size:
        raise ValueError(
            f"noise.matrix {str(p)!r} is not row-stochastic: row {bad[0]} sums to {m[bad[0]].sum():.6g} "
            f"({bad.size} rows do not sum to 1)"
        )
    if (np.diag(m) >= 1.0).all():
        raise ValueError(f"noise.matrix {str(p)!r} is the identity: it corrupts nothing")
    return m


class NoiseModel:
    """Applies a :class:`NoiseConfig` to the samples of one shard, read in order.

    Samples are dicts with ``__key__`` and, for label noise, ``cls`` (int) or, for caption noise,
    ``caption`` (str). Adds ``target`` (the possibly wrong label) or replaces ``caption``, and sets
    ``is_noisy``; captions keep the original under ``clean_caption`` and the donor's key in ``donor``.
    """

    def __init__(self, config: NoiseConfig, num_classes: int | None = None, seed: int = 0):
        self.config = config
        self.seed = int(config.seed if config.seed is not None else seed)
        self.kind = config.kind if config.active else "none"
        self.num_classes = num_classes
        if self.kind in LABEL_KINDS:
            if not num_classes or num_classes < 2:
                raise ValueError(f"noise.kind={self.kind} needs num_classes >= 2, got {num_classes}")
            self._rates = np.full(num_classes, float(config.rate))
            if self.kind == "pair":
                cmap = config.class_map or [(c + 1) % num_classes for c in range(num_classes)]
                if len(cmap) != num_classes:
                    raise ValueError(
                        f"noise.class_map has {len(cmap)} entries, expected one per class ({num_classes})"
                    )
                for c, t in enumerate(cmap):
                    if not (0 <= int(t) < num_classes) or int(t) == c:
                        raise ValueError(
                            f"noise.class_map[{c}] = {t}: expected another class in [0, {num_classes})"
                        )
                self._cmap = [int(t) for t in cmap]
            elif self.kind == "matrix":
                m = load_transition_matrix(config.matrix, num_classes)
                self._rates = 1.0 - np.diag(m)
                off = m.copy()
                np.fill_diagonal(off, 0.0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    self._cdf = np.cumsum(off / off.sum(1, keepdims=True), axis=1)

    # -- one sample ----------------------------------------------------------------------------
    def _wrong_label(self, c: int, h: int) -> int:
        C = self.num_classes
        if self.kind == "symmetric":
            return (c + 1 + h % (C - 1)) % C
        if self.kind == "pair":
            return self._cmap[c]
        u = (h >> 11) / float(2**53)
        return int(min(np.searchsorted(self._cdf[c], u, side="right"), C - 1))

    # -- a shard -------------------------------------------------------------------------------
    def apply(self, samples: Iterable[dict]) -> Iterator[dict]:
        """Noise the samples of ONE shard (in shard order); yields them in the same order."""
        if self.kind == "none":
            for s in samples:
                if "cls" in s:
                    s["target"] = s["cls"]
                s["is_noisy"] = False
                yield s
            return
        b, buf = self.config.block, []
        for s in samples:
            buf.append(s)
            if len(buf) >= 2 * b:
                yield from self._block(buf[:b])
                buf = buf[b:]
        if buf:
            yield from self._block(buf)

    def _block(self, block: list[dict]) -> list[dict]:
        n = len(block)
        hashes = [sample_hashes(self.seed, s["__key__"]) for s in block]
        order = sorted(range(n), key=lambda i: (hashes[i][0], block[i]["__key__"]))
        rank = [0] * n
        for r, i in enumerate(order):
            rank[i] = r
        if self.kind == "caption_swap":
            rate = self.config.rate
            clean = [s["caption"] for s in block]
            for i, s in enumerate(block):
                s["clean_caption"] = clean[i]
                s["is_noisy"] = False
                if n < 2 or (rank[i] + hashes[i][1]) / n >= rate:
                    continue
                others = [j for j in range(n) if j != i and clean[j] != clean[i]] or [
                    j for j in range(n) if j != i
                ]
                j = others[hashes[i][2] % len(others)]
                s["caption"], s["donor"], s["is_noisy"] = clean[j], block[j]["__key__"], True
            return block
        for i, s in enumerate(block):
            c = s["cls"]
            if (rank[i] + hashes[i][1]) / n < self._rates[c]:
                s["target"], s["is_noisy"] = self._wrong_label(c, hashes[i][2]), True
            else:
                s["target"], s["is_noisy"] = c, False
        return block
