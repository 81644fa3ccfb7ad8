"""The benchmark scripts' shared timing helper, and the peer pipeline benchmark on tiny sets (its
smoke run: the figures themselves are on the benchmarks page)."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import REPO, run_tool


def test_alternate_runs_the_contenders_in_turn_and_reports_median_and_spread():
    sys.path.insert(0, str(REPO / "tools"))
    from bench_timing import alternate, spread

    calls, rates = [], {"a": iter([3.0, 1.0, 2.0]), "b": iter([10.0, 30.0, 20.0])}

    def contender(name):
        def run():
            calls.append(name)
            return next(rates[name])

        return run

    stats = alternate({"a": contender("a"), "b": contender("b")}, repeats=3)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # alternated: a burst of load hits both alike
    assert stats["a"] == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": [3.0, 1.0, 2.0]}
    assert stats["b"]["median"] == 20.0 and spread(stats["b"]) == "20 (10-30)"


@pytest.mark.slow
def test_the_peer_benchmark_reads_the_same_shards_through_open_clip_and_timm(tiny_benchmark):
    out = run_tool(
        "bench_peers.py",
        ["--root", str(tiny_benchmark), "--samples", "64", "--workers", "0", "--repeats", "1"]
        + ["--batch_size", "16", "--image_size", "32"],
    )
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["set"], r["task"]) for r in rows] == [
        ("glyphs", "image_text"),
        ("glyphs", "classification"),
        ("jpeg256", "image_text"),
        ("jpeg256", "classification"),
    ]
    assert {r["peer"] for r in rows} == {"open_clip get_wds_dataset", "timm create_dataset('wds/...')"}
    for r in rows:
        assert min(r[f"{k}_samples_per_s"]["median"] for k in ("nml", "nml_noise", "peer")) > 0
        assert r["nml_over_peer"] == pytest.approx(
            r["nml_samples_per_s"]["median"] / r["peer_samples_per_s"]["median"], rel=1e-2
        )


@pytest.mark.slow
def test_the_study_pretraining_benchmark_times_the_recipe_and_its_bare_loop(tiny_benchmark):
    out = run_tool(
        "bench_study_pretrain.py", ["--root", str(tiny_benchmark), "--batches", "3", "--repeats", "1"]
    )
    row = json.loads(out.strip().splitlines()[-1])
    assert row["config"] == "pretrain_supervised_study.yaml"
    assert row["nml_samples_per_s"]["median"] > 0 and row["bare_samples_per_s"]["median"] > 0
    assert row["nml_over_bare"] == pytest.approx(
        row["nml_samples_per_s"]["median"] / row["bare_samples_per_s"]["median"], rel=1e-2
    )
