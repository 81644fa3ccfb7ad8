"""Callbacks for runs started from the command line, in a subprocess or in-process
(``--trainer.callbacks+=key_recorder.KeyRecorder``; the tests directory on PYTHONPATH)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class KeyRecorder(Callback):
    """Writes the sample keys each rank trained on to ``<out_dir>/rank<global rank>.json``."""

    def __init__(self, out_dir: str):
        self.out_dir, self.keys = out_dir, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.keys.append(list(batch["key"]))

    def on_train_end(self, trainer, pl_module):
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        record = {"world_size": trainer.world_size, "batches": self.keys}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class StepLosses(Callback):
    """Appends ``{"step", "loss"}`` per training step to ``<out_dir>/rank<r>.losses.jsonl`` as it
    goes (what a killed run leaves), and the final metrics to ``rank<r>.final.json``."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def _path(self, trainer, suffix: str) -> Path:
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        return Path(self.out_dir, f"rank{trainer.global_rank}.{suffix}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with self._path(trainer, "losses.jsonl").open("a") as f:
            f.write(json.dumps({"step": trainer.global_step, "loss": float(outputs["loss"])}) + "\n")

    def on_fit_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self._path(trainer, "final.json").write_text(json.dumps(metrics))


class SendSignals(Callback):
    """Sends this process ``signals[step]`` (a name: SIGTERM, SIGUSR1, SIGKILL) after that global
    step, on global rank ``rank`` only (None: every rank); with ``group``, to its whole process group
    (DataLoader workers included), as ``scancel``, preemption, ``timeout`` and Kubernetes do."""

    def __init__(self, signals: dict[int, str], rank: int | None = None, group: bool = False):
        self.signals, self.rank, self.group = {int(k): v for k, v in signals.items()}, rank, group

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        name = self.signals.get(trainer.global_step)
        if name and self.rank in (None, trainer.global_rank):
            if self.group:
                os.killpg(os.getpgid(0), getattr(signal, name))
            else:
                os.kill(os.getpid(), getattr(signal, name))
