"""What each stage of a study does, with the library's own functions (no subprocess strings), and
the one table of stage kinds (:data:`STAGE_KINDS`: kind -> typed parameters, function, default
seconds for ``--dry_run``).

* ``pretrain``: the objective's recipe through nml's LightningCLI builder (in process) with the
  cell's noise rate and seed and the study's ``overrides``, then ``nml export`` of the final epoch's weights; records the
  per-epoch training metrics (``train/memorised`` ...) for the memorisation curves.
* ``random_init``: the same recipe's model, untrained (seeded), exported.
* ``encoder``: a frozen encoder of the study's ``encoders`` (no training), built once to check it.
* ``features``: frozen features of one task (the function behind ``nml features``), then the
  spectrum (SVE, LSVR, p1, effective rank) of the frozen features of every test split.
* ``tune``: the method's tuning recipe (``tune_<method>.yaml``) through the same builder, on the
  cached features (``CachedFeatures``) with the study's ``tuning.recipes`` options, then its test suite.

A stage hands its options to the builder as nested dicts (:func:`nml.cli.lightning.build_recipe`),
never as command-line strings, and builds no trainer of its own.

Every stage writes under its own directory and logs TensorBoard runs into ``OUT/tensorboard``.
Light at import: torch and Lightning load inside the stage functions.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("nml.study")


@dataclass(frozen=True)
class StageContext:
    """Where a stage runs: its own output directory, the study directory, the benchmark root."""

    directory: Path
    out: Path
    root: str

    def recorded(self, path: Path) -> str:
        """``path`` as ``done.json`` records it: relative to the study directory (a moved or copied
        study stays self-contained; ``Stage.done`` resolves it back)."""
        return str(Path(path).relative_to(self.out))


@dataclass
class RecipeParams:
    """A backbone of the grid: the objective's recipe (its text is part of the key) and the seed."""

    objective: str
    seed: int
    config: str
    config_text: str
    overrides: dict  # the study's options of the recipe (a nested dict, as in the config)
    files: dict[str, str]  # the other files it reads (extra configs, class names ...): their sha256
    benchmark: str  # the benchmark manifest's sha256
    threads: int = 1  # torch's threads on a CPU (nml.study.config.THREADS)


@dataclass
class PretrainParams(RecipeParams):
    noise_rate: float = 0.0


@dataclass
class EncoderParams:
    """A frozen encoder of the study's ``encoders``: its factory dict is its identity."""

    name: str
    backbone: dict


@dataclass
class FeaturesParams:
    """Frozen features of one task: the study's ``features`` settings plus the task."""

    task: str
    test_sets: list[str] | None
    views: int
    batch_size: int
    num_workers: int
    limit: int | None
    seed: int  # seeds the stored augmented views
    threads: int = 1


@dataclass
class TuneParams:
    """A tuning run on cached features: the method's recipe (its text is part of the key), the
    study's ``tuning`` settings and the tuning seed."""

    method: str
    seed: int
    epochs: int
    batch_size: int
    view_noise: float
    config: str  # the method's tuning recipe (tune_<method>.yaml)
    config_text: str
    threads: int = 2
    # the method's options (tuning.recipes); in the key only when set, so a study that sets none
    # keeps the keys (and the cached stages) it had
    model: dict = field(default_factory=dict, metadata={"key_when_set": True})


def _tensorboard(out: Path, name: str, version: str) -> dict:
    """The trainer's logger, as a config: the study's TensorBoard directory, one run per stage."""
    return {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {
            "save_dir": str(out / "tensorboard"),
            "name": name,
            "version": version,
            "default_hp_metric": False,
        },
    }


