"""``TextBagClassifier``: the small text model of the text noise sweep, a bag of word-piece embeddings.

Documents are tokenised with a WordPiece tokenizer that ships offline (all-MiniLM-L6-v2's
``tokenizer.json``, :mod:`nml.models.packaged`; the Rust ``tokenizers`` library, ~50k short documents
per second), cut to ``context_length`` tokens (counted: :attr:`truncated`), and averaged by an
``EmbeddingBag``. Two fully connected layers with ``BatchNorm1d`` + ReLU give the ``feature_dim``
features (what tuning, spectra and exports use); a linear classifier gives the logits. Like the
image study's ``nml_flat_cnn``, it is small enough to pre-train on 2 CPU cores in seconds and wide
enough to fit noisy labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def load_tokenizer(name: str, context_length: int):
    """The ``tokenizers`` tokenizer of a packaged or local model directory, truncating to
    ``context_length`` tokens (special tokens included)."""
    from tokenizers import Tokenizer

    from nml.models.packaged import resolve_text_model

    path = resolve_text_model(name) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {name!r}: no tokenizer.json in {path.parent}")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length=context_length)
    return tok


class TextBagClassifier(nn.Module):
    """Bag of embeddings -> Linear -> BN -> ReLU -> Linear -> BN -> ReLU (features) -> classifier.

    Args:
        num_classes: Classifier outputs (0: features only).
        tokenizer: ``all-minilm-l6-v2`` (packaged) or a local model directory with ``tokenizer.json``.
        context_length: Tokens kept per document (longer ones are truncated and counted).
        embed_dim / hidden_dim / feature_dim: Widths.
        drop_rate: Dropout before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 0,
        tokenizer: str = "all-minilm-l6-v2",
        context_length: int = 128,
        embed_dim: int = 64,
        hidden_dim: int = 512,
        feature_dim: int = 256,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if context_length < 3:
            raise ValueError(f"context_length: expected >= 3, got {context_length}")
        self.tokenizer = load_tokenizer(tokenizer, context_length)
        self.context_length = context_length
        vocab = self.tokenizer.get_vocab_size()
        self.embed = nn.EmbeddingBag(vocab, embed_dim, mode="mean")
        self.body = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, feature_dim),
            nn.BatchNorm1d(feature_dim),
            nn.ReLU(),
        )
        self.num_features = feature_dim
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(feature_dim, num_classes) if num_classes else nn.Identity()
        self.truncated = 0  # documents cut to context_length since the last pop_truncated()
        self._cache: dict[str, tuple[list[int], bool]] = {}  # document -> (ids, truncated)

    CACHE_DOCUMENTS = 200_000  # the token cache's bound: a pre-training corpus of the study fits

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat token ids, offsets) of ``texts`` for the EmbeddingBag, on the model's device.
        Tokenised documents are kept (up to :attr:`CACHE_DOCUMENTS`): later epochs only look them up."""
        texts = list(texts)
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if new:
            encoded = self.tokenizer.encode_batch(new)
            if len(self._cache) + len(new) <= self.CACHE_DOCUMENTS:
                self._cache.update(
                    (t, (e.ids, bool(e.overflowing))) for t, e in zip(new, encoded, strict=True)
                )
                found = self._cache
            else:
                found = {t: self._cache[t] for t in texts if t in self._cache}
                found.update((t, (e.ids, bool(e.overflowing))) for t, e in zip(new, encoded, strict=True))
        else:
            found = self._cache
        ids, offsets, n = [], [], 0
        for t in texts:
            tokens, cut = found[t]
            offsets.append(n)
            ids += tokens
            n += len(tokens)
            self.truncated += cut
        device = self.embed.weight.device
        return (
            torch.tensor(ids, dtype=torch.long, device=device),
            torch.tensor(offsets, dtype=torch.long, device=device),
        )

    def forward_features(self, texts: Sequence[str]) -> torch.Tensor:
        return self.body(self.embed(*self.tokenize(texts)))

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.head(self.drop(self.forward_features(texts)))

    def pop_truncated(self) -> int:
        n, self.truncated = self.truncated, 0
        return n
