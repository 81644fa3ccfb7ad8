"""The one backbone factory: pre-training, tuning, feature extraction and spectra all build here.

:func:`create_backbone` is the one public builder. A backbone is a timm model (by name), an open_clip
model (by name, or by a custom model-config dict so that tiny CPU towers work), or an nml export
(``nml export``). Weights come only from local files (a state dict, a timm/open_clip checkpoint, or
an nml export directory): nothing is fetched from a hub. Methods are named for what they return:
:meth:`Backbone.features` (the feature extractor used everywhere later) and :meth:`Backbone.logits`
(timm classifiers):

* timm: pooled pre-logits (``forward_head(forward_features(x), pre_logits=True)``), D =
  ``head_hidden_size`` (or ``num_features``);
* open_clip: ``encode_image(x)``, unnormalised, D = the embedding dimension.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

log = logging.getLogger(__name__)
EXPORT_WEIGHTS, EXPORT_META = "encoder.pt", "encoder.json"


@dataclass
class BackboneConfig:
    """A JSON-serialisable description of a backbone (stored in checkpoints and exports)."""

    library: Literal["timm", "open_clip"]
    name: str
    model_cfg: dict | None = None  # open_clip custom config: embed_dim, vision_cfg, text_cfg
    num_classes: int = 0  # timm classifier head (0: features only)
    kwargs: dict = field(default_factory=dict)  # extra create_model keyword arguments

    def to_dict(self) -> dict:
        return asdict(self)


class Backbone(nn.Module):
    """A built model plus what nml needs to know about it.

    ``features(x) -> (B, D)`` (also what calling the module returns), ``logits(x) -> (B, C)`` for
    timm models with a classifier, ``preprocessing()`` the input it expects, and ``export_meta``
    (the ``encoder.json`` of an export it was loaded from, else None).
    """

    def __init__(self, config: BackboneConfig, model: nn.Module, export_meta: dict | None = None):
        super().__init__()
        self.config, self.model, self.export_meta = config, model, export_meta
        if config.library == "timm":
            self.feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        else:  # open_clip: the embedding dimension (a timm image tower has no output_dim)
            self.feature_dim = int(getattr(model.visual, "output_dim", 0) or _open_clip_embed_dim(config))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D): timm pooled pre-logits; open_clip ``encode_image`` (unnormalised)."""
        if self.config.library == "timm":
            return self.model.forward_head(self.model.forward_features(images), pre_logits=True)
        return self.model.encode_image(images, normalize=False)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C) class logits of a timm model built with ``num_classes`` > 0."""
        if self.config.library != "timm" or not self.config.num_classes:
            raise ValueError(
                f"backbone {self.config.name!r} has no classifier head (library {self.config.library}, "
                f"num_classes {self.config.num_classes}): use features()"
            )
        return self.model(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)

    def preprocessing(self) -> tuple[int | None, list | None, list | None]:
        """(image size, mean, std) the backbone expects: an export's recorded training data, else the
        architecture's defaults (timm ``pretrained_cfg``; open_clip its image size and the OpenAI
        statistics)."""
        if self.export_meta is not None:
            return (
                self.export_meta.get("image_size"),
                self.export_meta.get("mean"),
                self.export_meta.get("std"),
            )
        if self.config.library == "timm":
            cfg = getattr(self.model, "pretrained_cfg", {}) or {}
            size = cfg.get("input_size")
            return (size[-1] if size else None), cfg.get("mean"), cfg.get("std")
        from nml.data.transforms import default_normalization

        mean, std = default_normalization("open_clip")
        size = self.model.visual.image_size
        return (size[0] if isinstance(size, tuple | list) else size), list(mean), list(std)

    def crop_pct(self) -> float | None:
        """The evaluation centre-crop fraction the architecture was trained with (timm's
        ``pretrained_cfg``: 0.95 for resnet50, 0.875 for resnet50.tv_in1k), or None (open_clip:
        resize and crop to the image size)."""
        if self.export_meta is not None:
            return self.export_meta.get("crop_pct")
        if self.config.library == "timm":
            return (getattr(self.model, "pretrained_cfg", {}) or {}).get("crop_pct")
        return None

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights without the timm classifier head (what ``nml export`` writes)."""
        state = self.model.state_dict()
        if self.config.library == "timm" and self.config.num_classes:
            head = {f"{n}.{p}" for n in _classifier_names(self.model) for p in ("weight", "bias")}
            state = {k: v for k, v in state.items() if k not in head}
        return state


