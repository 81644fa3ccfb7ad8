"""``BackboneModule``: what nml's LightningModules (pre-training and tuning) share.

* Optimiser and schedule (:mod:`nml.models.optim`; the schedule is named ``train/lr`` for Lightning's
  ``LearningRateMonitor``), GPU switches (channels-last, ``torch.compile``). Throughput and MFU are
  logged by :class:`~nml.callbacks.throughput.TrainingThroughput`, which ``nml fit`` adds.
* The record of the backbone and data a model was trained on, kept in the checkpoint under
  ``"nml"`` (not in ``hyper_parameters``, which LightningCLI feeds back into ``__init__``).
* Validation: ``val/top1`` (or the subclass's ``val_metric``) of :meth:`val_logits` against clean
  labels, one torchmetrics object, its states reduced across ranks once at epoch end.
* ID/OOD evaluation on the data module's named test sets (:class:`~nml.data.loading.EvalSuite`):
  one accuracy per set, logged as ``test/<group>/<name>/top1`` plus ``test/<group>/mean_top1``
  (unweighted mean over the group's sets). Padding rows (``valid`` False) are ignored, so counts are
  exact under DDP. Sets the model cannot classify (:meth:`can_test`) are skipped on every rank alike.

A subclass sets ``self.backbone`` (a :class:`~nml.models.backbones.Backbone`, or None for tuning on
cached features) and implements :meth:`val_logits` / :meth:`test_logits`.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from nml.data.loading import EvalSuite, ResumableLoader, batch_inputs, eval_suite, select_rows, training_data
from nml.metrics.noisy import Fraction
from nml.models.backbones import Backbone
from nml.models.optim import param_groups, warmup_cosine

log = logging.getLogger(__name__)
TRAIN_STATS = "nml_train_stats"  # the checkpoint key of log_training's epoch sums


class BackboneModule(LightningModule):
    """Base class (see the module docstring).

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

    val_metric = "val/top1"

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
        self.val_top1: MulticlassAccuracy | None = None
        self.train_stats: Fraction | None = None  # log_training's epoch sums, created on first use
        self._train_stat_names: list[str] = []
        self._resumed_stats: dict | None = None  # the epoch's sums from a mid-epoch checkpoint
        self._train_truncated = 0  # training documents truncated this epoch before a validation
        self.lr_override: float | None = None  # the optimizer's lr replaced (ScaleLearningRate sets it)
        self.test_sets: list = []  # set by setup_test_suite
        self.test_top1 = nn.ModuleList()
        self.testing_set = 0  # the test set being read (the ones before it are finished)
        self.provenance: dict = {}

    # -- setup ---------------------------------------------------------------------------------
    @property
    def data(self):
        """The trainer's data module as :class:`~nml.data.loading.TrainingData` (None without one)."""
        return training_data(self.trainer) if self._trainer is not None else None

    def record_data(self) -> None:
        """Keep what the model was trained on in the checkpoint (read by ``nml export``)."""
        dm = self.data
        if dm is not None and self.trainer.state.fn == "fit":
            self.provenance["data"] = dm.describe()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.backbone is not None:
            self.provenance["backbone"] = self.backbone.config.to_dict()
        checkpoint["nml"] = dict(self.provenance)
        if self.train_stats is not None and self._trainer is not None:
            # the epoch's sums so far, over all ranks (every rank saves: a collective is safe here), so
            # that a mid-epoch resume logs the whole epoch's metrics, not those of the batches after it
            sums = [self.train_stats.numerator.clone(), self.train_stats.denominator.clone()]
            if self.trainer.world_size > 1:
                sums = [self.trainer.strategy.reduce(t, reduce_op="sum") for t in sums]
            checkpoint[TRAIN_STATS] = {
                "epoch": self.current_epoch,  # whose sums these are: a resume adds them to that epoch only
                "names": list(self._train_stat_names),
                "numerator": sums[0].cpu(),
                "denominator": sums[1].cpu(),
            }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.provenance = {**checkpoint.get("nml", {}), **self.provenance}
        self._resumed_stats = checkpoint.get(TRAIN_STATS)
        if "epoch" not in (self._resumed_stats or {}) and "loops" in checkpoint:
            log.warning(
                "the checkpoint has no epoch-stamped training-metric sums (written by an older nml): the "
                "resumed epoch's "
                "*_epoch training metrics cover only the batches after the resume"
            )

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

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the memory format the model runs in (channels-last when asked; features as they are)."""
        if not isinstance(x, torch.Tensor):  # documents (text backbones tokenise them)
            return x
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def spectrum_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The features FeatureSpectrum analyses: the backbone's (pooled pre-logits / image embedding)."""
        return self.backbone.features(self.model_input(inputs))

    def adopt_input_of_the_model(self) -> None:
        """Pre-training on your own shards (not a benchmark task) with ``image_size`` / ``mean`` /
        ``std`` unset: take the model's (timm ``pretrained_cfg``, open_clip's image size) and say so,
        instead of the glyph benchmark's 32 px."""
        dm = self.data
        if dm is None or dm.task is not None or dm.feature_dim is not None or self.backbone is None:
            return
        dm.match_preprocessing(
            *self.backbone.preprocessing(),
            source=self.backbone.config.name,
            crop_pct=self.backbone.crop_pct(),
        )

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_fn(param_groups(self))
        if self.lr_override is not None:  # before the schedule takes the groups' lr as its base
            for group in optimizer.param_groups:
                group["lr"] = self.lr_override
        if self.lr_scheduler_fn is not None:
            scheduler = self.lr_scheduler_fn(optimizer)
        else:
            scheduler = warmup_cosine(
                optimizer, self.trainer.estimated_stepping_batches, self.warmup, self.min_lr_ratio
            )
        # the name is what LearningRateMonitor logs: train/lr/decay, train/lr/no_decay (the groups' names)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }

    def on_train_start(self) -> None:
        # Lightning applies a checkpoint's train-loader state at the end of fit_loop.setup_data().
        # configure_optimizers() asks for estimated_stepping_batches, which under max_epochs runs
        # setup_data() *before* the checkpoint is restored; the later call returns early and the
        # state was never applied (a mid-epoch resume replayed the epoch). Apply it here, once: the
        # epoch's iterator is created after this hook.
        self.trainer.fit_loop._load_combined_loader_states()

    # -- logs ----------------------------------------------------------------------------------
    def logs_this_step(self) -> bool:
        """Whether Lightning writes the logs of this training batch (every ``log_every_n_steps``
        optimizer steps, as its logger connector decides)."""
        return (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0

    def log_training(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor | int]]) -> None:
        """A training step's metrics, each a (numerator, denominator) pair kept on the device:

        * ``<name>_step``: numerator / denominator (NaN when the denominator is 0), logged on the
          steps that Lightning writes logs;
        * ``<name>_epoch``: the epoch's sum over steps and ranks of the numerators over that of the
          denominators (exact), logged at the end of the epoch.

        The cost per step is one metric update and no host sync. ``self.log`` is called only on the
        steps that write logs, because each call costs 1-2 ms of host time in Lightning's result
        collection (it moves every logged metric's state to the value's device). A GPU step that
        takes a few milliseconds waits for that time. ``train/loss`` is shown in the progress bar.
        """
        names = list(stats)
        if self.train_stats is None:
            self.train_stats, self._train_stat_names = Fraction(len(names)).to(self.device), names
            saved = self._resumed_stats
            if (
                saved is not None
                and saved["names"] == names
                and saved.get("epoch") == self.current_epoch
                and self.trainer.global_rank == 0
            ):
                # a mid-epoch resume: the epoch's sums before it (all ranks', held by rank 0 alone).
                # A checkpoint saved on an epoch's last batch resumes in the next epoch: its sums
                # belong to the finished epoch, already logged, and are not added to this one.
                self.train_stats.numerator += saved["numerator"].to(self.device)
                self.train_stats.denominator += saved["denominator"].to(self.device)
            self._resumed_stats = None
        elif names != self._train_stat_names:
            raise ValueError(
                f"log_training: got {names}, expected the same metrics every step: {self._train_stat_names}"
            )
        numerator = torch.stack([self._on_device(n) for n, _ in stats.values()])
        denominator = torch.stack([self._on_device(d) for _, d in stats.values()])
        self.train_stats.update(numerator, denominator)
        if self.logs_this_step():
            step = torch.where(
                denominator > 0, numerator / denominator.clamp(min=1e-12), float("nan")
            ).float()
            for name, value in zip(names, step, strict=True):
                self.log(f"{name}_step", value, on_step=True, on_epoch=False, prog_bar=name == "train/loss")

    def _on_device(self, value: torch.Tensor | float) -> torch.Tensor:
        """A float64 0-d tensor on the module's device. A Python number is filled in by a kernel
        (``torch.full``): ``torch.as_tensor(n, device="cuda")`` would copy it from the host and wait."""
        if isinstance(value, torch.Tensor):
            return value.detach().to(torch.float64)
        return torch.full((), float(value), dtype=torch.float64, device=self.device)

    def on_train_epoch_end(self) -> None:
        """The epoch's training metrics (:meth:`log_training`), and its skipped (unreadable) and
        padding (repeated) samples, summed over ranks."""
        if self.train_stats is not None:
            for name, value in zip(self._train_stat_names, self.train_stats.compute(), strict=True):
                self.log(f"{name}_epoch", value)
            self.train_stats.reset()
        loader = self.trainer.train_dataloader
        if isinstance(loader, ResumableLoader):
            for name, n in loader.epoch_counts().items():
                self.log(f"data/{name}", float(n), reduce_fx="sum", sync_dist=True)
        truncated = self.backbone.pop_truncated() if self.backbone is not None else None
        if truncated is not None:  # text backbones: training documents cut to the encoder's limit (this rank)
            n, self._train_truncated = self._train_truncated + truncated[0], 0
            self.log("data/truncated", float(n), reduce_fx="sum", sync_dist=True)
            if n:
                log.info(
                    "rank %d: %d training documents this epoch were longer than %s tokens and truncated",
                    self.global_rank,
                    n,
                    truncated[1],
                )

    # -- validation ----------------------------------------------------------------------------
    def val_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of validation inputs (images or cached features)."""
        raise NotImplementedError

    def validating(self) -> bool:
        """Whether this validation epoch measures anything (the same on every rank)."""
        return self.val_top1 is not None

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        valid = batch["valid"]
        if self.validating() and valid.any():
            logits = self.val_logits(select_rows(batch_inputs(batch), valid))
            self.val_top1.update(logits.argmax(1), batch["clean_target"][valid])

    def on_validation_epoch_start(self) -> None:
        # documents truncated by the training steps so far are kept; validation's own are dropped at
        # its end, so that data/truncated counts training documents only
        if self.backbone is not None:
            truncated = self.backbone.pop_truncated()
            if truncated is not None:
                self._train_truncated += truncated[0]

    def on_validation_epoch_end(self) -> None:
        if self.backbone is not None:
            self.backbone.pop_truncated()  # validation's documents (and their padding rows)
        if self.validating():
            self.log(self.val_metric, self.val_top1.compute(), prog_bar=True)  # states all-reduced once
            self.val_top1.reset()

    # -- ID/OOD test suites --------------------------------------------------------------------
    def can_test(self, suite: EvalSuite, set_index: int) -> bool:
        """Whether the model can classify test set ``set_index`` (default: a classifier whose
        class count equals the set's)."""
        return suite.num_classes_of(self.test_sets[set_index]) == self.hparams.get("num_classes")

    def test_logits(self, inputs: torch.Tensor, set_index: int) -> torch.Tensor:
        raise NotImplementedError

    def setup_test_suite(self) -> None:
        suite = eval_suite(self.trainer)
        self.test_sets = list(suite.test_sets)
        metrics = []
        for s in self.test_sets:
            n = suite.num_classes_of(s)
            if n is None:
                raise ValueError(f"test set {s.name!r}: number of classes unknown (set num_classes)")
            metrics.append(MulticlassAccuracy(n, average="micro"))
        self.test_top1 = nn.ModuleList(metrics).to(self.device)
        self.test_samples: dict[str, int] = {}  # samples evaluated per set, over all ranks
        self.testing_set = 0
        self._skipped = {i for i in range(len(self.test_sets)) if not self.can_test(suite, i)}
        for i in sorted(self._skipped):
            log.warning("test set %r skipped: the model cannot classify its labels", self.test_sets[i].name)

    def finished_test_metrics(self) -> tuple[dict[str, float], dict[str, int]]:
        """(metrics, samples) of the test sets finished so far, computed on this process only: what
        a failed single-process test run still reports (the sets are read one after another)."""
        metrics, samples = {}, {}
        for i, (s, metric) in enumerate(zip(self.test_sets, self.test_top1, strict=True)):
            if i >= self.testing_set or i in self._skipped:
                continue
            with metric.sync_context(should_sync=False):
                metrics[f"test/{s.group}/{s.name}/top1"] = float(metric.compute())
                samples[s.name] = int((metric.tp + metric.fn).sum())
        return metrics, samples

    def on_test_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.testing_set = dataloader_idx

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        valid = batch["valid"]
        if not valid.any() or dataloader_idx in self._skipped:
            return
        logits = self.test_logits(select_rows(batch_inputs(batch), valid), dataloader_idx)
        self.test_top1[dataloader_idx].update(logits.argmax(1), batch["clean_target"][valid])

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict | None:
        """Per sample of test set ``dataloader_idx``: its key, clean label, predicted class and that
        class's softmax probability (written by :class:`~nml.callbacks.predictions.PredictionWriter`);
        None for a set the model cannot classify or a batch of padding."""
        valid = batch["valid"]
        if not valid.any() or dataloader_idx in self._skipped:
            return None
        probs = self.test_logits(select_rows(batch_inputs(batch), valid), dataloader_idx).float().softmax(1)
        score, pred = probs.max(1)
        keys = batch.get("key")
        s = self.test_sets[dataloader_idx]
        return {
            "set": s.name,
            "group": s.group,
            "key": [k for k, v in zip(keys, valid.tolist(), strict=True) if v] if keys is not None else None,
            "target": batch["clean_target"][valid].cpu(),
            "pred": pred.cpu(),
            "score": score.cpu(),
        }

    def on_test_epoch_end(self) -> None:
        groups: dict[str, list[torch.Tensor]] = {}
        for i, (s, metric) in enumerate(zip(self.test_sets, self.test_top1, strict=True)):
            if i in self._skipped:
                continue
            value = metric.compute()
            counted = (metric.tp + metric.fn).sum().float()  # every sample is a TP or an FN of its class
            self.test_samples[s.name] = int(self.trainer.strategy.reduce(counted, reduce_op="sum"))
            metric.reset()
            self.log(f"test/{s.group}/{s.name}/top1", value, add_dataloader_idx=False)
            groups.setdefault(s.group, []).append(value)
        for group, values in groups.items():
            self.log(f"test/{group}/mean_top1", torch.stack(values).mean(), add_dataloader_idx=False)
