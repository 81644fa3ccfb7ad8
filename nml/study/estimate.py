"""What a study still costs, stage by stage, from each stage's own size (``nml study --dry_run``).

A stage's *work* is the samples it processes, read from its own settings: pre-training, the recipe's
epochs x training samples per epoch (its data module and trainer, parsed and never trained: a
25-epoch recipe costs 25/3 of a 3-epoch one); features, the task's training samples x stored
views plus its evaluation samples; tuning, its epochs x the task's training samples. A stage costs
``overhead + rate x work``. The rate of a kind (pre-training per objective, tuning per method) is
this study's own when it has finished stages of that kind (their seconds over their work), else
:data:`DEFAULT_RATES`: the shipped CPU recipes on the 2-core CPU machine. A recipe whose sizes cannot
be read here (remote shards, a GPU config) falls back to the kind's default seconds, and the
summary says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from functools import cache
from pathlib import Path

from nml.study.stages import STAGE_KINDS, PretrainParams, RecipeParams

log = logging.getLogger("nml.study")

# (fixed seconds per stage, seconds per sample of work), measured on the 2-core CPU machine
# (2026-12-05): the quickstart study's stages (supervised flat CNN, 2 heads, 8 views, 30 tuning
# epochs) and the CLIP study's pre-training (tiny open_clip model, 10 epochs at batch 128), each
# kind's seconds beyond the overhead divided by its work.
DEFAULT_RATES: dict[str, tuple[float, float]] = {
    "pretrain/supervised": (4.0, 5.8e-4),
    "pretrain/clip": (4.0, 1.78e-3),
    "random_init": (5.0, 0.0),
    "encoder": (2.0, 0.0),
    "features": (3.0, 3.1e-4),
    "tune/linear": (0.8, 1.3e-5),
    "tune/mlp": (1.0, 6.7e-5),
    "tune/nmtune": (1.5, 1.4e-4),
}


def timing_key(kind: str, params: dict) -> str:
    """Stages whose cost differs: pre-training per objective, tuning per method."""
    field_name = STAGE_KINDS[kind].timing_detail if kind in STAGE_KINDS else None
    detail = params.get(field_name) if field_name else None
    return f"{kind}/{detail}" if detail else kind


@cache
def _split_sizes(root: str, task: str) -> tuple[int, int]:
    """(training samples, evaluation samples: val + every test set) of a benchmark task."""
    from nml.shards.manifest import load_manifest, task_sets
    from nml.shards.spec import resolve_shards

    sets = task_sets(load_manifest(root), task, root)

    def count(spec: str | None) -> int:
        return sum(s.size for s in resolve_shards(spec)) if spec else 0

    return count(sets["train"]), count(sets["val"]) + sum(count(s.shards) for s in sets["test"])


@cache
def _recipe_work(config: str, overrides: str, root: str) -> int:
    """Training samples a recipe sees: epochs (or steps x batch) x samples per epoch, from its
    config and the study's arguments as LightningCLI parses them (no model is built)."""
    from nml.cli.lightning import parse_recipe, recipe_data_module

    cfg = parse_recipe(config, [{"data": {"init_args": {"root": root}}}, json.loads(overrides)])
    data = recipe_data_module(cfg)
    per_epoch = data.train_samples_per_epoch()
    trainer = cfg.trainer
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps) * data.batch_size
    return int(trainer.max_epochs if trainer.max_epochs is not None else 1000) * per_epoch


def stage_work(stage, root: str) -> int | None:
    """The samples a stage processes (see the module docstring); None when they cannot be read."""
    p = stage.params
    try:
        if isinstance(p, PretrainParams):
            return _recipe_work(p.config, json.dumps(p.overrides, sort_keys=True), root)
        if isinstance(p, RecipeParams) or stage.kind == "encoder":  # random init, frozen encoder: no training
            return 0
        if stage.kind == "features":
            train, evaluation = _split_sizes(root, p.task)
            return train * max(1, p.views) + evaluation
        if stage.kind == "tune":
            train, _ = _split_sizes(root, stage.deps[0].params.task)
            return p.epochs * train
    except Exception as e:
        log.info("estimate: the size of %s cannot be read here (%s): default seconds", stage.label, e)
    return None


def estimated_seconds(plan, out: Path, root: str) -> dict:
    """Seconds still to run, per stage ``overhead + rate x work`` (the module docstring)."""
    stages = {s.directory(out).name: s for s in plan.stages}
    spent: dict[str, list[float]] = {}  # key -> [seconds beyond the overhead, work]
    for done in (out / "stages").glob("*/*/done.json") if (out / "stages").is_dir() else []:
        stage = stages.get(done.parent.name)
        if stage is None:
            continue
        key = timing_key(stage.kind, asdict(stage.params))
        work = stage_work(stage, root)
        if not work:
            continue
        record = stage.done(out)  # the one checked reader: a damaged record is named and skipped
        seconds = record.get("seconds") if record is not None else None
        if not isinstance(seconds, int | float):
            continue
        overhead = (DEFAULT_RATES.get(key) or DEFAULT_RATES.get(stage.kind) or (0.0, 0.0))[0]
        acc = spent.setdefault(key, [0.0, 0.0])
        acc[0] += max(0.0, seconds - overhead)
        acc[1] += work
    rates = {k: ((DEFAULT_RATES.get(k) or (0.0,))[0], s / w) for k, (s, w) in spent.items() if w}
    todo: dict[str, int] = {}
    per_stage: dict[str, list[float]] = {}
    total, unsized = 0.0, 0
    for s in plan.stages:
        if s.done(out) is not None:
            continue
        key = timing_key(s.kind, asdict(s.params))
        todo[key] = todo.get(key, 0) + 1
        work = stage_work(s, root)
        rate = rates.get(key) or DEFAULT_RATES.get(key) or DEFAULT_RATES.get(s.kind)
        if work is None or rate is None:
            seconds = STAGE_KINDS[s.kind].default_seconds
            unsized += 1
        else:
            seconds = rate[0] + rate[1] * work
        per_stage.setdefault(key, []).append(seconds)
        total += seconds
    source = "this study's finished stages" if rates else "the defaults of the 2-core CPU machine"
    return {
        "stages_to_run": todo,
        "seconds_per_stage": {k: round(sum(v) / len(v), 1) for k, v in sorted(per_stage.items())},
        "estimated_seconds": round(total, 0),
        "from": f"each stage's work x the rate of {source}"
        + (f"; {unsized} stage(s) of unknown size at the kind's default seconds" if unsized else ""),
    }
