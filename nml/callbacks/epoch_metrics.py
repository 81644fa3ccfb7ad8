"""EpochMetrics: the epoch-level training metrics of every epoch, kept in memory (the study's
memorisation curves read them after a fit) and in the run's checkpoints, so that a fit resumed from
one still has the epochs before it."""

from __future__ import annotations

from lightning.pytorch import Callback


class EpochMetrics(Callback):
    """Records the epoch-level training metrics (``train/<name>_epoch``) of every epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def _record(self, trainer) -> None:
        row = {
            k.removesuffix("_epoch"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/") and k.endswith("_epoch") and not v.isnan()
        }
        if row and (not self.epochs or {k: v for k, v in self.epochs[-1].items() if k != "epoch"} != row):
            self.epochs.append({"epoch": len(self.epochs), **row})

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # the previous epoch's values are final now
        if trainer.current_epoch > 0:
            self._record(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._record(trainer)

    def state_dict(self) -> dict:
        return {"epochs": [dict(e) for e in self.epochs]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs = [dict(e) for e in state_dict.get("epochs", [])]
