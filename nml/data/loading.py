"""The seams between data and everything that consumes it.

* :class:`ResumableLoader` -- the one implementation of Lightning's stateful-loader protocol, shared
  by the shard loader (:class:`nml.data.pipeline.ShardLoader`) and the feature-cache loader
  (:class:`nml.features.datamodule.FeatureLoader`): an exact ``len``, the epoch read when an
  iterator is created, a rank-symmetric state ``{epoch, batches_done}`` over a deterministic stream
  (so mid-epoch resume replays nothing and skips nothing), and evaluation padding: every rank yields
  the same number of batches, the extra ones with an all-False ``valid`` mask.
* :class:`EvalSuite` -- what evaluation, spectra and feature extraction need from a data module:
  named validation / test sets, a loader per set, their label spaces and class names.
  :class:`TrainingData` adds what the training modules ask of it. nml's shard modules and
  :class:`~nml.features.datamodule.CachedFeatures` implement both; consumers get the data module
  through :func:`eval_suite` / :func:`training_data`, which name what is missing instead of
  probing attributes.
* The batch contract: every batch is a dict with ``valid`` (bool, padding rows False) and, for
  classification, ``target`` (possibly noisy), ``clean_target`` and ``is_noisy``; inputs are
  ``image`` (images) or ``feature`` (cached features) -- :func:`batch_inputs`.
* :func:`share_cores_with_workers` -- on CPU, torch's intra-op threads and the loader's workers
  share the cores: the threads are capped so that each worker keeps one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch

from nml.shards.manifest import EvalSet

log = logging.getLogger(__name__)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_pinned = False  # a caller fixed the thread count (pinned_threads): share_cores_with_workers leaves it


@contextlib.contextmanager
def pinned_threads(threads: int):
    """Run the block with torch's intra-op threads fixed at ``threads`` (not capped for loader
    workers), then restore them: what a study stage computes with is part of its key."""
    global _pinned
    before, was = torch.get_num_threads(), _pinned
    torch.set_num_threads(threads)
    _pinned = True
    try:
        yield
    finally:
        _pinned = was
        torch.set_num_threads(before)


def share_cores_with_workers(num_workers: int, device_type: str) -> int | None:
    """Cap torch's intra-op threads at (usable cores - ``num_workers``), at least 1, when the model
    runs on the CPU and the data loader has worker processes; returns the new thread count, or None
    when nothing changed (also inside :func:`pinned_threads`). torch's default is one thread per
    core, and the workers decode on those same cores: on 2 cores with 2 workers, one thread made a
    small CNN's epoch 1.4x faster."""
    if device_type != "cpu" or num_workers <= 0 or _pinned:
        return None
    want = max(1, usable_cores() - num_workers)
    have = torch.get_num_threads()
    if have <= want:
        return None
    torch.set_num_threads(want)
    log.info(
        "CPU: torch threads %d -> %d, leaving %d core(s) to the data loader workers", have, want, num_workers
    )
    return want


def batch_inputs(batch: dict):
    """What a model consumes from a batch: cached ``feature`` rows, else ``image``, else ``text`` (an
    object array of documents)."""
    for key in ("feature", "image", "text"):
        if key in batch:
            return batch[key]
    raise KeyError(f"the batch holds no model input (feature, image or text): keys {sorted(batch)}")


def to_device(inputs, device: torch.device):
    """A tensor moved to ``device``; documents (an object array) as they are."""
    return inputs.to(device, non_blocking=True) if isinstance(inputs, torch.Tensor) else inputs


def select_rows(inputs, mask: torch.Tensor):
    """``inputs[mask]`` for a tensor, or for an object array of documents (mask read on the CPU)."""
    if isinstance(inputs, torch.Tensor):
        return inputs[mask]
    return inputs[mask.cpu().numpy()]


def fit_progress(trainer) -> tuple[int, int]:
    """(epoch, training batches processed in it): what a loader's resume state records."""
    return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed


def stop_worker_processes(grace: float = 5.0) -> int:
    """Stop the worker processes this process still has, before it exits after a stop signal; how
    many there were. Workers ignore the stop signals (so that the main process alone acts on a
    signal sent to the whole group), so one left running by an interrupted loop would ignore the
    SIGTERM that ``multiprocessing`` sends its children at exit, and the exit would wait on it for
    ever. Iterators that are only garbage shut their workers down in order (``gc.collect``); the
    rest are killed. They hold nothing to save: a run's state lives in the main process."""
    import gc
    import multiprocessing

    gc.collect()
    children = multiprocessing.active_children()
    for p in children:
        p.kill()
    for p in children:
        p.join(grace)
    return len(children)


