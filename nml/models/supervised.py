"""``SupervisedPretraining``: any timm architecture, cross-entropy on the (noisy) labels."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy

from nml.data.loading import batch_inputs
from nml.data.modalities import get_modality
from nml.metrics.noisy import noise_split_counts
from nml.models.backbones import create_backbone
from nml.models.base import BackboneModule

log = logging.getLogger(__name__)


class SupervisedPretraining(BackboneModule):
    """Supervised pre-training of a timm model (or an nml_text model on documents) on noisy labels.

    Logs ``train/loss``; ``train/acc_clean`` (accuracy on samples whose label is intact),
    ``train/acc_noisy`` (on corrupted samples, agreement with the *clean* label) and
    ``train/memorised`` (on corrupted samples, agreement with the *noisy* label: how much of the
    noise the network has fitted); ``val/top1`` against clean labels. (``nml fit`` adds ``train/lr/*``
    and the throughput: see :class:`~nml.callbacks.throughput.TrainingThroughput`.)

    Args:
        model: Model name in ``library`` (timm: ``test_resnet``, ``resnet50`` ...; nml_text: ``text_bag``).
        num_classes: Classes of the head; ``nml fit`` links it from ``data.num_classes`` (without it,
            the model is built in ``setup()`` from the data module).
        model_kwargs: Extra model arguments (timm: ``drop_rate``, ``drop_path_rate`` ...).
        pretrained: Initial weights: a local file or an nml export directory (never a download).
            All of the model's tensors must be in it (an error lists what differs), unless
            ``pretrained_partial``: load what matches and log what was skipped.
        library: The backbone family: ``timm`` (images) or ``nml_text`` (documents, on
            TextClassificationShards).
        label_smoothing: Off by default: it changes the targets and blurs the noise level.
        mixup: Mixup alpha (0: off). Off by default for the same reason.
        cutmix: CutMix alpha (0: off).
        (optimizer, lr_scheduler, warmup, min_lr_ratio, channels_last, compile: see BackboneModule)
    """

    def __init__(
        self,
        model: str = "test_resnet",
        num_classes: int | None = None,
        model_kwargs: dict | None = None,
        pretrained: str | None = None,
        pretrained_partial: bool = False,
        library: str = "timm",
        label_smoothing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup: float = 0.05,
        min_lr_ratio: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ):
        super().__init__(optimizer, lr_scheduler, warmup, min_lr_ratio, channels_last, compile)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if label_smoothing or mixup or cutmix:
            log.warning(
                "label_smoothing=%s mixup=%s cutmix=%s: these change the targets and confound the label-noise "
                "level under study",
                label_smoothing,
                mixup,
                cutmix,
            )
        self.mixup_fn = None
        if num_classes is not None:
            self._build(num_classes)

    def _build(self, num_classes: int) -> None:
        hp = self.hparams
        self.hparams["num_classes"] = num_classes
        self.backbone = create_backbone(
            {"library": hp.get("library", "timm"), "name": hp.model, "kwargs": hp.model_kwargs or {}},
            num_classes=num_classes,
            pretrained=hp.pretrained,
            partial=hp.pretrained_partial,
        )
        self.val_top1 = MulticlassAccuracy(num_classes, average="micro")
        if (hp.mixup or hp.cutmix) and not get_modality(self.backbone.modality).mixable:
            raise ValueError(
                f"mixup / cutmix mix images; the {hp.get('library')} backbone reads {self.backbone.modality}"
            )
        if hp.mixup or hp.cutmix:
            from timm.data import Mixup

            self.mixup_fn = Mixup(
                mixup_alpha=hp.mixup,
                cutmix_alpha=hp.cutmix,
                label_smoothing=hp.label_smoothing,
                num_classes=num_classes,
            )

    def setup(self, stage: str) -> None:
        if self.backbone is None:
            dm = self.data
            if dm is None or dm.num_classes is None:
                raise ValueError("SupervisedPretraining: num_classes not given and the data module has none")
            from lightning.pytorch.callbacks import WeightAveraging

            if any(isinstance(c, WeightAveraging) for c in self.trainer.callbacks):
                raise ValueError(
                    "SupervisedPretraining: pass num_classes when using weight averaging (EMA): the callback "
                    "copies the model before setup() (nml fit links it from data.num_classes)"
                )
            self._build(dm.num_classes)
        self.adopt_input_of_the_model()
        self.record_data()
        self.prepare_model()
        if stage in ("test", "predict"):  # predict: the test suite, sample by sample
            self.setup_test_suite()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.backbone.logits(self.model_input(images))

    def val_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)

    def test_logits(self, images: torch.Tensor, set_index: int) -> torch.Tensor:
        return self(images)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch_inputs(batch), batch["target"]
        if self.mixup_fn is not None:
            x, soft = self.mixup_fn(x, y)
            logits = self(x)
            loss = torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            logits = self(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        n = len(y)
        c = noise_split_counts(logits.detach().argmax(1), y, batch["clean_target"], batch["is_noisy"])
        self.log_training(
            {
                "train/loss": (loss * n, n),
                "train/acc_clean": (c["clean_correct"], c["clean_total"]),
                "train/acc_noisy": (c["noisy_correct"], c["noisy_total"]),
                "train/memorised": (c["memorised"], c["noisy_total"]),
                "train/noise_rate": (c["noisy_total"], n),
            }
        )
        return loss
