"""A callback for multi-process runs started from the command line
(``--trainer.callbacks+=key_recorder.KeyRecorder``; the tests directory on PYTHONPATH)."""

from __future__ import annotations

import json
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