def create_backbone(
    spec: str | Path | dict | BackboneConfig,
    num_classes: int = 0,
    pretrained: str | Path | None = None,
    partial: bool = False,
) -> Backbone:
    """The one backbone factory.

    Args:
        spec: An ``nml export`` directory; a dict ``{library, name, model_cfg, pretrained, partial,
            kwargs}`` (``kwargs`` go to ``timm.create_model`` / the open_clip model); or a
            :class:`BackboneConfig` (random init, as stored in checkpoints).
        num_classes: timm classifier head (0: features only). Not for exports, which are encoders.
        pretrained: Initial weights: a local state dict, checkpoint or export directory (overrides a
            ``pretrained`` key of the dict). Every tensor of the model must be in it with its shape
            (a timm classifier head excepted: it is new when ``num_classes`` differs), else an error
            lists what differs.
        partial: Load what matches and log the list of what was skipped instead (a dict's
            ``partial`` key works too).
    """
    if isinstance(spec, str | Path):
        if num_classes or pretrained:
            raise ValueError(
                f"backbone {str(spec)!r}: an export is an encoder; num_classes/pretrained do not apply"
            )
        return _load_export(Path(spec))
    if isinstance(spec, BackboneConfig):
        config = spec if not num_classes else BackboneConfig(**{**spec.to_dict(), "num_classes": num_classes})
    elif isinstance(spec, dict):
        unknown = set(spec) - {"library", "name", "model_cfg", "pretrained", "partial", "kwargs"}
        if unknown:
            raise ValueError(
                f"backbone: unknown keys {sorted(unknown)}; expected library, name, model_cfg, pretrained, "
                "partial, kwargs"
            )
        partial = partial or bool(spec.get("partial"))
        library, name, model_cfg = spec.get("library", "timm"), spec.get("name"), spec.get("model_cfg")
        if model_cfg is not None and library != "open_clip":
            raise ValueError("backbone: model_cfg is for open_clip custom models")
        if not name and model_cfg is None:
            raise ValueError(f"backbone: give a model name (library {library})")
        config = BackboneConfig(
            library, name or "custom", model_cfg, num_classes, dict(spec.get("kwargs") or {})
        )
        pretrained = pretrained or spec.get("pretrained")
    else:
        raise TypeError(
            f"backbone: expected an export directory, a dict or a BackboneConfig, got {type(spec).__name__}"
        )
    model = _instantiate(config)
    if pretrained:
        _load_into(model, load_state(pretrained), str(pretrained), partial)
    return Backbone(config, model)


def _classifier_names(model: nn.Module) -> list[str]:
    names = model.pretrained_cfg.get("classifier", "fc") if hasattr(model, "pretrained_cfg") else "fc"
    return [names] if isinstance(names, str) else list(names)


