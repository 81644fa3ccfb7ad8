"""``ContrastivePretraining``: CLIP (open_clip) on image-text pairs with swapped captions."""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy

from nml.data.loading import EvalSuite, eval_suite
from nml.data.modules import ImageTextShards
from nml.models.backbones import create_backbone
from nml.models.base import BackboneModule
from nml.models.zeroshot import zeroshot_classifier
from nml.shards.manifest import EvalSet

log = logging.getLogger(__name__)
MAX_LOGIT_SCALE = math.log(100.0)


def clip_loss(rank: int, world_size: int):
    """The CLIP loss that scales: each rank scores its own rows against the gathered batch (local
    loss) with gradients flowing through the gather; targets are offset by ``rank * local batch``."""
    from open_clip.loss import ClipLoss

    return ClipLoss(
        local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size
    )


def siglip_loss(rank: int, world_size: int):
    """open_clip's sigmoid loss (SigLIP): pairwise, exchanging text features between ranks."""
    from open_clip.loss import SigLipLoss

    return SigLipLoss(rank=rank, world_size=world_size)


class ContrastivePretraining(BackboneModule):
    """CLIP pre-training with ``open_clip.loss.ClipLoss`` (local loss, gather with grad).

    Logs ``train/loss``, ``train/logit_scale`` (the temperature's inverse, ``exp``),
    ``train/retrieval_clean`` and ``train/retrieval_noisy`` (in-batch image->text top-1 on intact and
    on swapped pairs; on swapped pairs it measures how far the model fits the wrong captions), and
    ``val/zeroshot_top1`` on labelled validation shards, classifying with the data's class prompts.

    Args:
        model: open_clip model name (``RN50``, ``ViT-B-16`` ...), or a name for ``model_cfg``.
        model_cfg: A custom open_clip config ``{embed_dim, vision_cfg, text_cfg}`` (tiny CPU towers).
        pretrained: Initial weights: a local file or an nml export directory (never a download).
            All of the model's tensors must be in it (an error lists what differs), unless
            ``pretrained_partial``: load what matches and log what was skipped.
        tokenizer: open_clip model name whose tokenizer builds the zero-shot prompts; must match
            the data module's.
        zeroshot_templates: Prompt templates filled with the data's per-class fields (``{name}``, and
            ``{ch}`` on the glyph benchmark); None: the data's own templates (``_info.json``
            ``prompts``), else ``"a photo of a {name}."``.
        loss: ``clip`` (softmax InfoNCE, :func:`clip_loss`) or ``siglip`` (sigmoid, :func:`siglip_loss`;
            the model needs a ``logit_bias``: a SigLIP config, or ``init_logit_bias`` in ``model_cfg``).
        num_classes: Classes of the labelled validation data (``nml fit`` links it from
            ``data.num_classes``, as for SupervisedPretraining); recorded, not needed: the zero-shot
            heads are built from the data module's class names.
        (optimizer, lr_scheduler, warmup, min_lr_ratio, channels_last, compile: see BackboneModule)
    """

    val_metric = "val/zeroshot_top1"

    def __init__(
        self,
        model: str = "custom",
        model_cfg: dict | None = None,
        pretrained: str | None = None,
        pretrained_partial: bool = False,
        tokenizer: str = "ViT-B-32",
        zeroshot_templates: list[str] | None = None,
        loss: Literal["clip", "siglip"] = "clip",
        num_classes: int | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup: float = 0.05,
        min_lr_ratio: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ):
        super().__init__(optimizer, lr_scheduler, warmup, min_lr_ratio, channels_last, compile)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.backbone = create_backbone(
            {"library": "open_clip", "name": model, "model_cfg": model_cfg},
            pretrained=pretrained,
            partial=pretrained_partial,
        )
        if loss == "siglip" and getattr(self.clip, "logit_bias", None) is None:
            raise ValueError(
                f"loss=siglip needs a model with a logit_bias: {model!r} has none (use a SigLIP config, or set "
                "init_logit_bias, e.g. -10, in model_cfg)"
            )
        self.templates = list(zeroshot_templates) if zeroshot_templates else None
        self.loss_fn = None
        self._classifier: torch.Tensor | None = None

    @property
    def clip(self):
        return self.backbone.model

    def setup(self, stage: str) -> None:
        make = siglip_loss if self.hparams.loss == "siglip" else clip_loss
        self.loss_fn = make(self.trainer.global_rank, self.trainer.world_size)
        dm = self.data
        if isinstance(dm, ImageTextShards) and dm.context_length not in (None, self.clip.context_length):
            raise ValueError(
                f"data.context_length={dm.context_length} but the model's text tower takes "
                f"{self.clip.context_length} tokens: set them equal"
            )
        if dm is not None and dm.classes:
            self.val_top1 = MulticlassAccuracy(len(dm.classes), average="micro").to(self.device)
        elif dm is not None and dm.val_sets and stage == "fit":
            log.warning(
                "zero-shot validation is off: the validation set %r has no class names (its _info.json has no "
                "'classes'); val/zeroshot_top1 is not logged. Set data.class_names: imagenet for ImageNet-1k, "
                "or a file with one name per line",
                dm.val_sets[0].shards,
            )
            self._drop_checkpoints_monitoring(self.val_metric)
        self.adopt_input_of_the_model()
        self.record_data()
        self.prepare_model()
        if stage in ("test", "predict"):  # predict: the test suite, sample by sample
            self.setup_test_suite()

    def _drop_checkpoints_monitoring(self, metric: str) -> None:
        """A ModelCheckpoint monitoring ``metric``, which this run will not log, would stop the run at
        the first validation (Lightning raises on a missing monitor key): it is removed, and said so;
        the checkpoints that monitor nothing (``last.ckpt``, the step checkpoints) stay."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        for cb in [
            c for c in self.trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor == metric
        ]:
            self.trainer.callbacks.remove(cb)
            log.warning(
                "the checkpoint callback monitoring %s (filename %r) is removed: no best-by-%s checkpoint this "
                "run; last.ckpt and the step checkpoints are still written",
                metric,
                cb.filename,
                metric,
            )

    def _tokenizer(self):
        import open_clip

        return open_clip.get_tokenizer(self.hparams.tokenizer, context_length=self.clip.context_length)

    def _classifier_for(self, suite: EvalSuite, s: EvalSet | None) -> torch.Tensor:
        """The zero-shot head of set ``s`` (None: the training data's classes), from the data's prompts."""
        prompts = suite.prompts_of(s, self.templates)
        return zeroshot_classifier(self.clip, self._tokenizer(), prompts, self.device)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(self.model_input(images), normalize=True)

    # -- zero-shot test sets -------------------------------------------------------------------
    def can_test(self, suite: EvalSuite, set_index: int) -> bool:
        return suite.classes_of(self.test_sets[set_index]) is not None

    def on_test_epoch_start(self) -> None:
        """One zero-shot head per distinct class set (the text tower does not change during a test)."""
        suite = eval_suite(self.trainer)
        built: dict[tuple, torch.Tensor] = {}
        self._test_classifiers = {}
        for i, s in enumerate(self.test_sets):
            if i in self._skipped:
                continue
            prompts = suite.prompts_of(s, self.templates)
            key = tuple(map(tuple, prompts))
            if key not in built:
                built[key] = zeroshot_classifier(self.clip, self._tokenizer(), prompts, self.device)
            self._test_classifiers[i] = built[key]

    def on_predict_epoch_start(self) -> None:
        self.on_test_epoch_start()

    def test_logits(self, images: torch.Tensor, set_index: int) -> torch.Tensor:
        return self.encode_images(images) @ self._test_classifiers[set_index]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image = self.encode_images(batch["image"])
        text = self.clip.encode_text(batch["text"], normalize=True)
        scale = self.clip.logit_scale.exp()
        if self.hparams.loss == "siglip":
            loss = self.loss_fn(image, text, scale, self.clip.logit_bias)
        else:
            loss = self.loss_fn(image, text, scale)
        n = len(image)
        with torch.no_grad():
            hit = (image @ text.T).argmax(1) == torch.arange(n, device=image.device)
            noisy = batch["is_noisy"].bool()
            self.log_training(
                {
                    "train/loss": (loss * n, n),
                    "train/logit_scale": (scale, 1),
                    "train/retrieval_clean": ((hit & ~noisy).sum(), (~noisy).sum()),
                    "train/retrieval_noisy": ((hit & noisy).sum(), noisy.sum()),
                    "train/noise_rate": (noisy.sum(), n),
                }
            )
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    # -- zero-shot validation ------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        dm = self.data
        self._classifier = None
        if self.val_top1 is not None and dm is not None and dm.classes:
            self._classifier = self._classifier_for(dm, None)

    def validating(self) -> bool:
        return self._classifier is not None

    def val_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_images(images) @ self._classifier
