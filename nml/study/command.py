"""``nml study`` and ``nml report``. Light at import (read for ``--help``): torch loads in the stages."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from nml.study.config import (
    DEFAULT_RECIPES,
    Benchmark,
    Encoder,
    Features,
    Grid,
    Launcher,
    Recipe,
    TaskPlan,
    Tuning,
    validate,
)

log = logging.getLogger("nml.study")
IDENTITY = "study.json"


def study(
    name: str = "study",
    grid: Grid | None = None,
    tasks: dict[str, TaskPlan] | None = None,
    pretrain: dict[str, Recipe] | None = None,
    encoders: dict[str, Encoder] | None = None,
    benchmark: Benchmark | None = None,
    features: Features | None = None,
    tuning: Tuning | None = None,
    launcher: Launcher | None = None,
    out: str | None = None,
    dry_run: bool = False,
) -> dict:
    """Run the noisy-model-learning study: pre-train -> export -> features -> tune -> test -> spectra.

    A grid of objective x noise rate x pre-training seed (plus a random-init floor per objective);
    per cell, frozen features of every task, tuned with each task's methods on the cached features
    and tested on the task's ID/OOD suite; spectra of the frozen features on every test set. Every
    stage is cached by a hash of its settings and inputs: an interrupted study resumes, a changed
    setting re-runs only what depends on it. Writes results.csv, memorisation.csv, report.md, PNG
    figures and one TensorBoard root (OUT/tensorboard) with a run per stage.

    Args:
        name: The study's name: a study directory belongs to one name (another is refused).
        grid: Objectives, noise rates, seeds, random-init floor.
        tasks: Downstream tasks of the benchmark, each with its tuning methods and test sets.
        pretrain: A recipe (nml fit config + options) per objective.
        encoders: Frozen encoders tuned as black boxes beside the grid (name -> {backbone: factory
            dict}): a sentence-embedding model, an embedding API ...; one replicate per grid seed.
        benchmark: The embedded benchmark (built first when missing).
        features: Feature extraction settings.
        tuning: Tuning settings (epochs, seeds, batch size).
        launcher: Where the stages run: here (local, the default), or as SLURM jobs through submitit
            (``--launcher.kind slurm --launcher.partition P``; stage dependencies as job dependencies).
        out: Study directory (default: runs/study/<name>).
        dry_run: Print the plan (cells, stages, what is cached, estimated time) and stop.
    """

    from nml.study.claims import plan_sha256
    from nml.study.estimate import estimated_seconds
    from nml.study.plan import build_plan

    grid, benchmark = grid or Grid(), benchmark or Benchmark()
    features, tuning = features or Features(), tuning or Tuning()
    recipes = {**DEFAULT_RECIPES, **(pretrain or {})}
    tasks, encoders = tasks or {}, encoders or {}
    out_dir = Path(out or f"runs/study/{name}")
    root = str(Path(benchmark.root or _default_root(benchmark)).resolve())
    manifest = Path(root) / "manifest.json"
    _check_identity(out_dir, name)
    task_names = _task_names(manifest)
    if task_names is None:  # the embedded benchmark, to be built: its task table is known
        task_names = _built_task_names(benchmark)
    validate(grid, recipes, tasks, task_names, _test_sets(manifest, tasks), encoders)
    if not manifest.is_file():
        if dry_run:
            log.info("the benchmark at %s is missing: a run builds it first (%s)", root, benchmark.size)
        else:
            _build_benchmark(root, benchmark)
            validate(grid, recipes, tasks, _task_names(manifest), _test_sets(manifest, tasks), encoders)
    from nml.checksums import file_sha256

    sha = file_sha256(manifest) if manifest.is_file() else "to-be-built"
    plan = build_plan(grid, recipes, tasks, features, tuning, sha, encoders)
    summary = {
        "name": name,
        "out": str(out_dir),
        "benchmark": root,
        "cells": [c.label for c in plan.cells],
        "plan_sha256": plan_sha256(_study_plan(grid, tasks)),
        "stages": len(plan.stages),
        "cached": sum(1 for s in plan.stages if s.done(out_dir) is not None),
        **estimated_seconds(plan, out_dir, root),
    }
    if dry_run:
        for s in plan.stages:
            state = "cached" if s.done(out_dir) is not None else "to run"
            sys.stderr.write(f"[study] {s.kind:<11} {s.label:<48} {s.key}  {state}\n")
        return summary
    from nml.study.lock import StudyLocked, study_lock

    try:
        with study_lock(out_dir):
            return _run(
                name,
                out_dir,
                root,
                plan,
                summary,
                grid,
                tasks,
                recipes,
                encoders,
                benchmark,
                features,
                tuning,
                launcher,
            )
    except StudyLocked as e:
        raise SystemExit(str(e)) from None


def _run(
    name, out_dir, root, plan, summary, grid, tasks, recipes, encoders, benchmark, features, tuning, launcher
) -> dict:
    """Run the plan (the caller holds the study directory's lock); write results and the report."""
    import time

    from nml.study.report import build_report
    from nml.study.results import write_plan, write_results
    from nml.study.runner import StudyFailed, StudyStopped, execute_jobs, raise_stopped

    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "grid": asdict(grid),
        "tasks": {k: asdict(v) for k, v in tasks.items()},
        "pretrain": {k: asdict(v) for k, v in recipes.items()},
        "encoders": {k: asdict(v) for k, v in encoders.items()},
        "benchmark": asdict(benchmark),
        "features": asdict(features),
        "tuning": asdict(tuning),
    }
    done = summary["cached"]
    when = "before the first stage" if not done else f"when {done} of {len(plan.stages)} stages had finished"
    plan_sha = write_plan(out_dir, _study_plan(grid, tasks), when)
    (out_dir / IDENTITY).write_text(
        json.dumps({"name": name, "plan_sha256": plan_sha, "settings": settings}, indent=1) + "\n"
    )
    t0 = time.perf_counter()
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, raise_stopped) if on_main_thread else None
    try:
        launcher = launcher or Launcher()
        if launcher.kind == "local":
            counts = _execute_here(plan, out_dir, root, launcher)
        else:
            counts = execute_jobs(plan, out_dir.resolve(), root, launcher)
    except StudyFailed as e:
        raise SystemExit(str(e)) from None
    except StudyStopped as e:  # a scheduler stopped us: not success, and a re-run resumes
        where = f" {e.where}" if e.where else ""
        log.error("nml study: stopped by SIGTERM%s; finished stages are kept: run it again to resume", where)
        from nml.data.loading import stop_worker_processes

        stop_worker_processes()  # the interrupted stage's loader workers: else the exit waits on them
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    write_results(plan, out_dir, tasks)
    stage_seconds = sum(float((s.done(out_dir) or {}).get("seconds", 0.0)) for s in plan.stages)
    header = _header(name, settings, time.perf_counter() - t0, counts, stage_seconds)
    identity = {"name": name, "plan_sha256": plan_sha, "settings": settings, "header": header}
    (out_dir / IDENTITY).write_text(json.dumps(identity, indent=1) + "\n")
    report = build_report(out_dir, title=name, extra=header)
    return {
        **summary,
        **counts,
        "seconds": round(time.perf_counter() - t0, 1),
        "results": str(out_dir / "results.csv"),
        "report": report["report"],
        "claims": report["claims"],
    }


