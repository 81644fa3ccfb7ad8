"""``nml export``: a trained encoder as a plain state dict plus a JSON the tuning stage reads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nml import __version__
from nml.checksums import file_sha256
from nml.models.backbones import (
    EXPORT_META,
    EXPORT_WEIGHTS,
    Backbone,
    BackboneConfig,
    create_backbone,
    read_checkpoint,
    resolve_checkpoint,
)


def export_checkpoint(ckpt: str | Path, out: str | Path) -> dict:
    ckpt = resolve_checkpoint(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint {str(ckpt)!r} not found")
    state = read_checkpoint(ckpt)
    hp = state.get("hyper_parameters") or {}
    info = state.get("nml") or {}
    if "backbone" not in info or "state_dict" not in state:
        raise ValueError(
            f"{ckpt}: not an nml pre-training checkpoint (no 'nml' provenance entry); "
            "export checkpoints written by SupervisedPretraining or ContrastivePretraining"
        )
    backbone = create_backbone(BackboneConfig(**info["backbone"]))
    prefix = "backbone.model."
    weights = {
        k[len(prefix) :].replace("_orig_mod.", ""): v
        for k, v in state["state_dict"].items()
        if k.startswith(prefix)
    }
    backbone.model.load_state_dict(weights)
    return write_export(
        backbone,
        out,
        data=info.get("data") or {},
        # a classifier's classes; CLIP's num_classes is its labelled validation set's, not what it trained on
        pretraining_classes=backbone.family.pretraining_classes(backbone.config, hp),
        checkpoint={
            "path": str(ckpt.resolve()),
            "epoch": state.get("epoch"),
            "global_step": state.get("global_step"),
            "sha256": file_sha256(ckpt),
        },
    )


def write_export(
    backbone: Backbone,
    out: str | Path,
    data: dict | None = None,
    pretraining_classes: int | None = None,
    checkpoint: dict | None = None,
) -> dict:
    """Write ``backbone`` as an export directory (``encoder.pt`` + ``encoder.json``); ``data`` is the
    training data description (image_size, mean, std, noise ...) of the pre-training run."""
    config, data = backbone.config, data or {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(backbone.encoder_state_dict(), out / EXPORT_WEIGHTS)
    meta = {
        "format": "nml-encoder/1",
        "backbone": {k: v for k, v in config.to_dict().items() if k != "num_classes"},
        "feature_dim": backbone.feature_dim,
        "features": backbone.family.features_description,
        "image_size": data.get("image_size"),
        "mean": data.get("mean"),
        "std": data.get("std"),
        "crop_pct": data.get("crop_pct"),
        "noise": data.get("noise"),
        "data": data,
        "pretraining_classes": pretraining_classes,
        "checkpoint": checkpoint,
        "weights_sha256": file_sha256(out / EXPORT_WEIGHTS),
        "nml_version": __version__,
    }
    (out / EXPORT_META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta
