"""Zero-shot classifiers from class names and prompt templates (CLIP style)."""

from __future__ import annotations

import torch

from nml.data.charsets import char_name

# Worded like the glyph corpus captions (nml/data/captions.py); {name} and {ch} are filled per member.
GLYPH_TEMPLATES: tuple[str, ...] = (
    "the {name}",
    "a printed {name}",
    "an image of the character '{ch}'",
    "close-up of a {name}",
)


def class_members(class_name: str) -> list[str]:
    """'0/O/o' -> ['0', 'O', 'o'] (merged glyph classes); other names stay whole ('/' stays '/')."""
    parts = class_name.split("/")
    return parts if len(parts) > 1 and all(parts) else [class_name]


def class_prompts(
    class_names: list[str], templates: tuple[str, ...] | list[str] = GLYPH_TEMPLATES
) -> list[list[str]]:
    """Prompts per class: every template for every member of the class."""
    prompts = []
    for cname in class_names:
        members = class_members(cname)
        names = [(char_name(m) if len(m) == 1 else m, m) for m in members]
        prompts.append([t.format(name=n, ch=m) for t in templates for n, m in names])
    return prompts


@torch.no_grad()
def zeroshot_classifier(model, tokenizer, prompts: list[list[str]], device: torch.device) -> torch.Tensor:
    """(D, C) matrix of normalised mean text embeddings, one column per class."""
    columns = []
    for class_prompts_ in prompts:
        tokens = tokenizer(class_prompts_).to(device)
        emb = model.encode_text(tokens, normalize=True).mean(0)
        columns.append(emb / emb.norm())
    return torch.stack(columns, dim=1)
