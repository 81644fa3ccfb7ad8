"""Frozen features of a downstream task's splits: the function behind ``nml features`` and the
study's feature stage (one code path for both)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("nml.features")


def extract_task_features(
    backbone: str | dict,
    out: str,
    data: str = "glyphs_heldout",
    root: str | None = None,
    views: int = 0,
    batch_size: int = 256,
    num_workers: int = 2,
    seed: int = 0,
    device: str = "auto",
    limit: int | None = None,
    test_sets: list[str] | None = None,
) -> dict:
    """Extract frozen features of a downstream task's splits into a feature cache for CachedFeatures
    (``nml features`` is :func:`features_command`; the study's feature stage calls this). Returns
    ``{out, feature_dim, splits}``.

    Args:
        backbone: An ``nml export`` directory, or a factory dict (JSON) {library, name, pretrained}.
        out: Output directory.
        data: A task of the benchmark at ``root`` (``glyphs_heldout``, ``mnist`` ...), or a YAML file
            with a data module (a tune config's ``data:`` section, or class_path / init_args).
        root: Benchmark directory for a task name (default: $NML_DATA or data/embedded).
        views: Augmented views of the training split to store (0: eval transform only).
        batch_size: Images per forward pass.
        num_workers: Data loading workers.
        seed: Seeds the augmented views.
        device: ``cpu``, ``cuda``, ``cuda:1`` ... or ``auto``.
        limit: At most this many samples per split (the first in shard order; default: all).
        test_sets: Only these test sets of the task's suite (default: all of them).
    """
    import torch

    from nml.features.extract import extract_features
    from nml.models.backbones import create_backbone

    if views < 0:
        raise ValueError(f"--views: expected >= 0, got {views}")
    model = create_backbone(backbone)
    meta = model.export_meta
    dm = task_data_module(data, root, batch_size, num_workers)
    if test_sets is not None:
        have = [s.name for s in dm.test_sets]
        unknown = sorted(set(test_sets) - set(have))
        if unknown:
            raise ValueError(f"--test_sets: {unknown} not in the test suite of {data!r}: {have}")
        dm.test_sets = [s for s in dm.test_sets if s.name in test_sets]
    dm.match_preprocessing(*model.preprocessing(), source=model.config.name, crop_pct=model.crop_pct())
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    provenance = (
        {k: meta.get(k) for k in ("backbone", "noise", "weights_sha256", "checkpoint")}
        | {"export": str(backbone)}
        if meta is not None
        else {"backbone": model.config.to_dict()}
    )
    result = extract_features(model, dm, out, views, seed, device, provenance, limit)
    return {"out": str(out), "feature_dim": result["feature_dim"], "splits": result["splits"]}


@dataclass(frozen=True)
class ExtractionLoader:
    """How ``nml features`` reads the splits (``--data.loader.*``, as in ``nml fit``).

    Args:
        eval_batch_size: Samples per forward pass.
        num_workers: Data loading workers.
    """

    eval_batch_size: int = 256
    num_workers: int = 2


@dataclass(frozen=True)
class TaskData:
    """What ``nml features`` extracts, spelled as ``nml fit`` spells its data: ``--data TASK_OR_YAML``
    (a task of the benchmark, or a YAML with a data module), ``--data.root``, ``--data.loader.*``.

    Args:
        source: A task of the benchmark at ``root`` (``glyphs_heldout``, ``mnist`` ...), or a YAML
            file with a data module (a tune config's ``data:`` section, or class_path / init_args).
        root: Benchmark directory (default: $NML_DATA or data/embedded; for text $NML_TEXT_DATA or
            data/embedded_text); overrides a YAML's own.
        loader: Batch size and workers of the extraction.
    """

    source: str = "glyphs_heldout"
    root: str | None = None
    loader: ExtractionLoader = field(default_factory=ExtractionLoader)


def features_command(
    backbone: str | dict,
    out: str,
    data: TaskData = TaskData(),
    views: int = 0,
    seed: int = 0,
    device: str = "auto",
    limit: int | None = None,
    test_sets: list[str] | None = None,
) -> dict:
    """Extract frozen features of a downstream task's splits into a feature cache for CachedFeatures.

    Writes ``OUT/features.json`` and, per split (``train``, ``val``, ``test/<name>``),
    ``features.npy`` (N, D; eval transform), ``labels.npy``, ``keys.txt`` and, for the training split
    with ``--views K``, ``views.npy`` (N, K, D; augmented views). Tune on it with
    ``nml fit --config tune_nmtune.yaml --data data/features.yaml --data.init_args.root OUT``.
    Returns ``{out, feature_dim, splits}``.

    Args:
        backbone: An ``nml export`` directory, or a factory dict (JSON) {library, name, pretrained}.
        out: Output directory.
        data: The task: ``--data mnist`` or ``--data tune_nmtune.yaml``, with ``--data.root DIR``,
            ``--data.loader.eval_batch_size N``, ``--data.loader.num_workers N``.
        views: Augmented views of the training split to store (0: eval transform only).
        seed: Seeds the augmented views.
        device: ``cpu``, ``cuda``, ``cuda:1`` ... or ``auto``.
        limit: At most this many samples per split (the first in shard order; default: all).
        test_sets: Only these test sets of the task's suite (default: all of them).
    """
    return extract_task_features(
        backbone,
        out,
        data.source,
        data.root,
        views,
        data.loader.eval_batch_size,
        data.loader.num_workers,
        seed,
        device,
        limit,
        test_sets,
    )


def task_data_module(data: str, root: str | None, batch_size: int, num_workers: int):
    """A ShardDataModule from a task name, or from a YAML file holding a data module (a tune config's
    ``data:`` section, or ``class_path`` / ``init_args``), read with ``batch_size`` and
    ``num_workers`` for extraction."""
    from nml.data.modules import ShardDataModule, benchmark_data_module

    loading = {"eval_batch_size": batch_size, "num_workers": num_workers, "persistent_workers": False}
    if not str(data).endswith((".yaml", ".yml")):
        return benchmark_data_module(root, data, loader=loading)
    import yaml
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    path = Path(data)
    log.info("data module from %s", path.resolve())
    section = yaml.safe_load(path.read_text()) or {}
    section = section.get("data", section)
    if not isinstance(section, dict) or "class_path" not in section:
        raise ValueError(
            f"{path}: expected a data module (class_path / init_args), or a config with a data: section"
        )
    init = dict(section.get("init_args") or {})
    if root is not None:
        init["root"] = root
    init["loader"] = {**(init.get("loader") or {}), **loading}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    try:
        cfg = parser.parse_object({"data": {"class_path": section["class_path"], "init_args": init}})
    except argparse.ArgumentError as e:  # the line that names the option, not jsonargparse's union dump
        lines = [ln.strip().removeprefix("- ") for ln in str(e).splitlines()]
        reason = next((ln for ln in lines if "not accepted" in ln or ln.startswith("Expected")), lines[0])
        raise ValueError(f"{path}: the data module {section['class_path']}: {reason}") from None
    dm = parser.instantiate_classes(cfg).data
    if not isinstance(dm, ShardDataModule):
        raise ValueError(
            f"{path}: nml features reads image or text shards; {type(dm).__name__} is not a ShardDataModule"
        )
    return dm
