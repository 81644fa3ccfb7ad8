"""``DownstreamTuning``: linear probe, MLP, NMTune or full fine-tuning on a pre-trained backbone.

The backbone comes from the factory (an ``nml export`` directory, or ``{library, name, pretrained}``
for a timm / open_clip architecture with a local weights file) and is frozen (no gradients, kept in
eval mode so BatchNorm statistics do not move) except for ``finetune``. With no backbone the module
tunes on cached features (``CachedFeatures``): the black-box path for embedding APIs.

* ``linear``: a linear head on the frozen feature f; one unaugmented view (the reference protocol).
* ``mlp``: the NMTune head (``z = f + s * h(f)``, linear classifier on z), cross-entropy only.
* ``nmtune``: the same head, two augmented views, cross-entropy on both plus NMTune's three
  regularisers (:mod:`nml.models.nmtune`: the authors' weights, given at their feature dimension
  and rescaled to this one).
* ``finetune``: the whole encoder trains, a linear head on its output, and the regularisers act on
  the encoder output ``z``; the MSE anchor ``f1`` is the *pre-trained* encoder's feature of view 1
  (a frozen copy, kept out of the checkpoint).

Cached features (no backbone) are standardised per dimension with the training split's mean and
standard deviation before every method's head (``model.head.standardize``), so that the learning rates and the
regularisers see one feature scale whatever the backbone; the statistics are buffers of the module,
kept in its checkpoints, so a tuned head applies to raw features of the same backbone.

Metrics: ``train/{loss,ce,mse,cov,svd,top1}`` (the regularisers unweighted; ``train/w_<name>`` the
weighted terms that enter the loss), ``val/top1`` (for model selection), and the test
suite ``test/<group>/<name>/top1``; the reported number is the last epoch's (``last.ckpt``).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from nml.data.loading import batch_inputs
from nml.models.backbones import Backbone, create_backbone
from nml.models.base import BackboneModule
from nml.models.nmtune import (
    HeadOptions,
    LossOptions,
    NMTuneHead,
    init_classifier,
    nmtune_regularizers,
    scaled_weights,
)
from nml.typed_options import as_options

log = logging.getLogger(__name__)
Method = Literal["linear", "mlp", "nmtune", "finetune"]
DEFAULT_LR = {"linear": 1e-2, "mlp": 1e-3, "nmtune": 1e-3, "finetune": 1e-4}
DEFAULT_WEIGHT_DECAY = 1e-4


class DownstreamTuning(BackboneModule):
    """Tune a head (or the whole encoder) on a downstream task; see the module docstring.

    Args:
        method: ``linear``, ``mlp``, ``nmtune`` or ``finetune``.
        backbone: An ``nml export`` directory, or ``{library, name, model_cfg, pretrained, kwargs}`` for
            the factory (weights from a local file only); None: tune on cached features.
        num_classes: Classes of the head (``nml fit`` links it from ``data.num_classes``).
        feature_dim: D of cached features (default: the data module's).
        head: The MLP / NMTune head, the classifier's initialisation and the standardisation of cached
            features (:class:`~nml.models.nmtune.HeadOptions`: ratio, layers, residual, scale_init,
            head_init, standardize).
        loss: The regularisers (:class:`~nml.models.nmtune.LossOptions`: k, mse_weight, cov_weight,
            svd_weight, reference_dim; weights None: the authors' for nmtune and finetune, 0 for mlp).
        views: Training views per sample (None: 1 unaugmented for linear, 2 augmented otherwise); the
            data module's own ``views`` / ``augment`` settings win.
        optimizer: Optimizer callable (None: fused AdamW, lr 1e-2 linear / 1e-3 mlp, nmtune / 1e-4
            finetune, weight decay 1e-4).
        lr_scheduler: Scheduler callable stepped every step (None: cosine per step, ``warmup``).
        warmup / min_lr_ratio / channels_last / compile: See :class:`~nml.models.base.BackboneModule`.
    """

    def __init__(
        self,
        method: Method = "nmtune",
        backbone: str | dict | None = None,
        num_classes: int | None = None,
        feature_dim: int | None = None,
        head: HeadOptions | None = None,
        loss: LossOptions | None = None,
        views: int | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup: float = 0.0,
        min_lr_ratio: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ):
        if method not in DEFAULT_LR:
            raise ValueError(f"method: expected one of {list(DEFAULT_LR)}, got {method!r}")
        if optimizer is None:
            optimizer = _default_optimizer(method)
        super().__init__(optimizer, lr_scheduler, warmup, min_lr_ratio, channels_last, compile)
        self.head_options = as_options(HeadOptions, head, "model.head")
        self.loss_options = as_options(LossOptions, loss, "model.loss")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "head", "loss"])
        # plain dicts: checkpoints load with torch.load(weights_only=True), which refuses classes
        self.hparams["head"], self.hparams["loss"] = asdict(self.head_options), asdict(self.loss_options)
        self.method = method
        lo = self.loss_options
        self.base_weights = lo.weights(regularised=method in ("nmtune", "finetune"), method=method)
        self.weights = dict(self.base_weights)
        if views not in (None, 1, 2):
            raise ValueError(f"views: expected 1 or 2, got {views}")
        self.views = views or (1 if method == "linear" else 2)
        if method == "finetune" and backbone is None:
            raise ValueError(
                "method=finetune trains the encoder: give model.backbone (an export or a factory dict)"
            )
        self.export_meta: dict | None = None
        self._anchor: list[Backbone] = []  # finetune's frozen pre-trained copy (not a submodule)
        if backbone is not None:
            self.backbone = create_backbone(backbone)
            self.export_meta = self.backbone.export_meta
            if method == "finetune":
                if self.weights["mse"]:
                    self._anchor.append(_frozen(copy.deepcopy(self.backbone)))
            else:
                _frozen(self.backbone)
        self.head: nn.Module | None = None
        dim = self.backbone.feature_dim if self.backbone is not None else feature_dim
        if dim is not None and num_classes is not None:
            self._build_head(dim, num_classes)

    # -- construction --------------------------------------------------------------------------
    def _build_head(self, dim: int, num_classes: int) -> None:
        hp, o = self.hparams, self.head_options
        hp["feature_dim"], hp["num_classes"] = dim, num_classes
        self.weights = scaled_weights(self.base_weights, dim, self.loss_options.reference_dim)
        # identity until fit sets the training statistics (cached features only); in the checkpoint
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        if self.method in ("mlp", "nmtune"):
            self.head = NMTuneHead(dim, num_classes, o.ratio, o.layers, o.residual, o.scale_init, o.head_init)
        else:
            self.head = init_classifier(nn.Linear(dim, num_classes), o.head_init)
        self.val_top1 = MulticlassAccuracy(num_classes, average="micro")

    def setup(self, stage: str) -> None:
        dm = self.data
        if self.head is None:
            dim = self.backbone.feature_dim if self.backbone is not None else None
            dim = dim or self.hparams.feature_dim or (dm.feature_dim if dm is not None else None)
            n = self.hparams.num_classes or (dm.num_classes if dm is not None else None)
            if dim is None or n is None:
                raise ValueError(
                    "DownstreamTuning: feature_dim (without a backbone) and num_classes come from the data "
                    f"module when not given; got feature_dim={dim}, num_classes={n}"
                )
            self._build_head(int(dim), int(n))
        cached_dim = dm.feature_dim if dm is not None else None
        if cached_dim is not None and int(cached_dim) != self.feature_dim:
            raise ValueError(
                f"the data module's features have D={cached_dim}, but the head expects D={self.feature_dim} "
                "(features from another backbone?)"
            )
        if dm is not None and self.backbone is not None:
            dm.match_preprocessing(
                *self.backbone.preprocessing(),
                source=self.backbone.config.name,
                crop_pct=self.backbone.crop_pct(),
            )
        if stage == "fit" and dm is not None:
            dm.configure_views(self.views, augment=self.views > 1 or self.method != "linear")
            if self.head_options.standardize and self.backbone is None and hasattr(dm, "feature_statistics"):
                mean, std = dm.feature_statistics()
                self.feature_mean.copy_(mean)
                self.feature_std.copy_(std)
        if stage == "fit" and any(self.weights.values()):
            log.info(
                "regulariser weights at D=%d: %s (given: %s, reference D=%s)",
                self.feature_dim,
                self.weights,
                self.base_weights,
                self.loss_options.reference_dim,
            )
        self.record_data()
        self.provenance["method"] = self.method
        if self.export_meta is not None:
            self.provenance["export"] = {
                k: self.export_meta.get(k) for k in ("backbone", "noise", "weights_sha256")
            }
        self.prepare_model()
        if stage in ("test", "predict"):  # predict: the test suite, sample by sample
            self.setup_test_suite()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone is not None and self.method != "finetune":
            self.backbone.eval()  # frozen: BatchNorm statistics and dropout stay in eval mode
        return self

    def on_fit_start(self) -> None:
        for anchor in self._anchor:
            anchor.to(self.device)

    # -- the model -----------------------------------------------------------------------------
    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """f: cached features pass through; images go through the backbone (no grad when frozen)."""
        if inputs.ndim == 2:  # cached features: standardised with the training statistics
            return (inputs - self.feature_mean) / self.feature_std
        if self.backbone is None:
            raise ValueError(
                f"DownstreamTuning without a backbone got images {tuple(inputs.shape)}, not features"
            )
        inputs = self.model_input(inputs)
        if self.method == "finetune":
            return self.backbone.features(inputs)
        with torch.no_grad():
            return self.backbone.features(inputs)

    def tune(self, f: torch.Tensor) -> torch.Tensor:
        """z: the tuned feature (the NMTune transform; the feature itself for linear / finetune)."""
        return self.head.transform(f) if isinstance(self.head, NMTuneHead) else f

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        return self.head.classifier(z) if isinstance(self.head, NMTuneHead) else self.head(z)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.classify(self.tune(self.encode(inputs)))

    @property
    def feature_dim(self) -> int:
        return int(self.hparams.feature_dim)

    def spectrum_features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.tune(self.encode(inputs))

    # -- steps ---------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch_inputs(batch), batch["target"]
        two = x.ndim in (3, 5)  # (B, 2, D) features or (B, 2, C, H, W) images
        if two:
            if x.shape[1] != 2:
                raise ValueError(f"expected 2 views per sample, got {x.shape[1]}")
            x = torch.cat([x[:, 0], x[:, 1]])  # [view 1; view 2], one pass through encoder and head
        f = self.encode(x)
        z = self.tune(f)
        logits = self.classify(z)
        views = 2 if two else 1
        ce = F.cross_entropy(logits, y.repeat(views))
        loss = ce
        n = len(y)
        stats = {"train/ce": (ce * n, n)}
        if any(self.weights.values()):
            z1, z2 = (z[:n], z[n:]) if two else (z, z)
            if self.method == "finetune" and self._anchor:
                with torch.no_grad():
                    f1 = self._anchor[0].features(x[:n])
            else:
                f1 = f[:n]
            regs = nmtune_regularizers(z1, z2, f1, self.loss_options.k)
            for name, value in regs.items():
                if self.weights[name]:
                    loss = loss + self.weights[name] * value
                    stats[f"train/w_{name}"] = (self.weights[name] * value * n, n)
                stats[f"train/{name}"] = (value * n, n)
        stats["train/loss"] = (loss * n, n)
        stats["train/top1"] = ((logits[:n].detach().argmax(1) == y).sum(), n)
        self.log_training(stats)
        return loss

    def val_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self(inputs)

    def test_logits(self, inputs: torch.Tensor, set_index: int) -> torch.Tensor:
        return self(inputs)


def _frozen(backbone: Backbone) -> Backbone:
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


def _default_optimizer(method: str) -> OptimizerCallable:
    lr = DEFAULT_LR[method]

    def adamw(params):  # fused: one kernel for all parameters (CPU and CUDA; 3-6x faster steps on CPU)
        return torch.optim.AdamW(params, lr=lr, weight_decay=DEFAULT_WEIGHT_DECAY, fused=True)

    return adamw
