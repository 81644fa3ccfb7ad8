"""Which run directory and checkpoint ``nml fit`` uses, for every logger setting.

One resolver (:func:`locate`) answers "where does this fit's run live" for each way a config can
set its logger:

* a versioned logger (TensorBoard, CSV; ``logger: true`` is Lightning's TensorBoard under
  ``default_root_dir/lightning_logs``) without a ``version``: every fit gets a new ``version_N``;
  ``--ckpt_path last`` resumes the newest one that holds a checkpoint;
* the same with an explicit ``version``: one fixed run directory;
* no logger (``--trainer.logger false``): the fixed directory ``default_root_dir`` (the working
  directory when unset), checkpoints in its ``checkpoints/``;
* any other logger: Lightning's own meaning of ``last`` (nml cannot know its directories).

A ``ModelCheckpoint`` with its own ``dirpath`` fixes where the checkpoints go whatever the logger.

``nml validate | test | predict`` of a checkpoint file log into the run it belongs to
(:func:`evaluate_in_its_run`): no new ``version_N`` beside it.

A fixed run directory is shared by every fit of the same command line, so two guards apply:

* a fresh fit into one that holds checkpoints is refused (it would mix the runs), unless
  ``--overwrite_run true``, which clears the earlier run: its checkpoints, event files, config and
  metrics (with no logger: its checkpoints only; the directory is the working directory);
* ``--ckpt_path last`` resumes only a checkpoint of the same recipe: every checkpoint ``nml fit``
  writes carries the model and data options it was trained with (:class:`RecipeStamp`), and a
  resume whose options differ (another noise rate, another model) is refused naming them.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from nml.models.backbones import check_checkpoint_file

log = logging.getLogger(__name__)

VERSIONED_LOGGERS = ("TensorBoardLogger", "CSVLogger")
RECIPE_KEY = "nml_recipe"  # the checkpoint entry holding the fit's model and data options
# options that change how a run is executed, not what it computes: a resume may change them
EXECUTION_ONLY = (
    "data.init_args.root",  # the same shards may sit elsewhere on the node a requeue lands on
    "data.init_args.loader.num_workers",
    "data.init_args.loader.persistent_workers",
    "data.init_args.loader.pin_memory",
    "data.init_args.loader.eval_batch_size",
    "data.init_args.eval_batch_size",  # cached features: evaluation batches only
)


@dataclass(frozen=True)
class RunPlace:
    """Where a fit's run lives. ``runs``: the candidate run directories, newest first (one when the
    directory is fixed); ``fixed``: every fit of this config uses ``runs[0]``; ``checkpoint_dir``: a
    ModelCheckpoint's own ``dirpath``, else each run's ``checkpoints/``; ``logged``: the run
    directory is the logger's (event files, config and metrics in it), not the working directory."""

    runs: tuple[Path, ...]
    fixed: bool
    checkpoint_dir: Path | None
    logged: bool

    def checkpoints(self, run: Path) -> Path:
        return self.checkpoint_dir or run / "checkpoints"


def _logger_root(fit_cfg):
    """(explicit version or None, ``<save_dir>/<name>``) of a versioned logger; None otherwise."""
    trainer = fit_cfg.trainer
    logger = trainer.get("logger")
    if logger is True:  # Lightning's default: TensorBoard under default_root_dir/lightning_logs
        return None, Path(trainer.get("default_root_dir") or ".") / "lightning_logs"
    if hasattr(logger, "class_path") and logger.class_path.rsplit(".", 1)[-1] in VERSIONED_LOGGERS:
        args = logger.init_args
        return args.get("version"), Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")
    return "", None


def _run_dir(root: Path, version) -> Path:
    """A run directory as the logger names it: a string version as is, a number as version_N."""
    return root / (version if isinstance(version, str) else f"version_{version}")


def _checkpoint_dirpath(fit_cfg) -> Path | None:
    for callback in fit_cfg.trainer.get("callbacks") or []:
        if getattr(callback, "class_path", "").rsplit(".", 1)[-1] == "ModelCheckpoint":
            dirpath = callback.init_args.get("dirpath") if callback.get("init_args") else None
            if dirpath:
                return Path(dirpath)
    return None