_ITERATORS: weakref.WeakSet = weakref.WeakSet()  # multi-process loader iterators this process made
_WORKERS: weakref.WeakSet = weakref.WeakSet()  # and their worker processes
_AT_EXIT_REGISTERED = False


def track_workers(iterator) -> None:
    """Remember a multi-process loader iterator, to shut its workers down when this process exits:
    workers ignore SIGTERM (:func:`~nml.data.pipeline.ignore_stop_signals`), which is what
    ``multiprocessing`` stops its daemonic children with at exit before it joins them, so a loader
    still holding persistent workers at exit (a script that never closed it) would hang there."""
    global _AT_EXIT_REGISTERED
    if not hasattr(iterator, "_shutdown_workers"):  # single-process: nothing to stop
        return
    if not _AT_EXIT_REGISTERED:
        import atexit

        # registered after multiprocessing's own exit handler, so it runs before it (atexit is LIFO)
        atexit.register(_shut_tracked_workers_down)
        _AT_EXIT_REGISTERED = True
    _ITERATORS.add(iterator)
    for p in getattr(iterator, "_workers", ()):
        _WORKERS.add(p)


def _shut_tracked_workers_down() -> None:
    """torch's own orderly shutdown (what an iterator's ``__del__`` does): the workers are told to
    stop and joined. Then any loader worker still alive (one whose iterator is gone or failed to stop
    it) is killed, as ``multiprocessing`` is about to stop it anyway: a worker that ignores or blocks
    SIGTERM would make that stop wait for ever."""
    import signal

    for iterator in list(_ITERATORS):
        try:
            iterator._shutdown_workers()
        except Exception:  # at exit: kill what is left instead
            pass
    left = [p for p in list(_WORKERS) if p.is_alive()]
    if left and hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler raises on a killed worker
    for p in left:
        p.kill()
    for p in left:
        p.join(5)


