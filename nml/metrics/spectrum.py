"""Singular-value spectrum of a feature matrix, streamed: O(D^2) memory whatever the number of rows.

For an M x D feature matrix F (rows L2-normalised, columns centred; both switchable) the singular
values are the square roots of the eigenvalues of the centred Gram matrix
``X^T X - s s^T / M`` (``s`` the column sums of the row-normalised X). The accumulator adds each
batch into a float64 Gram matrix, column sums and a count; :meth:`SpectrumAccumulator.compute`
all-reduces them across ranks (once) and takes ``eigvalsh``. On the CPU each batch is one symmetric
rank-k update (BLAS ``dsyrk``: the lower triangle only, half a matrix product's arithmetic); on other
devices a full ``addmm``. Everything stays in float64: float32 products put the singular values off
by 1e-7 to 5e-7 of the largest, where float64 stays within 1e-14 (``benchmarks/spectrum.py``
measures both). Metrics, with ``p_i = s_i / sum s``:

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


def _add_gram(gram: torch.Tensor, x: torch.Tensor) -> None:
    """``gram += x^T x`` in float64; on the CPU only the lower triangle is written (``dsyrk``)."""
    if gram.device.type != "cpu":
        gram.addmm_(x.T, x)
        return
    from scipy.linalg.blas import dsyrk

    # gram is C-contiguous, so its transpose is the Fortran-order matrix BLAS updates in place;
    # the upper triangle of the transpose is the lower triangle of gram
    c = gram.numpy().T
    out = dsyrk(1.0, x.contiguous().numpy().T, beta=1.0, c=c, trans=0, lower=0, overwrite_c=1)
    if not np.shares_memory(out, c):  # scipy copies when it cannot update in place
        c[...] = out


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
        self._scratch: torch.Tensor | None = None

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        if self._reduced:
            raise RuntimeError("this accumulator was already reduced across ranks; make a new one")
        if isinstance(features, np.ndarray) and not features.flags.writeable:
            features = features.copy()  # a read-only (memory-mapped) batch: torch wraps only writable arrays
        x = torch.as_tensor(features)
        if x.ndim != 2:
            raise ValueError(f"features must be (batch, dim), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return
        # one float64 scratch buffer, reused across batches: a fresh 64 MB tensor per batch costs
        # more in page faults than the copy itself; the caller's tensor is never written
        device = self.device or x.device
        if (
            self._scratch is None
            or self._scratch.shape[0] < x.shape[0]
            or self._scratch.shape[1] != x.shape[1]
        ):
            self._scratch = torch.empty(x.shape, dtype=torch.float64, device=device)
        src, x = x.detach().to(device), self._scratch[: x.shape[0]]
        if src.dtype != torch.float64:  # widen first: a mixed-dtype division is a slow path
            src = x.copy_(src)
        if self.normalize_rows:
            torch.div(src, torch.linalg.vector_norm(src, dim=1, keepdim=True).clamp_min_(1e-300), out=x)
        elif src is not x:
            x.copy_(src)
        batch_sum = x.sum(0)
        if not torch.isfinite(batch_sum).all():  # a NaN or inf anywhere reaches its column's sum
            raise ValueError("features contain NaN or inf")
        if self.gram is None:
            d = x.shape[1]
            self.gram = torch.zeros(d, d, dtype=torch.float64, device=x.device)
            self.colsum = torch.zeros(d, dtype=torch.float64, device=x.device)
        elif x.shape[1] != self.gram.shape[0]:
            raise ValueError(f"feature dimension changed from {self.gram.shape[0]} to {x.shape[1]}")
        _add_gram(self.gram, x)
        self.colsum += batch_sum
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
        self._scratch = None
        if sync and not self._reduced:
            self._all_reduce(dim)
            self._reduced = True
        if self.gram is None or self.count == 0:
            raise ValueError("no features were added")
        g = self.gram
        if self.center:
            g = g - torch.outer(self.colsum, self.colsum) / self.count
        ev = torch.linalg.eigvalsh(g, UPLO="L").flip(0).clamp_min(0)
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
