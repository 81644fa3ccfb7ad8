"""``nml data audit``: read shards through the training pipeline's noise stage and report it.

The report is computed from the set of (key, clean, noisy) triples, sorted by key, so it is the
same for any number of workers; images are not decoded.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter

import numpy as np

from nml.noise.config import NoiseConfig
from nml.noise.models import load_transition_matrix
from nml.shards.manifest import info_classes
from nml.shards.members import MemberSpec
from nml.shards.spec import resolve_shards

log = logging.getLogger(__name__)


def audit_shards(
    shards: str,
    noise: NoiseConfig,
    num_classes: int | None = None,
    image_keys: str = "jpg;png;jpeg;webp",
    label_key: str = "cls",
    caption_key: str = "txt",
    seed: int = 0,
    num_workers: int = 0,
    strict: bool = False,
) -> dict:
    from nml.data.pipeline import ShardLoader, StreamConfig

    captions = noise.kind == "caption_swap"
    if not captions and num_classes is None:
        classes = info_classes(shards)
        if classes is None:
            raise ValueError(
                f"num_classes unknown for {shards!r}: no _info.json with 'classes' beside the shards; "
                "pass --num_classes"
            )
        num_classes = len(classes)
    members = (
        MemberSpec(image_keys, None, None, caption_key, require_caption=True)
        if captions
        else MemberSpec(image_keys, label_key, num_classes)
    )
    cfg = StreamConfig(
        shards=resolve_shards(shards),
        members=members,
        mode="eval",
        batch_size=None,
        seed=seed,
        num_workers=num_workers,
        noise=noise,
        strict=strict,
        decode=False,
    )
    rows = sorted(
        (
            (r["__key__"], r["clean_caption"], r["caption"], r.get("donor", ""), r["is_noisy"])
            if captions
            else (r["__key__"], r["cls"], r["target"], r["is_noisy"])
            for r in ShardLoader(cfg)
        ),
        key=lambda t: t[0],
    )
    n = len(rows)
    if n == 0:
        raise ValueError(f"no samples read from {shards!r}")
    dup = n - len({r[0] for r in rows})
    if dup:
        log.warning("%d duplicate sample key(s) in %r: duplicates share their noise", dup, shards)
    digest = hashlib.sha256()
    for r in rows:
        digest.update(("\t".join(map(str, r)) + "\n").encode())
    noisy = sum(1 for r in rows if r[-1])
    out: dict = {
        "shards": shards,
        "num_shards": len(cfg.shards),
        "samples": n,
        "duplicate_keys": dup,
        "noise": noise.describe() | {"seed": noise.seed if noise.seed is not None else seed},
        "noisy": noisy,
        "realised_rate": round(noisy / n, 6),
    }
    if captions:
        out["target_rate"] = noise.rate
        out["mismatch_rate"] = round(sum(1 for r in rows if r[1] != r[2]) / n, 6)
        out["self_swaps"] = sum(1 for r in rows if r[-1] and r[3] == r[0])
    else:
        counts = np.zeros((num_classes, num_classes), dtype=np.int64)
        for _, c, t, _ in rows:
            counts[c, t] += 1
        per_class = counts.sum(1)
        if noise.kind == "matrix":
            expected = 1.0 - np.diag(load_transition_matrix(noise.matrix, num_classes))
            out["target_rate"] = round(float((expected * per_class).sum() / n), 6)
        else:
            out["target_rate"] = noise.rate if noise.active else 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            transition = np.where(per_class[:, None] > 0, counts / per_class[:, None], 0.0)
        out["num_classes"] = num_classes
        out["per_class"] = {
            "samples": per_class.tolist(),
            "noisy_rate": [
                round(float(1 - transition[c, c]), 4) if per_class[c] else None for c in range(num_classes)
            ],
        }
        out["noisy_to_true_class"] = int(sum(1 for r in rows if r[-1] and r[1] == r[2]))
        out["transition"] = np.round(transition, 4).tolist()
        out["label_counts"] = dict(sorted(Counter(int(r[2]) for r in rows).items()))
    out["checksum"] = digest.hexdigest()
    return out
