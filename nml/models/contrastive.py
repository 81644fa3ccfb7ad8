"""``ContrastivePretraining``: CLIP (open_clip) on image-text pairs with swapped captions."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy

from nml.models.backbones import create_backbone
from nml.models.common import BackboneModule
from nml.models.zeroshot import GLYPH_TEMPLATES, class_prompts, zeroshot_classifier

MAX_LOGIT_SCALE = math.log(100.0)


def clip_loss(rank: int, world_size: int):
    """The CLIP loss that scales: each rank scores its own rows against the gathered batch (local
    loss) with gradients flowing through the gather; targets are offset by ``rank * local batch``."""
    from open_clip.loss import ClipLoss  # noqa: PLC0415

    return ClipLoss(
        local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size
    )


class ContrastivePretraining(BackboneModule):
    """CLIP pre-training with ``open_clip.loss.ClipLoss`` (local loss, gather with grad).

    Logs ``train/loss``, ``train/logit_scale`` (the temperature's inverse, ``exp``),
    ``train/retrieval_clean`` and ``train/retrieval_noisy`` (in-batch image->text top-1 on intact and
    on swapped pairs; on swapped pairs it measures how far the model fits the wrong captions), and
    ``val/zeroshot_top1`` on labelled validation shards, classifying with class-name prompts.

    Args:
        model: open_clip model name (``RN50``, ``ViT-B-16`` ...), or a name for ``model_cfg``.
        model_cfg: A custom open_clip config ``{embed_dim, vision_cfg, text_cfg}`` (tiny CPU towers).
        pretrained: Initial weights: a local file or an nml export directory (never a download).
        tokenizer: open_clip model name whose tokenizer builds the zero-shot prompts; must match
            the data module's.
        zeroshot_templates: Prompt templates with ``{name}`` (e.g. "uppercase A") and ``{ch}``.
        num_classes: Classes of the labelled validation data (``nml fit`` links it from
            ``data.num_classes``, as for SupervisedPretraining); recorded, not needed: the zero-shot
            heads are built from the data module's class names.
        (optimizer, lr_scheduler, warmup, min_lr_ratio, channels_last, compile: see BackboneModule)
    """

    def __init__(
        self,
        model: str = "custom",
        model_cfg: dict | None = None,
        pretrained: str | None = None,
        tokenizer: str = "ViT-B-32",
        zeroshot_templates: list[str] | None = None,
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
        self.backbone = create_backbone("open_clip", model, model_cfg=model_cfg, pretrained=pretrained)
        self.templates = tuple(zeroshot_templates or GLYPH_TEMPLATES)
        self.loss_fn = None
        self.val_top1: MulticlassAccuracy | None = None
        self._classifier: torch.Tensor | None = None

    @property
    def clip(self):
        return self.backbone.model

    def setup(self, stage: str) -> None:
        self.loss_fn = clip_loss(self.trainer.global_rank, self.trainer.world_size)
        dm = getattr(self.trainer, "datamodule", None)
        ctx = getattr(dm, "context_length", None)
        if ctx is not None and ctx != self.clip.context_length:
            raise ValueError(
                f"data.context_length={ctx} but the model's text tower takes {self.clip.context_length} tokens: "
                "set them equal"
            )
        classes = getattr(dm, "classes", None)
        if classes:
            self.val_top1 = MulticlassAccuracy(len(classes), average="micro").to(self.device)
        self.record_data()
        self.prepare_model()
        if stage == "test":
            self.setup_test_suite()

    # -- zero-shot test sets -------------------------------------------------------------------
    def can_test(self, set_index: int) -> bool:
        return self.trainer.datamodule.set_classes(self.test_sets[set_index]) is not None

    def _tokenizer(self):
        import open_clip  # noqa: PLC0415

        return open_clip.get_tokenizer(self.hparams.tokenizer, context_length=self.clip.context_length)

    def on_test_epoch_start(self) -> None:
        dm, tok = self.trainer.datamodule, self._tokenizer()
        self._test_classifiers = {
            i: zeroshot_classifier(
                self.clip, tok, class_prompts(dm.set_classes(s), self.templates), self.device
            )
            for i, s in enumerate(self.test_sets)
            if i not in self._skipped
        }

    def test_logits(self, images: torch.Tensor, set_index: int) -> torch.Tensor:
        image = self.clip.encode_image(self.images({"image": images}), normalize=True)
        return image @ self._test_classifiers[set_index]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image = self.clip.encode_image(self.images(batch), normalize=True)
        text = self.clip.encode_text(batch["text"], normalize=True)
        scale = self.clip.logit_scale.exp()
        loss = self.loss_fn(image, text, scale)
        n = len(image)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/logit_scale", scale.detach(), on_step=True, on_epoch=False)
        with torch.no_grad():
            hit = (image @ text.T).argmax(1) == torch.arange(n, device=image.device)
            noisy = batch["is_noisy"].bool()
            self.log_fraction("train/retrieval_clean", int(hit[~noisy].sum()), int((~noisy).sum()))
            self.log_fraction("train/retrieval_noisy", int(hit[noisy].sum()), int(noisy.sum()))
            self.log_fraction("train/noise_rate", int(noisy.sum()), n)
        self.log_lr()
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    # -- zero-shot validation ------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._classifier = None
        dm = getattr(self.trainer, "datamodule", None)
        if self.val_top1 is None or not getattr(dm, "classes", None):
            return
        self._classifier = zeroshot_classifier(
            self.clip, self._tokenizer(), class_prompts(dm.classes, self.templates), self.device
        )

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        valid = batch["valid"]
        if self._classifier is None or not valid.any():
            return
        image = self.clip.encode_image(self.images(batch)[valid], normalize=True)
        self.val_top1.update((image @ self._classifier).argmax(1), batch["clean_target"][valid])

    def on_validation_epoch_end(self) -> None:
        if self._classifier is not None:
            self.log("val/zeroshot_top1", self.val_top1.compute(), prog_bar=True)
            self.val_top1.reset()
