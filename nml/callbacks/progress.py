"""Progress that leaves stdout to JSON and log files readable.

* :class:`StderrProgressBar`: Lightning's TQDM bars, drawn on stderr (``nml test`` prints its JSON on
  stdout, which a bar would corrupt).
* :class:`ProgressLines`: when stderr is not a terminal (SLURM output files, ``docker logs``, CI), one
  plain log line every N training steps and one per epoch and validation (step, samples/s, the
  progress-bar metrics, ETA) instead of carriage-return redraws.

:func:`progress_callback` picks one for the terminal at hand.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

log = logging.getLogger("nml.progress")


def _on_stderr(make: Callable[[], Any]) -> Any:
    """Call ``make`` with ``sys.stdout`` pointing at stderr (Lightning's bars read it when made)."""
    saved, sys.stdout = sys.stdout, sys.stderr
    try:
        return make()
    finally:
        sys.stdout = saved


class StderrProgressBar(TQDMProgressBar):
    """Lightning's TQDM progress bars, on stderr."""

    def init_sanity_tqdm(self):
        return _on_stderr(super().init_sanity_tqdm)

    def init_train_tqdm(self):
        return _on_stderr(super().init_train_tqdm)

    def init_predict_tqdm(self):
        return _on_stderr(super().init_predict_tqdm)

    def init_validation_tqdm(self):
        return _on_stderr(super().init_validation_tqdm)

    def init_test_tqdm(self):
        return _on_stderr(super().init_test_tqdm)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressLines(ProgressBar):
    """One log line every ``every_n_steps`` training steps (and at an epoch's last step), one per
    epoch and one per validation: for logs that are files, not terminals."""

    def __init__(self, every_n_steps: int = 50):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self._enabled = every_n_steps, True
        self._t0: float | None = None  # when this process started reading the epoch
        self._samples, self._first = 0, 0  # samples read since _t0; the batch index it started at

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def _metrics(self, trainer, module, prefix: str = "") -> str:
        items = [
            (k, v)
            for k, v in self.get_metrics(trainer, module).items()
            if k != "v_num" and k.startswith(prefix) and isinstance(v, int | float)
        ]
        return " ".join(f"{k}={v:.4g}" for k, v in items)

    def on_train_epoch_start(self, trainer, module) -> None:
        self._t0, self._samples, self._first = time.perf_counter(), 0, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self._t0 is None:  # a resume mid-epoch: Lightning does not start the epoch again
            self._t0, self._samples, self._first = time.perf_counter(), 0, batch_idx

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        valid = batch.get("valid") if isinstance(batch, dict) else None
        self._samples += (len(valid) if valid is not None else 0) * trainer.world_size
        n, total = batch_idx + 1, self.total_train_batches
        last = isinstance(total, int) and n >= total
        if not self.is_enabled or (n % self.every_n_steps and not last):
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        done_here = max(n - self._first, 1)  # batches read by this process (after a resume: since it)
        eta = f" | ETA {_duration((total - n) * elapsed / done_here)}" if isinstance(total, int) else ""
        log.info(
            "epoch %d step %d/%s (global %d) | %.0f samples/s | %s%s",
            trainer.current_epoch,
            n,
            total if isinstance(total, int) else "?",
            trainer.global_step,
            self._samples / elapsed,
            self._metrics(trainer, module, "train/"),
            eta,
        )

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.is_enabled and self._t0 is not None:
            shown = self._metrics(trainer, module, "train/")
            log.info(
                "epoch %d done in %s%s%s",
                trainer.current_epoch,
                _duration(time.perf_counter() - self._t0),
                f" (resumed at batch {self._first})" if self._first else "",
                f" | {shown}" if shown else "",
            )
        self._t0 = None

    def on_validation_end(self, trainer, module) -> None:
        if self.is_enabled and not trainer.sanity_checking:
            log.info(
                "validation (epoch %d) | %s", trainer.current_epoch, self._metrics(trainer, module, "val/")
            )


def progress_callback(every_n_steps: int = 50) -> ProgressBar:
    """Bars on stderr when it is a terminal, else :class:`ProgressLines`."""
    return StderrProgressBar() if sys.stderr.isatty() else ProgressLines(every_n_steps)
