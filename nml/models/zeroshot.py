"""Zero-shot classifiers from class prompts (CLIP style). The prompts come from the data
(:meth:`nml.data.loading.EvalSuite.prompts_of`): models know nothing of any benchmark's classes."""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger(__name__)


@torch.no_grad()
def zeroshot_classifier(
    model, tokenizer, prompts: list[list[str]], device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """(D, C) matrix of normalised mean text embeddings, one column per class.

    All prompts go through the text tower in batches of ``batch_size`` whatever the class they
    belong to (1000 classes x 80 templates is 313 batches, not 1000 small ones), with a progress
    line every ~10 % when there are many."""
    flat = [p for class_prompts in prompts for p in class_prompts]
    owner = torch.tensor([c for c, class_prompts in enumerate(prompts) for _ in class_prompts], device=device)
    if len(flat) == 0 or any(len(p) == 0 for p in prompts):
        raise ValueError("zero-shot classifier: every class needs at least one prompt")
    sums: torch.Tensor | None = None
    steps = -(-len(flat) // batch_size)
    report = max(1, steps // 10) if steps >= 10 else 0
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, len(flat), batch_size)):
        emb = model.encode_text(tokenizer(flat[start : start + batch_size]).to(device), normalize=True)
        if sums is None:
            sums = torch.zeros(len(prompts), emb.shape[-1], device=device, dtype=emb.dtype)
        sums.index_add_(0, owner[start : start + batch_size], emb)
        if report and (i + 1) % report == 0:
            log.info(
                "zero-shot classifier: %d/%d prompts of %d classes (%.0f s)",
                min(start + batch_size, len(flat)),
                len(flat),
                len(prompts),
                time.perf_counter() - t0,
            )
    mean = sums / torch.bincount(owner, minlength=len(prompts)).unsqueeze(1).to(sums.dtype)
    return (mean / mean.norm(dim=1, keepdim=True)).T