def _study_plan(grid: Grid, tasks: dict) -> dict:
    """The plan ``plan.json`` holds: the grid, each task's methods, the declared analysis."""
    from nml.study.claims import study_plan

    return study_plan(asdict(grid), {k: list(v.methods) for k, v in tasks.items()})


def report(study_dir: str) -> dict:
    """Rebuild report.md and the figures of a study directory from its results.csv.

    Args:
        study_dir: A directory written by ``nml study``.
    """
    from nml.study.report import build_report

    ident = Path(study_dir) / IDENTITY
    meta = json.loads(ident.read_text()) if ident.is_file() else {}
    return build_report(study_dir, title=meta.get("name", Path(study_dir).name), extra=meta.get("header", ""))


def _check_identity(out: Path, name: str) -> None:
    ident = out / IDENTITY
    if ident.is_file():
        theirs = json.loads(ident.read_text()).get("name")
        if theirs != name:
            raise SystemExit(
                f"{str(out)!r} holds the study {theirs!r}, not {name!r}: give another --out "
                "(or the same name to resume / update that study)"
            )


def _test_sets(manifest: Path, tasks: dict) -> dict[str, list[str]] | None:
    """Each known task's test suite (set names), read from the benchmark's manifest when it exists."""
    if not manifest.is_file():
        return None
    from nml.shards.manifest import load_manifest, task_names, task_sets

    data, known = load_manifest(manifest.parent), set(task_names(load_manifest(manifest.parent)))
    return {t: [s.name for s in task_sets(data, t, manifest.parent)["test"]] for t in tasks if t in known}


