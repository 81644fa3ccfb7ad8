"""Training metrics under label noise: accuracy on clean and on noisy samples, and memorisation."""

from __future__ import annotations

import torch
from torchmetrics import Metric


def noise_split_counts(
    preds: torch.Tensor, target: torch.Tensor, clean_target: torch.Tensor, is_noisy: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Counts for one batch, as 0-d tensors on the batch's device (no host sync).

    * ``clean_correct / clean_total``: accuracy on samples whose label was not corrupted;
    * ``noisy_correct / noisy_total``: on corrupted samples, predictions equal to the *clean* label;
    * ``memorised / noisy_total``: on corrupted samples, predictions equal to the *noisy* label.
    """
    noisy = is_noisy.bool()
    clean = ~noisy
    return {
        "clean_correct": ((preds == clean_target) & clean).sum(),
        "clean_total": clean.sum(),
        "noisy_correct": ((preds == clean_target) & noisy).sum(),
        "memorised": ((preds == target) & noisy).sum(),
        "noisy_total": noisy.sum(),
    }


class Fraction(Metric):
    """``sum(numerator) / sum(denominator)`` over an epoch, for ``size`` values at once (a vector
    state: one update per step for all of a step's metrics), kept on the device and summed over ranks
    once at ``compute`` (exact, unlike a mean of per-batch fractions); NaN where a denominator is 0
    (e.g. accuracy on noisy samples of clean data)."""

    full_state_update = False

    def __init__(self, size: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.add_state("numerator", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("denominator", torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, numerator: torch.Tensor, denominator: torch.Tensor) -> None:
        self.numerator += numerator
        self.denominator += denominator

    def compute(self) -> torch.Tensor:
        return (self.numerator / self.denominator).float()
