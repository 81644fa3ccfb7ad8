"""Runs a study's stage graph: cached stages are skipped, failures are isolated and reported.

A stage runs only when its ``done.json`` is missing; it writes its outputs, then ``done.json``
(atomically), so an interrupted study resumes where it stopped. A stage that fails writes its
traceback to its ``log.txt``; the stages that depend on it are skipped, the others still run, and the
study exits non-zero naming the failed stages and their logs. One progress line per stage on stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from nml.study.config import Launcher
from nml.study.plan import Plan, Stage

log = logging.getLogger("nml.study")


class StudyFailed(RuntimeError):
    """Some stages failed; the others' outputs are intact."""


class StudyStopped(BaseException):
    """SIGTERM stopped the study (a scheduler's stop, ``timeout``, ``kill``): not a failure of the
    stage it stopped in, and not success. A BaseException, like Lightning's ``SIGTERMException``,
    so that no ``except Exception`` swallows it."""

    def __init__(self, where: str | None = None):
        super().__init__(where)
        self.where = where  # "in stage KIND LABEL", or "after stage KIND LABEL (finished)"


_signalled = False  # a SIGTERM arrived while a Lightning run was handling the signal


def raise_stopped(signum, frame) -> None:
    """SIGTERM handler of ``nml study``. Outside a Lightning run it stops the study at once. Inside
    one, Lightning calls it from its own handler: the run stops at the end of the current step and
    saves it (:class:`~nml.callbacks.preemption.CheckpointOnSigterm`), which a re-run resumes, so
    raising here (in the middle of the step, before that save) would lose it. The signal is noted
    instead and the study stops when the run returns (:func:`stop_if_signalled`)."""
    global _signalled
    if signal.getsignal(signal.SIGTERM) is not raise_stopped:  # composed into Lightning's handler
        _signalled = True
        return
    raise StudyStopped()


def stop_if_signalled(after: str | None = None) -> None:
    """Raise :class:`StudyStopped` when a SIGTERM was noted during a Lightning run (one that ended
    without stopping: an evaluation, a prediction); ``after`` names the stage it arrived in, which
    finished."""
    global _signalled
    if _signalled:
        _signalled = False
        raise StudyStopped(f"after stage {after} (finished)" if after else None)


def stopped_types() -> tuple[type[BaseException], ...]:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return (StudyStopped, SIGTERMException)


def _stage_log(directory: Path) -> logging.Handler:
    handler = logging.FileHandler(directory / "log.txt", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def run_stage(stage: Stage, out: Path, root: str) -> dict:
    """Run ``stage``'s function (:data:`~nml.study.stages.STAGE_KINDS`) on its done dependencies."""
    from nml.study.stages import STAGE_KINDS, StageContext

    inputs = [d.done(out) for d in stage.deps]
    return STAGE_KINDS[stage.kind].run(stage.params, inputs, StageContext(stage.directory(out), out, root))


def run_one(stage: Stage, out: Path, root: str) -> dict:
    """Run one stage: ``stage.json``, its log in ``log.txt`` (with the traceback if it fails, then
    re-raised), its outputs, then ``done.json`` (atomically)."""
    directory = stage.directory(out)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "stage.json").write_text(
        json.dumps(
            {
                "kind": stage.kind,
                "label": stage.label,
                "key": stage.key,
                "params": asdict(stage.params),
                "deps": [d.directory(out).name for d in stage.deps],
            },
            indent=1,
            default=str,
        )
        + "\n"
    )
    import torch

    from nml.data.loading import pinned_threads
    from nml.quiet import stage_console

    handler = _stage_log(directory)
    threads = torch.get_num_threads()  # a stage may cap them (share_cores_with_workers): not the next
    pinned = getattr(stage.params, "threads", None)  # part of the key: the stage computes with these
    t0 = time.perf_counter()
    try:
        # stdout carries the study's JSON answer alone: what a stage prints (Lightning's model
        # summary, progress) goes to stderr with its logs
        with (
            contextlib.redirect_stdout(sys.stderr),
            pinned_threads(pinned or threads),
            stage_console(handler),
        ):
            result = run_stage(stage, out, root)
    except Exception:
        logging.getLogger("nml.study").error("stage %s failed:\n%s", stage.label, traceback.format_exc())
        raise
    finally:
        torch.set_num_threads(threads)
        logging.getLogger().removeHandler(handler)
        handler.close()
    result["seconds"] = round(time.perf_counter() - t0, 2)
    tmp = directory / "done.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(directory / "done.json")
    return result


