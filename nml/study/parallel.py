"""Stages side by side: the local launcher's worker processes.

``launcher.parallel`` worker processes (spawned, each in its own process group) run the stages of
the plan whose dependencies are done, as many at once as the cores allow: a stage starts while the
torch threads of the running stages plus its own fit in the machine's usable cores (a stage alone
always runs). Each stage computes with its own declared threads (part of its key), so its numbers
are those of a sequential run, to the last digit, whatever ran beside it. The progress lines, the
failure isolation and the stop / resume behaviour are the sequential runner's
(:mod:`nml.study.runner`): a SIGTERM to the study (or to its process group) is forwarded once to
every worker that is running a stage; each stage stops as it would alone (a pre-training stage saves
its current step), the study waits for them, then exits 143, and a re-run resumes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from nml.study.plan import Plan, Stage
from nml.study.runner import (
    StageProgress,
    StudyStopped,
    raise_if_failed,
    raise_stopped,
    run_one,
    skipped_for_a_failed_dependency,
    stop_if_signalled,
    stopped_types,
)

log = logging.getLogger("nml.study")


def stage_threads(stage: Stage) -> int:
    """The torch threads a stage computes with (its parameters' ``threads``; 1 for a stage that
    declares none)."""
    return int(getattr(stage.params, "threads", None) or 1)


def _worker_init(verbose: bool, start_method: str) -> None:
    """A worker process: its own process group (a SIGTERM to the study's group reaches the study,
    which forwards it once to each worker), deaf to SIGTERM between stages, and the terminal of the
    ``nml study`` process (nml's log handler, quiet as it is: :mod:`nml.quiet`)."""
    from nml.logs import setup_logging
    from nml.quiet import quiet_console

    os.setpgrp()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # a spawned process inherits "spawn" as its default start method: the stages' loader workers
    # would each start a fresh interpreter (seconds per loader, 15x a features stage); they start
    # as in the `nml study` process instead (fork on Linux)
    multiprocessing.set_start_method(start_method, force=True)
    setup_logging()
    quiet_console(verbose)


def _run_in_worker(stage: Stage, out: Path, root: str) -> float:
    """One stage in a worker process (:func:`~nml.study.runner.run_one`), under the study's SIGTERM
    handler; its wall seconds."""
    signal.signal(signal.SIGTERM, raise_stopped)
    try:
        result = run_one(stage, out, root)
        stop_if_signalled(f"{stage.kind} {stage.label}")
    except stopped_types():
        from nml.data.loading import stop_worker_processes

        stop_worker_processes()  # the interrupted stage's loader workers (they ignore SIGTERM)
        raise StudyStopped(f"in stage {stage.kind} {stage.label}") from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # between stages (or stopping): nothing to stop
    return result["seconds"]


def execute_parallel(plan: Plan, out: Path, root: str, parallel: int, cores: int) -> dict:
    """Run every stage not yet done in up to ``parallel`` worker processes, within ``cores`` threads
    (the module docstring); returns counts (ran, cached, failed, skipped)."""
    finished = {s.label for s in plan.stages if s.done(out) is not None}
    pending = [s for s in plan.stages if s.label not in finished]
    counts = {"ran": 0, "cached": len(plan.stages) - len(pending), "failed": 0, "skipped": 0}
    failed: dict[str, str] = {}
    progress, started = StageProgress(pending, parallel), {}
    # "[study] (i/n) kind label": i is the stage's place in the plan, as in the sequential runner
    places = {
        s.label: f"[study] ({i}/{len(plan.stages)}) {s.kind} {s.label}" for i, s in enumerate(plan.stages, 1)
    }
    for stage in plan.stages:
        if stage.label in finished:
            log.info("%s: cached", places[stage.label])
    log.info(
        "[study] %d stage(s) to run, up to %d at once in %d threads (%d cached)",
        len(pending),
        parallel,
        cores,
        counts["cached"],
    )
    pool = _pool(parallel)
    running: dict[Future, Stage] = {}
    try:
        while pending or running:
            for stage in list(pending):
                if skipped_for_a_failed_dependency(stage, failed, counts, places[stage.label], progress):
                    pending.remove(stage)
                    continue
                if len(running) >= parallel or not all(d.label in finished for d in stage.deps):
                    continue
                busy = sum(stage_threads(s) for s in running.values())
                if running and busy + stage_threads(stage) > cores:
                    continue  # a later stage with fewer threads may fit
                pending.remove(stage)
                started[stage.label] = time.perf_counter()
                try:
                    future = pool.submit(_run_in_worker, stage, out, root)
                except BrokenProcessPool:  # a worker died (its stage is reported failed): a new pool
                    pool.shutdown(wait=False)
                    pool = _pool(parallel)
                    future = pool.submit(_run_in_worker, stage, out, root)
                running[future] = stage
            if not running:
                if pending:  # every pending stage waits on one that neither runs nor failed
                    raise RuntimeError(f"no stage can start: {[s.label for s in pending]}")
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                stage = running.pop(future)
                _collect(future, stage, out, counts, failed, finished, progress, started, places[stage.label])
    except StudyStopped:  # a SIGTERM to the study: stop every running stage as it would stop alone
        where = ", ".join(f"{s.kind} {s.label}" for s in running.values())
        log.error("[study] SIGTERM: stopping %d running stage(s): %s", len(running), where or "none")
        _stop_workers(pool, running)
        raise StudyStopped(f"in stage(s) {where}" if where else None) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    raise_if_failed(counts, failed)
    return counts


def _pool(workers: int) -> ProcessPoolExecutor:
    from nml.quiet import is_verbose

    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(is_verbose(), multiprocessing.get_start_method()),
    )


def _collect(
    future: Future, stage: Stage, out: Path, counts, failed, finished, progress, started, where
) -> None:
    """A finished stage's outcome: done (its progress line), stopped or failed (isolated)."""
    try:
        seconds = future.result()
    except StudyStopped:  # a SIGTERM reached the worker alone (not the study): the study stops too
        raise StudyStopped(f"in stage {stage.kind} {stage.label}") from None
    except Exception as e:  # the traceback is in its log.txt (run_one)
        log_file = stage.directory(out) / "log.txt"
        if isinstance(e, BrokenProcessPool):  # killed (out of memory, kill -9): no traceback to keep
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with log_file.open("a") as f:
                f.write("its worker process died (killed? out of memory?)\n")
        counts["failed"] += 1
        progress.dropped(stage)
        failed[stage.label] = str(log_file)
        log.error(
            "%s: FAILED after %.1f s (log: %s)", where, time.perf_counter() - started[stage.label], log_file
        )
        return
    counts["ran"] += 1
    finished.add(stage.label)
    log.info("%s: done in %.1f s (%s)", where, seconds, progress.finished(stage, seconds))


STOP_GRACE_S = 120.0  # a stopping stage's time to finish its step and save it, then it is killed


def _stop_workers(pool: ProcessPoolExecutor, running: dict[Future, Stage]) -> None:
    """Forward one SIGTERM to every worker process, then wait for the running stages to stop (a
    pre-training stage saves its current step first); a worker still running after
    :data:`STOP_GRACE_S` is killed with its loader workers (its process group): no stage is left."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already: a second SIGTERM changes nothing
    workers = list(pool._processes or {})  # the executor's own record of its worker processes
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for future in list(running):
        try:
            future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            log.error("[study] %s did not stop in %.0f s: killed", running[future].label, STOP_GRACE_S)
        except BaseException:  # stopped (no done.json) or finished: either way it is over
            pass
    if any(not f.done() for f in running):
        for pid in workers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
