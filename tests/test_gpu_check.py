"""tools/gpu_check.sh and its report, on this CPU machine: the plan, the refusal without CUDA, the
report from planted outputs, and the GPU pipeline benchmark's CPU stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import PYTHON, REPO, run_tool

SCRIPT = REPO / "tools" / "gpu_check.sh"


def test_the_dry_run_lists_every_step_within_eight_minutes(tmp_path):
    r = subprocess.run(
        ["bash", str(SCRIPT), "--dry_run", "--out", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    steps = [line.split()[0] for line in r.stdout.splitlines()[:-1]]
    assert steps == ["env", "tests", "step", "pipeline", "report"]
    assert (
        "pytest -m gpu" in r.stdout
        and "python -m benchmarks.gpu_pipeline" in r.stdout
        and str(tmp_path / "o") in r.stdout
    )
    total = int(r.stdout.splitlines()[-1].split()[2])
    assert total <= 8 * 60 and not (tmp_path / "o").exists()


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="the refusal is for machines without CUDA"
)
def test_without_cuda_it_says_so_and_runs_nothing(tmp_path):
    env = {**os.environ, "NML_PYTHON": PYTHON}
    r = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1 and "needs CUDA" in r.stderr and "nothing was run" in r.stderr
    assert not (tmp_path / "o").exists()
    bad = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


def test_the_report_reads_the_outputs_and_checks_the_targets(tmp_path):
    (tmp_path / "gpu_tests.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="3">'
        '<testcase classname="tests.test_gpu" name="test_a" time="1.5"/>'
        '<testcase classname="tests.test_gpu" name="test_b" time="2.0"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_gpu" name="test_c" time="0"><skipped message="y"/></testcase>'
        "</testsuite></testsuites>"
    )
    step = {
        "case": "resnet50",
        "device": "NVIDIA H100",
        "model": "resnet50",
        "batch": 256,
        "precision": "bf16-mixed",
    }
    step |= {"bare_samples_per_s": 3000.0, "nml_samples_per_s": 2970.0, "nml_over_bare": 0.99}
    step |= {"gflops_per_step": 1000.0, "nml_tflops_per_s": 11.6, "nml_mfu": 0.4}
    (tmp_path / "gpu_step.jsonl").write_text("some log line\n" + json.dumps(step) + "\n")
    pipe = {"setting": "decode_on_device", "device": "NVIDIA H100", "model": "resnet50", "jpeg_px": "500x375"}
    pipe |= {
        "image_size": 224,
        "num_workers": 15,
        "samples_per_s": 2700.0,
        "model_bound_samples_per_s": 3000.0,
    }
    (tmp_path / "gpu_pipeline.jsonl").write_text(json.dumps(pipe | {"over_model_bound": 0.9}) + "\n")
    r = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu_check_report.py"), str(tmp_path), "--seconds", "400"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert (result["tests"]["passed"], result["tests"]["failed"], result["tests"]["skipped"]) == (1, 1, 1)
    assert result["device"] == "NVIDIA H100" and result["seconds"] == 400
    assert result["targets"]["step_met"] is True and result["targets"]["pipeline_met"] is False
    md = (tmp_path / "gpu_check.md").read_text()
    assert md == r.stdout and "**0.990x**" in md and "**0.900x**" in md and "- test_b: failed" in md


def test_the_report_says_what_did_not_run(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu_check_report.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["tests"] is None and result["step"] is None and result["targets"]["step_met"] is None
    md = (tmp_path / "gpu_check.md").read_text()
    assert "GPU tests: not run." in md and "benchmarks/gpu_step.py: not run." in md


@pytest.mark.slow
def test_the_gpu_pipeline_benchmark_runs_on_the_cpu_with_stand_ins():
    out = run_tool("gpu_pipeline", ["--samples", "96", "--warmup", "1", "--steps", "2", "--repeats", "1"])
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["setting"] for r in rows] == ["workers decode"]  # decode_on_device needs CUDA
    assert rows[0]["samples_per_s"] > 0 and rows[0]["model_bound_samples_per_s"] > 0
    assert rows[0]["over_model_bound"] == pytest.approx(
        rows[0]["samples_per_s"] / rows[0]["model_bound_samples_per_s"], rel=1e-2
    )