def skipped_for_a_failed_dependency(
    stage: Stage, failed: dict[str, str], counts: dict, where: str, progress: StageProgress | None = None
) -> bool:
    """A stage that needs a failed stage is skipped: counted, its dependency's log carried (the
    study's closing message names it), said on ``where``'s line. True when it is."""
    broken = [d.label for d in stage.deps if d.label in failed]
    if not broken:
        return False
    counts["skipped"] += 1
    failed[stage.label] = failed[broken[0]]
    if progress is not None:
        progress.dropped(stage)
    log.warning("%s: skipped (needs the failed stage %s)", where, broken[0])
    return True


def raise_if_failed(counts: dict, failed: dict) -> None:
    if counts["failed"]:
        logs = sorted({v for v in failed.values()})
        raise StudyFailed(
            f"{counts['failed']} stage(s) failed ({counts['skipped']} skipped as dependents); the other stages' "
            f"outputs are kept and a re-run resumes. Logs:\n  " + "\n  ".join(logs)
        )


class StageProgress:
    """The study's progress line: stages finished of those to run, and the time left estimated
    from the mean wall time of the stages of each kind run so far (a kind not yet run: the mean of
    all), divided by the stages that run at once (``at_once``)."""

    def __init__(self, pending: list[Stage], at_once: int = 1):
        self.left = {}
        for stage in pending:
            self.left[stage.kind] = self.left.get(stage.kind, 0) + 1
        self.total, self.seconds, self.at_once = len(pending), {}, at_once

    def dropped(self, stage: Stage) -> None:
        """A stage that failed, or was skipped for a failed dependency: not to run any more."""
        self.left[stage.kind] -= 1

    def finished(self, stage: Stage, seconds: float) -> str:
        self.left[stage.kind] -= 1
        self.seconds.setdefault(stage.kind, []).append(seconds)
        every = [t for ts in self.seconds.values() for t in ts]
        mean = {k: sum(ts) / len(ts) for k, ts in self.seconds.items()}
        eta = sum(n * mean.get(k, sum(every) / len(every)) for k, n in self.left.items()) / self.at_once
        done = self.total - sum(self.left.values())
        return f"{done}/{self.total} to run done, about {_clock(eta)} left"


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def execute(plan: Plan, out: Path, root: str) -> dict:
    """Run every stage not yet done, in this process; returns counts (ran, cached, failed, skipped)."""
    failed: dict[str, str] = {}
    counts = {"ran": 0, "cached": 0, "failed": 0, "skipped": 0}
    n = len(plan.stages)
    global _signalled
    _signalled = False
    last = None  # the last stage run, for the stop message
    progress = StageProgress([s for s in plan.stages if s.done(out) is None])
    for i, stage in enumerate(plan.stages, 1):
        stop_if_signalled(last)  # noted during the last stage, which finished (its done.json is kept)
        where = f"[study] ({i}/{n}) {stage.kind} {stage.label}"
        if stage.done(out) is not None:
            counts["cached"] += 1
            log.info("%s: cached", where)
            continue
        if skipped_for_a_failed_dependency(stage, failed, counts, where, progress):
            continue
        t0 = time.perf_counter()
        try:
            result = run_one(stage, out, root)
        except stopped_types():  # SIGTERM: this stage is unfinished (no done.json), the others are kept
            log.error("%s: stopped by SIGTERM after %.1f s", where, time.perf_counter() - t0)
            raise StudyStopped(f"in stage {stage.kind} {stage.label}") from None
        except Exception:
            if _signalled:  # a SIGTERM came first: what failed after it (a logger Lightning finalizes
                # while stopping, a closed writer) is its consequence; the traceback is in log.txt
                log.error("%s: stopped by SIGTERM after %.1f s", where, time.perf_counter() - t0)
                raise StudyStopped(f"in stage {stage.kind} {stage.label}") from None
            # isolate: report with the log path, go on with independent stages
            counts["failed"] += 1
            progress.dropped(stage)
            failed[stage.label] = str(stage.directory(out) / "log.txt")
            log.error(
                "%s: FAILED after %.1f s (log: %s)", where, time.perf_counter() - t0, failed[stage.label]
            )
            continue
        counts["ran"] += 1
        last = f"{stage.kind} {stage.label}"
        log.info(
            "%s: done in %.1f s (%s)", where, result["seconds"], progress.finished(stage, result["seconds"])
        )
    raise_if_failed(counts, failed)
    return counts


