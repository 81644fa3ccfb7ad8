"""Singular-value spectrum of a feature matrix, streamed: O(D^2) memory whatever the number of rows.

For an M x D feature matrix F (rows L2-normalised, columns centred; both switchable) the singular
values are the square roots of the eigenvalues of the centred Gram matrix
``X^T X - s s^T / M`` (``s`` the column sums of the row-normalised X). The accumulator adds each
batch into a float64 Gram matrix, column sums and a count; :meth:`SpectrumAccumulator.compute`
all-reduces them across ranks (once) and takes ``eigvalsh``. Metrics, with ``p_i = s_i / sum s``:

* ``sve`` singular value entropy ``-sum p_i log p_i``; ``effective_rank`` = ``exp(sve)``;
* ``p1`` the share of the largest singular value; ``lsvr`` = ``-log p1`` (as in the paper's figures);
* ``topk_share`` the share of the ``k`` largest.

Only the ``min(M, D)`` (centred: ``min(M - 1, D)``) leading singular values exist; the rest of the
Gram eigenvalues are rounding noise and are dropped, as are negative eigenvalues (clipped to 0).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def spectrum_metrics(singular_values: np.ndarray, k: int = 5) -> dict[str, float]:
    """Metrics of a spectrum (any order; zeros allowed)."""
    s = np.sort(np.asarray(singular_values, dtype=np.float64))[::-1]
    total = s.sum()
    if total <= 0:
        raise ValueError("the spectrum is all zeros: the features are constant")
    p = s / total
    nz = p[p > 0]
    sve = float(-(nz * np.log(nz)).sum())
    return {
        "sve": sve,
        "lsvr": float(-math.log(p[0])),
        "p1": float(p[0]),
        f"top{k}_share": float(p[:k].sum()),
        "effective_rank": float(math.exp(sve)),
    }


class SpectrumAccumulator:
    """Streams (B, D) feature batches into a float64 Gram matrix; exact spectrum at the end.

    Args:
        normalize_rows: L2-normalise every feature vector first.
        center: Centre the columns (over all rows seen, on all ranks).
        device: Where the Gram matrix lives (default: the first batch's device).
    """

    def __init__(self, normalize_rows: bool = True, center: bool = True, device: torch.device | None = None):
        self.normalize_rows, self.center, self.device = normalize_rows, center, device
        self.gram: torch.Tensor | None = None
        self.colsum: torch.Tensor | None = None
        self.count = 0
        self._reduced = False

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        if self._reduced:
            raise RuntimeError("this accumulator was already reduced across ranks; make a new one")
        x = torch.as_tensor(features)
        if x.ndim != 2:
            raise ValueError(f"features must be (batch, dim), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return
        x = x.detach().to(device=self.device or x.device, dtype=torch.float64)
        if not torch.isfinite(x).all():
            raise ValueError("features contain NaN or inf")
        if self.normalize_rows:
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
        if self.gram is None:
            d = x.shape[1]
            self.gram = torch.zeros(d, d, dtype=torch.float64, device=x.device)
            self.colsum = torch.zeros(d, dtype=torch.float64, device=x.device)
        elif x.shape[1] != self.gram.shape[0]:
            raise ValueError(f"feature dimension changed from {self.gram.shape[0]} to {x.shape[1]}")
        self.gram.addmm_(x.T, x)
        self.colsum += x.sum(0)
        self.count += x.shape[0]

    def _all_reduce(self, dim: int | None) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        # ranks that saw no rows still take part (with zeros of the agreed dimension)
        dims = [None] * dist.get_world_size()
        dist.all_gather_object(dims, self.gram.shape[0] if self.gram is not None else dim)
        known = {d for d in dims if d is not None}
        if len(known) != 1:
            raise ValueError(f"ranks disagree on the feature dimension: {dims}")
        d = known.pop()
        if self.gram is None:
            device = self.device or torch.device("cpu")
            self.gram = torch.zeros(d, d, dtype=torch.float64, device=device)
            self.colsum = torch.zeros(d, dtype=torch.float64, device=device)
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.gram.device)
        for t in (self.gram, self.colsum, count):
            dist.all_reduce(t)
        self.count = int(count.item())

    def singular_values(self, sync: bool = True, dim: int | None = None) -> np.ndarray:
        """Descending singular values of the (centred) feature matrix, all ranks combined."""
        if sync and not self._reduced:
            self._all_reduce(dim)
            self._reduced = True
        if self.gram is None or self.count == 0:
            raise ValueError("no features were added")
        g = self.gram
        if self.center:
            g = g - torch.outer(self.colsum, self.colsum) / self.count
        ev = torch.linalg.eigvalsh(g).flip(0).clamp_min(0)
        rank = min(self.count - (1 if self.center else 0), g.shape[0])
        return ev[: max(rank, 0)].sqrt().cpu().numpy()

    def compute(self, k: int = 5, sync: bool = True, dim: int | None = None) -> dict:
        """Metrics and singular values; ``dim`` lets a rank that saw no rows join the reduction."""
        s = self.singular_values(sync, dim)
        return {
            **spectrum_metrics(s, k),
            "samples": self.count,
            "dim": int(self.gram.shape[0]),
            "singular_values": s,
        }
