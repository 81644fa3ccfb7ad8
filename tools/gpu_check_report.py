"""The figures of ``tools/gpu_check.sh`` in one JSON file and one Markdown table for BENCHMARKS.md.

    python tools/gpu_check_report.py OUT [--seconds S]

Reads ``OUT/gpu_tests.xml`` (pytest's junit XML), ``OUT/gpu_step.jsonl`` (benchmarks/gpu_step.py) and
``OUT/gpu_pipeline.jsonl`` (benchmarks/gpu_pipeline.py); a missing or empty input is reported as not
run. Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` with the targets checked: nml's step
>= 0.98x the bare loop in every case, the real pipeline >= 0.95x the model-bound rate.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

STEP_TARGET, PIPELINE_TARGET = 0.98, 0.95


def read_tests(path: Path) -> dict | None:
    """Per test case its outcome (passed / failed / skipped), and the counts."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = "failed" if tag in ("failure", "error") else "skipped"
        cases.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0))})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "skipped")}
    return {**counts, "cases": cases}


def read_jsonl(path: Path) -> list[dict] | None:
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip().startswith("{")]
    return rows or None


def _commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def report(out: Path, seconds: float | None = None) -> dict:
    tests = read_tests(out / "gpu_tests.xml")
    step = read_jsonl(out / "gpu_step.jsonl")
    pipeline = read_jsonl(out / "gpu_pipeline.jsonl")
    device = next((r["device"] for r in (step or []) + (pipeline or []) if "device" in r), None)
    targets = {
        "nml_step_over_bare_min": STEP_TARGET,
        "step_met": all(r["nml_over_bare"] >= STEP_TARGET for r in step) if step else None,
        "pipeline_over_model_bound_min": PIPELINE_TARGET,
        "pipeline_met": all(r["over_model_bound"] >= PIPELINE_TARGET for r in pipeline) if pipeline else None,
    }
    result = {
        "date": datetime.date.today().isoformat(),
        "commit": _commit(),
        "device": device,
        "seconds": seconds,
        "tests": tests,
        "step": step,
        "pipeline": pipeline,
        "targets": targets,
    }
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    lines = [
        f"GPU check on {r['device'] or 'an unknown device'}, {r['date']}, commit {r['commit'] or '?'}",
        "",
    ]
    t = r["tests"]
    if t is None:
        lines += ["GPU tests: not run.", ""]
    else:
        lines += [
            f"GPU tests (`pytest -m gpu`): {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped."
        ]
        lines += [f"- {c['name']}: {c['outcome']}" for c in t["cases"] if c["outcome"] != "passed"] + [""]
    if r["step"]:
        lines += [
            "| case | precision | batch | bare samples/s | nml samples/s | nml / bare | TFLOP/s (nml) | MFU (nml) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in r["step"]:
            mfu = f"{100 * s['nml_mfu']:.1f} %" if s.get("nml_mfu") is not None else "-"
            lines.append(
                f"| {s['case']} | {s['precision']} | {s['batch']} | {s['bare_samples_per_s']:.0f} | "
                f"{s['nml_samples_per_s']:.0f} | **{s['nml_over_bare']:.3f}x** | {s['nml_tflops_per_s']:.1f} | {mfu} |"
            )
        lines.append("")
    else:
        lines += ["benchmarks/gpu_step.py: not run.", ""]
    if r["pipeline"]:
        lines += [
            "| pipeline | workers | samples/s | model-bound samples/s | ratio |",
            "|---|---|---|---|---|",
        ]
        for p in r["pipeline"]:
            lines.append(
                f"| {p['setting']} ({p['model']}, {p['jpeg_px']} JPEG -> {p['image_size']} px) | "
                f"{p['num_workers']} | {p['samples_per_s']:.0f} | {p['model_bound_samples_per_s']:.0f} | "
                f"**{p['over_model_bound']:.3f}x** |"
            )
        lines.append("")
    else:
        lines += ["benchmarks/gpu_pipeline.py: not run.", ""]
    tg = r["targets"]
    lines.append(
        f"Targets: nml step >= {tg['nml_step_over_bare_min']}x the bare loop: {tg['step_met']}; "
        f"pipeline >= {tg['pipeline_over_model_bound_min']}x the model-bound rate: {tg['pipeline_met']}."
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seconds", type=float, default=None, help="the whole check's wall time")
    args = ap.parse_args()
    r = report(args.out, args.seconds)
    sys.stdout.write(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