def _instantiate(config: BackboneConfig) -> nn.Module:
    if config.library == "timm":
        import timm

        import nml.models.flat_cnn  # noqa: F401  (registers nml_flat_cnn with timm)

        if config.name not in timm.list_models(config.name):
            raise ValueError(f"backbone: timm has no model {config.name!r} (see timm.list_models())")
        return timm.create_model(
            config.name, pretrained=False, num_classes=config.num_classes, **config.kwargs
        )
    if config.library == "open_clip":
        import open_clip
        from open_clip.model import CLIP, CustomTextCLIP

        if config.model_cfg is not None:  # as open_clip.create_model builds a config
            cfg = dict(config.model_cfg)
            custom_text = cfg.pop("custom_text", False) or "hf_model_name" in (cfg.get("text_cfg") or {})
            return (CustomTextCLIP if custom_text else CLIP)(**cfg, **config.kwargs)
        if config.name not in open_clip.list_models():
            raise ValueError(
                f"backbone: open_clip has no model {config.name!r}; use one of open_clip.list_models() "
                "or give model_cfg (embed_dim, vision_cfg, text_cfg) for a custom one"
            )
        return open_clip.create_model(config.name, pretrained=None, **config.kwargs)
    raise ValueError(f"backbone library: expected 'timm' or 'open_clip', got {config.library!r}")


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` (never unpickles code) with an error that names the file."""
    import pickle
    import zipfile

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError) as e:
        raise ValueError(
            f"{str(path)!r} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200] or 'empty'})"
        ) from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (``runs/<name>/<version>``): its ``checkpoints/last.ckpt``
    (or ``last.ckpt``), the final epoch of that run."""
    p = Path(path)
    if not p.is_dir():
        return p
    for candidate in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
        if candidate.is_file():
            log.info("checkpoint of run %s: %s", p, candidate)
            return candidate
    raise FileNotFoundError(f"run directory {str(path)!r} has no checkpoints/last.ckpt (nor last.ckpt)")


def check_checkpoint_file(path: str | Path) -> None:
    """Fail early, naming ``path``, when it is not a checkpoint ``torch.save`` / Lightning could have
    written (a zip archive): before a run spends minutes setting up to load it."""
    import zipfile

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    if not zipfile.is_zipfile(p):
        size = p.stat().st_size
        raise ValueError(
            f"{str(path)!r} is not a PyTorch checkpoint ({size} bytes, "
            + ("empty" if size == 0 else f"starts with {p.open('rb').read(8)!r}")
            + "): expected a .ckpt/.pt file written by Lightning or torch.save"
        )


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file (``weights_only``: never unpickles code)."""
    p = Path(path)
    if p.is_dir():
        p = p / EXPORT_WEIGHTS
    if not p.is_file():
        raise FileNotFoundError(
            f"pretrained weights {str(path)!r} not found: give a local state dict, checkpoint or nml export "
            "directory (nml never downloads weights)"
        )
    state = read_checkpoint(p)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _open_clip_embed_dim(config: BackboneConfig) -> int:
    import open_clip

    cfg = config.model_cfg or open_clip.get_model_config(config.name) or {}
    return int(config.kwargs.get("embed_dim") or cfg["embed_dim"])


def _strip_prefix(state: dict[str, torch.Tensor], own: dict) -> dict[str, torch.Tensor]:
    """Keys as the model names them: without DDP's ``module.`` or an nml/Lightning checkpoint's
    ``backbone.model.`` (whichever makes more of them match)."""
    best = state
    for prefix in ("module.", "backbone.model.", "model."):
        cut = {k.removeprefix(prefix): v for k, v in state.items()}
        if sum(k in own for k in cut) > sum(k in own for k in best):
            best = cut
    return best


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, partial: bool = False) -> None:
    """Load ``state`` into ``model``: all of it (a timm classifier head excepted), or with
    ``partial`` what matches, listing what was skipped."""
    own = model.state_dict()
    state = _strip_prefix(state, own)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    kept = {k: v for k, v in state.items() if k in own and k not in mismatched}
    missing = [k for k in own if k not in kept]
    unexpected = [k for k in state if k not in own]
    if not kept:
        raise ValueError(f"{source}: none of its {len(state)} tensors match the model's parameter names")
    head = {f"{n}.{p}" for n in _classifier_names(model) for p in ("weight", "bias")}
    problems = {
        "missing": [k for k in missing if k not in head],
        "unexpected": [k for k in unexpected if k not in head],
        "shape-mismatched": [
            f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched if k not in head
        ],
    }
    listing = "; ".join(f"{len(v)} {name}: {', '.join(v[:8])}{' ...' if len(v) > 8 else ''}"
                        for name, v in problems.items() if v)  # fmt: skip
    if listing and not partial:
        raise ValueError(
            f"{source} does not fit the model ({listing}): another architecture? Load what matches with "
            "partial: true (the skipped tensors keep their random init)"
        )
    model.load_state_dict(kept, strict=False)
    log.log(
        logging.WARNING if listing else logging.INFO,
        "loaded %d of the model's %d tensors from %s%s",
        len(kept),
        len(own),
        source,
        f"; skipped ({listing})" if listing else "",
    )


def _load_export(d: Path) -> Backbone:
    """A backbone from an ``nml export`` directory, its ``encoder.json`` as ``export_meta``."""
    meta_path = d / EXPORT_META
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"backbone {str(d)!r}: not an nml export directory (no {EXPORT_META}); export a checkpoint "
            "with `nml export`, or give {library, name, pretrained: <local weights>}"
        )
    meta = json.loads(meta_path.read_text())
    cfg = meta["backbone"]
    config = BackboneConfig(cfg["library"], cfg["name"], cfg.get("model_cfg"), 0, cfg.get("kwargs") or {})
    model = _instantiate(config)
    state = load_state(d / EXPORT_WEIGHTS)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k.split(".")[0] not in _classifier_names(model)]:
        raise ValueError(
            f"{d}: weights do not fit {cfg['name']} (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return Backbone(config, model, meta)
