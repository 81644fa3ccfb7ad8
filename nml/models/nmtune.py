"""NMTune (Chen et al., ICLR 2024): a light feature tuner with three regularisers on the features.

``z = f + s * h(f)`` with ``h = Linear(D, rD) -> BatchNorm1d -> ReLU -> Linear(rD, D)`` and ``s`` a
learnable per-dimension scale (init 1), then a linear head on ``z``. With two views per sample
(``z1, z2``) and the first view's frozen feature ``f1``, ``Z = [z1; z2]`` (2B x D):

* ``mse`` = mean over elements of ``(normalize(z2) - normalize(f1).detach())^2``;
* ``cov`` = (1/D) * sum of squared off-diagonal entries of the covariance of ``Z`` (columns centred,
  divided by ``2B - 1``);
* ``svd`` = minus the mean of the top-``k`` entries of ``s / sum(s)``, ``s`` the singular values of
  the uncentred ``Z``.

The loss is ``CE + 1.0 * mse + 0.04 * cov + 0.001 * svd`` by default (:data:`AUTHORS_WEIGHTS`, the
weights of Chen et al., ICLR 2024, at their D = 2048; docs/tuning.md), rescaled to the feature
dimension (:func:`scaled_weights`). This module is the one place that states them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AUTHORS_WEIGHTS = {"mse": 1.0, "cov": 0.04, "svd": 0.001}  # NMTune's regulariser weights
AUTHORS_DIM = 2048  # the feature dimension they are given at (ResNet-50's)


def nmtune_regularizers(
    z1: torch.Tensor, z2: torch.Tensor, f1: torch.Tensor, k: int = 5
) -> dict[str, torch.Tensor]:
    """The three NMTune regularisers (differentiable) for a batch of two views.

    Cost: the covariance term never forms the D x D matrix when D > 2B (its Frobenius norm equals
    that of the 2B x 2B Gram of the centred rows), and ``svdvals`` gets the tall orientation of the
    2B x D matrix (same singular values; half the time of the wide one for D = 2048, 2B = 128).
    """
    if z1.ndim != 2 or z1.shape != z2.shape or z1.shape != f1.shape:
        raise ValueError(
            f"nmtune_regularizers: z1, z2 and f1 must be (B, D) of one shape, got "
            f"{tuple(z1.shape)}, {tuple(z2.shape)}, {tuple(f1.shape)}"
        )
    b, d = z1.shape
    if b < 2:
        raise ValueError(
            f"nmtune_regularizers needs at least 2 samples per batch, got {b}: the covariance and spectrum "
            "of a single sample's views are degenerate (use a batch size >= 2, drop_last for the final batch)"
        )
    mse = (F.normalize(z2, dim=1) - F.normalize(f1.detach(), dim=1)).pow(2).mean()
    z = torch.cat([z1, z2])
    n = z.shape[0]
    zc = z - z.mean(0, keepdim=True)
    gram = zc @ zc.T if n < d else zc.T @ zc  # the smaller of the two Gram matrices
    fro2 = gram.pow(2).sum() / (n - 1) ** 2  # ||cov||_F^2
    diag2 = (zc.pow(2).sum(0) / (n - 1)).pow(2).sum()  # sum of squared variances
    cov = (fro2 - diag2) / d
    s = torch.linalg.svdvals(z.T if n < d else z)  # LAPACK is ~2x faster on the tall orientation
    p = s / s.sum()
    svd = -p[: min(k, p.numel())].mean()
    return {"mse": mse, "cov": cov, "svd": svd}


HeadInit = Literal["paper", "torch"]


@dataclass
class HeadOptions:
    """The MLP / NMTune head (``model.head``).

    Args:
        ratio: Hidden width = ratio * D.
        layers: Hidden blocks of ``h``.
        residual: ``z = f + s * h(f)`` (else ``s * h(f)``).
        scale_init: The initial s.
        head_init: The linear classifier's initialisation: ``paper`` (the NMTune authors':
            kaiming-uniform, bound sqrt(6/D), zero bias) or ``torch`` (``nn.Linear``'s default).
        standardize: Standardise cached features (tuning with no backbone) per dimension with the
            training split's mean and std before the head (every method, linear included); the
            statistics are kept in the checkpoint. Ignored with a backbone.
    """

    ratio: int = 4
    layers: int = 1
    residual: bool = True
    scale_init: float = 1.0
    head_init: HeadInit = "paper"
    standardize: bool = True


@dataclass
class LossOptions:
    """NMTune's regularisers (``model.loss``).

    Args:
        k: Top-k of the SVD regulariser.
        mse_weight / cov_weight / svd_weight: Regulariser weights at feature dimension
            ``reference_dim`` (None: :data:`AUTHORS_WEIGHTS` for nmtune and finetune, 0 for mlp;
            linear has none).
        reference_dim: The D at which the weights hold as given; at another D, ``mse`` and ``cov``
            are rescaled by their dependence on D (:func:`scaled_weights`), so the terms act at any D
            as at the authors' (:data:`AUTHORS_DIM`). None: the given weights at every D.
    """

    k: int = 5
    mse_weight: float | None = None
    cov_weight: float | None = None
    svd_weight: float | None = None
    reference_dim: int | None = AUTHORS_DIM

    def weights(self, regularised: bool, method: str) -> dict[str, float]:
        """The weights at ``reference_dim``: the given ones, the authors' where None; all 0 for a
        method trained with cross-entropy only (``regularised`` False), which refuses any nonzero one."""
        given = {"mse": self.mse_weight, "cov": self.cov_weight, "svd": self.svd_weight}
        if not regularised:
            nonzero = {k: v for k, v in given.items() if v}
            if nonzero:
                raise ValueError(
                    f"method={method} trains with cross-entropy only, but {nonzero} were given: use "
                    "method=nmtune (or finetune) for the regularisers"
                )
            return dict.fromkeys(given, 0.0)
        return {k: float(AUTHORS_WEIGHTS[k] if v is None else v) for k, v in given.items()}


def scaled_weights(weights: dict[str, float], dim: int, reference_dim: int | None) -> dict[str, float]:
    """The regulariser weights at feature dimension ``dim``, given as the weights at ``reference_dim``.

    For fixed per-sample and per-pair statistics, ``mse`` (a mean over the D elements of a difference of
    unit vectors) scales as 1 / D and ``cov`` (1/D times a sum over D(D-1) off-diagonal entries) as D - 1;
    ``svd`` (shares of the 2B singular values) does not depend on D when D >= 2B. So the weights become
    ``mse * D / D_ref`` and ``cov * (D_ref - 1) / (D - 1)``: each term then weighs what it weighs at
    D_ref, and at ``dim == reference_dim`` the weights are exactly the given ones.
    ``reference_dim`` None: the given weights at every D."""
    if reference_dim is None or dim == reference_dim:
        return dict(weights)
    if reference_dim < 2 or dim < 2:
        raise ValueError(
            f"reference_dim and the feature dimension must be >= 2, got {reference_dim} and {dim}"
        )
    return {
        **weights,
        "mse": weights["mse"] * dim / reference_dim,
        "cov": weights["cov"] * (reference_dim - 1) / (dim - 1),
    }


def init_classifier(layer: nn.Linear, how: HeadInit) -> nn.Linear:
    """Initialise a linear classifier: ``paper`` as the NMTune authors' code (kaiming-uniform, bound
    sqrt(6 / D), zero bias), or ``torch`` (``nn.Linear``'s own: kaiming-uniform with a=sqrt(5),
    uniform bias)."""
    if how == "paper":
        nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")  # bound = sqrt(2) * sqrt(3 / D)
        nn.init.zeros_(layer.bias)
    elif how != "torch":
        raise ValueError(f"head_init: expected 'paper' or 'torch', got {how!r}")
    return layer


class NMTuneHead(nn.Module):
    """Residual MLP feature transform plus a linear classifier.

    Args:
        dim: Feature dimension D.
        num_classes: Classes of the linear head.
        ratio: Hidden width r * D.
        layers: Hidden Linear -> BN -> ReLU blocks before the output Linear(rD, D) (the reference uses 1).
        residual: ``z = f + s * h(f)`` (True) or ``z = s * h(f)``.
        scale_init: Initial value of the per-dimension scale ``s``.
        head_init: Initialisation of the linear classifier (:func:`init_classifier`).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        ratio: int = 4,
        layers: int = 1,
        residual: bool = True,
        scale_init: float = 1.0,
        head_init: HeadInit = "paper",
    ):
        super().__init__()
        if layers < 1 or ratio < 1:
            raise ValueError(f"NMTuneHead: layers and ratio must be >= 1, got layers={layers}, ratio={ratio}")
        blocks: list[nn.Module] = []
        width_in = dim
        for _ in range(layers):
            blocks += [nn.Linear(width_in, ratio * dim), nn.BatchNorm1d(ratio * dim), nn.ReLU(inplace=True)]
            width_in = ratio * dim
        blocks.append(nn.Linear(width_in, dim))
        self.h = nn.Sequential(*blocks)
        self.scale = nn.Parameter(torch.full((dim,), float(scale_init)))
        self.residual = residual
        self.classifier = init_classifier(nn.Linear(dim, num_classes), head_init)

    def transform(self, f: torch.Tensor) -> torch.Tensor:
        z = self.scale * self.h(f)
        return f + z if self.residual else z

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.transform(f)
        return z, self.classifier(z)
