"""The one streaming pipeline behind every nml DataModule (classification, image-text, audit).

Per reader (global worker id ``rank * workers + worker``), a ``webdataset.DataPipeline`` of::

    this reader's spans of shards  ->  tar -> parse members -> NOISE (per shard, pre-shuffle)
    -> sample shuffle seeded by (seed, epoch, rank, worker), drained at the end of the pass
    -> repeats up to the reader's full batches  -> resume skip  -> decode + transform  -> batch

* Training: an epoch is exactly one pass over the training samples plus counted padding. The shards,
  shuffled by (seed, epoch), are laid end to end and cut into one span per reader sized by sample
  count (:func:`~nml.shards.spec.train_plan`), so that every rank yields the same number of full
  batches, ``ceil(samples / (batch * world))`` (uneven batch counts hang DDP); the last batches are
  filled with the fewest repeats of the reader's own first samples, counted as padding. Samples
  lost to unreadable data are replaced the same way (counted as skipped and as padding).
  ``resampled``: shards are drawn with replacement, ``num_samples`` per epoch, no pass structure.
* Evaluation: every sample is read exactly once across all ranks and workers, in order, with a
  partial last batch; the loader pads each rank to the same number of batches with copies whose
  ``valid`` mask is all False (no per-step collectives needed; reduce counts at epoch end).
* The epoch and the resume offset live in shared memory (:class:`SharedState`), written by the
  loader in the main process when an epoch's iterator is created, so persistent workers see them.
* Mid-epoch resume: :class:`ShardLoader` state is ``{epoch, batches_done}`` (the same on every
  rank). On restore, each worker regenerates its stream, drops the samples of the batches already
  done before decoding, and the worker order is rotated so the remaining batches come out in the
  order an uninterrupted run would have produced them.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import webdataset as wds
from torch.utils.data import DataLoader, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from nml.data.device_decode import DeviceDecoder
from nml.data.loading import ResumableLoader, track_workers
from nml.data.transforms import min_decode_side
from nml.noise.config import NoiseConfig
from nml.noise.models import NoiseModel
from nml.seeding import name_seed, named_rng
from nml.shards.members import (
    BadImage,
    MemberSpec,
    ShardFormatError,
    decode_image,
    image_header_size,
    parse_sample,
)
from nml.shards.remote import open_shard
from nml.shards.spec import (
    EvalUnit,
    ReaderPlan,
    Shard,
    eval_assignment,
    eval_units,
    rank_batches,
    train_plan,
    worker_batches,
)

log = logging.getLogger(__name__)
Mode = Literal["train", "eval"]
MAX_WARNINGS = 5


class SharedState:
    """Epoch, resume offset and per-epoch counters of skipped and padding samples in shared memory
    (seen by all workers)."""

    def __init__(self) -> None:
        self._v = mp.Array("q", 4)  # epoch, skip (batches), skipped samples, padding samples

    def set(self, epoch: int, skip: int) -> None:
        with self._v.get_lock():
            self._v[0], self._v[1] = int(epoch), int(skip)

    def get(self) -> tuple[int, int]:
        return int(self._v[0]), int(self._v[1])

    def add_skipped(self, n: int = 1) -> None:
        with self._v.get_lock():
            self._v[2] += n

    def add_padding(self, n: int) -> None:
        with self._v.get_lock():
            self._v[3] += n

    def pop_counts(self) -> dict[str, int]:
        """``{skipped, padding}`` since the last call (then reset)."""
        with self._v.get_lock():
            out = {"skipped": int(self._v[2]), "padding": int(self._v[3])}
            self._v[2], self._v[3] = 0, 0
        return out


@dataclass
class StreamConfig:
    """Everything one reader needs; picklable so that spawn/forkserver workers work too."""

    shards: list[Shard]
    members: MemberSpec
    mode: Mode = "train"
    batch_size: int | None = 64  # None: yield single records (no batching)
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    resampled: bool = False
    weights: list[float] | None = None  # per '::' source, resampled mode only
    num_samples: int | None = None  # training epoch size (default: all samples; resampled: required)
    shuffle_buffer: int = 1000
    strict: bool = False
    decode: bool = True
    reduced_decode: bool = True  # JPEGs at 1/2..1/8 scale when the transform loses nothing by it
    device_decoder: DeviceDecoder | None = None  # decode on the device: workers pass bytes + crops
    transform: Callable | None = None
    collate: Callable | None = None
    views: int = 1  # augmented views per image (> 1: ``image`` is (views, C, H, W))
    augment: bool | None = None  # seed the transform per (seed, epoch, key, view); None: in training

    @property
    def seeded(self) -> bool:
        return self.mode == "train" if self.augment is None else self.augment

    def __post_init__(self) -> None:
        if not self.shards:
            raise ValueError("no shards: the shard spec expanded to nothing")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.views < 1:
            raise ValueError(f"views must be >= 1, got {self.views}")
        if not (0 <= self.rank < self.world_size):
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        if self.mode == "train" and self.batch_size is not None:
            if self.total_samples < 1 and not self.resampled:
                raise ValueError("the training shards hold no samples (sizes.json says 0)")
            if self.num_samples is not None and not (
                0 < self.num_samples <= (self.total_samples if not self.resampled else self.num_samples)
            ):
                raise ValueError(
                    f"train_samples={self.num_samples}: expected 1..{self.total_samples} (the samples in the "
                    "training shards); an epoch of more than one pass needs resampled: true"
                )
            if self.resampled and self.num_samples is None and self.total_samples < 1:
                raise ValueError("resampled: true needs train_samples (samples per epoch) or a size index")
        if self.weights is not None:
            if not self.resampled:
                raise ValueError("source weights need resampled: true (sampling shards with replacement)")
            nsrc = max(s.source for s in self.shards) + 1
            if len(self.weights) != nsrc or any(w < 0 for w in self.weights) or not sum(self.weights) > 0:
                raise ValueError(
                    f"weights: expected {nsrc} non-negative weights (one per '::' source), got {self.weights}"
                )

    @property
    def workers(self) -> int:
        return max(1, self.num_workers)

    @property
    def total_samples(self) -> int:
        return sum(s.size for s in self.shards)

    @property
    def epoch_samples(self) -> int:
        """Training samples per epoch (one pass, or ``num_samples``)."""
        return self.num_samples if self.num_samples is not None else self.total_samples

    def rank_batches(self) -> int:
        """Training: full batches every rank yields per epoch."""
        return rank_batches(self.epoch_samples, self.batch_size, self.world_size)

    def reader_batches(self, slot: int) -> int:
        """Training: full batches worker ``slot`` of a rank yields per epoch."""
        return worker_batches(self.rank_batches(), self.workers, slot)

    def plan(self, epoch: int) -> list[ReaderPlan]:
        """Training without resampling: every reader's part of ``epoch``."""
        return train_plan(
            self.shards, self.seed, epoch, self.world_size, self.workers, self.batch_size, self.num_samples
        )

    def eval_units_of(self, reader: int) -> list[EvalUnit]:
        readers = self.world_size * self.workers
        return eval_assignment(eval_units(self.shards, readers), reader, readers)

    def eval_batches_of_rank(self, rank: int) -> int:
        units = [self.eval_units_of(rank * self.workers + w) for w in range(self.workers)]
        if self.batch_size is None:
            return sum(u.size for us in units for u in us)
        return sum(math.ceil(sum(u.size for u in us) / self.batch_size) for us in units)

    def length(self) -> int:
        """Batches (records if batch_size is None) the loader of ``rank`` yields per epoch."""
        if self.mode == "train":
            return self.rank_batches()
        return max(self.eval_batches_of_rank(r) for r in range(self.world_size))


