"""Every string-to-seed rule of nml, in one place (stdlib only).

Determinism is a feature: the same seed gives the same noisy labels, shard order, augmentations
and numbers on any number of workers, ranks or restarts. Each random stream is named by what it is
for plus the integers that identify it (seed, epoch, reader ...), and derived here:

* :func:`named_rng` -- a ``random.Random`` seeded by the string ``"nml-<kind>/<part>/<part>..."``
  (shard order per epoch, resampling, sample shuffle buffers);
* :func:`name_seed` -- a 64-bit seed from a string (blake2b): per-sample augmentation;
* :func:`stream_id` -- a 48-bit id from a string (sha256): the benchmark's numpy streams, used
  as ``np.random.default_rng([seed, stream_id(name), i])``;
* :func:`combine` -- one 63-bit seed from several integers (the feature cache's per-epoch orders);
* :func:`hash_order_key` -- a stable sort key of a name (the font family split).

Changing any of these changes every derived result: the golden-loss tests pin them.
"""

from __future__ import annotations

import hashlib
import random


def named_rng(kind: str, *parts: object) -> random.Random:
    """``random.Random`` seeded by ``"nml-<kind>/<part>/..."``."""
    return random.Random("/".join([f"nml-{kind}", *map(str, parts)]))


def name_seed(name: str) -> int:
    """A 64-bit seed from ``name`` (blake2b, little-endian)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def stream_id(name: str) -> int:
    """A 48-bit id of a named stream (the first 12 hex digits of its sha256)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:12], 16)


def combine(*parts: int) -> int:
    """One seed in [0, 2^63 - 1) from several integers (order matters)."""
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p) + 1) % (2**63 - 1)
    return seed


def hash_order_key(salt: str, name: str) -> str:
    """A sort key that orders names by a salted hash: the same on every machine."""
    return hashlib.sha256(f"{salt}:{name}".encode()).hexdigest()
