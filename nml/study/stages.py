"""What each stage of a study does, with the library's own functions (no subprocess strings).

* ``pretrain``: ``nml fit`` of the objective's recipe (LightningCLI, in process) with the cell's
  noise rate and seed, then ``nml export`` of the final epoch's weights; records the per-epoch
  training metrics (``train/memorised`` ...) for the memorisation curves.
* ``random_init``: the same recipe's model, untrained (seeded), exported.
* ``features``: ``nml features`` of one task, then the spectrum (SVE, LSVR, p1, effective rank) of
  the frozen features of every test split.
* ``tune``: ``DownstreamTuning`` on the cached features (``CachedFeatures``), then its test suite.

Every stage writes under its own directory and logs TensorBoard runs into ``OUT/tensorboard``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from lightning.pytorch import Callback

log = logging.getLogger("nml.study")


def _tensorboard(out: Path, name: str, version: str):
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(str(out / "tensorboard"), name=name, version=version, default_hp_metric=False)


def _recipe_cli(params: dict, root: str, extra: list[str]):
    """The recipe's LightningCLI, instantiated (model, data module, trainer) but not run."""
    from lightning.pytorch import LightningDataModule, LightningModule

    from nml.cli.lightning import NMLCLI
    from nml.cli.main import resolve_config_args

    args = ["--config", params["config"], "--seed_everything", str(params["seed"]), "--data.init_args.root", root,
            "--data.init_args.seed", str(params["seed"]), *extra, *params["args"]]  # fmt: skip
    argv, sys.argv = sys.argv, sys.argv[:1]  # the study's own argv is not the recipe's
    try:
        return NMLCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,
            run=False,
            args=resolve_config_args(args),
        )
    finally:
        sys.argv = argv


class EpochMetrics(Callback):
    """Records the epoch-level training metrics (``train/<name>_epoch``) of every epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def _record(self, trainer) -> None:
        row = {k.removesuffix("_epoch"): float(v) for k, v in trainer.callback_metrics.items()
               if k.startswith("train/") and k.endswith("_epoch") and not v.isnan()}  # fmt: skip
        if row and (not self.epochs or {k: v for k, v in self.epochs[-1].items() if k != "epoch"} != row):
            self.epochs.append({"epoch": len(self.epochs), **row})

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # the previous epoch's values are final now
        if trainer.current_epoch > 0:
            self._record(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._record(trainer)


def pretrain(params: dict, directory: Path, out: Path, root: str) -> dict:
    from nml.models.export import export_checkpoint

    noise = ["--data.init_args.noise.rate", str(params["noise_rate"])]
    cli = _recipe_cli(params, root, noise)
    trainer = cli.trainer
    trainer.logger = _tensorboard(out, "pretrain", directory.name)
    recorder = EpochMetrics()
    trainer.callbacks.append(recorder)
    trainer.fit(cli.model, cli.datamodule)
    final = directory / "final.ckpt"
    trainer.save_checkpoint(
        final, weights_only=False
    )  # the final epoch's weights, whatever the checkpoint callbacks kept
    meta = export_checkpoint(final, directory / "export")
    final.unlink()  # the export (and the run's own checkpoints in TensorBoard's directory) remain
    last = recorder.epochs[-1] if recorder.epochs else {}
    return {
        "export": str(directory / "export"),
        "epochs": recorder.epochs,
        "final": {k: v for k, v in last.items() if k != "epoch"},
        "val": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "feature_dim": meta["feature_dim"],
    }


def random_init(params: dict, directory: Path, root: str) -> dict:
    from nml.models.export import write_export

    cli = _recipe_cli(params, root, [])
    module, dm = cli.model, cli.datamodule  # built, never trained: the seeded initial weights
    if module.backbone is None:
        raise ValueError(
            f"{params['config']}: the model builds its backbone only in setup(); give num_classes"
        )
    meta = write_export(module.backbone, directory / "export", data=dm.describe())
    return {
        "export": str(directory / "export"),
        "epochs": [],
        "final": {},
        "feature_dim": meta["feature_dim"],
    }


def features(params: dict, backbone: dict, directory: Path, root: str) -> dict:
    import numpy as np

    from nml.features.cache import iter_feature_chunks, read_cache_meta
    from nml.features.task import extract_task_features
    from nml.metrics.spectrum import SpectrumAccumulator

    cache = directory / "cache"
    extract_task_features(
        backbone=backbone["export"],
        out=str(cache),
        data=params["task"],
        root=root,
        views=params["views"],
        batch_size=params["batch_size"],
        num_workers=params["num_workers"],
        seed=0,
        limit=params["limit"],
        test_sets=params.get("test_sets"),
    )
    spectra, values = {}, {}
    for split, info in read_cache_meta(cache)["splits"].items():
        if not split.startswith("test/"):
            continue
        acc = SpectrumAccumulator(normalize_rows=True, center=True)
        for chunk in iter_feature_chunks(str(cache / split)):
            acc.update(chunk)
        res = acc.compute(k=5, sync=False)
        name = split.split("/", 1)[1]
        values[name] = res.pop("singular_values")
        spectra[name] = {"group": info.get("group", "id"), **{k: float(v) for k, v in res.items()}}
    np.savez(directory / "singular_values.npz", **values)
    return {"cache": str(cache), "spectra": spectra}


def tune(params: dict, feats: dict, directory: Path, out: Path) -> dict:
    from lightning.pytorch import Trainer, seed_everything

    from nml.features.datamodule import CachedFeatures
    from nml.models.tuning import DownstreamTuning

    seed_everything(params["seed"], workers=True)
    dm = CachedFeatures(
        root=feats["cache"],
        batch_size=params["batch_size"],
        seed=params["seed"],
        view_noise=params["view_noise"],
    )
    model = DownstreamTuning(params["method"])
    trainer = Trainer(
        max_epochs=params["epochs"],
        accelerator="auto",
        devices=1,
        logger=_tensorboard(out, "tune", directory.name),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(model, dm)
    train = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
    trainer.test(model, dm, verbose=False)  # the last epoch's weights: what is reported
    test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    (directory / "metrics.json").write_text(json.dumps(test, indent=1) + "\n")
    return {"test": test, "train": train, "epoch": trainer.current_epoch}
