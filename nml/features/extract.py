"""Frozen-feature extraction into a feature cache (``nml features``), read back by CachedFeatures."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nml import __version__
from nml.data.loading import batch_inputs, select_rows, share_cores_with_workers
from nml.data.modules import ShardDataModule
from nml.features.cache import CACHE_FORMAT, CACHE_META, FeatureSplit, write_split
from nml.models.backbones import Backbone

log = logging.getLogger(__name__)


class _Progress:
    """A bar on a terminal; otherwise a log line every ``every`` seconds (samples, samples/s, ETA)."""

    def __init__(self, name: str, total: int, every: float = 30.0):
        self.name, self.total, self.every = name, total, every
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"features {name}", unit="batch", file=sys.stderr, leave=False)

    def step(self, batches: int, samples: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.perf_counter()
        if now - self.last >= self.every and batches < self.total:
            rate = batches / (now - self.t0)
            log.info(
                "%s: %d/%d batches, %.0f samples/s, ETA %.0f s",
                self.name,
                batches,
                self.total,
                samples / (now - self.t0),
                (self.total - batches) / max(rate, 1e-9),
            )
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.inference_mode()
def _extract(
    backbone: Backbone, loader, device: torch.device, limit: int | None = None, name: str = ""
) -> tuple[np.ndarray, np.ndarray, list[str], int | None]:
    """(features, labels, keys, documents truncated: None for image backbones)."""
    feats, labels, keys = [], [], []
    progress = _Progress(name, len(loader))
    for i, batch in enumerate(loader):
        progress.step(i + 1, len(keys))
        if limit is not None and len(keys) >= limit:
            break
        valid = batch["valid"]
        if not valid.any():
            continue
        inputs = select_rows(batch_inputs(batch), valid)
        if isinstance(inputs, torch.Tensor):  # images: (B, C, H, W) or (B, K, C, H, W)
            x = inputs.to(device, non_blocking=True)
            lead = x.shape[:-3]
            f = backbone.features(x.flatten(0, len(lead) - 1)).float()
            f = f.view(*lead, f.shape[-1])
        else:  # documents: the text backbone tokenises them
            f = backbone.features(inputs).float()
        feats.append(f.cpu().numpy())
        labels.append(batch["clean_target"][valid].numpy())
        keys += [k for k, v in zip(batch["key"], valid.tolist(), strict=True) if v]
    progress.close()
    truncated = backbone.pop_truncated()
    if truncated is not None and truncated[0]:
        log.warning(
            "%s: %d of %d documents were longer than the encoder's limit (%s) and were truncated",
            name,
            truncated[0],
            len(keys),
            truncated[1],
        )
    n = len(keys) if limit is None else min(limit, len(keys))
    return np.concatenate(feats)[:n], np.concatenate(labels)[:n], keys[:n], truncated and truncated[0]


def extract_features(
    backbone: Backbone,
    dm: ShardDataModule,
    out: str | Path,
    views: int = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    provenance: dict | None = None,
    limit: int | None = None,
) -> dict:
    """Write every split of ``dm`` (a ShardDataModule) as frozen features under ``out``.

    All splits get the eval-transform features; with ``views`` K > 0 the training split also gets K
    augmented views per sample (seeded per (seed, sample, view)), for NMTune's two-view loss.
    ``limit``: at most this many samples per split (the first, in shard order).
    """
    dm.inputs.check_views(views)  # before any work
    device = torch.device(device)
    threads = torch.get_num_threads()
    share_cores_with_workers(dm.loader.num_workers, device.type)
    try:
        return _extract_splits(backbone, dm, Path(out), views, seed, device, provenance, limit)
    finally:
        torch.set_num_threads(threads)  # the cap is for the extraction's workers: not the caller's


def _extract_splits(
    backbone: Backbone,
    dm: ShardDataModule,
    out: Path,
    views: int,
    seed: int,
    device: torch.device,
    provenance: dict | None,
    limit: int | None,
) -> dict:
    backbone = backbone.to(device).eval()
    splits: list[tuple[str, str, dict]] = []
    if dm.train_spec:
        splits.append(("train", dm.train_spec, {}))
    if dm.val_spec:
        splits.append(("val", dm.val_spec, {}))
    for s in dm.test_sets:
        splits.append((f"test/{s.name}", s.shards, {"group": s.group, "num_classes": dm.num_classes_of(s)}))
    done: dict[str, tuple] = {}
    info: dict[str, dict] = {}
    for name, spec, extra in splits:
        t0 = time.perf_counter()
        if spec not in done:
            done[spec] = _extract(backbone, dm.extraction_loader(spec), device, limit, name)
        x, y, keys, truncated = done[spec]
        views_arr = None
        if name == "train" and views > 0:
            v, y2, keys2, _ = _extract(
                backbone, dm.extraction_loader(spec, views, seed), device, limit, f"{name} ({views} views)"
            )
            if keys2 != keys or not np.array_equal(y, y2):
                raise RuntimeError(f"{spec}: the augmented pass read the samples in another order")
            views_arr = v
        split = FeatureSplit(x, y, views_arr, keys, f"{out / name}")
        write_split(out / name, split)
        seconds = time.perf_counter() - t0
        info[name] = {
            "shards": spec,
            "samples": len(split),
            "views": split.num_views,
            **({"truncated": truncated} if truncated is not None else {}),
            "seconds": round(seconds, 2),
            **extra,
        }
        log.info("%s: %d samples (%d augmented views) in %.1f s", name, len(split), split.num_views, seconds)
    meta = {
        "format": CACHE_FORMAT,
        "feature_dim": backbone.feature_dim,
        "backbone": provenance or {"backbone": backbone.config.to_dict()},
        "task": dm.task,
        "root": str(dm.root),
        "classes": dm.classes,
        "num_classes": dm.num_classes,
        **dm.inputs.settings(),
        "views": views,
        "seed": seed,
        "limit": limit,
        "splits": info,
        "nml_version": __version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / CACHE_META).write_text(json.dumps(meta, indent=1) + "\n")
    return meta
