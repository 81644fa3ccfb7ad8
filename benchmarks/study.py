"""Where a study's wall time goes, one stage after another and stages side by side.

    python -m benchmarks.study [--config study_quickstart.yaml] [--parallel 1 2] [--out DIR] [-- extra args]

For each ``--parallel`` value N (``--launcher.parallel N``; 0: the default, the usable cores), in
turn in one run, runs ``nml study --config CONFIG --out DIR/parallel-N`` twice as a user would, in
a fresh process each time: the first run does every stage, the second finds them all finished and
only rebuilds ``results.csv`` and the report. Per setting it prints, from the first run's wall
time, the ``seconds`` in its JSON (from the first stage to the written report) and the stages' own
``done.json`` times:

* ``startup_s``: the process before the study starts (imports, config, the plan), wall minus JSON;
* per stage kind (pretrain, features, tune, encoder): the count, the sum and the mean of the stages'
  own seconds; tuning also per method (``linear``, ``mlp``, ``nmtune`` in the stage label);
* ``between_stages_s``: the JSON's seconds minus the stages' sum minus the report (one after
  another: a stage's start-up and the runner's bookkeeping; side by side it is negative, the
  stages' time that overlapped);
* ``report_s``: the second run's JSON seconds (results and report over finished stages).

Then ``speedup`` (the first setting's wall time over each setting's) and ``identical_results``
(every setting's ``results.csv`` byte for byte the first one's). One JSON object per setting and
one summary on stdout; a table on stderr. Give ``--out`` a new directory (default: a temporary one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

METHODS = ("linear", "mlp", "nmtune")


def _run(cmd: list[str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return time.perf_counter() - t0, json.loads(out.stdout)


def stage_times(out: Path) -> dict[str, dict]:
    """Per stage kind (and per tuning method): count, sum and mean of the stages' own seconds."""
    times: dict[str, list[float]] = defaultdict(list)
    for done in sorted((out / "stages").glob("*/*/done.json")):
        kind, label = done.parent.parent.name, done.parent.name
        seconds = float(json.loads(done.read_text()).get("seconds", 0.0))
        times[kind].append(seconds)
        if kind == "tune":
            method = next((m for m in METHODS if f"-{m}-" in label), None)
            if method:
                times[f"tune/{method}"].append(seconds)
    return {
        k: {"count": len(v), "sum_s": round(sum(v), 1), "mean_s": round(statistics.mean(v), 2)}
        for k, v in sorted(times.items())
    }


def run_setting(config: str, out: Path, parallel: int, extra: list[str]) -> dict:
    """Both runs of one launcher setting (the module docstring) and its figures."""
    if (out / "stages").exists():
        raise SystemExit(f"benchmarks.study: {out} already holds stages: give a new --out")
    launcher = ["--launcher.parallel", str(parallel)] if parallel else []
    cmd = [sys.executable, "-m", "nml.cli", "study", "--config", config, "--out", str(out), *launcher, *extra]
    wall, first = _run(cmd)
    wall_again, second = _run(cmd)
    kinds = stage_times(out)
    stages_sum = sum(v["sum_s"] for k, v in kinds.items() if "/" not in k)
    report = float(second["seconds"])
    return {
        "config": config,
        "parallel": parallel or "default",
        "stages": sum(v["count"] for k, v in kinds.items() if "/" not in k),
        "wall_s": round(wall, 1),
        "startup_s": round(wall - float(first["seconds"]), 1),
        "stages_sum_s": round(stages_sum, 1),
        "between_stages_s": round(float(first["seconds"]) - stages_sum - report, 1),
        "report_s": round(report, 1),
        "second_run_wall_s": round(wall_again, 1),
        "kinds": kinds,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="study_quickstart.yaml")
    ap.add_argument(
        "--parallel", type=int, nargs="+", default=[1, 2], help="launcher.parallel settings (0: the default)"
    )
    ap.add_argument("--out", default=None, help="a new directory (default: a temporary one)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `nml study` arguments")
    args = ap.parse_args()
    extra = [a for a in args.extra if a != "--"]
    w = sys.stderr.write
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="nml_bench_study_") as tmp:
        base = Path(args.out or tmp)
        for parallel in args.parallel:
            out = base / f"parallel-{parallel or 'default'}"
            row = run_setting(args.config, out, parallel, extra)
            results.append((out / "results.csv").read_bytes())
            rows.append(row)
            print(json.dumps(row), flush=True)
            w(
                f"{args.config}, parallel {row['parallel']}: {row['stages']} stages, {row['wall_s']:.0f} s end to end\n"
            )
            w(
                f"  start-up {row['startup_s']} s, report {row['report_s']} s, "
                f"between stages {row['between_stages_s']} s\n"
            )
            for k, v in row["kinds"].items():
                w(f"  {k:<14} {v['count']:>4} x {v['mean_s']:>7.2f} s = {v['sum_s']:>7.1f} s\n")
    summary = {
        "config": args.config,
        "parallel": [r["parallel"] for r in rows],
        "wall_s": [r["wall_s"] for r in rows],
        "speedup": [round(rows[0]["wall_s"] / r["wall_s"], 2) for r in rows],
        "identical_results": all(r == results[0] for r in results),
    }
    print(json.dumps(summary), flush=True)
    w(
        f"speedup over parallel {rows[0]['parallel']}: {summary['speedup']}; identical results.csv: "
        f"{summary['identical_results']}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
