"""Runs a study's stage graph: cached stages are skipped, failures are isolated and reported.

A stage runs only when its ``done.json`` is missing; it writes its outputs, then ``done.json``
(atomically), so an interrupted study resumes where it stopped. A stage that fails writes its
traceback to its ``log.txt``; the stages that depend on it are skipped, the others still run, and the
study exits non-zero naming the failed stages and their logs. One progress line per stage on stderr.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path

from nml.study.plan import Plan, Stage

log = logging.getLogger("nml.study")


class StudyFailed(RuntimeError):
    """Some stages failed; the others' outputs are intact."""


def _stage_log(directory: Path) -> logging.Handler:
    handler = logging.FileHandler(directory / "log.txt", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def run_stage(stage: Stage, out: Path, root: str) -> dict:
    from nml.study import stages

    directory = stage.directory(out)
    inputs = [d.done(out) for d in stage.deps]
    if stage.kind == "pretrain":
        return stages.pretrain(stage.params, directory, out, root)
    if stage.kind == "random_init":
        return stages.random_init(stage.params, directory, root)
    if stage.kind == "features":
        return stages.features(stage.params, inputs[0], directory, root)
    if stage.kind == "tune":
        return stages.tune(stage.params, inputs[0], directory, out)
    raise ValueError(f"unknown stage kind {stage.kind!r}")


def execute(plan: Plan, out: Path, root: str) -> dict:
    """Run every stage not yet done; returns counts (ran, cached, failed, skipped)."""
    failed: dict[str, str] = {}
    counts = {"ran": 0, "cached": 0, "failed": 0, "skipped": 0}
    n = len(plan.stages)
    for i, stage in enumerate(plan.stages, 1):
        where = f"[study] ({i}/{n}) {stage.kind} {stage.label}"
        if stage.done(out) is not None:
            counts["cached"] += 1
            log.info("%s: cached", where)
            continue
        broken = [d.label for d in stage.deps if d.label in failed]
        if broken:
            counts["skipped"] += 1
            failed[stage.label] = failed[broken[0]]
            log.warning("%s: skipped (needs the failed stage %s)", where, broken[0])
            continue
        directory = stage.directory(out)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "stage.json").write_text(
            json.dumps(
                {
                    "kind": stage.kind,
                    "label": stage.label,
                    "key": stage.key,
                    "params": stage.params,
                    "deps": [d.directory(out).name for d in stage.deps],
                },
                indent=1,
                default=str,
            )
            + "\n"  # fmt: skip
        )
        handler = _stage_log(directory)
        t0 = time.perf_counter()
        try:
            result = run_stage(stage, out, root)
        except Exception:  # isolate: report with the log path, go on with independent stages
            logging.getLogger("nml.study").error("stage %s failed:\n%s", stage.label, traceback.format_exc())
            counts["failed"] += 1
            failed[stage.label] = str(directory / "log.txt")
            log.error(
                "%s: FAILED after %.1f s (log: %s)", where, time.perf_counter() - t0, directory / "log.txt"
            )
            continue
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
        result["seconds"] = round(time.perf_counter() - t0, 2)
        tmp = directory / "done.json.tmp"
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        tmp.replace(directory / "done.json")
        counts["ran"] += 1
        log.info("%s: done in %.1f s", where, result["seconds"])
    if counts["failed"]:
        logs = sorted({v for v in failed.values()})
        raise StudyFailed(
            f"{counts['failed']} stage(s) failed ({counts['skipped']} skipped as dependents); the other stages' "
            f"outputs are kept and a re-run resumes. Logs:\n  " + "\n  ".join(logs)
        )
    return counts
