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
* The third hash picks the wrong label or the donor caption, as the kind draws it
  (:mod:`nml.noise.kinds`: ``symmetric``: uniform over the other classes; ``pair``:
  ``class_map[c]``, default ``c+1 mod C``; ``matrix``: row ``c`` of a transition matrix without its
  diagonal; ``caption_swap``: another sample of the same block, preferring one whose caption text
  differs). A sample is never its own donor.

Nothing here imports torch: ``nml data audit`` and the tests use it directly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from nml.noise.config import NoiseConfig
from nml.noise.kinds import noise_kind

_U64 = float(2**64)


def sample_hashes(seed: int, key: str) -> tuple[int, float, int]:
    """(rank hash, jitter in [0, 1), choice hash) of a sample: a pure function of (seed, key)."""
    d = hashlib.blake2b(key.encode(), digest_size=24, key=str(int(seed)).encode()).digest()
    return (
        int.from_bytes(d[:8], "little"),
        int.from_bytes(d[8:16], "little") / _U64,
        int.from_bytes(d[16:], "little"),
    )


class NoiseModel:
    """Applies a :class:`NoiseConfig` to the samples of one shard, read in order.

    Samples are dicts with ``__key__`` and, for label noise, ``cls`` (int) or, for caption noise,
    ``caption`` (str). Adds ``target`` (the possibly wrong label) or replaces ``caption``, and sets
    ``is_noisy``; captions keep the original under ``clean_caption`` and the donor's key in ``donor``.
    """

    def __init__(self, config: NoiseConfig, num_classes: int | None = None, seed: int = 0):
        self.config = config
        self.seed = int(config.seed if config.seed is not None else seed)
        kind = noise_kind(config.kind)
        self.noise = kind(config, num_classes) if kind.active(config) else None  # the kind draws
        self.corrupts = self.noise.corrupts if self.noise is not None else None
        self.num_classes = num_classes
        if self.corrupts == "label":
            self._rates = self.noise.rates()

    # -- a shard -------------------------------------------------------------------------------
    def apply(self, samples: Iterable[dict]) -> Iterator[dict]:
        """Noise the samples of ONE shard (in shard order); yields them in the same order."""
        if self.noise is None:
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
        if self.corrupts == "caption":
            rate = self.config.rate
            clean = [s["caption"] for s in block]
            for i, s in enumerate(block):
                s["clean_caption"] = clean[i]
                s["is_noisy"] = False
                if n < 2 or (rank[i] + hashes[i][1]) / n >= rate:
                    continue
                j = self.noise.donor(i, clean, hashes[i][2])
                s["caption"], s["donor"], s["is_noisy"] = clean[j], block[j]["__key__"], True
            return block
        for i, s in enumerate(block):
            c = s["cls"]
            if (rank[i] + hashes[i][1]) / n < self._rates[c]:
                s["target"], s["is_noisy"] = self.noise.wrong_label(c, hashes[i][2]), True
            else:
                s["target"], s["is_noisy"] = c, False
        return block
