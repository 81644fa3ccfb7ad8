"""Training metrics under label noise: accuracy on clean and on noisy samples, and memorisation."""

from __future__ import annotations

import torch


def noise_split_counts(
    preds: torch.Tensor, target: torch.Tensor, clean_target: torch.Tensor, is_noisy: torch.Tensor
) -> dict[str, int]:
    """Counts for one batch.

    * ``clean_correct / clean_total``: accuracy on samples whose label was not corrupted;
    * ``noisy_correct / noisy_total``: on corrupted samples, predictions equal to the *clean* label;
    * ``memorised / noisy_total``: on corrupted samples, predictions equal to the *noisy* label.
    """
    noisy = is_noisy.bool()
    clean = ~noisy
    return {
        "clean_correct": int((preds[clean] == clean_target[clean]).sum()),
        "clean_total": int(clean.sum()),
        "noisy_correct": int((preds[noisy] == clean_target[noisy]).sum()),
        "memorised": int((preds[noisy] == target[noisy]).sum()),
        "noisy_total": int(noisy.sum()),
    }
