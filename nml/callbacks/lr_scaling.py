"""timm's learning-rate rule for a config whose global batch changes with the cluster it runs on:
``lr = lr_base x (global batch / base_batch)`` (linear) or x its square root (sqrt), where the global
batch is the per-rank batch x ranks x gradient accumulation. The optimizer's own ``lr`` is replaced;
the rule and the result are logged, kept in the checkpoint, and ``train/lr/decay`` (LearningRateMonitor) shows the schedule.

    trainer:
      callbacks:
        - class_path: nml.callbacks.lr_scaling.ScaleLearningRate
          init_args: {lr_base: 0.1, base_batch: 256, rule: linear}   # ResNet-50 SGD: 1.6 at 4096
"""

from __future__ import annotations

import logging
import math
from typing import Literal

from lightning.pytorch import Callback

from nml.data.loading import training_data
from nml.models.base import BackboneModule

log = logging.getLogger(__name__)


def scaled_lr(lr_base: float, global_batch: int, base_batch: int = 256, rule: str = "linear") -> float:
    ratio = global_batch / base_batch
    if rule == "linear":
        return lr_base * ratio
    if rule == "sqrt":
        return lr_base * math.sqrt(ratio)
    raise ValueError(f"ScaleLearningRate.rule: expected 'linear' or 'sqrt', got {rule!r}")


class ScaleLearningRate(Callback):
    """Set the learning rate from ``lr_base`` and the global batch (timm's ``lr_base`` rule).

    Args:
        lr_base: The learning rate at ``base_batch`` samples per step.
        base_batch: The global batch ``lr_base`` is given for (timm: 256).
        rule: linear (SGD) or sqrt (adaptive optimizers, as timm suggests).
    """

    def __init__(self, lr_base: float, base_batch: int = 256, rule: Literal["linear", "sqrt"] = "linear"):
        if lr_base <= 0 or base_batch <= 0:
            raise ValueError(
                f"ScaleLearningRate: lr_base and base_batch must be > 0, got {lr_base}, {base_batch}"
            )
        scaled_lr(lr_base, base_batch, base_batch, rule)  # the rule is checked here, not at the first fit
        self.lr_base, self.base_batch, self.rule = lr_base, base_batch, rule

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        if not isinstance(pl_module, BackboneModule):
            raise TypeError(f"ScaleLearningRate works with nml's modules, not {type(pl_module).__name__}")
        data = training_data(trainer)
        if data is None:
            raise ValueError("ScaleLearningRate needs a data module (its batch_size is what it scales by)")
        per_rank = data.batch_size
        world, accumulate = trainer.world_size, trainer.accumulate_grad_batches
        global_batch = per_rank * world * accumulate
        lr = scaled_lr(self.lr_base, global_batch, self.base_batch, self.rule)
        pl_module.lr_override = lr
        pl_module.provenance["lr"] = {
            "lr_base": self.lr_base,
            "base_batch": self.base_batch,
            "rule": self.rule,
            "global_batch": global_batch,
            "lr": lr,
        }
        if trainer.is_global_zero:
            log.info(
                "lr %.6g = lr_base %g x %s(%d / %d); global batch %d = %d per rank x %d rank(s) x %d accumulation",
                lr,
                self.lr_base,
                "" if self.rule == "linear" else "sqrt",
                global_batch,
                self.base_batch,
                global_batch,
                per_rank,
                world,
                accumulate,
            )