def _task_names(manifest: Path) -> list[str] | None:
    if not manifest.is_file():
        return None
    from nml.shards.manifest import load_manifest, task_names

    return [t for t in task_names(load_manifest(manifest.parent)) if t != "pretraining"]


def _execute_here(plan, out_dir: Path, root: str, launcher: Launcher) -> dict:
    """The local launcher: one stage after another in this process, or side by side in worker
    processes (:mod:`nml.study.parallel`) when more than one may run at once."""
    import torch

    from nml.data.loading import usable_cores
    from nml.study.runner import execute

    cores = max(usable_cores(), launcher.parallel or 1)
    at_once = launcher.stages_at_once(cores, gpu=torch.cuda.is_available())
    if at_once == 1 or len(plan.stages) < 2:
        return execute(plan, out_dir, root)
    from nml.study.parallel import execute_parallel

    return execute_parallel(plan, out_dir, root, at_once, cores)


def _default_root(b: Benchmark) -> str:
    from nml.data.modalities import get_modality

    return get_modality(b.modality).default_root()


def _built_task_names(b: Benchmark) -> list[str]:
    """The tasks a build of the benchmark will have (it is not there yet)."""
    from nml.data.modalities import get_modality

    return get_modality(b.modality).task_names()


def _build_benchmark(root: str, b: Benchmark) -> None:
    from nml.data.modalities import get_modality

    log.info("[study] building the %s benchmark (%s) at %s", b.modality, b.size, root)
    get_modality(b.modality).build(
        root, seed=b.seed, size=b.size, fonts=b.fonts, progress=sys.stderr.isatty()
    )


def _encoders_text(encoders: dict) -> str:
    if not encoders:
        return ""
    named = [
        f"{k} ({v['backbone'].get('library')}: {v['backbone'].get('name')})" for k, v in encoders.items()
    ]
    return "; frozen encoders " + ", ".join(named)


def _header(name: str, settings: dict, seconds: float, counts: dict, stage_seconds: float) -> str:
    g = settings["grid"]
    return (
        f"Study `{name}`: objectives {g['objectives']}, noise rates {g['noise_rates']}, pre-training seeds "
        f"{g['seeds']}{', plus a random-init floor' if g['random_init'] else ''}"
        + _encoders_text(settings.get("encoders") or {})
        + "; tasks "
        + ", ".join(f"{k} ({'/'.join(v['methods'])})" for k, v in settings["tasks"].items())
        + "; tuning "
        f"{settings['tuning']['epochs']} epochs x seeds {settings['tuning']['seeds']} on cached features "
        f"(the last epoch is reported). This run: {counts['ran']} stages ran, {counts['cached']} cached, "
        f"{seconds / 60:.1f} min; the stages' own times sum to {stage_seconds / 60:.1f} min, cached or not. "
        "Pre-training recipes: "
        + "; ".join(
            f"{k}: `{v['config']}`" + (f" with `{json.dumps(v['overrides'])}`" if v.get("overrides") else "")
            for k, v in settings["pretrain"].items()
            if k in g["objectives"]
        )
        + "."
    )
