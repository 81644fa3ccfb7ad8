"""``CachedFeatures``: a DataModule over cached features, for tuning with no backbone at all.

The black-box path: features from ``nml features``, an embedding API or any (N, D) float array
with labels (see :mod:`nml.features.cache` for the formats). Batches hold ``feature`` ((B, D),
or (B, 2, D) when the model asks for two views), ``target``, ``clean_target`` and ``valid``; the
interface (``test_sets``, ``eval_loader``, ``num_classes_of`` ...) is that of the shard modules, so
the test-suite evaluation and FeatureSpectrum work unchanged. In YAML::

    data:
      class_path: nml.features.datamodule.CachedFeatures
      init_args:
        root: runs/features/clip   # an `nml features` output directory

Training: every epoch a permutation seeded by (seed, epoch), wrapped around so that every rank
gets the same number of full batches; mid-epoch resume skips the batches already done.
Evaluation: every sample once across ranks, padding batches with ``valid`` False.
Two views: two distinct stored augmented views per sample (drawn per epoch), else the eval-transform
feature serves as both (plus Gaussian noise of std ``view_noise`` on the second, if set).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule

from nml.data.loading import ResumableLoader, fit_progress
from nml.features.cache import FeatureSplit, load_split, read_cache_meta
from nml.seeding import combine
from nml.shards.manifest import EvalSet, class_prompts, prompt_fields

log = logging.getLogger(__name__)


def _generator(*parts: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(combine(*parts))
    return g


class FeatureLoader(ResumableLoader):
    """Batches of one feature split for one rank (exact ``len``, resume state and evaluation padding
    from :class:`~nml.data.loading.ResumableLoader`)."""

    def __init__(
        self,
        split: FeatureSplit,
        train: bool,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        views: int = 1,
        view_noise: float = 0.0,
        epoch_fn: Callable[[], int] | None = None,
        progress_fn: Callable[[], tuple[int, int]] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}")
        n = len(split)
        if n == 0:
            raise ValueError(f"{split.source}: no samples")
        self.split, self.batch_size = split, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.views, self.view_noise = views, view_noise
        with warnings.catch_warnings():  # large splits stay memory-mapped (read-only); never written
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.x = torch.as_tensor(split.features).float()
            self.y = torch.as_tensor(split.labels).long()
        pool = None
        if views == 2 and split.num_views >= 2:
            pool = torch.as_tensor(split.views).float()
        elif views == 2 and split.num_views == 1:
            pool = torch.stack([self.x, torch.as_tensor(split.views[:, 0]).float()], 1)
        self.pool = pool
        if train:
            length = math.ceil(n / (batch_size * world_size))
        else:
            per_rank = math.ceil(n / world_size)
            self.bounds = (min(rank * per_rank, n), min((rank + 1) * per_rank, n))
            length = math.ceil(per_rank / batch_size)
        settings = {"world_size": world_size, "batch_size": batch_size, "seed": seed}
        self.init_resumable(length, train, epoch_fn, progress_fn, settings)

    def _batch(self, idx: torch.Tensor, epoch: int, valid: bool = True) -> dict:
        y = self.y[idx]
        if self.views == 1:
            feature = self.x[idx]
        elif self.pool is not None:
            k = self.pool.shape[1]
            g = _generator(self.seed, epoch, int(idx[0]), 7)
            first = torch.randint(k, (len(idx),), generator=g)
            second = (first + torch.randint(1, k, (len(idx),), generator=g)) % k
            rows = self.pool[idx]
            ar = torch.arange(len(idx))
            feature = torch.stack([rows[ar, first], rows[ar, second]], 1)
        else:
            f = self.x[idx]
            f2 = f
            if self.view_noise > 0:
                g = _generator(self.seed, epoch, int(idx[0]), 11)
                f2 = f + self.view_noise * torch.randn(f.shape, generator=g)
            feature = torch.stack([f, f2], 1)
        return {
            "feature": feature,
            "target": y,
            "clean_target": y,
            "valid": torch.full((len(idx),), valid, dtype=torch.bool),
        }

    def __iter__(self) -> Iterator[dict]:
        epoch, skip = self.begin_epoch()
        self._epoch_now = epoch
        yield from self.counted(self._batches(epoch, skip))

    def _batches(self, epoch: int, skip: int) -> Iterator[dict]:
        if self.train:
            n, b, w, length = len(self.split), self.batch_size, self.world_size, len(self)
            total = length * b * w
            perm = torch.randperm(n, generator=_generator(self.seed, epoch))
            order = perm.repeat(math.ceil(total / n))[:total].view(length, w, b)[:, self.rank]
            for i in range(skip, length):
                yield self._batch(order[i], epoch)
            return
        lo, hi = self.bounds
        for a in range(lo, hi, self.batch_size):
            yield self._batch(torch.arange(a, min(a + self.batch_size, hi)), epoch)

    def padding_batch(self, last: dict | None) -> dict:
        if last is None:  # this rank's share is empty: any row, counted for nothing
            return self._batch(torch.zeros(1, dtype=torch.long), self._epoch_now, False)
        return super().padding_batch(last)


class CachedFeatures(LightningDataModule):
    """Cached features (an ``nml features`` directory, or explicit split paths).

    Args:
        root: An ``nml features`` output directory (its ``features.json`` names the splits, relative
            to it).
        train / val: Split paths (a split directory, an ``.npz`` with ``features`` and ``labels``, or a
            feature-shard spec), relative to the working directory; default: the cache's ``train`` /
            ``val``.
        test: Named test sets (``shards``: a split path); default: the cache's ``test/<name>`` splits.
        num_classes: Classes of the head (default: the cache's, else 1 + the largest train label).
        batch_size / eval_batch_size: Per rank.
        seed: Seeds the per-epoch order and the view draws.
        views: Features per training sample (1, or 2 for NMTune); None: what the model asks.
        view_noise: Std of Gaussian noise on the second view when no augmented views are stored.
    """

    task: str | None = None  # cached features are not read through a benchmark task

    def __init__(
        self,
        root: str | None = None,
        train: str | None = None,
        val: str | None = None,
        test: list[EvalSet] | None = None,
        num_classes: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
        views: int | None = None,
        view_noise: float = 0.0,
    ):
        super().__init__()
        self.root = root
        self.meta = read_cache_meta(root) if root is not None else {}
        splits = self.meta.get("splits", {})
        self.train_spec = train or (self._cached("train") if "train" in splits else None)
        self.val_spec = val or (self._cached("val") if "val" in splits else None)
        if test is None:
            test = [
                EvalSet(
                    name.split("/", 1)[1],
                    self._cached(name),
                    info.get("group", "id"),
                    info.get("num_classes"),
                )
                for name, info in splits.items()
                if name.startswith("test/")
            ]
        self.test_sets = [s if isinstance(s, EvalSet) else EvalSet(**s) for s in test]
        self.classes = self.meta.get("classes")
        self.num_classes = num_classes or self.meta.get("num_classes")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.seed, self.views, self.view_noise = seed, views, view_noise
        self.val_sets = [EvalSet("val", self.val_spec, "id", self.num_classes)] if self.val_spec else []
        self.rank, self.world_size = 0, 1
        self._splits: dict[str, FeatureSplit] = {}
        if self.train_spec and self.num_classes is None:
            self.num_classes = int(self.split(self.train_spec).labels.max()) + 1
            log.info("num_classes not given: %d from the training labels", self.num_classes)

    def _cached(self, name: str) -> str:
        """A split of the cache at ``root`` (paths inside ``features.json`` are relative to it)."""
        return str(Path(self.root) / name)

    def split(self, spec: str) -> FeatureSplit:
        if spec not in self._splits:
            self._splits[spec] = load_split(spec)
        return self._splits[spec]

    @property
    def feature_dim(self) -> int:
        if self.meta.get("feature_dim"):
            return int(self.meta["feature_dim"])
        spec = self.train_spec or self.val_spec or (self.test_sets[0].shards if self.test_sets else None)
        if spec is None:
            raise ValueError("CachedFeatures: no splits (set root, or train / val / test)")
        return self.split(spec).dim

    def feature_statistics(self, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and standard deviation of the training split's features (float64 sums
        over chunks, so memory-mapped splits stay on disk). A constant dimension (std < 1e-6: a dead
        unit) gets std 1, so it stays 0 after centring; a nearly constant one gets at least 1 % of the
        median std, so that it cannot blow up inputs (augmented views) where it varies more."""
        if not self.train_spec:
            raise ValueError("CachedFeatures: no training split to take feature statistics from")
        x = self.split(self.train_spec).features
        total = torch.zeros(x.shape[1], dtype=torch.float64)
        squares = torch.zeros_like(total)
        for a in range(0, len(x), chunk):
            part = torch.as_tensor(np.asarray(x[a : a + chunk]), dtype=torch.float64)
            total += part.sum(0)
            squares += part.pow(2).sum(0)
        n = max(len(x), 1)
        mean = total / n
        std = (squares / n - mean.pow(2)).clamp_min(0).sqrt()
        constant = std < 1e-6
        live = std[~constant]
        floor = 1e-2 * float(live.median()) if len(live) else 0.0
        floored = int(((std < floor) & ~constant).sum())
        std = torch.where(constant, torch.ones_like(std), std.clamp_min(floor))
        if constant.any() or floored:
            log.info(
                "%s: of %d feature dimensions, %d are constant on the training split (std 1) and %d nearly "
                "so (std raised to 1 %% of the median, %.3g)",
                self.train_spec,
                x.shape[1],
                int(constant.sum()),
                floored,
                floor,
            )
        return mean.float(), std.float()

    def configure_views(self, views: int, augment: bool) -> None:
        if self.views is None:
            self.views = views
        if self.views == 2 and self.train_spec and self.split(self.train_spec).num_views == 0:
            log.warning(
                "%s has no stored augmented views: the same feature serves as both views%s "
                "(extract some with `nml features --views K`)",
                self.train_spec,
                f" (second + N(0, {self.view_noise}^2))" if self.view_noise else "",
            )

    def describe(self) -> dict:
        return {
            "datamodule": type(self).__name__,
            "root": self.root,
            "train": self.train_spec,
            "num_classes": self.num_classes,
            "seed": self.seed,
            "backbone": self.meta.get("backbone"),
            "feature_dim": self.meta.get("feature_dim"),
        }

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _progress(self) -> tuple[int, int]:
        return fit_progress(self.trainer)

    def train_dataloader(self) -> FeatureLoader:
        if not self.train_spec:
            raise ValueError("CachedFeatures: no training split (set root or train)")
        split = self.split(self.train_spec)
        self._check_labels(split, self.num_classes)
        loader = FeatureLoader(
            split,
            True,
            self.batch_size,
            self.seed,
            self.rank,
            self.world_size,
            self.views or 1,
            self.view_noise,
            epoch_fn=self._epoch if self.trainer is not None else None,
            progress_fn=self._progress if self.trainer is not None else None,
        )
        log.info(
            "train: %d cached features (D=%d, %d stored views), %d batches of %d per rank",
            len(split),
            split.dim,
            split.num_views,
            len(loader),
            self.batch_size,
        )
        return loader

    def eval_loader(self, s: EvalSet, persistent: bool = False) -> FeatureLoader:
        split = self.split(s.shards)
        self._check_labels(split, self.num_classes_of(s))
        return FeatureLoader(split, False, self.eval_batch_size, self.seed, self.rank, self.world_size)

    @staticmethod
    def _check_labels(split: FeatureSplit, num_classes: int | None) -> None:
        if num_classes is not None and len(split) and int(split.labels.max()) >= num_classes:
            raise ValueError(f"{split.source}: label {int(split.labels.max())} >= num_classes={num_classes}")

    def num_classes_of(self, s: EvalSet) -> int | None:
        return s.num_classes or self.num_classes

    def classes_of(self, s: EvalSet) -> list[str] | None:
        n = self.num_classes_of(s)
        return self.classes if self.classes is not None and len(self.classes) == n else None

    def prompts_of(self, s: EvalSet | None, templates: list[str] | None = None) -> list[list[str]] | None:
        classes = self.classes if s is None else self.classes_of(s)
        if classes is None:
            return None
        data_templates, fields = prompt_fields(None, classes)
        return class_prompts(templates or data_templates, fields)

    def match_preprocessing(
        self, image_size: int | None, mean, std, source: str, crop_pct: float | None = None
    ) -> None:
        """Nothing to adopt: cached features were extracted with their backbone's preprocessing."""

    def val_dataloader(self) -> list[FeatureLoader]:
        return [self.eval_loader(s) for s in self.val_sets]

    def test_dataloader(self) -> list[FeatureLoader]:
        return [self.eval_loader(s) for s in self.test_sets]

    def predict_dataloader(self) -> list[FeatureLoader]:
        """``nml predict`` predicts the test sets, sample by sample."""
        return self.test_dataloader()