class IteratedAsIs:
    """A loader that Lightning iterates as it is. Lightning re-creates every ``DataLoader`` of a
    predict run around an index-tracking sampler; a :class:`~nml.data.pipeline.ShardLoader` streams
    shards split by sample count across ranks and workers and has no sampler to replace."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


class ResumableLoader:
    """Mixin: exact length, epoch, resume state and evaluation padding (see the module docstring).

    A subclass calls :meth:`init_resumable` in ``__init__`` and, in ``__iter__``, gets
    ``(epoch, batches to skip)`` from :meth:`begin_epoch`, then yields its (remaining) batches
    through :meth:`counted`. ``epoch_fn`` returns the trainer's epoch when an iterator is created;
    ``progress_fn`` returns ``(epoch, batches_done)`` for checkpoints (the trainer's processed-batch
    count, which accounts for Lightning's prefetching). Without them the loader counts epochs
    (:meth:`set_epoch`) and yielded batches itself.
    """

    def init_resumable(
        self,
        length: int,
        train: bool,
        epoch_fn: Callable[[], int] | None,
        progress_fn: Callable[[], tuple[int, int]] | None,
        settings: dict[str, Any],
    ) -> None:
        """``settings``: what the stream depends on besides the epoch (world size, workers, batch
        size, seed), saved with the state so that a resume under other settings is reported."""
        self._length, self.train = int(length), train
        self.epoch_fn, self.progress_fn, self.settings = epoch_fn, progress_fn, dict(settings)
        self.epoch, self._resume = 0, None
        self._iter_epoch, self._done = 0, 0

    def __len__(self) -> int:
        return self._length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def begin_epoch(self) -> tuple[int, int]:
        """(epoch, batches already done in it): a restored state applies to its own epoch only."""
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        skip = 0
        if self._resume is not None and self.train:
            if int(self._resume["epoch"]) == epoch:
                skip = min(int(self._resume["batches_done"]), self._length)
            self._resume = None
        self._iter_epoch, self._done = epoch, skip
        return epoch, skip

    def counted(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Yield ``batches`` counting them; evaluation is padded to ``len`` with ``valid`` False."""
        last = None
        for batch in batches:
            self._done += 1
            last = batch
            yield batch
        if not self.train:
            while self._done < self._length:
                pad = self.padding_batch(last)
                if pad is None:  # records, not batches: nothing to keep ranks in step
                    return
                self._done += 1
                yield pad

    def epoch_counts(self) -> dict[str, int]:
        """Per-epoch counts of samples skipped as unreadable and repeated as padding (logged as
        ``data/<name>``) since the last call; none for a loader that neither skips nor pads."""
        return {}

    def padding_batch(self, last: dict | None) -> dict | None:
        """A batch that counts for nothing: ``last`` with its ``valid`` mask all False (None: the
        loader yields single records, which are never padded)."""
        if last is None:
            raise RuntimeError(f"{type(self).__name__}: no evaluation samples on this rank to pad from")
        pad = dict(last)
        pad["valid"] = torch.zeros_like(last["valid"])
        return pad

    # -- Lightning's stateful-loader protocol (rank 0's copy is saved: keep it rank-symmetric) ------
    def state_dict(self) -> dict:
        epoch, done = self.progress_fn() if self.progress_fn is not None else (self._iter_epoch, self._done)
        return {"epoch": int(epoch), "batches_done": int(done), **self.settings}

    def load_state_dict(self, state: dict) -> None:
        for k, mine in self.settings.items():
            if k in state and state[k] != mine:
                log.warning(
                    "resuming with %s=%s but the checkpoint's loader had %s=%s: the data stream differs, "
                    "the %d batches done are skipped but the sample order is not the interrupted one",
                    k,
                    mine,
                    k,
                    state[k],
                    state.get("batches_done", 0),
                )
        self._resume = dict(state)


@runtime_checkable
class EvalSuite(Protocol):
    """What evaluation (ID/OOD test suites), spectra and feature extraction need from a data module."""

    num_classes: int | None
    classes: list[str] | None
    val_sets: list[EvalSet]
    test_sets: list[EvalSet]

    def eval_loader(self, s: EvalSet, persistent: bool = False) -> Iterable[dict]:
        """Every sample of ``s`` once across ranks, in batches with a ``valid`` mask."""
        ...

    def num_classes_of(self, s: EvalSet) -> int | None:
        """Size of the label space of ``s`` (None: unknown)."""
        ...

    def classes_of(self, s: EvalSet) -> list[str] | None:
        """Class names of ``s`` (None: unknown; zero-shot classification needs them)."""
        ...

    def prompts_of(self, s: EvalSet | None, templates: list[str] | None = None) -> list[list[str]] | None:
        """Zero-shot prompts per class of ``s`` (None: the training data's classes): the data's own
        templates and per-class fields (``_info.json``), ``templates`` instead of the data's if given;
        None when the classes are unknown."""
        ...

    def describe(self) -> dict:
        """What a model trained on this data saw (kept in checkpoints and exports)."""
        ...


@runtime_checkable
class TrainingData(EvalSuite, Protocol):
    """What nml's LightningModules ask of the data module they train on."""

    feature_dim: int | None  # D of cached features; None when batches hold images
    task: str | None  # the embedded benchmark's task it reads (None: your own shards or features)
    batch_size: int  # training samples per rank and step

    def configure_views(self, views: int, augment: bool) -> None:
        """Training batches with ``views`` views per sample, augmented or with the eval transform
        (settings given explicitly in the data config win)."""
        ...

    def match_preprocessing(
        self, image_size: int | None, mean, std, source: str, crop_pct: float | None = None
    ) -> None:
        """Adopt a backbone's input size and normalisation (and evaluation crop) where the config
        left them unset."""
        ...


def eval_suite(trainer) -> EvalSuite:
    """The trainer's data module as an :class:`EvalSuite`, or an error naming what it lacks."""
    return _checked(trainer, EvalSuite)


def training_data(trainer) -> TrainingData | None:
    """The trainer's data module as :class:`TrainingData`; None when the trainer has none (a module
    driven by hand); an error naming what is missing for any other data module."""
    if getattr(trainer, "datamodule", None) is None:
        return None
    return _checked(trainer, TrainingData)


def _protocol_members(protocol: type) -> set[str]:
    names: set[str] = set()
    for base in protocol.__mro__:
        if base.__module__ == __name__:
            names |= set(getattr(base, "__annotations__", {}))
            names |= {k for k, v in vars(base).items() if callable(v) and not k.startswith("_")}
    return names


def _checked(trainer, protocol: type) -> Any:
    dm = getattr(trainer, "datamodule", None)
    if isinstance(dm, protocol):
        return dm
    members = [m for m in _protocol_members(protocol) if not hasattr(dm, m)] if dm is not None else []
    raise TypeError(
        f"nml needs a data module implementing {protocol.__name__} (nml's ClassificationShards, "
        f"ImageTextShards or CachedFeatures); got {type(dm).__name__}"
        + (f", which lacks {sorted(members)}" if members else "")
    )
