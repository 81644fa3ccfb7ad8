"""LightningCLI entry for ``nml fit | validate | test | predict`` (subclass mode for model and data).

Any ``LightningModule`` / ``LightningDataModule`` importable by class path can be named in a config
(``model.class_path``, ``data.class_path``); nml's own modules and callbacks are used by their
short names once imported. Configs are saved next to the logs, overwriting on re-runs.

``nml fit`` prints its result as JSON on stdout (:func:`fit_summary`: run directory, checkpoints,
last metrics, wall time) and one line on stderr. ``nml test`` adds
:class:`~nml.callbacks.metrics_report.TestReport` (table on stderr, ``metrics.json`` next to the
checkpoint) and prints the same metrics as JSON on stdout.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI

# imported so that configs can name nml's classes by their short names
import nml.callbacks.spectrum
import nml.data.modules
import nml.features.datamodule
import nml.models.contrastive
import nml.models.supervised
import nml.models.tuning  # noqa: F401
from nml.callbacks.metrics_report import TestReport
from nml.callbacks.predictions import PredictionWriter
from nml.callbacks.preemption import CheckpointOnSigterm
from nml.callbacks.progress import progress_callback
from nml.callbacks.throughput import TrainingThroughput
from nml.cli.config_args import LIGHTNING_SUBCOMMANDS, resolve_config_args
from nml.cli.options import EXACT, suggesting
from nml.cli.run_directory import (
    RecipeStamp,
    continue_last_run,
    evaluate_in_its_run,
    fit_recipe,
    refuse_a_used_run_directory,
)
from nml.models.backbones import check_checkpoint_file, resolve_checkpoint

log = logging.getLogger(__name__)


def add_default_callbacks(trainer: Trainer) -> Trainer:
    """What ``nml fit`` / ``nml test`` add to a trainer: Lightning's progress bar replaced (bars on
    stderr on a terminal, plain lines every ``log_every_n_steps`` otherwise: stdout is for JSON; with
    ``rich`` installed, Lightning's Rich bar and model-summary table, which print on stdout, too), a
    checkpoint saved on SIGTERM (:class:`~nml.callbacks.preemption.CheckpointOnSigterm`) and, with a
    logger, the learning rate (``LearningRateMonitor``, ``train/lr/*``) and the throughput
    (:class:`~nml.callbacks.throughput.TrainingThroughput`). A config that lists its own instance of
    one of these keeps it."""
    from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, RichProgressBar

    for i, callback in enumerate(trainer.callbacks):
        if type(callback) in (TQDMProgressBar, RichProgressBar):  # Lightning's default (Rich: when installed)
            trainer.callbacks[i] = progress_callback(trainer.log_every_n_steps or 50)
        elif type(callback) is RichModelSummary:  # Rich prints its table on stdout; ModelSummary logs it
            trainer.callbacks[i] = ModelSummary(max_depth=callback._max_depth)
    defaults = [CheckpointOnSigterm()]
    if trainer.loggers:
        defaults += [LearningRateMonitor(logging_interval="step"), TrainingThroughput()]
    for callback in defaults:
        if not any(isinstance(c, type(callback)) for c in trainer.callbacks):
            trainer.callbacks.append(callback)
    return trainer


class NMLCLI(LightningCLI):
    """LightningCLI with nml's defaults and the ``nml test`` report.

    ``overrides``: nested dicts (``{"data": {"init_args": {"noise": {"rate": 0.3}}}}``) applied in
    order on top of the parsed arguments, as a config file given after them would be: how a caller
    in Python (a study stage) sets a recipe's options, typed and checked by the same parser."""

    def __init__(self, *args, overrides: Sequence[Mapping] = (), **kwargs):
        self._overrides = list(overrides)
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        for override in self._overrides:
            self.config = parser.parse_object(dict(override), namespace=self.config)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            "--overwrite_run",
            type=bool,
            default=False,
            help="fit: clear an earlier run in the same fixed run directory (an explicit logger version, "
            "or no logger) before training, instead of refusing to mix the two runs: its checkpoints, "
            "event files, config and metrics",
        )

    def _parse_ckpt_path(self) -> None:
        """Lightning replaces the config's model with the one a ``--ckpt_path`` checkpoint records
        (its class and hyper-parameters); when that is another class than the config names (a CLIP
        checkpoint under a supervised config), the run says so instead of scoring it silently."""
        sub = self.config.get("subcommand")
        model = self.config[sub].get("model") if sub else None
        before = getattr(model, "class_path", None)
        super()._parse_ckpt_path()
        after = getattr(self.config[sub].get("model"), "class_path", None) if sub else None
        if before and after and before.rsplit(".", 1)[-1] != after.rsplit(".", 1)[-1]:
            log.warning(
                "--ckpt_path %s holds a %s; the config names %s: the checkpoint's model and "
                "hyper-parameters are what runs",
                self.config[sub].get("ckpt_path"),
                after.rsplit(".", 1)[-1],
                before.rsplit(".", 1)[-1],
            )

    def before_instantiate_classes(self) -> None:
        self._recipe = None
        if self.subcommand in ("validate", "test", "predict"):
            if evaluate_in_its_run(self.config[self.subcommand]) is not None:
                # beside the run's own config.yaml, which it must not replace
                self.save_config_kwargs = {
                    **self.save_config_kwargs,
                    "config_filename": f"config.{self.subcommand}.yaml",
                }
        if self.subcommand != "fit":
            return
        self._recipe = fit_recipe(self.config.fit)
        if self.config.fit.get("ckpt_path") == "last":
            continue_last_run(self.config.fit, self._recipe)
        elif self.config.fit.get("ckpt_path") is None:
            refuse_a_used_run_directory(self.config.fit)

    def instantiate_trainer(self, **kwargs):
        """The trainer, with nml's default callbacks (:func:`add_default_callbacks`) and, for
        ``nml fit``, the recipe written into every checkpoint (:class:`RecipeStamp`)."""
        trainer = add_default_callbacks(super().instantiate_trainer(**kwargs))
        if getattr(self, "_recipe", None) is not None:
            trainer.callbacks.append(RecipeStamp(self._recipe))
        self._new_run_dir = (
            None if trainer.log_dir is None or Path(trainer.log_dir).exists() else Path(trainer.log_dir)
        )
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except Exception:  # (SIGTERM is a SystemExit: a preempted run keeps its directory)
            self._remove_empty_run()
            raise

    def _remove_empty_run(self) -> None:
        """A run that failed before its first step, in a directory it created, leaves nothing worth
        keeping (a config.yaml, an empty event file): the directory is removed, not left as an
        empty ``version_N`` beside the real runs."""
        run, trainer = self._new_run_dir, self.trainer
        if run is None or not trainer.is_global_zero or not run.is_dir() or trainer.global_step > 0:
            return
        if any(run.rglob("*.ckpt")) or any(run.rglob("metrics.json")):
            return
        shutil.rmtree(run, ignore_errors=True)
        log.info("removed %s: the run failed before its first step", run)

    def before_fit(self) -> None:
        self._fit_started = time.perf_counter()

    def after_fit(self) -> None:
        """``nml fit``'s result: one JSON object on stdout (:func:`fit_summary`) and one line on stderr."""
        # on every rank: trainer.log_dir is a broadcast under DDP
        summary = fit_summary(self.trainer, time.perf_counter() - self._fit_started)
        if not self.trainer.is_global_zero:
            return
        json.dump(summary, sys.stdout, indent=1)
        sys.stdout.write("\n")
        shown = ", ".join(
            f"{k} {v:.4g}" for k, v in summary["metrics"].items() if k.startswith("val/") and v is not None
        )
        log.info(
            "fit: %d epoch(s), %d steps in %.0f s%s; last checkpoint %s",
            summary["epochs"],
            summary["global_step"],
            summary["seconds"],
            f"; {shown}" if shown else "",
            summary["checkpoints"]["last"],
        )

    def before_test(self) -> None:
        self.config_init[self.subcommand]["verbose"] = (
            False  # our table instead of Lightning's (stdout is JSON)
        )
        if not any(isinstance(c, TestReport) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(TestReport())

    def before_validate(self) -> None:
        self.config_init[self.subcommand]["verbose"] = False  # Lightning's table is on stdout: JSON there

    def after_validate(self) -> None:
        """``nml validate``'s result: the checkpoint and its ``val/`` metrics as JSON on stdout."""
        metrics = {
            k: float(v) for k, v in sorted(self.trainer.callback_metrics.items()) if k.startswith("val/")
        }
        if self.trainer.is_global_zero:
            json.dump({"ckpt_path": self.trainer.ckpt_path, "metrics": metrics}, sys.stdout, indent=1)
            sys.stdout.write("\n")
            log.info("validate: %s", ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def before_predict(self) -> None:
        # written batch by batch to CSV (PredictionWriter), not gathered in memory
        self.config_init[self.subcommand]["return_predictions"] = False
        if not any(isinstance(c, PredictionWriter) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())

    def after_predict(self) -> None:
        writer = next(c for c in self.trainer.callbacks if isinstance(c, PredictionWriter))
        if self.trainer.is_global_zero and writer.report is not None:
            json.dump(writer.report, sys.stdout, indent=1)
            sys.stdout.write("\n")

    def after_test(self) -> None:
        report = next(c for c in self.trainer.callbacks if isinstance(c, TestReport)).report
        if self.trainer.is_global_zero and report is not None:
            json.dump(report, sys.stdout, indent=1)
            sys.stdout.write("\n")


def fit_summary(trainer: Trainer, seconds: float) -> dict:
    """What a finished fit reports: its run directory, its best and last checkpoints (None where no
    callback keeps one), the epochs and steps it trained, the last logged metrics and the wall time."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    best = next((c.best_model_path for c in checkpoints if c.monitor and c.best_model_path), None)
    last = next((c.last_model_path for c in checkpoints if c.last_model_path), None)
    if last is None:  # no save_last: the newest file any checkpoint callback wrote
        written = [p for c in checkpoints for p in (c.best_model_path, *c.best_k_models) if p]
        last = max(written, key=lambda p: Path(p).stat().st_mtime_ns, default=None) if written else None
    metrics = {
        k: None if math.isnan(float(v)) else float(v)  # JSON has no NaN (a metric with no samples yet)
        for k, v in sorted(trainer.callback_metrics.items())
        if getattr(v, "numel", lambda: 1)() == 1
    }
    return {
        "run_dir": trainer.log_dir,
        "checkpoints": {"best": best or None, "last": last},
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "metrics": metrics,
        "seconds": round(seconds, 1),
    }


CKPT_KEYWORDS = ("last", "best", "hpc", "registry")  # Lightning's special --ckpt_path values


def check_ckpt_args(argv: Sequence[str]) -> list[str]:
    """``argv`` with a ``--ckpt_path`` run directory replaced by its ``last.ckpt``; a checkpoint
    that is missing or not a checkpoint is named before anything is built."""
    out = list(argv)
    for i, a in enumerate(out):
        option, eq, value = a.partition("=")
        if option != "--ckpt_path":
            continue
        value = value if eq else (out[i + 1] if i + 1 < len(out) else "")
        special = value in CKPT_KEYWORDS or value.lower() in ("null", "none") or "://" in value
        if not value or special:
            continue
        path = str(resolve_checkpoint(value))
        check_checkpoint_file(path)
        if eq:
            out[i] = f"--ckpt_path={path}"
        else:
            out[i + 1] = path
    return out


NULLS = ("null", "none", "None", "Null", "NULL")


def nulls_as_fragments(argv: Sequence[str]) -> list[str]:
    """``argv`` with every ``--data.<group>.<key> null`` (or ``--model...``: an option two levels
    below the class's arguments, ``init_args.`` optional) rewritten as the equivalent fragment
    ``--data '{"init_args": {"<group>": {"<key>": null}}}'``. jsonargparse refuses a null given that
    deep on the command line for an optional value (``Expected a <class 'int'>``) although it takes
    it from YAML; the fragment is merged into the class's arguments in place, in order, as the
    option would have been."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        option, eq, value = a.partition("=")
        separate = not eq and a.startswith("--") and i + 1 < len(argv)
        if separate:
            value = argv[i + 1]
        section, _, rest = option.removeprefix("--").partition(".")
        path = rest.removeprefix("init_args.").split(".") if rest else []
        if section in ("data", "model") and len(path) >= 2 and (eq or separate) and value in NULLS:
            fragment: dict = {}
            node = fragment
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = None
            out.append(f"--{section}={json.dumps({'init_args': fragment})}")
            i += 1 + separate
            continue
        out.append(a)
        i += 1
    return out


class _ParseOnlyCLI(NMLCLI):
    """Parses and validates a config, builds nothing (what a study's plan reads from a recipe)."""

    def instantiate_classes(self) -> None:
        pass

    def _set_seed(self) -> None:
        pass  # reading a recipe seeds no global RNG (the stage that runs it does)


def build_recipe(config: str, overrides: Sequence[Mapping] = (), cli_class: type[NMLCLI] = NMLCLI) -> NMLCLI:
    """A recipe (a config path or a shipped config's bare name) as ``nml fit --config`` reads it,
    ``overrides`` applied in order (:class:`NMLCLI`), its model, data module and trainer built but
    not run: how a study stage runs a recipe."""
    return build_cli(
        ["--config", config], run=False, save_config=False, cli_class=cli_class, overrides=overrides
    )


def parse_recipe(config: str, overrides: Sequence[Mapping] = ()):
    """A recipe's config (a jsonargparse Namespace) as ``nml fit`` parses it, ``overrides``
    applied, with no model, data module or trainer built."""
    return build_recipe(config, overrides, cli_class=_ParseOnlyCLI).config


def recipe_data_module(config) -> LightningDataModule:
    """The data module of a parsed recipe config, alone (no model, no trainer)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    return parser.instantiate_classes(parser.parse_object({"data": config.data.as_dict()})).data


def build_cli(
    argv: Sequence[str],
    run: bool = True,
    save_config: bool = True,
    cli_class: type[NMLCLI] = NMLCLI,
    overrides: Sequence[Mapping] = (),
) -> NMLCLI:
    """The one way nml builds its LightningCLI (``nml fit | validate | test | predict``, and the
    study's pre-training stages with ``run=False``): bare config names resolved to the shipped
    configs, a ``--ckpt_path`` checked before anything is built; subclass mode for model and
    data; exact option names; errors raised, not printed; ``overrides`` (nested dicts) applied
    after ``argv``."""
    from nml.quiet import quiet_lightning

    quiet_lightning()  # Lightning's own handler, now that Lightning is imported
    argv = nulls_as_fragments(resolve_config_args(argv))
    if run:
        argv = check_ckpt_args(argv)
    saving = {"save_config_kwargs": {"overwrite": True}} if save_config else {"save_config_callback": None}
    if not run:  # built from inside another command (a study stage, a plan): its argv is not ours
        saved, sys.argv = sys.argv, sys.argv[:1]
        try:
            return _construct(cli_class, argv, run, {**saving, "overrides": overrides})
        finally:
            sys.argv = saved
    return _construct(cli_class, argv, run, {**saving, "overrides": overrides})


def _construct(cli_class: type[NMLCLI], argv: Sequence[str], run: bool, saving: dict) -> NMLCLI:
    from lightning.pytorch.cli import LightningArgumentParser

    return cli_class(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_class=suggesting(LightningArgumentParser),
        parser_kwargs={
            "exit_on_error": False,
            **EXACT,
            **{c: {"exit_on_error": False, **EXACT} for c in LIGHTNING_SUBCOMMANDS},
        },
        args=list(argv),
        run=run,
        **saving,
    )


def run_lightning(argv: Sequence[str]) -> NMLCLI:
    """``nml fit | validate | test | predict``: :func:`build_cli` run on ``argv``."""
    return build_cli(argv)
