"""What nml's LightningModules (pre-training and tuning) share: optimizer and schedule, GPU switches,
throughput and lr logs, and the record of the backbone and data they were trained on (kept in the
checkpoint under ``"nml"``)."""

from __future__ import annotations

import time

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from nml.models.backbones import Backbone
from nml.models.evaluation import TestSuiteEvaluation
from nml.models.optim import param_groups, warmup_cosine


class BackboneModule(TestSuiteEvaluation, LightningModule):
    """Base class. Subclasses set ``self.backbone`` (a :class:`Backbone`) before training starts.

    Args:
        optimizer: Optimizer class or callable taking parameter groups; 1-D parameters (biases,
            norms, logit_scale) get no weight decay.
        lr_scheduler: Scheduler callable (stepped every optimizer step); None: linear warmup then
            cosine to ``min_lr_ratio`` over the whole run.
        warmup: Warmup of the default schedule: a fraction of the steps (< 1) or a step count.
        min_lr_ratio: Final learning rate of the default schedule, relative to the initial one.
        channels_last: Use the channels-last memory format (faster convolutions on GPU).
        compile: ``torch.compile`` the model (GPU; slow to start on CPU).
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup: float = 0.05,
        min_lr_ratio: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        self.optimizer_fn, self.lr_scheduler_fn = optimizer, lr_scheduler
        self.warmup, self.min_lr_ratio = warmup, min_lr_ratio
        self.channels_last, self.compile_model = channels_last, compile
        self.backbone: Backbone | None = None
        self._t_batch: float | None = None
        # provenance kept in checkpoints under "nml" (not in hyper_parameters, which LightningCLI
        # feeds back into __init__ on `nml test --ckpt_path`): backbone config, training data
        self.provenance: dict = {}

    # -- setup ---------------------------------------------------------------------------------
    def record_data(self) -> None:
        """Keep what the model was trained on in the checkpoint (read by ``nml export``)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "describe") and self.trainer.state.fn == "fit":
            self.provenance["data"] = dm.describe()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.backbone is not None:
            self.provenance["backbone"] = self.backbone.config.to_dict()
        checkpoint["nml"] = dict(self.provenance)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.provenance = {**checkpoint.get("nml", {}), **self.provenance}

    def prepare_model(self) -> None:
        """GPU switches, applied at the end of ``setup()`` (not ``configure_model``, which weight
        averaging callbacks do not support)."""
        if self.backbone is None:
            return
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if self.compile_model and not hasattr(self.backbone.model, "_orig_mod"):
            self.backbone.model = torch.compile(self.backbone.model)

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def spectrum_features(self, images: torch.Tensor) -> torch.Tensor:
        """The features FeatureSpectrum analyses: the backbone's (pooled pre-logits / image embedding)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone.features(images)

    def images(self, batch: dict) -> torch.Tensor:
        x = batch["image"]
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_fn(param_groups(self))
        if self.lr_scheduler_fn is not None:
            scheduler = self.lr_scheduler_fn(optimizer)
        else:
            scheduler = warmup_cosine(
                optimizer, self.trainer.estimated_stepping_batches, self.warmup, self.min_lr_ratio
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- logs ----------------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._t_batch is not None and batch_idx > 0:
            n = len(batch["valid"]) * self.trainer.world_size
            self.log("train/samples_per_s", n / max(now - self._t_batch, 1e-9), on_step=True, on_epoch=False)
        self._t_batch = now

    def on_train_epoch_start(self) -> None:
        self._t_batch = None

    def log_lr(self) -> None:
        opt = self.optimizers()
        opt = opt.optimizer if hasattr(opt, "optimizer") else opt
        self.log("train/lr", opt.param_groups[0]["lr"], on_step=True, on_epoch=False)

    def log_fraction(self, name: str, numerator: int, denominator: int) -> None:
        """A per-step fraction whose epoch value is the exact mean over the epoch's samples."""
        if denominator > 0:
            self.log(name, numerator / denominator, on_step=True, on_epoch=True, batch_size=denominator)
