"""Text backbone families: inputs are documents (an object array or a list of strings); each family
tokenises them itself and counts the documents it truncates (:meth:`BackboneFamily.pop_truncated`).

* ``nml_text``: :class:`~nml.models.text_bag.TextBagClassifier` (name ``text_bag``), trained by nml
  (the text noise sweep); features: its pre-logits.
* ``sentence_transformers``: a frozen sentence-embedding model, ``all-minilm-l6-v2`` (packaged, 384-d)
  or a local sentence-transformers directory; features: its pooled sentence embedding.
* ``model2vec``: a static encoder distilled from such a model (``all-minilm-l6-v2``; ``kwargs.pca_dims``,
  default 256); features: its mean token embedding.
* ``embedding_api``: an OpenAI-compatible ``/v1/embeddings`` endpoint
  (:class:`~nml.models.embedding_api.EmbeddingAPI`; name: the API's model, ``kwargs``: ``base_url``,
  ``dim`` and the client's options; the key only from the environment variable ``api_key_env``).

The frozen ones (all but ``nml_text``) are black boxes to nml: used for features only, never trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from nml.models.backbones.family import BackboneFamily, register_family


def as_texts(inputs) -> list[str]:
    if isinstance(inputs, str) or isinstance(inputs, torch.Tensor):
        raise TypeError(f"a text backbone takes a sequence of documents, got {type(inputs).__name__}")
    return [str(t) for t in inputs]


class FrozenTextEncoder(nn.Module):
    """A black-box text encoder as an ``nn.Module``: always in eval mode, no trainable parameters,
    a count of the documents it truncated."""

    def __init__(self, dim: int, limit: int | None):
        super().__init__()
        self.dim, self.limit, self.truncated = dim, limit, 0

    def train(self, mode: bool = True):
        return super().train(False)

    def encode(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def pop_truncated(self) -> int:
        n, self.truncated = self.truncated, 0
        return n


class SentenceEncoder(FrozenTextEncoder):
    def __init__(self, path: str, max_seq_length: int = 128, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(path, device="cpu", local_files_only=True)
        st.max_seq_length = max_seq_length
        st.requires_grad_(False)
        super().__init__(int(st.get_sentence_embedding_dimension()), max_seq_length)
        self.st, self.batch_size = st.eval(), batch_size

    def encode(self, texts: list[str]) -> torch.Tensor:
        lengths = [len(ids) for ids in self.st.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
        self.truncated += sum(n > self.limit for n in lengths)
        with torch.inference_mode():
            out = self.st.encode(
                texts, batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False
            )
        return out.clone()  # outside inference mode: a normal tensor, usable as a head's input


class StaticEncoder(FrozenTextEncoder):
    def __init__(self, path: str, max_length: int = 512):
        from model2vec import StaticModel

        static = StaticModel.from_pretrained(path)
        super().__init__(int(static.dim), max_length)
        self.static = static

    def encode(self, texts: list[str]) -> torch.Tensor:
        lengths = [len(e.ids) for e in self.static.tokenizer.encode_batch(texts, add_special_tokens=False)]
        self.truncated += sum(n > self.limit for n in lengths)
        vectors = self.static.encode(texts, max_length=self.limit, show_progress_bar=False)
        return torch.from_numpy(np.asarray(vectors, dtype=np.float32))


class APIEncoder(FrozenTextEncoder):
    def __init__(self, model: str, base_url: str | None = None, dim: int | None = None, **options):
        from nml.models.embedding_api import EmbeddingAPI

        if not base_url or not dim:
            raise ValueError(
                f"embedding_api backbone {model!r}: kwargs need base_url (the API's /v1 URL) and dim (the "
                f"vector dimension), got base_url={base_url!r}, dim={dim!r}"
            )
        self.api = EmbeddingAPI(base_url, model, dim=int(dim), **options)
        super().__init__(int(dim), self.api.max_chars)

    def encode(self, texts: list[str]) -> torch.Tensor:
        before = self.api.truncated
        vectors = self.api.encode(texts)
        self.truncated += self.api.truncated - before
        return torch.from_numpy(np.asarray(vectors, dtype=np.float32))


class _TextFamily(BackboneFamily):
    transforms = "text"
    modality = "text"

    def preprocessing(self, model: nn.Module):
        return None, None, None

    def pop_truncated(self, model: nn.Module) -> tuple[int, int | None]:
        limit = getattr(model, "limit", None) or getattr(model, "context_length", None)
        return model.pop_truncated(), limit


class _FrozenFamily(_TextFamily):
    def feature_dim(self, model: nn.Module, config) -> int:
        return model.dim

    def features(self, model: nn.Module, texts: Sequence[str]) -> torch.Tensor:
        return model.encode(as_texts(texts))

    def _no_head(self, config) -> None:
        if config.num_classes:
            raise ValueError(
                f"backbone {config.library}:{config.name} is a frozen encoder: it has no classifier to train "
                "(num_classes must be 0); tune a head on its features (nml features, then tune_*.yaml)"
            )


@register_family
class TextBagFamily(_TextFamily):
    name = "nml_text"
    features_description = "nml_text bag-of-word-pieces pre-logits"

    def instantiate(self, config) -> nn.Module:
        from nml.models.text_bag import TextBagClassifier

        if config.model_cfg is not None or config.name != "text_bag":
            raise ValueError(f"backbone: the nml_text family has one model, 'text_bag' (got {config.name!r})")
        return TextBagClassifier(num_classes=config.num_classes, **config.kwargs)

    def feature_dim(self, model: nn.Module, config) -> int:
        return int(model.num_features)

    def features(self, model: nn.Module, texts) -> torch.Tensor:
        return model.forward_features(as_texts(texts))

    def logits(self, model: nn.Module, texts) -> torch.Tensor:
        return model(as_texts(texts))

    def has_classifier(self, config) -> bool:
        return bool(config.num_classes)

    def head_names(self, model: nn.Module) -> list[str]:
        return ["head"]

    def pretraining_classes(self, config, hparams: dict) -> int | None:
        return hparams.get("num_classes")


@register_family
class SentenceTransformersFamily(_FrozenFamily):
    name = "sentence_transformers"
    features_description = "sentence-transformers pooled sentence embedding (frozen)"

    def instantiate(self, config) -> nn.Module:
        from nml.models.packaged import resolve_text_model

        self._no_head(config)
        return SentenceEncoder(str(resolve_text_model(config.name)), **config.kwargs)


@register_family
class Model2VecFamily(_FrozenFamily):
    name = "model2vec"
    features_description = "model2vec static embedding distilled from a local sentence encoder (frozen)"

    def instantiate(self, config) -> nn.Module:
        from nml.models.packaged import distilled_dir

        self._no_head(config)
        kwargs = dict(config.kwargs)
        path = distilled_dir(config.name, int(kwargs.pop("pca_dims", 256)))
        return StaticEncoder(str(path), **kwargs)


@register_family
class EmbeddingAPIFamily(_FrozenFamily):
    name = "embedding_api"
    features_description = "an OpenAI-compatible /v1/embeddings endpoint's vectors (black box)"

    def instantiate(self, config) -> nn.Module:
        self._no_head(config)
        return APIEncoder(config.name, **config.kwargs)