def _recipe(params: RecipeParams, root: str, ctx: StageContext, noise_rate: float | None = None):
    """The objective's recipe through nml's CLI builder (model, data module, trainer built, not
    run): the cell's seed, data root and noise rate, then the study's ``overrides`` of the recipe."""
    from nml.cli.lightning import build_recipe

    data: dict[str, Any] = {"root": root, "seed": params.seed}
    if noise_rate is not None:
        data["noise"] = {"rate": noise_rate}
    cell = {
        "seed_everything": params.seed,
        "data": {"init_args": data},
        "trainer": {"logger": _tensorboard(ctx.out, "pretrain", ctx.directory.name)},
    }
    return build_recipe(params.config, [cell, params.overrides])


def _earlier_attempt(checkpoints: Path) -> str | None:
    """The newest checkpoint of an earlier, stopped attempt of this stage (its SIGTERM save or its
    newest step checkpoint), which the fit resumes: the stage's directory is named by its key, so
    the attempt had the same recipe, data and seed, and the resumed fit is bit-exact with an
    uninterrupted one. A damaged newest checkpoint (a kill during its write) is named and the
    attempt's checkpoints are removed: the stage starts over."""
    from nml.models.backbones import check_checkpoint_file

    found = [p for p in checkpoints.glob("*.ckpt") if p.exists()] if checkpoints.is_dir() else []
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime_ns)
    try:
        check_checkpoint_file(newest)
    except ValueError as e:
        log.warning("%s; starting this stage over", e)
        shutil.rmtree(checkpoints)
        return None
    log.warning("resuming this stage's earlier attempt from %s", newest)
    return str(newest)


def pretrain(params: PretrainParams, inputs: list[dict], ctx: StageContext) -> dict:
    from nml.callbacks.epoch_metrics import EpochMetrics
    from nml.models.export import export_checkpoint

    cli = _recipe(params, ctx.root, ctx, params.noise_rate)
    trainer = cli.trainer
    recorder = EpochMetrics()  # stateful: a resumed fit has the epochs before the stop too
    trainer.callbacks.append(recorder)
    resume = _earlier_attempt(Path(trainer.logger.log_dir) / "checkpoints")
    trainer.fit(cli.model, cli.datamodule, ckpt_path=resume)
    final = ctx.directory / "final.ckpt"
    # the final epoch's weights, whatever the checkpoint callbacks kept
    trainer.save_checkpoint(final, weights_only=False)
    meta = export_checkpoint(final, ctx.directory / "export")
    final.unlink()  # the export (and the run's own checkpoints in TensorBoard's directory) remain
    last = recorder.epochs[-1] if recorder.epochs else {}
    return {
        "export": ctx.recorded(ctx.directory / "export"),
        "epochs": recorder.epochs,
        "final": {k: v for k, v in last.items() if k != "epoch"},
        "val": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "feature_dim": meta["feature_dim"],
    }


def random_init(params: RecipeParams, inputs: list[dict], ctx: StageContext) -> dict:
    from nml.models.export import write_export

    cli = _recipe(params, ctx.root, ctx)
    module, dm = cli.model, cli.datamodule  # built, never trained: the seeded initial weights
    if module.backbone is None:
        raise ValueError(f"{params.config}: the model builds its backbone only in setup(); give num_classes")
    meta = write_export(module.backbone, ctx.directory / "export", data=dm.describe())
    return {
        "export": ctx.recorded(ctx.directory / "export"),
        "epochs": [],
        "final": {},
        "feature_dim": meta["feature_dim"],
    }


def encoder(params: EncoderParams, inputs: list[dict], ctx: StageContext) -> dict:
    """Build the frozen encoder once (a missing package or a bad dict fails here, named) and record it."""
    from nml.models.backbones import create_backbone

    model = create_backbone(params.backbone)
    return {"backbone": params.backbone, "feature_dim": model.feature_dim, "epochs": [], "final": {}}


