"""``nml data audit``: read shards through the training pipeline and report what it yields.

* :func:`audit_shards`: the noise. The report is computed from the set of (key, clean, noisy)
  triples, sorted by key, so it is the same for any number of workers; images are not decoded.
* :func:`audit_stream`: the training stream's coverage. Every simulated rank and worker reads its
  part of each epoch exactly as ``nml fit`` would (images not decoded) and the report counts, per
  epoch, the samples yielded, unique, never seen, seen more than once, and padding.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np

from nml.noise.config import NoiseConfig
from nml.noise.kinds import noise_kind
from nml.noise.models import NoiseModel
from nml.shards.manifest import info_num_classes, read_info
from nml.shards.members import IMAGE_KEYS, MemberSpec
from nml.shards.spec import expand_spec, resolve_shards

log = logging.getLogger(__name__)


def _members(
    shards: str,
    noise: NoiseConfig,
    num_classes: int | None,
    image_keys: str,
    label_key: str,
    caption_key: str,
) -> MemberSpec:
    expand_spec(shards)  # a missing shard is named before anything else is asked of the data
    if noise_kind(noise.kind).corrupts == "caption":
        return MemberSpec(image_keys, None, None, caption_key, require_caption=True)
    if num_classes is None:
        num_classes = info_num_classes(read_info(shards))  # timm's _info.json: classes or num_classes
        if num_classes is None:
            raise ValueError(
                f"num_classes unknown for {shards!r}: no _info.json with 'classes' or 'num_classes' beside "
                "the shards; pass --num_classes"
            )
    return MemberSpec(image_keys, label_key, num_classes)


def record_ids(records: list[dict]) -> list[tuple[str, str, bool]]:
    """Collate for the stream audit: (shard, key, is a padding repeat) per record."""
    return [(r["__url__"], r["__key__"], bool(r.get("__repeat__"))) for r in records]


def audit_stream(
    shards: str,
    batch_size: int,
    noise: NoiseConfig | None = None,
    num_classes: int | None = None,
    world_size: int = 1,
    num_workers: int = 0,
    epochs: int = 1,
    seed: int = 0,
    resampled: bool = False,
    num_samples: int | None = None,
    shuffle_buffer: int = 1000,
    image_keys: str = IMAGE_KEYS,
    label_key: str = "cls",
    caption_key: str = "txt",
    strict: bool = False,
) -> dict:
    """Coverage of the training stream per epoch, for every simulated rank and worker."""
    from nml.data.pipeline import ShardStream, SharedState, StreamConfig

    noise = noise or NoiseConfig()
    if world_size < 1 or epochs < 1:
        raise ValueError(f"world_size and epochs must be >= 1, got {world_size} and {epochs}")
    base = StreamConfig(
        shards=resolve_shards(shards, strict=strict),
        members=_members(shards, noise, num_classes, image_keys, label_key, caption_key),
        mode="train",
        batch_size=batch_size,
        seed=seed,
        world_size=world_size,
        num_workers=num_workers,
        noise=noise,
        resampled=resampled,
        num_samples=num_samples,
        shuffle_buffer=shuffle_buffer,
        strict=strict,
        decode=False,
        collate=record_ids,
    )
    data = base.total_samples
    report: dict = {
        "shards": shards,
        "num_shards": len(base.shards),
        "samples_in_data": data,
        "batch_size": batch_size,
        "world_size": world_size,
        "num_workers": num_workers,
        "resampled": resampled,
        "epochs": [],
    }
    for epoch in range(epochs):
        seen: Counter = Counter()
        batches, yielded, padding, short, skipped = [], 0, 0, 0, 0
        for rank in range(world_size):
            state = SharedState()
            state.set(epoch, 0)
            cfg = replace(base, rank=rank)
            n = 0
            for slot in range(base.workers):
                for batch in ShardStream(cfg, state, slot=slot):
                    n += 1
                    short += len(batch) < batch_size
                    for url, key, repeat in batch:
                        yielded += 1
                        padding += repeat
                        seen[(url, key)] += 1
            batches.append(n)
            skipped += state.pop_counts()["skipped"]
        report["epochs"].append(
            {
                "epoch": epoch,
                "batches_per_rank": batches,
                "short_batches": short,
                "samples_yielded": yielded,
                "unique": len(seen),
                "never_seen": max(data - len(seen), 0),
                "seen_more_than_once": sum(1 for c in seen.values() if c > 1),
                "padding": padding,
                "skipped": skipped,
            }
        )
    return report


MAX_PRINTED_CLASSES = 64  # above: per-class lists and the matrix go to --out, not stdout


def audit_shards(
    shards: str,
    noise: NoiseConfig,
    num_classes: int | None = None,
    image_keys: str = IMAGE_KEYS,
    label_key: str = "cls",
    caption_key: str = "txt",
    seed: int = 0,
    num_workers: int = 0,
    strict: bool = False,
    out_dir: str | Path | None = None,
) -> dict:
    """The noise realised on ``shards``; with more than ``MAX_PRINTED_CLASSES`` classes the report
    summarises per-class figures (the top confusions, rate ranges) and ``out_dir`` gets the matrix."""
    from nml.data.pipeline import ShardLoader, StreamConfig

    captions = noise_kind(noise.kind).corrupts == "caption"
    members = _members(shards, noise, num_classes, image_keys, label_key, caption_key)
    num_classes = members.num_classes
    cfg = StreamConfig(
        shards=resolve_shards(shards, strict=strict),
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
        model = NoiseModel(noise, num_classes, seed)
        if model.corrupts == "label":  # the kind's rate per class, weighted by the classes read
            out["target_rate"] = round(float((model.noise.rates() * per_class).sum() / n), 6)
        else:
            out["target_rate"] = 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            transition = np.where(per_class[:, None] > 0, counts / per_class[:, None], 0.0)
        out["num_classes"] = num_classes
        rates = [round(float(1 - transition[c, c]), 4) if per_class[c] else None for c in range(num_classes)]
        out["noisy_to_true_class"] = int(sum(1 for r in rows if r[-1] and r[1] == r[2]))
        off = transition.copy()
        np.fill_diagonal(off, 0.0)
        top = [divmod(int(i), num_classes) for i in np.argsort(off, axis=None, kind="stable")[::-1][:10]]
        out["top_confusions"] = [
            {"clean": c, "noisy": t, "rate": round(float(off[c, t]), 4), "samples": int(counts[c, t])}
            for c, t in top
            if counts[c, t]
        ]
        if out_dir is not None:  # the whole matrix, for any number of classes
            d = Path(out_dir)
            d.mkdir(parents=True, exist_ok=True)
            np.save(d / "transition.npy", transition)
            np.savetxt(d / "transition_counts.csv", counts, fmt="%d", delimiter=",")
            out["transition_file"] = str(d / "transition.npy")
        if num_classes <= MAX_PRINTED_CLASSES:
            out["per_class"] = {"samples": per_class.tolist(), "noisy_rate": rates}
            out["transition"] = np.round(transition, 4).tolist()
            out["label_counts"] = dict(sorted(Counter(int(r[2]) for r in rows).items()))
        else:  # 1000 classes: a summary here, the matrix in --out
            known = [r for r in rates if r is not None]
            out["per_class"] = {
                "samples": {"min": int(per_class.min()), "max": int(per_class.max())},
                "noisy_rate": {"min": min(known), "mean": round(float(np.mean(known)), 4), "max": max(known)},
            }
    out["checksum"] = digest.hexdigest()
    return out


def audit(
    shards: str,
    noise: NoiseConfig | None = None,
    num_classes: int | None = None,
    image_keys: str = IMAGE_KEYS,
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