class _TarErrors:
    """webdataset exception handler: strict raises; otherwise warn (first few), count, continue."""

    def __init__(self, cfg: StreamConfig, state: SharedState, where: str):
        self.cfg, self.state, self.where, self.count, self.samples = cfg, state, where, 0, 0

    def __call__(self, exn: Exception, samples: int = 1) -> bool:
        if self.cfg.strict:
            raise exn
        self.state.add_skipped(samples)
        self.count += 1
        self.samples += samples
        if self.count <= MAX_WARNINGS:
            log.warning("%s: skipped unreadable data (%s: %s)", self.where, type(exn).__name__, exn)
        return True


class ShardStream(wds.DataPipeline):
    """The pipeline of one reader, built per iteration from the shared epoch and resume offset."""

    def __init__(self, cfg: StreamConfig, state: SharedState | None = None, slot: int | None = None):
        """``slot``: play DataLoader worker ``slot`` of ``cfg.num_workers`` in this process."""
        super().__init__()
        self.cfg, self.state, self.slot = cfg, state or SharedState(), slot
        self.noise = NoiseModel(cfg.noise, cfg.members.num_classes, cfg.seed)
        self._ctx: dict[str, int] = {}
        self._plan: ReaderPlan | None = None  # training without resampling: this reader's epoch
        self._pool: list[dict] = []  # the reader's first records: where padding repeats come from
        self._warned = 0
        self._min_side = min_decode_side(cfg.transform) if cfg.reduced_decode else None
        self.pipeline = [self._samples]
        if cfg.mode == "train":
            self.pipeline += [self._shuffle, self._pad]
        self.pipeline += [self._skip, self._decode]
        if cfg.batch_size is not None:
            self.pipeline.append(
                wds.batched(cfg.batch_size, collation_fn=cfg.collate or collate, partial=cfg.mode != "train")
            )

    # -- context -------------------------------------------------------------------------------
    def context(self) -> dict[str, int]:
        """(epoch, reader, number of the batches this reader still owes) for this iteration."""
        info = get_worker_info()
        if info is not None:
            workers, slot = info.num_workers, info.id
        else:  # the main process: one reader, or worker ``slot`` played in-process (audits, tests)
            workers, slot = (self.cfg.workers, self.slot) if self.slot is not None else (1, 0)
        if workers != self.cfg.workers:
            raise RuntimeError(f"stream built for {self.cfg.workers} worker(s) but run by {workers}")
        epoch, skip = self.state.get()
        if self.cfg.mode != "train":
            skip = 0
        logical = (slot + skip) % workers  # rotation: the next batch comes from the right worker
        done = (skip - logical + workers - 1) // workers if skip > logical else 0
        return {"epoch": epoch, "reader": self.cfg.rank * workers + logical, "slot": logical, "done": done}

    def __iter__(self) -> Iterator:
        self._ctx = self.context()
        cfg = self.cfg
        self._plan, self._pool, self._warned = None, [], 0
        if cfg.mode == "train" and cfg.batch_size is not None:
            if not cfg.resampled:
                self._plan = cfg.plan(self._ctx["epoch"])[self._ctx["reader"]]
            remaining = cfg.reader_batches(self._ctx["slot"]) - self._ctx["done"]
            if remaining <= 0:  # resumed at the very end of the epoch, or a worker with no batches
                return iter(())
            self.with_epoch(nbatches=remaining)
        return super().__iter__()

    def _where(self) -> str:
        return f"rank {self.cfg.rank} reader {self._ctx.get('reader')}"

    # -- stages --------------------------------------------------------------------------------
    def _resampled_shards(self) -> Iterator[Shard]:
        cfg, ctx = self.cfg, self._ctx
        rng = named_rng("resample", cfg.seed, ctx["epoch"], ctx["reader"])
        by_source: dict[int, list[Shard]] = {}
        for s in cfg.shards:
            by_source.setdefault(s.source, []).append(s)
        sources = sorted(by_source)
        w = cfg.weights or [len(by_source[i]) for i in sources]
        while True:
            src = rng.choices(sources, weights=w)[0]
            yield rng.choice(by_source[src])

    def _read(
        self, shard: Shard, slot: int = 0, slots: int = 1, start: int = 0, stop: int | None = None
    ) -> Iterator[dict]:
        """Samples of ``shard`` with index in ``[start, stop)`` and ``index % slots == slot``."""
        errors = _TarErrors(self.cfg, self.state, self._where())
        try:
            stream = open_shard(shard.url)
        except (OSError, ValueError) as e:  # not there, or unreachable after the retries
            end = shard.size if stop is None else min(stop, shard.size)
            errors(e, len(range(start + (slot - start) % slots, end, slots)))  # the samples it owed
            return
        opened = [{"url": shard.url, "stream": stream}]
        try:
            raw = group_by_keys(tar_file_expander(opened, handler=errors), handler=errors)
            for rec in self.noise.apply(self._parse(raw, errors, shard, stop)):
                i = rec["__index__"]
                if stop is not None and i >= stop:
                    break
                if i >= start and i % slots == slot:
                    yield rec
        finally:
            opened[0]["stream"].close()

    def _parse(
        self, raw: Iterator[dict], errors: _TarErrors, shard: Shard, stop: int | None = None
    ) -> Iterator[dict]:
        """Parse the samples of one shard; a truncated shard (Python's tarfile reads it as a short
        archive whose last sample lacks members) is reported and counted like a corrupt member.
        ``stop``: a reader of the first ``stop`` samples only counts what is missing among them."""
        n, ok, pending = 0, 0, None
        expected = shard.size if stop is None else min(stop, shard.size)
        for r in raw:
            if pending is not None:  # a bad sample followed by more: the data is wrong
                raise pending
            try:
                rec = parse_sample(r, self.cfg.members, n)
            except ShardFormatError as e:
                if errors.count:  # fallout of a tar error already counted
                    errors(e)
                else:
                    pending = e
                n += 1
                continue
            n += 1
            ok += 1
            yield rec
        if pending is not None:
            if n >= shard.size:
                raise ShardFormatError(f"{pending} (or the shard is truncated)")
            errors(
                ShardFormatError(f"{shard.url}: truncated after {n - 1} of {shard.size} samples ({pending})"),
                max(expected - n + 1, 0),
            )
        elif shard.size and ok < expected and expected - ok > errors.samples:
            # a shard cut off mid-way (a server gone after its retries): every sample it did not deliver
            # is lost, not just the read errors counted so far
            errors(
                ShardFormatError(f"{shard.url}: read {ok} samples, but the size index says {shard.size}"),
                expected - ok - errors.samples,
            )

    def _samples(self) -> Iterator[dict]:
        if self._plan is not None:
            for span in self._plan.spans:
                yield from self._read(span.shard, start=span.start, stop=span.stop)
        elif self.cfg.mode == "train":
            empty_run = 0
            for shard in self._resampled_shards():
                n = 0
                for rec in self._read(shard):
                    n += 1
                    yield rec
                empty_run = 0 if n else empty_run + 1
                if empty_run > max(16, len(self.cfg.shards)):
                    raise RuntimeError(f"{self._where()}: {empty_run} shards in a row gave no samples")
        else:
            for unit in self.cfg.eval_units_of(self._ctx["reader"]):
                yield from self._read(unit.shard, unit.slot, unit.slots)

    def _shuffle(self, src: Iterator[dict]) -> Iterator[dict]:
        cfg, ctx = self.cfg, self._ctx
        rng = named_rng("samples", cfg.seed, ctx["epoch"], cfg.rank, ctx["reader"])
        if cfg.shuffle_buffer <= 1:
            return src
        return wds.shuffle(cfg.shuffle_buffer, max(1, cfg.shuffle_buffer // 10), rng=rng)(src)

    def _pad(self, src: Iterator[dict]) -> Iterator[dict]:
        """Pass the reader's samples through, keeping its first batch as the padding pool; after the
        pass, repeat from the pool up to the reader's full batches (counted as padding)."""
        plan, size = self._plan, self.cfg.batch_size
        if plan is None:  # resampled, or unbatched records
            yield from src
            return
        n = 0
        for rec in src:
            if len(self._pool) < size:
                self._pool.append(dict(rec))
            n += 1
            yield rec
        missing = plan.batches * size - n
        if missing <= 0:
            return
        if not self._pool:
            for span in plan.fallback:
                self._pool += [dict(r) for r in self._read(span.shard, start=span.start, stop=span.stop)]
        if not self._pool:
            raise RuntimeError(
                f"{self._where()}: no readable training samples to fill its {plan.batches} batches"
            )
        self.state.add_padding(missing)
        for i in range(missing):
            yield {**self._pool[i % len(self._pool)], "__repeat__": True}

    def _skip(self, src: Iterator[dict]) -> Iterator[dict]:
        n = self._ctx["done"] * (self.cfg.batch_size or 1)
        for rec in src:
            if n > 0:
                n -= 1
                continue
            yield rec

    def _decode(self, src: Iterator[dict]) -> Iterator[dict]:
        n, size = 0, self.cfg.batch_size or 0
        decodable: list[dict] = []  # the first records of this pass that decoded (a fallback pool)
        for rec in src:
            raw = dict(rec) if self._plan is not None and len(decodable) < size else None
            out = self._decode_one(rec)
            if out is not None:
                n += 1
                if raw is not None:
                    decodable.append(raw)
                yield out
        if self._plan is None:
            return
        missing = (self._plan.batches - self._ctx["done"]) * self.cfg.batch_size - n
        if missing <= 0:
            return
        # undecodable images: fill the batches with decoded repeats of the pool (counted as padding);
        # when the reader's first samples are all undecodable, with the first ones of its pass that decoded
        self.state.add_padding(missing)
        repeats = []
        for pool in (self._pool, decodable):
            repeats = [self._decode_one({**r, "__repeat__": True}, count=False) for r in pool]
            repeats = [r for r in repeats if r is not None]
            if repeats:
                break
        if not repeats:
            raise RuntimeError(f"{self._where()}: no decodable training images to fill its batches")
        for k in range(missing):
            yield repeats[k % len(repeats)]  # collation reads records, never changes them

    def _decode_one(self, rec: dict, count: bool = True) -> dict | None:
        """``rec`` with its image decoded and transformed; None (counted, warned) if undecodable."""
        cfg = self.cfg
        if not cfg.decode or cfg.members.text_only:  # text samples: the document is already parsed
            rec.pop("image", None)
            return rec
        where = f"shard {rec['__url__']!r}, sample {rec['__key__']!r}"
        try:
            if cfg.device_decoder is not None:
                return self._encoded(rec, where)
            img = decode_image(rec.pop("image"), where, self._min_side)
        except BadImage:
            if cfg.strict:
                raise
            if count:
                self.state.add_skipped()
                self._warned += 1
                if self._warned <= MAX_WARNINGS:
                    log.warning("%s: skipped undecodable image in %s", self._where(), where)
            return None
        if cfg.transform is None:
            rec["image"] = img
        elif cfg.seeded:  # random augmentation, reproducible per (seed, epoch, sample, view)
            views = []
            for v in range(cfg.views):
                with self._view_rng(rec, v):
                    views.append(cfg.transform(img))
            rec["image"] = views[0] if cfg.views == 1 else torch.stack(views)
        else:
            image = cfg.transform(img)
            rec["image"] = image if cfg.views == 1 else image.expand(cfg.views, *image.shape)
        return rec

    def _view_rng(self, rec: dict, view: int):
        """The RNG of one augmented view, seeded per (seed, epoch, sample, view)."""
        name = f"{self.cfg.seed}/{self._ctx['epoch']}/{rec['__key__']}"
        return seeded_rng(f"{name}/{view}" if view else name)

    def _encoded(self, rec: dict, where: str) -> dict:
        """``rec`` with its image left encoded and each view's crop and flip drawn as the CPU
        transform would draw them (decoded on the device: :mod:`nml.data.device_decode`)."""
        cfg, data = self.cfg, rec.pop("image")
        width, height = image_header_size(data, where)
        boxes = []
        for v in range(cfg.views):
            with self._view_rng(rec, v) if cfg.seeded else nullcontext():
                boxes.append(cfg.device_decoder.draw_view(width, height))
        rec["encoded"] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        rec["boxes"] = boxes[0] if cfg.views == 1 else torch.stack(boxes)
        return rec


@contextmanager
def seeded_rng(name: str) -> Iterator[None]:
    """Seed python's and torch's global RNGs (what timm/torchvision transforms draw from) from
    ``name`` and restore them afterwards, so augmentations do not depend on workers or restarts and
    do not disturb the training process's RNG when the pipeline runs in it (``num_workers=0``)."""
    seed = name_seed(name)
    generator = torch.random.default_generator  # the CPU generator only: torch.manual_seed would also
    py_state, torch_state = random.getstate(), generator.get_state()  # (lazily) seed every CUDA device,
    random.seed(seed)  # at ~4 ms per call in a process without CUDA, and reseed the training's GPU RNG
    generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        generator.set_state(torch_state)


def collate(records: list[dict]) -> dict[str, Any]:
    """Classification batch: image (text samples: ``text``, an object array of the documents), target
    (possibly noisy), clean_target, is_noisy, valid, key."""
    batch: dict[str, Any] = {
        "key": [r["__key__"] for r in records],
        "valid": torch.ones(len(records), dtype=torch.bool),
        "is_noisy": torch.tensor([bool(r.get("is_noisy", False)) for r in records]),
    }
    if "image" in records[0]:
        batch["image"] = torch.stack([r["image"] for r in records])
    elif "caption" in records[0]:  # text samples: one object array (a mask indexes it like a tensor)
        import numpy as np

        batch["text"] = np.array([r["caption"] for r in records], dtype=object)
    if "encoded" in records[0]:  # decoded on the device (nml.data.device_decode)
        batch["encoded"] = [r["encoded"] for r in records]
        batch["boxes"] = torch.stack([r["boxes"] for r in records])
    if "cls" in records[0]:
        batch["clean_target"] = torch.tensor([r["cls"] for r in records], dtype=torch.long)
        batch["target"] = torch.tensor([r["target"] for r in records], dtype=torch.long)
    return batch


STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")  # what schedulers send to the whole group


def _stop_signals() -> set:
    import signal

    return {getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)}


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker ignores the signals a scheduler sends to the whole
    process group (``scancel``, preemption, ``timeout``, Kubernetes, SLURM's ``--signal``), so the main
    process alone acts on them (Lightning saves the step and exits, or requeues) instead of dying on
    a killed worker or a worker running the handler itself. The main process shuts workers down.

    Workers start with these signals blocked (:func:`stop_signals_blocked` around their creation),
    so one that arrives before this function runs stays pending and is discarded here."""
    import signal

    for signum in _stop_signals():
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _stop_signals())


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block the stop signals in this thread while worker processes are created: a new worker
    inherits the mask, so a signal sent to the process group in the window between its start and
    :func:`ignore_stop_signals` cannot kill it (or run the parent's handler in it). In this process a
    signal that arrived meanwhile is delivered when the block ends."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _stop_signals())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class ShardLoader(ResumableLoader, DataLoader):
    """DataLoader over a :class:`ShardStream` with an exact ``len``, eval padding and resume state
    (:class:`~nml.data.loading.ResumableLoader`)."""

    def __init__(
        self,
        cfg: StreamConfig,
        epoch_fn: Callable[[], int] | None = None,
        progress_fn: Callable[[], tuple[int, int]] | None = None,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
    ):
        self.cfg, self.shared = cfg, SharedState()
        self.init_resumable(
            cfg.length(),
            cfg.mode == "train",
            epoch_fn,
            progress_fn,
            {
                "world_size": cfg.world_size,
                "num_workers": cfg.num_workers,
                "batch_size": cfg.batch_size,
                "seed": cfg.seed,
            },
        )
        super().__init__(
            ShardStream(cfg, self.shared),
            batch_size=None,
            num_workers=cfg.num_workers,
            persistent_workers=persistent_workers and cfg.num_workers > 0,
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if cfg.num_workers > 0 else None,
            worker_init_fn=ignore_stop_signals if cfg.num_workers > 0 else None,
        )

    def _get_iterator(self):
        """The worker processes start with the stop signals blocked (:func:`stop_signals_blocked`)."""
        with stop_signals_blocked() if self.num_workers > 0 else nullcontext():
            iterator = super()._get_iterator()
        track_workers(iterator)  # its workers are shut down at exit if still alive
        return iterator

    def __iter__(self) -> Iterator:
        epoch, skip = self.begin_epoch()
        self.shared.set(epoch, skip)
        self.shared.pop_counts()
        yield from self.counted(super().__iter__())
        self.epoch_counts()  # iterated to the end (plain Python); under Lightning the module asks

    def epoch_counts(self) -> dict[str, int]:
        """Skipped and padding samples of this rank since the last call, logged when any were skipped."""
        counts = self.shared.pop_counts()
        if counts["skipped"]:
            log.warning(
                "rank %d: skipped %d unreadable sample(s) or tar member(s) this epoch (strict: raise instead)",
                self.cfg.rank,
                counts["skipped"],
            )
        return counts

    def count_dropped(self, n: int) -> None:
        """Count ``n`` samples of a yielded batch that were dropped after the workers (an image that
        failed to decode on the device): skipped, and their places taken by repeats, as a worker
        counts its own."""
        self.shared.add_skipped(n)
        self.shared.add_padding(n)

    def padding_batch(self, last: dict | None) -> dict | None:
        if self.cfg.batch_size is None:  # single records (nml data audit): a short read is counted
            return None
        if last is None:  # this rank had nothing to read: pad with a sample of the set, masked out
            first = replace(self.cfg, rank=0, world_size=1, num_workers=0, batch_size=1)
            last = next(iter(ShardStream(first)), None)
            if last is None:
                raise RuntimeError(f"no readable evaluation samples in {len(self.cfg.shards)} shard(s)")
        return super().padding_batch(last)
