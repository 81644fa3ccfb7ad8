"""ID/OOD evaluation on the data module's named test sets, shared by every nml LightningModule.

One torchmetrics accuracy per test set (states reduced across ranks once, at epoch end), logged as
``test/<group>/<name>/top1`` plus ``test/<group>/mean_top1`` (the unweighted mean over the group's
sets). Padding rows (``valid`` False) are ignored, so counts are exact under DDP.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

log = logging.getLogger(__name__)


def batch_inputs(batch: dict) -> torch.Tensor:
    """What a model consumes from a batch: cached ``feature`` rows, else ``image``."""
    return batch["feature"] if "feature" in batch else batch["image"]


class TestSuiteEvaluation:
    """Mixin for a LightningModule. Implement ``test_logits(inputs, set_index) -> logits`` (inputs:
    images, or cached features from FeatureShards) and,
    where some sets cannot be classified (another label space), ``can_test(set_index) -> bool``;
    such sets are skipped on every rank alike (decided up front, so collectives stay matched)."""

    def can_test(self, set_index: int) -> bool:
        return True

    def setup_test_suite(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        self.test_sets = list(getattr(dm, "test_sets", []) or [])
        metrics = []
        for s in self.test_sets:
            n = dm.set_num_classes(s)
            if n is None:
                raise ValueError(f"test set {s.name!r}: number of classes unknown (set num_classes)")
            metrics.append(MulticlassAccuracy(n, average="micro"))
        self.test_top1 = nn.ModuleList(metrics).to(self.device)
        self._skipped = {i for i in range(len(self.test_sets)) if not self.can_test(i)}
        for i in sorted(self._skipped):
            log.warning("test set %r skipped: the model cannot classify its labels", self.test_sets[i].name)

    def test_logits(self, images: torch.Tensor, set_index: int) -> torch.Tensor:
        raise NotImplementedError

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        valid = batch["valid"]
        if not valid.any() or dataloader_idx in self._skipped:
            return
        logits = self.test_logits(batch_inputs(batch)[valid], dataloader_idx)
        self.test_top1[dataloader_idx].update(logits.argmax(1), batch["clean_target"][valid])

    def on_test_epoch_end(self) -> None:
        groups: dict[str, list[torch.Tensor]] = {}
        for i, (s, metric) in enumerate(zip(self.test_sets, self.test_top1, strict=True)):
            if i in self._skipped:
                continue
            value = metric.compute()
            metric.reset()
            self.log(f"test/{s.group}/{s.name}/top1", value, add_dataloader_idx=False)
            groups.setdefault(s.group, []).append(value)
        for group, values in groups.items():
            self.log(f"test/{group}/mean_top1", torch.stack(values).mean(), add_dataloader_idx=False)
