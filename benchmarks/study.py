"""Where a study's wall time goes: start-up, each stage kind, the results and report.

    python -m benchmarks.study [--config study_quickstart.yaml] [--out DIR] [-- extra nml study args]

Runs ``nml study --config CONFIG --out DIR`` twice as a user would, in a fresh process each time:
the first run does every stage, the second finds them all finished and only rebuilds
``results.csv`` and the report. From the first run's wall time, the ``seconds`` in its JSON (from
the first stage to the written report) and the stages' own ``done.json`` times it prints:

* ``startup_s``: the process before the study starts (imports, config, the plan), wall minus JSON;
* per stage kind (pretrain, features, tune, encoder): the count, the sum and the mean of the stages'
  own seconds; tuning also per method (``linear``, ``mlp``, ``nmtune`` in the stage label);
* ``between_stages_s``: the JSON's seconds minus the stages' sum minus the report (a stage's
  process start-up, imports and the runner's bookkeeping);
* ``report_s``: the second run's JSON seconds (results and report over finished stages).

One JSON object on stdout; a table on stderr. Give ``--out`` a new directory (default: a temporary
one), or the first run is cached too.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="study_quickstart.yaml")
    ap.add_argument("--out", default=None, help="a new directory (default: a temporary one)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more `nml study` arguments")
    args = ap.parse_args()
    extra = [a for a in args.extra if a != "--"]
    with tempfile.TemporaryDirectory(prefix="nml_bench_study_") as tmp:
        out = Path(args.out or Path(tmp) / "study")
        if (out / "stages").exists():
            raise SystemExit(f"benchmarks.study: {out} already holds stages: give a new --out")
        cmd = [sys.executable, "-m", "nml.cli", "study", "--config", args.config, "--out", str(out), *extra]
        wall, first = _run(cmd)
        wall_again, second = _run(cmd)
        kinds = stage_times(out)
    stages_sum = sum(v["sum_s"] for k, v in kinds.items() if "/" not in k)
    report = float(second["seconds"])
    row = {
        "config": args.config,
        "stages": sum(v["count"] for k, v in kinds.items() if "/" not in k),
        "wall_s": round(wall, 1),
        "startup_s": round(wall - float(first["seconds"]), 1),
        "stages_sum_s": round(stages_sum, 1),
        "between_stages_s": round(float(first["seconds"]) - stages_sum - report, 1),
        "report_s": round(report, 1),
        "second_run_wall_s": round(wall_again, 1),
        "kinds": kinds,
    }
    print(json.dumps(row), flush=True)
    w = sys.stderr.write
    w(f"{args.config}: {row['stages']} stages, {row['wall_s']:.0f} s end to end\n")
    w(
        f"  start-up {row['startup_s']} s, report {row['report_s']} s, between stages {row['between_stages_s']} s\n"
    )
    for k, v in kinds.items():
        w(f"  {k:<14} {v['count']:>4} x {v['mean_s']:>7.2f} s = {v['sum_s']:>7.1f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
