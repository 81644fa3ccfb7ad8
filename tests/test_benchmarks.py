"""The benchmark scripts' shared timing helper, and the peer pipeline benchmark on tiny sets (its
smoke run: the figures themselves are on the benchmarks page)."""

from __future__ import annotations

import json

import pytest
from helpers import run_tool


def test_alternate_runs_the_contenders_in_turn_and_reports_median_and_spread():
    from benchmarks.common import alternate, spread

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
        "peers",
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
    out = run_tool("study_pretrain", ["--root", str(tiny_benchmark), "--batches", "3", "--repeats", "1"])
    row = json.loads(out.strip().splitlines()[-1])
    assert row["config"] == "pretrain_supervised_study.yaml"
    assert row["nml_samples_per_s"]["median"] > 0 and row["bare_samples_per_s"]["median"] > 0
    assert row["nml_over_bare"] == pytest.approx(
        row["nml_samples_per_s"]["median"] / row["bare_samples_per_s"]["median"], rel=1e-2
    )


@pytest.mark.slow
def test_the_spectrum_benchmark_times_every_contender_on_the_same_rows_and_reports_errors():
    out = run_tool("spectrum", ["--rows", "600", "--dims", "32", "--chunk", "256", "--repeats", "1"])
    (row,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert (row["rows"], row["dim"], row["reference"]) == (600, 32, "svd_torch")
    assert row["svd_torch"]["max_error_over_s_max"] == 0.0
    # float64 throughout: the streamed spectrum is the SVD's to rounding; float32 products are not
    assert row["streaming"]["max_error_over_s_max"] < 1e-12
    assert row["gram_float32"]["max_error_over_s_max"] > 100 * row["streaming"]["max_error_over_s_max"]
    assert row["svd_numpy"]["max_error_over_s_max"] < 1e-12
    assert row["svd_torch_over_streaming"] == pytest.approx(
        row["svd_torch"]["seconds"]["median"] / row["streaming"]["seconds"]["median"]
    )
    assert row["allreduce_s_2_gloo_ranks"] > 0 and row["float64_matmul_gflops"] > 0


@pytest.mark.slow
def test_the_tuning_cache_benchmark_alternates_image_and_cached_epochs(tiny_benchmark):
    out = run_tool(
        "tuning_cache",
        ["--root", str(tiny_benchmark), "--backbones", "test_resnet", "--methods", "linear"]
        + ["--images", "64", "--epochs", "2", "--num_workers", "0", "--repeats", "2", "--floor_dims"],
    )
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    (row,) = [r for r in lines if "backbone" in r]
    assert (row["backbone"], row["method"], row["images"]) == ("test_resnet", "linear", 64)
    assert len(row["image_epoch_s_runs"]) == len(row["cached_epoch_s_runs"]) == 2
    assert row["speedup"] == pytest.approx(row["image_epoch_s"] / row["cached_epoch_s"], rel=0.01)
    (floor,) = [r["flop_floor"] for r in lines if "flop_floor" in r]
    assert floor["feature_dim"] == row["feature_dim"] and floor["over_floor"] > 0


@pytest.mark.slow
def test_the_study_benchmark_splits_the_wall_time_by_stage_kind(tiny_benchmark, tmp_path):
    import yaml

    tiny = {
        "trainer": {"max_steps": 3, "limit_val_batches": 1, "enable_progress_bar": False},
        "data": {
            "init_args": {"stream": {"train_shards": 4}, "loader": {"batch_size": 16, "num_workers": 0}}
        },
    }
    config = {
        "name": "timed",
        "grid": {"objectives": ["supervised"], "noise_rates": [0.0], "seeds": [0], "random_init": False},
        "pretrain": {"supervised": {"config": "pretrain_supervised_study.yaml", "overrides": tiny}},
        "tasks": {"mnist": {"methods": ["linear", "nmtune"]}},
        "benchmark": {"root": str(tiny_benchmark)},
        "features": {"views": 2, "batch_size": 64, "num_workers": 0},
        "tuning": {"epochs": 1, "seeds": [0], "batch_size": 16},
    }
    (tmp_path / "timed.yaml").write_text(yaml.safe_dump(config))
    argv = ["--config", str(tmp_path / "timed.yaml"), "--out", str(tmp_path / "s"), "--parallel", "1", "2"]
    lines = [json.loads(line) for line in run_tool("study", argv).strip().splitlines()]
    *rows, summary = lines
    assert [r["parallel"] for r in rows] == [1, 2] and summary["parallel"] == [1, 2]
    for row in rows:
        kinds = row["kinds"]
        assert {k: v["count"] for k, v in kinds.items()} == {
            "pretrain": 1,
            "features": 1,
            "tune": 2,
            "tune/linear": 1,
            "tune/nmtune": 1,
        }
        assert row["stages"] == 4 and row["stages_sum_s"] > 0 and row["report_s"] > 0
        assert row["second_run_wall_s"] < row["wall_s"]  # every stage cached the second time
    sequential = rows[0]
    assert (
        sequential["wall_s"]
        >= sequential["startup_s"] + sequential["stages_sum_s"] + sequential["report_s"] - 1.0
    )
    assert summary["identical_results"] is True  # the two tune stages side by side: the same numbers
    assert summary["speedup"][0] == 1.0 and summary["speedup"][1] > 0