def locate(fit_cfg) -> RunPlace | None:
    """Where ``fit_cfg``'s run lives (see the module docstring); None for a logger nml does not know."""
    version, root = _logger_root(fit_cfg)
    dirpath = _checkpoint_dirpath(fit_cfg)
    logger = fit_cfg.trainer.get("logger")
    if root is not None and version is None:
        numbered = [d for d in root.glob("version_*") if d.name[8:].isdigit()]
        runs = sorted(numbered, key=lambda d: int(d.name[8:]), reverse=True)
        return RunPlace(tuple(runs), dirpath is not None, dirpath, True)
    if root is not None:
        return RunPlace((_run_dir(root, version),), True, dirpath, True)
    if logger in (False, None) or logger == []:
        run = Path(fit_cfg.trainer.get("default_root_dir") or ".")
        return RunPlace((run,), True, dirpath, False)
    return None


def _checkpoint_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.ckpt") if p.exists() or p.is_symlink())


def fit_recipe(fit_cfg) -> dict:
    """The model and data options (and the seed) of a fit, flattened to dotted keys, without the
    :data:`EXECUTION_ONLY` ones: what a checkpoint must have been trained with to be resumed."""
    tree = {
        "model": fit_cfg.get("model"),
        "data": fit_cfg.get("data"),
        "seed_everything": fit_cfg.get("seed_everything"),
    }
    plain = json.loads(json.dumps(_as_plain(tree), default=str))
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    walk("", plain)
    return {k: v for k, v in flat.items() if k not in EXECUTION_ONLY}


def _as_plain(value):
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, dict):
        return {k: _as_plain(v) for k, v in value.items()}
    return value


def recipe_differences(saved: dict, now: dict) -> list[str]:
    """``key: saved -> now`` for every option whose value differs between two recipes."""
    keys = sorted(set(saved) | set(now))
    missing = object()
    return [
        f"{k}: {saved.get(k, '(unset)')!r} -> {now.get(k, '(unset)')!r}"
        for k in keys
        if saved.get(k, missing) != now.get(k, missing)
    ]


def check_same_recipe(ckpt: Path, recipe: dict) -> None:
    """Refuse to resume ``ckpt`` when it was trained with other model or data options."""
    import torch

    saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get(RECIPE_KEY)
    if saved is None:
        log.warning(
            "--ckpt_path last: %s records no recipe (not written by nml fit): resumed unchecked", ckpt
        )
        return
    diff = recipe_differences(saved, recipe)
    if diff:
        raise ValueError(
            f"--ckpt_path last: {ckpt} was trained with other options than this command "
            f"({'; '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}): resume it with the options it was "
            "trained with, give this run its own directory (--trainer.logger.init_args.version, or "
            "--trainer.default_root_dir without a logger), or pass --overwrite_run true to start afresh"
        )


def clear_run(place: RunPlace, run: Path) -> int:
    """Delete an earlier run in a fixed directory: everything the logger wrote there (checkpoints,
    event files, config, metrics) or, without a logger, its checkpoints. Returns the count of
    checkpoint files deleted."""
    folder = place.checkpoints(run)
    old = _checkpoint_files(folder)
    for p in old:
        p.unlink()
    if place.logged and run.is_dir():
        for entry in run.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    return len(old)


def continue_last_run(fit_cfg, recipe: dict | None = None) -> None:
    """``--ckpt_path last``: resume the newest checkpoint (by time: a step, epoch or SIGTERM save)
    of this config's run (the newest ``version_N`` that has one, or the fixed run directory),
    logging in that run's directory; with no such checkpoint the run starts from scratch, so the
    same command serves a job and its requeues. A checkpoint of another recipe is refused
    (:func:`check_same_recipe`), or cleared with ``--overwrite_run true``."""
    place = locate(fit_cfg)
    if place is None:
        return  # another logger: Lightning's meaning of "last"
    for run in place.runs:
        ckpts = [p for p in place.checkpoints(run).glob("*.ckpt") if p.exists()]
        if not ckpts:
            continue
        newest = max(ckpts, key=lambda p: p.stat().st_mtime_ns)
        check_checkpoint_file(newest)  # a damaged newest checkpoint is named, not passed over
        if recipe is not None:
            try:
                check_same_recipe(newest, recipe)
            except ValueError:
                if not (place.fixed and fit_cfg.get("overwrite_run")):
                    raise
                n = clear_run(place, run)
                log.warning("--overwrite_run: cleared the earlier run in %s (%d checkpoint(s))", run, n)
                break
        if not place.fixed and hasattr(fit_cfg.trainer.logger, "init_args"):  # log in the resumed run
            fit_cfg.trainer.logger.init_args.version = int(run.name[8:])
        fit_cfg.ckpt_path = str(newest)
        log.info("--ckpt_path last: resuming %s in %s", newest.name, newest.parent)
        return
    fit_cfg.ckpt_path = None
    where = place.checkpoints(place.runs[0]) if place.fixed else _logger_root(fit_cfg)[1]
    log.info("--ckpt_path last: no checkpoint under %s yet; starting the run", where)