def features(params: FeaturesParams, inputs: list[dict], ctx: StageContext) -> dict:
    import numpy as np

    from nml.features.cache import iter_feature_chunks, read_cache_meta
    from nml.features.task import extract_task_features
    from nml.metrics.spectrum import SpectrumAccumulator

    cache = ctx.directory / "cache"
    extract_task_features(
        backbone=inputs[0]["export"] if "export" in inputs[0] else inputs[0]["backbone"],
        out=str(cache),
        data=params.task,
        root=ctx.root,
        views=params.views,
        batch_size=params.batch_size,
        num_workers=params.num_workers,
        seed=params.seed,
        limit=params.limit,
        test_sets=params.test_sets,
    )
    spectra, values = {}, {}
    for split, info in read_cache_meta(cache)["splits"].items():
        if not split.startswith("test/"):
            continue
        acc = SpectrumAccumulator(normalize_rows=True, center=True)
        peak = None  # per unit, the largest |feature| over the set: 0 for a dead unit
        for chunk in iter_feature_chunks(str(cache / split)):
            acc.update(chunk)
            m = np.abs(np.asarray(chunk)).max(0)
            peak = m if peak is None else np.maximum(peak, m)
        res = acc.compute(k=5, sync=False)
        name = split.split("/", 1)[1]
        values[name] = res.pop("singular_values")
        spectra[name] = {
            "group": info.get("group", "id"),
            **{k: float(v) for k, v in res.items()},
            "dead_units": float(np.mean(peak == 0)) if peak is not None else 0.0,
        }
    np.savez(ctx.directory / "singular_values.npz", **values)
    return {"cache": ctx.recorded(cache), "spectra": spectra}


# what a study stage changes in a tuning recipe's trainer: no checkpoints (the stage records its
# metrics), no bars (its log is a file), the last epoch validated alone (it is what is reported)
STAGE_TRAINER = {
    "devices": 1,
    "callbacks": [],
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}


def tune(params: TuneParams, inputs: list[dict], ctx: StageContext) -> dict:
    """The method's tuning recipe (``tune_<method>.yaml``) through nml's CLI builder, on the cached
    features of its task, with the study's ``tuning.recipes.<method>`` options of its model."""
    from nml.cli.lightning import build_recipe

    stage = {
        "seed_everything": params.seed,
        "trainer": {
            **STAGE_TRAINER,
            "max_epochs": params.epochs,
            "check_val_every_n_epoch": params.epochs,
            "logger": _tensorboard(ctx.out, "tune", ctx.directory.name),
        },
        "model": {"init_args": {"backbone": None, **params.model}},  # no backbone: the cached features
        "data": {
            "class_path": "nml.features.datamodule.CachedFeatures",
            "init_args": {
                "root": str(inputs[0]["cache"]),
                "batch_size": params.batch_size,
                "seed": params.seed,
                "view_noise": params.view_noise,
            },
        },
    }
    cli = build_recipe(params.config, [stage])
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    trainer.fit(model, dm)
    train = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
    trainer.test(model, dm, verbose=False)  # the last epoch's weights: what is reported
    test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    (ctx.directory / "metrics.json").write_text(json.dumps(test, indent=1) + "\n")
    return {"test": test, "train": train, "epoch": trainer.current_epoch}


@dataclass(frozen=True)
class StageKind:
    """One kind of stage: its typed parameters, what runs it, and its rough CPU seconds (what
    ``--dry_run`` estimates with until the study directory has timings of its own)."""

    params: type
    run: Callable[[Any, list[dict], StageContext], dict]
    default_seconds: float
    timing_detail: str | None = None  # the parameter whose value makes costs differ (per objective ...)


STAGE_KINDS: dict[str, StageKind] = {
    "pretrain": StageKind(PretrainParams, pretrain, 90.0, "objective"),
    "random_init": StageKind(RecipeParams, random_init, 5.0, "objective"),
    "encoder": StageKind(EncoderParams, encoder, 2.0),
    "features": StageKind(FeaturesParams, features, 10.0),
    "tune": StageKind(TuneParams, tune, 4.0, "method"),
}
