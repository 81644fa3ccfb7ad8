"""Zero-shot classifiers from class prompts (CLIP style). The prompts come from the data
(:meth:`nml.data.loading.EvalSuite.set_prompts`): models know nothing of any benchmark's classes."""

from __future__ import annotations

import torch


@torch.no_grad()
def zeroshot_classifier(model, tokenizer, prompts: list[list[str]], device: torch.device) -> torch.Tensor:
    """(D, C) matrix of normalised mean text embeddings, one column per class."""
    columns = []
    for class_prompts in prompts:
        tokens = tokenizer(class_prompts).to(device)
        emb = model.encode_text(tokens, normalize=True).mean(0)
        columns.append(emb / emb.norm())
    return torch.stack(columns, dim=1)
