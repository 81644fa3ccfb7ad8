"""``PredictionWriter``: what ``nml predict`` writes, one CSV per evaluation set.

``nml predict`` runs the model over its data module's test sets (the same ID/OOD suite ``nml test``
scores) and this callback writes, per set, ``predictions/<set>.csv`` beside the checkpoint it predicts with
(like ``nml test``'s ``metrics.json``; with no checkpoint, under the run's log directory; ``out``
overrides it): one row per sample, ``key`` (the shard
sample's key; for cached features, its row in the set), ``target`` (the clean label), ``pred`` and
``score`` (the softmax probability of ``pred``). Rows are written batch by batch, so a long set never
sits in memory; under DDP each rank writes ``<set>.rank<k>.csv`` (every sample is read by exactly one
rank). The ``nml predict`` command adds this callback when a config does not list it, and prints,
per set, its files (every rank's) and their total row count as JSON.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter

log = logging.getLogger(__name__)

COLUMNS = ("key", "target", "pred", "score")


class PredictionWriter(BasePredictionWriter):
    """Writes the predictions of every evaluation set to CSV (see the module docstring).

    Args:
        out: Directory of the CSV files (default: ``predictions/`` beside the checkpoint, else under
            the log directory).
    """

    def __init__(self, out: str | None = None):
        super().__init__(write_interval="batch")
        self.out = out
        self.report: dict | None = None
        self._files: dict[str, tuple] = {}

    def _directory(self, trainer) -> Path:
        if self.out is not None:
            return Path(self.out)
        ckpt = trainer.ckpt_path
        if ckpt and Path(ckpt).is_file():
            return Path(ckpt).parent / "predictions"
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

    def on_predict_start(self, trainer, pl_module) -> None:
        self._files, self.report = {}, None

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        if not prediction:
            return
        name = prediction["set"]
        if name not in self._files:
            directory = self._directory(trainer)
            directory.mkdir(parents=True, exist_ok=True)
            suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
            path = directory / f"{name}{suffix}.csv"
            handle = path.open("w", newline="")
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            self._files[name] = (path, handle, writer, [0])
        path, handle, writer, count = self._files[name]
        keys = prediction["key"]
        if keys is None:  # cached features: the row within this rank's stream of the set
            keys = range(count[0], count[0] + len(prediction["pred"]))
        rows = zip(
            keys,
            prediction["target"].tolist(),
            prediction["pred"].tolist(),
            prediction["score"].tolist(),
            strict=True,
        )
        writer.writerows((k, t, p, f"{s:.6f}") for k, t, p, s in rows)
        count[0] += len(prediction["pred"])

    def on_predict_end(self, trainer, pl_module) -> None:
        """Close the files; ``report``: per set, every rank's file and the rows over all ranks."""
        local = {}
        for name, (path, handle, _, count) in self._files.items():
            handle.close()
            local[name] = (str(path), count[0])
            log.info("predictions: %d rows of %s in %s", count[0], name, path)
        self._files = {}
        ranks = [local]
        if trainer.world_size > 1:  # each rank wrote its own file: the report counts them all
            import torch.distributed as dist

            ranks = [None] * trainer.world_size
            dist.all_gather_object(ranks, local)
        sets: dict[str, dict] = {}
        for written in ranks:
            for name, (path, rows) in written.items():
                entry = sets.setdefault(name, {"files": [], "rows": 0})
                entry["files"].append(path)
                entry["rows"] += rows
        self.report = {"predictions": sets}