def stage_job(stage: Stage, out: Path, root: str) -> dict:
    """What a submitit job runs: one stage, in a fresh process (nml's logging set up first)."""
    from nml.logs import setup_logging

    setup_logging()
    return run_one(stage, out, root)


def execute_jobs(plan: Plan, out: Path, root: str, launcher: Launcher) -> dict:
    """Run every stage not yet done as a submitit job (``launcher.kind``: slurm or submitit_local).
    On SLURM every job is submitted at once, a stage's dependencies as ``afterok`` job dependencies
    (a failed stage's dependents are cancelled by SLURM); the local executor has no dependencies, so
    a stage is submitted when its dependencies are done, at most ``launcher.parallel`` at once (the
    usable cores when unset). Waits for all the jobs."""
    try:
        import submitit
    except ImportError as e:
        raise ValueError(
            f"launcher.kind {launcher.kind!r} needs submitit: pip install 'noisy-model-learning[slurm]'"
        ) from e
    slurm = launcher.kind == "slurm"
    folder = Path(launcher.folder or out / "submitit")
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm" if slurm else "local")
    params = {
        "timeout_min": launcher.time_min,
        "gpus_per_node": launcher.gpus_per_node,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": launcher.cpus_per_task,
        "mem_gb": launcher.mem_gb,
    }
    if slurm:
        params.update(
            {
                f"slurm_{k}": v
                for k, v in (("partition", launcher.partition), ("account", launcher.account))
                if v
            }
        )
    counts = {"ran": 0, "cached": 0, "failed": 0, "skipped": 0}
    failed: dict[str, str] = {}
    jobs: dict[str, tuple[Stage, object]] = {}
    if not slurm:  # submitit_local: this machine's cores (one stage at a time on a shared GPU)
        import torch

        at_once = launcher.stages_at_once(len(os.sched_getaffinity(0)), gpu=torch.cuda.is_available())
    waiting = []
    for stage in plan.stages:
        if stage.done(out) is not None:
            counts["cached"] += 1
        else:
            waiting.append(stage)
    log.info(
        "[study] %d stage(s) to run as %s jobs (%d cached); job files in %s",
        len(waiting),
        launcher.kind,
        counts["cached"],
        folder,
    )

    def submit(stage: Stage) -> None:
        deps = [jobs[d.label][1].job_id for d in stage.deps if d.label in jobs]
        extra = dict(launcher.slurm_parameters)
        if slurm and deps:
            extra.update({"dependency": "afterok:" + ":".join(deps), "kill_on_invalid_dep": "yes"})
        executor.update_parameters(
            name=f"nml-{stage.kind}-{stage.label}",
            **params,
            **({"slurm_additional_parameters": extra} if slurm else {}),
        )
        job = executor.submit(stage_job, stage, out, root)
        jobs[stage.label] = (stage, job)
        log.info("[study] submitted %s %s: job %s", stage.kind, stage.label, job.job_id)

    running: dict[str, tuple[Stage, object]] = {}
    while waiting or running:
        for stage in list(waiting):
            if skipped_for_a_failed_dependency(stage, failed, counts, f"[study] {stage.kind} {stage.label}"):
                waiting.remove(stage)
            elif slurm or (len(running) < at_once and all(d.done(out) is not None for d in stage.deps)):
                waiting.remove(stage)
                submit(stage)
                running[stage.label] = jobs[stage.label]
        for label, (stage, job) in list(running.items()):
            if not job.done():
                continue
            del running[label]
            try:
                result = job.result()
            except Exception as e:  # a failed job, or one SLURM cancelled: isolate, report its logs
                broken = [d.label for d in stage.deps if d.label in failed]
                if broken:  # cancelled by SLURM: a dependency failed (kill-on-invalid-dep)
                    counts["skipped"] += 1
                    failed[label] = failed[broken[0]]
                    log.warning(
                        "[study] %s %s: cancelled (needs the failed stage %s)", stage.kind, label, broken[0]
                    )
                    continue
                counts["failed"] += 1
                failed[label] = f"{stage.directory(out) / 'log.txt'} (job {job.job_id}: {job.paths.stderr})"
                log.error(
                    "[study] %s %s: FAILED (job %s: %s)",
                    stage.kind,
                    label,
                    job.job_id,
                    str(e).splitlines()[0],
                )
                continue
            counts["ran"] += 1
            log.info(
                "[study] %s %s: done in %.1f s (job %s)", stage.kind, label, result["seconds"], job.job_id
            )
        if running:
            time.sleep(launcher.poll_s if slurm else min(launcher.poll_s, 1.0))
    raise_if_failed(counts, failed)
    return counts