def refuse_a_used_run_directory(fit_cfg) -> None:
    """A fresh fit into a fixed run directory (an explicit logger version, or no logger) that holds
    an earlier run's checkpoints would mix the two: its ``last.ckpt`` would outlive this run
    wherever this run saves less (``nml test --ckpt_path RUN`` then tests the old model), and its
    event files would join this run's curves. Refused, naming the directory and the ways on;
    ``--overwrite_run true`` clears the earlier run first (:func:`clear_run`)."""
    place = locate(fit_cfg)
    if place is None or not place.fixed:  # a new version_N each run: nothing to mix
        return
    run = place.runs[0]
    old = _checkpoint_files(place.checkpoints(run))
    if not old:
        return
    if fit_cfg.get("overwrite_run"):
        n = clear_run(place, run)
        log.warning("--overwrite_run: cleared the earlier run in %s (%d checkpoint(s))", run, n)
        return
    raise ValueError(
        f"the run directory {str(place.checkpoint_dir or run)!r} holds checkpoints of an earlier run ({', '.join(p.name for p in old[:4])}"
        f"{' ...' if len(old) > 4 else ''}): resume it with --ckpt_path last, give this run its own "
        "directory (--trainer.logger.init_args.version, or --trainer.default_root_dir without a logger), "
        "or pass --overwrite_run true to delete the earlier run first"
    )


def checkpoint_run(ckpt: Path) -> Path:
    """The run directory a checkpoint file belongs to: the one above its ``checkpoints/`` folder,
    else the folder holding it."""
    folder = Path(ckpt).parent  # as given: relative stays relative, like the dirpath the fit saved
    if folder.name in ("", ".."):
        folder = folder.resolve()
    run = folder.parent if folder.name == "checkpoints" else folder
    return run if run.name not in ("", "..") else run.resolve()


def evaluate_in_its_run(cfg) -> Path | None:
    """``nml validate | test | predict --ckpt_path FILE``: the evaluation logs into the run the
    checkpoint belongs to (:func:`checkpoint_run`) instead of a new ``version_N`` beside it. A
    TensorBoard logger (``logger: true`` included) is pointed at that run directory (its events join
    the run's, in a file of their own); without a logger ``default_root_dir`` is that directory. Any
    other logger is left as configured. Returns the run directory, or None when nothing changed."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt or not Path(ckpt).is_file():
        return None
    run = checkpoint_run(Path(ckpt))
    logger = cfg.trainer.get("logger")
    if logger is False or logger == []:
        cfg.trainer.default_root_dir = str(run)
        return run
    tensorboard = "lightning.pytorch.loggers.TensorBoardLogger"
    if logger is True:
        logger = {"class_path": tensorboard, "init_args": {"default_hp_metric": False}}
    elif getattr(logger, "class_path", "").rsplit(".", 1)[-1] == "TensorBoardLogger":
        logger = {"class_path": logger.class_path, "init_args": _as_plain(logger.get("init_args") or {})}
    else:
        return None
    logger["init_args"].update(save_dir=str(run.parent), name="", version=run.name)
    from jsonargparse import dict_to_namespace

    cfg.trainer.logger = dict_to_namespace(logger)
    return run


class RecipeStamp(Callback):
    """Writes the fit's recipe (:func:`fit_recipe`) into every checkpoint, so that ``--ckpt_path
    last`` can tell its own run's checkpoints from another command's."""

    def __init__(self, recipe: dict) -> None:
        self.recipe = recipe

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RECIPE_KEY] = dict(self.recipe)
