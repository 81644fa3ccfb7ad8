"""Training throughput, TFLOP/s and MFU, without a host sync on every step.

:class:`TrainingThroughput` logs what Lightning's ``ThroughputMonitor`` logs for training, computed
the same way: fabric's :class:`~lightning.fabric.utilities.throughput.Throughput` over a window of
updates, and the device's peak from :func:`~lightning.fabric.utilities.throughput.get_available_flops`
at the trainer's precision. The names are Lightning's with the stage as prefix:
``train/device/samples_per_sec``, ``train/device/batches_per_sec``, ``train/device/flops_per_sec``,
``train/device/mfu`` (on a GPU that Lightning has a peak for), and with more than one rank the totals
``train/samples_per_sec``, ``train/batches_per_sec``, ``train/flops_per_sec``.

It differs from ``ThroughputMonitor`` where that one costs training speed or code in every module:

* The device is synchronised only on the steps that log (every ``log_every_n_steps``).
  ``ThroughputMonitor`` calls ``torch.cuda.synchronize()`` after every batch. The GPU then waits while
  the host prepares the next step, which is the per-step cost that ``benchmarks/gpu_step.py`` measures.
* A batch's FLOPs are counted once, by torch's ``FlopCounterMode`` around the forward and backward
  of the first training batch. That is the module's whole step: both CLIP towers and the loss, and
  both NMTune views through the frozen encoder. No module needs a ``flops_per_batch`` attribute.
  ``torch.compile`` does not compile under the counter, so that batch runs eagerly and is counted
  like any other.
* The time spent validating during fit is left out of the training time.
"""

from __future__ import annotations

import logging
import time

import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)

_PRECISION_DTYPE = {"bf16": torch.bfloat16, "16": torch.float16, "64": torch.float64}


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the matmuls run in under a Trainer ``precision`` ("bf16-mixed", "16-true", "32-true" ...)."""
    return _PRECISION_DTYPE.get(str(precision).split("-")[0], torch.float32)


def batch_size(batch: dict) -> int:
    """Samples in an nml batch (padding rows included: they are computed like any other)."""
    return len(batch["valid"])


class TrainingThroughput(Callback):
    """See the module docstring.

    Args:
        window_size: Updates (log steps) the rates are averaged over; none are logged before the
            window is full.
        count_flops: Count the FLOPs of the first batch (for ``flops_per_sec`` and ``mfu``).
    """

    def __init__(self, window_size: int = 5, count_flops: bool = True):
        self.window_size, self.count_flops = window_size, count_flops
        self.flops_per_batch: int | None = None  # counted on the first training batch
        self.throughput: Throughput | None = None
        self._counter: FlopCounterMode | None = None
        self._t0: float | None = None  # set by setup("fit"); validate / test / predict leave them unset
        self._t_val: float | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        device = trainer.strategy.root_device
        peak = (
            get_available_flops(device, compute_dtype(trainer.precision)) if device.type == "cuda" else None
        )
        self.throughput = Throughput(
            available_flops=peak, world_size=trainer.world_size, window_size=self.window_size
        )
        self._samples = self._batches = self._pending = 0
        self._paused = 0.0
        self._last_step = -1
        self._t0: float | None = None
        self._t_val: float | None = None

    @staticmethod
    def _now(trainer: Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    # -- the FLOPs of one batch ----------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        if self._t0 is None:  # the first step of this run (after the sanity check)
            self._t0 = self._now(trainer)
        if self.count_flops and self.flops_per_batch is None and self._counter is None:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_after_backward(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop_counting()

    def _stop_counting(self) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops_per_batch = int(self._counter.get_total_flops())
            self._counter = None
            log.info("training FLOPs per batch (forward + backward): %.4g", self.flops_per_batch)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self._counter = None

    # -- rates ---------------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self._stop_counting()  # a step without backward (nothing to train this batch)
        if self.throughput is None:
            return
        self._samples += batch_size(batch)
        self._batches += 1
        self._pending += 1
        step = trainer.global_step  # moves on optimizer steps only (gradient accumulation)
        every = max(1, trainer.log_every_n_steps)
        if step == self._last_step or step % every or not trainer.loggers:
            return
        self._last_step = step
        elapsed = self._now(trainer) - self._t0 - self._paused
        flops = self.flops_per_batch * self._pending if self.flops_per_batch else None
        self.throughput.update(time=elapsed, batches=self._batches, samples=self._samples, flops=flops)
        self._pending = 0
        if trainer.is_global_zero:
            metrics = {f"train/{k}": v for k, v in self.throughput.compute().items()}
            for logger in trainer.loggers:  # the step that Lightning's logs of this batch carry
                logger.log_metrics(metrics, step=step - 1)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._t0 is not None and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._t_val = self._now(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._t_val is not None:
            self._paused += self._now(trainer) - self._t_val
            self._t_val = None
