"""``nml study`` and ``nml report``: tables and verdicts on hand-written results, bad configs refused
before any work, and a tiny study end to end (rows, caching, incremental re-runs)."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest

from nml.study.command import report, study
from nml.study.config import Grid, Launcher, Recipe, TaskPlan, Tuning
from nml.study.evaluate import evaluate
from nml.study.report import group_means
from nml.study.results import COLUMNS, read_results
from nml.study.stats import family_level, paired_test

# -- nml report on hand-written results --------------------------------------------------------------
# supervised, gamma 0 and 0.3, 3 seeds; linear and nmtune; one ID and one OOD test set.
ID = {(0.0, s): v for s, v in enumerate([90.0, 91.0, 92.0])} | {
    (0.3, s): v for s, v in enumerate([91.0, 92.0, 92.0])
}
OOD = {(0.0, s): v for s, v in enumerate([60.0, 62.0, 64.0])} | {
    (0.3, s): v for s, v in enumerate([57.0, 58.0, 59.0])
}
SVE = {0.0: [4.0, 4.1, 4.2], 0.3: [4.5, 4.5, 4.6]}


def _write(path, with_random=True) -> None:
    rows = []
    for g in (0.0, 0.3):
        for s in range(3):
            for method, bonus in (("linear", 0.0), ("nmtune", 1.0 + s)):
                for group, name, value in (("id", "held", ID[(g, s)]), ("ood", "shift", OOD[(g, s)])):
                    rows.append(
                        {
                            "objective": "supervised",
                            "init": "pretrained",
                            "noise_rate": g,
                            "seed": s,
                            "method": method,
                            "task": "t",
                            "test_set": name,
                            "group": group,
                            "top1": value + bonus,
                            "tune_seeds": 1,
                            "sve": SVE[g][s],
                            "lsvr": 3.0 + g,
                            "p1": 0.05,
                            "effective_rank": 60,
                            "memorised": 95.0 if g else "",
                            "acc_noisy": 3.0 if g else "",
                            "pretrain_epochs": 20,
                        }
                    )
    for group, name, value in (("id", "held", 50.0), ("ood", "shift", 30.0)) if with_random else ():
        rows.append(
            {
                "objective": "supervised",
                "init": "random",
                "noise_rate": "",
                "seed": 0,
                "method": "linear",
                "task": "t",
                "test_set": name,
                "group": group,
                "top1": value,
                "tune_seeds": 1,
                "sve": 5.0,
                "lsvr": 2.0,
                "p1": 0.1,
                "effective_rank": 90,
                "pretrain_epochs": 0,
            }
        )
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS, restval="")
        w.writeheader()
        w.writerows(rows)


def test_report_tables_and_verdicts_from_a_hand_written_results_csv(tmp_path):
    _write(tmp_path / "results.csv")
    rows = read_results(tmp_path / "results.csv")
    means = group_means(rows)
    assert means[("supervised", "pretrained", 0.3, 1, "nmtune", "ood")] == 58.0 + 2.0
    found = {c["claim"]: c for c in evaluate(rows)}
    ood = found["OOD falls with noise (LP): fitted OOD change from 0 to 0.3"]  # changes -3, -4, -5
    assert ood["mean"] == pytest.approx(-4.0) and ood["verdict"] == "holds" and ood["n"] == 3
    asym = found["OOD falls more than ID over the grid (LP): ID trend - OOD trend, 0 to 0.3 (t)"]  # 4, 5, 5
    assert (
        asym["mean"] == pytest.approx(14 / 3) and asym["verdict"] == "holds" and asym["family"] == "secondary"
    )
    assert ood["p"] == pytest.approx(paired_test([-3, -4, -5], "decrease", 1.0).p)  # a family of one
    assert ood["level"] == family_level(1) == 0.95
    sve = found["noise raises SVE (frozen features, ID sets): fitted change"]  # 0.5, 0.4, 0.4
    assert sve["mean"] == pytest.approx(0.4333, abs=1e-4) and sve["verdict"] == "holds"
    lp = found["NMTune - LP on OOD at gamma 0.3"]  # bonus 1, 2, 3
    assert lp["mean"] == pytest.approx(2.0) and lp["n"] == 3 and lp["family"] == "exploratory"
    assert found["slight noise does not hurt ID (LP): ID(0-0.1) - ID(0)"]["verdict"].startswith(
        "not measured"
    )
    assert found["NMTune - MLP on ID at gamma -"]["verdict"].startswith("not measured")  # no MLP runs
    from nml.cli.main import main

    assert main(["report", str(tmp_path)]) == 0  # `nml report DIR`
    r = report(str(tmp_path))
    text = (tmp_path / "report.md").read_text()
    assert text.index("## The primary claims") < text.index("## Results") < text.index("## Exploratory")
    assert "| supervised | C2 | OOD falls with noise" in text and "p (Holm, one-sided)" in text
    assert "-4.000 pt [-6.484, -1.516] | 95 % | 3 |" in text and "**holds**" in text
    assert "| t | ID | 50.00 | 91.00 | +41.00 [+38.52, +43.48] | 1 of 1 |" in text  # the floor per head
    assert "| 0 | 91.00 ± 1.00 | 62.00 ± 2.00 | 93.00 ± 2.00 | 64.00 ± 3.00 |" in text  # LP / NMTune ID, OOD
    assert "| 0.3 | 91.67 ± 0.58 | 58.00 ± 1.00 |" in text
    assert "| random init | 50.00 | 30.00 |" in text
    for fig in ("accuracy_vs_noise_supervised.png", "spectrum_vs_noise_supervised.png"):
        assert fig in r["figures"] and (tmp_path / fig).stat().st_size > 1000
    _check_hparams_summary(tmp_path, rows)


def _check_hparams_summary(study_dir, rows) -> None:
    """The HParams summary read back from its event files: one session per results.csv row, with
    the row's identity as hyper-parameters and its numbers as metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    sessions = sorted((study_dir / "tensorboard" / "hparams").iterdir())
    assert len(sessions) == len(rows)
    seen = []
    for session, row in zip(sessions, rows, strict=True):
        acc = EventAccumulator(str(session))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hp = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        identity = {k: (v.string_value or v.number_value) for k, v in hp.items()}
        assert identity["method"] == row["method"] and identity["test_set"] == row["test_set"]
        expected = row["init"] if row["noise_rate"] is None else f"{row['noise_rate']:g}"
        assert identity["noise_rate"] == expected and identity["seed"] == row["seed"]
        assert acc.Scalars("results/top1")[0].value == pytest.approx(row["top1"])
        seen.append(tuple(sorted(identity.items())))
    assert len(set(seen)) == len(rows)  # every row its own session


def test_methods_are_compared_only_on_the_test_sets_both_ran_on(tmp_path):
    """NMTune ran on two OOD sets, MLP on one: NMTune - MLP uses the common one only (a mean over
    NMTune's two sets would add the other set's +30)."""
    rows = []
    for g in (0.0, 0.3):
        for s in range(3):
            for method, test_set, value in (
                ("nmtune", "shared", 60.0 + s),
                ("nmtune", "only_nmtune", 90.0),
                ("mlp", "shared", 59.0 + s - 0.5 * s),
                ("linear", "shared", 58.0),
            ):
                rows.append(
                    {
                        "objective": "supervised",
                        "init": "pretrained",
                        "noise_rate": g,
                        "seed": s,
                        "method": method,
                        "task": "t",
                        "test_set": test_set,
                        "group": "ood",
                        "top1": value,
                        "sve": None,
                        "lsvr": None,
                    }
                )
    found = {c["claim"]: c for c in evaluate(rows)}
    mlp = found["NMTune - MLP on OOD at gamma 0.3"]
    assert mlp["mean"] == pytest.approx(1.5) and mlp["n"] == 3  # 1 + 0.5 s over s = 0, 1, 2
    # a failed cell (seed 2 at gamma 0.3 has no MLP row): n shrinks, and the report says so
    rows = [r for r in rows if not (r["method"] == "mlp" and r["seed"] == 2 and r["noise_rate"] == 0.3)]
    mlp = {c["claim"]: c for c in evaluate(rows)}["NMTune - MLP on OOD at gamma 0.3"]
    assert mlp["n"] == 2 and "n=2 of 3 seeds" in mlp["note"]


def test_report_refuses_what_is_not_a_study(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.csv' not found: run `nml study` first"):
        report(str(tmp_path))
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a study results.csv"):
        report(str(tmp_path))


def test_report_reads_an_older_results_csv_and_names_an_empty_identity_cell(tmp_path, caplog):
    """A results.csv without the newer optional columns is reported with them missing; a hand-edited
    one with a blank seed is refused naming the line and the column."""
    _write(tmp_path / "full.csv")
    with open(tmp_path / "full.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    older = [c for c in COLUMNS if not c.startswith(("loss_", "retrieval_", "dead_"))]
    with open(tmp_path / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, older, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with caplog.at_level("WARNING", logger="nml.study"):
        r = report(str(tmp_path))
    assert "written by an earlier nml?" in caplog.text and "'loss_ce'" in caplog.text
    assert {c["key"] for c in r["claims"]} >= {"C2", "E6"}
    assert read_results(tmp_path / "results.csv")[0]["loss_ce"] is None
    rows[4]["seed"] = ""
    with open(tmp_path / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ValueError, match=r"results.csv, line 6: empty 'seed'"):
        report(str(tmp_path))


# -- bad configs: clear errors before any work ---------------------------------------------------------
def test_bad_study_configs_fail_before_any_work(tiny_benchmark, tmp_path):
    from nml.study.config import Benchmark, Features

    common = {"benchmark": Benchmark(root=str(tiny_benchmark)), "out": str(tmp_path / "s"), "dry_run": True}
    ok = {"print_to_mnist": TaskPlan(["linear"])}
    cases = [
        ({"tasks": {"no_such_task": TaskPlan()}}, "unknown task 'no_such_task'"),
        ({"tasks": {"print_to_mnist": TaskPlan(["svm"])}}, "unknown method 'svm'"),
        ({"tasks": ok, "grid": Grid(objectives=["moco"])}, "unknown objective 'moco'"),
        ({"tasks": ok, "grid": Grid(noise_rates=[0.0, 1.0])}, r"1.0 is outside \[0, 1\)"),
        ({"tasks": ok, "grid": Grid(seeds=[])}, "the grid has no cells"),
        ({"tasks": ok, "grid": Grid(objectives=["supervised", "supervised"])}, "repeated objectives"),
        ({"tasks": {"print_to_mnist": TaskPlan(["linear", "linear"])}}, r"methods: repeated methods"),
        ({"tasks": {}}, "the study has no downstream task"),
        (
            {"tasks": {"mnist": TaskPlan(["linear"], ["mnist", "no_such_set"])}},
            r"\['no_such_set'\] not in the task",
        ),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            study(**common, **kw)
    for make, message in (  # caught when the config is read, before the plan: no stage runs first
        (lambda: Tuning(seeds=[0, 0]), r"tuning.seeds: expected distinct seeds"),
        (lambda: Tuning(epochs=-1), r"tuning.epochs: expected >= 1, got -1"),
        (lambda: Features(views=-1), r"features.views: expected >= 0, got -1"),
        (lambda: Tuning(recipes={"svm": {}}), r"tuning.recipes: 'svm' is not a method"),
        (
            lambda: Tuning(recipes={"nmtune": {"optimizer": 1}}),
            r"tuning.recipes.nmtune: unknown options \['optimizer'\]",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            make()
    bad = Tuning(recipes={"nmtune": {"loss": {"mse_weigt": 0.5}}})  # a value checked with the plan
    with pytest.raises(ValueError, match=r"tuning.recipes.nmtune: model.loss: unknown keys \['mse_weigt'\]"):
        study(**common, tasks=ok, tuning=bad)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.json").write_text(json.dumps({"name": "other"}))
    with pytest.raises(SystemExit, match="holds the study 'other', not 'study'"):
        study(**common, tasks=ok)
    assert not (tmp_path / "s" / "stages").exists()


def test_slurm_launcher_submits_each_stage_with_its_dependencies(tiny_benchmark, tmp_path, monkeypatch):
    """`--launcher.kind slurm` through submitit against stand-in sbatch / sacct: one sbatch script
    per stage, a stage's dependencies as afterok job dependencies, the partition and resources as
    asked; when SLURM reports the first job failed, its dependents count as skipped and the study
    fails naming the logs."""
    from nml.study.config import Benchmark

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(  # keeps each script, answers as sbatch does
        f"#!/bin/sh\nn=$(ls {tmp_path}/scripts 2>/dev/null | wc -l); n=$((n + 1))\n"
        f'mkdir -p {tmp_path}/scripts; cp "$1" {tmp_path}/scripts/$n.sh\necho "Submitted batch job $n"\n'
    )
    (bin_dir / "sacct").write_text(  # every job has failed
        f'#!/bin/sh\necho "JobID|State|NodeList"\nfor f in {tmp_path}/scripts/*.sh; do '
        'echo "$(basename $f .sh)|FAILED|node1"; done\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit checks that it exists
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    from submitit.core.core import Job

    monkeypatch.setattr(Job, "_results_timeout_s", 0)  # no result pickle will come (as submitit's tests do)
    kw = {
        "grid": Grid(["supervised"], [0.3], [0], random_init=False),
        "tasks": {"mnist": TaskPlan(["linear"])},
        "benchmark": Benchmark(root=str(tiny_benchmark)),
        "out": str(tmp_path / "s"),
        "launcher": Launcher(
            kind="slurm",
            partition="gpu",
            gpus_per_node=2,
            time_min=90,
            poll_s=0.05,
            slurm_parameters={"qos": "high"},
        ),
    }
    with pytest.raises(SystemExit, match=r"1 stage\(s\) failed \(2 skipped as dependents\)"):
        study(**kw)
    scripts = [(tmp_path / "scripts" / f"{i}.sh").read_text() for i in (1, 2, 3)]
    kinds = ["pretrain", "features", "tune"]
    for i, (kind, text) in enumerate(zip(kinds, scripts, strict=True)):
        assert f"#SBATCH --job-name=nml-{kind}-" in text and "#SBATCH --partition=gpu" in text
        assert (
            "#SBATCH --gpus-per-node=2" in text
            and "#SBATCH --time=90" in text
            and "#SBATCH --qos=high" in text
        )
        if i == 0:
            assert "--dependency" not in text
        else:  # each stage waits for the one it reads
            assert f"#SBATCH --dependency=afterok:{i}" in text and "#SBATCH --kill-on-invalid-dep=yes" in text


# -- a tiny study end to end ---------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_study_end_to_end_cached_and_incremental(tiny_benchmark, tmp_path, monkeypatch):
    from nml.study.config import Benchmark, Features

    monkeypatch.chdir(tmp_path)
    tiny = {
        "trainer": {"max_steps": 3, "limit_val_batches": 1, "enable_progress_bar": False},
        "data": {
            "init_args": {"stream": {"train_shards": 4}, "loader": {"batch_size": 16, "num_workers": 0}}
        },
    }
    kw = {
        "name": "tiny",
        "grid": Grid(["supervised"], [0.0, 0.3], [0], random_init=True),
        "tasks": {"print_to_mnist": TaskPlan(["linear"]), "mnist": TaskPlan(["linear", "nmtune"])},
        "pretrain": {"supervised": Recipe("pretrain_supervised_study.yaml", tiny)},
        "benchmark": Benchmark(root=str(tiny_benchmark)),
        "features": Features(views=2, batch_size=64, num_workers=0),
        "tuning": Tuning(epochs=2, seeds=[0], batch_size=16),
        "out": str(tmp_path / "study"),
    }
    first = study(**kw)
    # 3 cells (gamma 0, 0.3, random) x {print_to_mnist: its head's 3 test sets x linear,
    # mnist: 2 test sets x 2 methods}
    rows = read_results(tmp_path / "study" / "results.csv")
    assert len(rows) == 3 * (3 + 2 * 2)
    assert {(r["init"], r["noise_rate"]) for r in rows} == {
        ("pretrained", 0.0),
        ("pretrained", 0.3),
        ("random", None),
    }
    assert {(r["task"], r["test_set"], r["group"]) for r in rows} == {
        ("print_to_mnist", "print_to_mnist", "ood"),
        ("print_to_mnist", "digits_print", "id"),
        ("print_to_mnist", "print_to_handwriting_font", "ood"),
        ("mnist", "mnist", "id"),
        ("mnist", "mnist_to_handwriting_font", "ood"),
    }
    assert all(0 <= r["top1"] <= 100 and r["sve"] > 0 for r in rows)
    assert all(r["memorised"] is not None for r in rows if r["noise_rate"] == 0.3)
    assert all(0 <= r["dead_units"] <= 100 for r in rows)
    nmtune = [r for r in rows if r["method"] == "nmtune"]  # each loss term as it enters the loss
    assert nmtune and all(r["loss_ce"] > 0 and r["loss_cov"] >= 0 and r["loss_svd"] < 0 for r in nmtune)
    assert all(r["loss_ce"] > 0 and r["loss_mse"] is None for r in rows if r["method"] == "linear")
    assert first["ran"] == 3 + 3 * 2 + 3 * 3 and first["cached"] == 0
    out = tmp_path / "study"
    plan = json.loads((out / "plan.json").read_text())  # the plan, its hash in study.json and the report
    assert plan["plan"]["grid"]["random_init"] and plan["plan"]["tasks"]["mnist"] == ["linear", "nmtune"]
    assert json.loads((out / "study.json").read_text())["plan_sha256"] == plan["sha256"]
    assert (
        f"Plan sha256 `{plan['sha256']}` (`plan.json`, written before the first stage)"
        in (out / "report.md").read_text()
    )
    assert study(**kw, dry_run=True)["plan_sha256"] == plan["sha256"]
    assert (out / "report.md").is_file() and (out / "memorisation.csv").is_file()
    assert list((out / "tensorboard" / "pretrain").iterdir()) and list(
        (out / "tensorboard" / "tune").iterdir()
    )

    # the tuning stages again, in a copy, with this process at one thread: each stage computes with
    # the threads its key holds (tuning.threads: 2), so every number is the same to the last digit
    import shutil

    import torch

    shutil.copytree(out, tmp_path / "threads")
    for done in (tmp_path / "threads" / "stages" / "tune").glob("*/done.json"):
        done.unlink()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rerun = study(**{**kw, "out": str(tmp_path / "threads")})
    finally:
        torch.set_num_threads(before)
    assert rerun["ran"] == 3 * 3 and read_results(tmp_path / "threads" / "results.csv") == rows

    again = study(**kw)  # every stage cached: no work
    assert again["ran"] == 0 and again["cached"] == first["ran"]
    header = (out / "report.md").read_text()
    assert f"0 stages ran, {first['ran']} cached" in header and "the stages' own times sum to" in header
    assert "sum to 0.0 min" not in header  # the cached stages' own times still count
    assert read_results(out / "results.csv") == rows

    kw["tuning"] = Tuning(epochs=3, seeds=[0], batch_size=16)  # a tuning setting: only tuning re-runs
    changed = study(**kw)
    assert changed["ran"] == 3 * 3 and changed["cached"] == 3 + 3 * 2
    kw["tuning"] = Tuning(epochs=3, seeds=[0], batch_size=16, threads=1)  # so does its thread count
    assert study(**kw, dry_run=True)["cached"] == 3 + 3 * 2

    # from scratch in another directory, each stage a submitit job in its own process (the local
    # executor runs the job objects `--launcher.kind slurm` submits): the same seed, the same numbers
    kw.update(
        tuning=Tuning(epochs=2, seeds=[0], batch_size=16),
        out=str(tmp_path / "again"),
        grid=Grid(["supervised"], [0.3], [0], random_init=False),
        tasks={"mnist": TaskPlan(["nmtune"])},
        launcher=Launcher(kind="submitit_local", gpus_per_node=0, cpus_per_task=1),
    )
    jobs = study(**kw)
    assert jobs["ran"] == 3 and jobs["cached"] == 0  # pretrain -> features -> tune, one job each
    assert len(list((tmp_path / "again" / "submitit").glob("*/*_result.pkl"))) == 3
    subset = [r for r in rows if r["noise_rate"] == 0.3 and r["task"] == "mnist" and r["method"] == "nmtune"]
    again = read_results(tmp_path / "again" / "results.csv")
    assert len(again) == len(subset) == 2
    # a job has one CPU (cpus_per_task=1), this process two: each stage computes with the threads
    # its key holds (tuning.threads ...), so every number is the same to the last digit
    assert again == subset


def _start_in_its_own_group(cmd: list[str], cwd):
    """``cmd`` started as a scheduler starts a job: its own process group (what ``os.killpg``
    signals), output captured."""
    import subprocess

    from helpers import nml_subprocess_env

    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=nml_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _stoppable_recipe(**bounds: int) -> dict:
    """Overrides of a tiny pre-training slow enough to be stopped mid-way: batches of 4 from 4
    shards, 2 loader workers (they must ignore a SIGTERM sent to the group), bounded by ``bounds``
    (trainer options)."""
    return {
        "trainer": {**bounds, "limit_val_batches": 1},
        "data": {"init_args": {"stream": {"train_shards": 4}, "loader": {"batch_size": 4, "num_workers": 2}}},
    }


def test_sigterm_to_the_study_exits_143_naming_the_stage_and_a_rerun_resumes(tiny_benchmark, tmp_path):
    """``scancel`` / ``timeout`` signal the whole process group: the study must not report success
    (it used to exit 0 with no results.csv); the finished stages are kept for the re-run."""
    import signal
    import subprocess
    import time

    import yaml
    from helpers import PYTHON, nml_subprocess_env

    tiny = _stoppable_recipe(max_steps=40)
    config = {
        "name": "stopped",
        "grid": {"objectives": ["supervised"], "noise_rates": [0.0, 0.3], "seeds": [0], "random_init": False},
        "pretrain": {"supervised": {"config": "pretrain_supervised_study.yaml", "overrides": tiny}},
        "tasks": {"mnist": {"methods": ["linear"]}},
        "benchmark": {"root": str(tiny_benchmark)},
        "features": {"views": 0, "batch_size": 64, "num_workers": 2},
        "tuning": {"epochs": 1, "seeds": [0], "batch_size": 16},
        "launcher": {"parallel": 1},  # one stage after another: the stage stopped is the one running
        "out": str(tmp_path / "study"),
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    cmd = [PYTHON, "-m", "nml.cli", "study", "--config", str(tmp_path / "study.yaml")]
    proc = _start_in_its_own_group(cmd, tmp_path)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "study").glob("stages/pretrain/*/done.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # into the next stage
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    # named: the stage it stopped, or the one it arrived in when that stage could finish first
    assert re.search(r"stopped by SIGTERM (in stage|after stage \S+ \S+ \(finished\))", err), err[-3000:]
    assert "run it again to resume" in err
    # quiet: a line per stage with the progress; what a stage logs (Lightning's lines, its progress)
    # goes to the stage's log.txt, not the terminal
    assert re.search(
        r"\[study\] \(1/\d+\) pretrain \S+: done in [\d.]+ s \(1/\d+ to run done, about \d+:\d\d left\)", err
    )
    assert "Seed set to" not in err and "Tip:" not in err and "epoch 0 step" not in err, err[-3000:]
    finished = next((tmp_path / "study").glob("stages/pretrain/*/done.json")).parent
    stage_log = (finished / "log.txt").read_text()
    assert "Seed set to" in stage_log and "training FLOPs per batch" in stage_log
    assert not (tmp_path / "study" / "results.csv").exists()
    stopped = json.loads((tmp_path / "study" / "plan.json").read_text())  # written before the first stage
    assert json.loads((tmp_path / "study" / "study.json").read_text())["plan_sha256"] == stopped["sha256"]
    plan = subprocess.run(
        [*cmd, "--dry_run"],
        cwd=tmp_path,
        env=nml_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plan.returncode == 0 and json.loads(plan.stdout)["cached"] >= 1


@pytest.mark.slow
def test_a_study_stopped_twice_mid_pretraining_resumes_it_and_matches_an_uninterrupted_run(
    tiny_benchmark, tmp_path
):
    """A preemption (SIGTERM to the process group) in the middle of a pre-training stage saves that
    step; the re-run resumes the stage from it instead of starting over, and a study stopped twice
    ends with the results of one never stopped."""
    import signal
    import time

    import torch
    import yaml
    from helpers import PYTHON

    tiny = _stoppable_recipe(max_steps=50, max_epochs=4)

    def write(name: str) -> list[str]:
        config = {
            "name": name,
            "grid": {"objectives": ["supervised"], "noise_rates": [0.3], "seeds": [0], "random_init": False},
            "pretrain": {"supervised": {"config": "pretrain_supervised_study.yaml", "overrides": tiny}},
            "tasks": {"mnist": {"methods": ["linear"]}},
            "benchmark": {"root": str(tiny_benchmark)},
            "features": {"views": 0, "batch_size": 64, "num_workers": 0},
            "tuning": {"epochs": 1, "seeds": [0], "batch_size": 16},
            "launcher": {"parallel": 1},
            "out": str(tmp_path / name),
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        return [PYTHON, "-m", "nml.cli", "study", "--config", str(tmp_path / f"{name}.yaml")]

    def start(cmd):
        return _start_in_its_own_group(cmd, tmp_path)

    cmd = write("stopped")
    checkpoints = tmp_path / "stopped" / "tensorboard" / "pretrain"
    for step in (20, 40):  # stopped twice, each time just after a step checkpoint
        proc = start(cmd)
        deadline = time.monotonic() + 300
        while (
            not list(checkpoints.glob(f"*/checkpoints/step-step={step}.ckpt")) and time.monotonic() < deadline
        ):
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 143, err[-3000:]
        assert "SIGTERM: stopped after step" in err
        if step == 40:
            assert "resuming this stage's earlier attempt from" in err  # the first stop's save
        saved = torch.load(next(checkpoints.glob("*/checkpoints/last.ckpt")), weights_only=True)
        assert saved["global_step"] >= step
    proc = start(cmd)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming this stage's earlier attempt from" in err and "last.ckpt" in err

    uninterrupted = start(write("whole"))
    _, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err[-3000:]
    done = [
        json.loads(next((tmp_path / n).glob("stages/pretrain/*/done.json")).read_text())
        for n in ("stopped", "whole")
    ]
    assert done[0]["global_step"] == done[1]["global_step"] == 50
    assert done[0]["epochs"] == done[1]["epochs"]  # every epoch's metrics, those before the stops too
    assert read_results(tmp_path / "stopped" / "results.csv") == read_results(
        tmp_path / "whole" / "results.csv"
    )


def test_damaged_stage_records_are_named_and_rerun_and_a_moved_study_reads_its_own_files(tmp_path, caplog):
    import shutil

    from nml.study.plan import Stage
    from nml.study.stages import TuneParams

    stage, out = (
        Stage("tune", "x", TuneParams("linear", 0, 1, 16, 0.0, "tune_linear.yaml", "")),
        tmp_path / "a",
    )
    record = stage.directory(out) / "done.json"
    record.parent.mkdir(parents=True)
    for damaged in ("", '{"cache": "stages/features/y/cache"', "[1, 2]"):
        record.write_text(damaged)
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert stage.done(out) is None  # runs again, not a bare JSONDecodeError for the whole study
        assert str(record) in caplog.text and "runs again" in caplog.text
    record.write_text(json.dumps({"cache": "stages/features/y/cache", "test": {}}))
    assert stage.done(out)["cache"] == str(out / "stages" / "features" / "y" / "cache")
    shutil.copytree(out, tmp_path / "b")  # a copy reads its own stages, not the original's
    assert stage.done(tmp_path / "b")["cache"] == str(tmp_path / "b" / "stages" / "features" / "y" / "cache")


def test_a_second_study_on_the_same_directory_is_refused_naming_the_first(tiny_benchmark, tmp_path):
    from nml.study.config import Benchmark
    from nml.study.lock import study_lock

    kw = {
        "name": "locked",
        "grid": Grid(["supervised"], [0.0], [0], random_init=False),
        "tasks": {"mnist": TaskPlan(["linear"])},
        "benchmark": Benchmark(root=str(tiny_benchmark)),
        "out": str(tmp_path / "s"),
    }
    with study_lock(tmp_path / "s"):  # as another `nml study` on this directory would hold it
        with pytest.raises(SystemExit, match=rf"in use \(pid {os.getpid()}, host .*, since .*\)"):
            study(**kw)
        assert study(**kw, dry_run=True)["stages"] == 3  # reading the plan needs no lock
    assert not list((tmp_path / "s").glob("stages/*/*/done.json"))


def test_files_a_recipe_reads_are_part_of_its_key(tmp_path, monkeypatch):
    """Editing a file a recipe's overrides name (class names) re-runs the pre-training and
    everything after it; it used to be reported as cached with the old contents."""
    from nml.study.config import Features
    from nml.study.plan import build_plan

    monkeypatch.chdir(tmp_path)
    (tmp_path / "names.txt").write_text("a\nb\n")
    names = {"data": {"init_args": {"class_names": "names.txt"}}}
    recipe = {"supervised": Recipe("pretrain_supervised_study.yaml", names)}

    def keys():
        plan = build_plan(
            Grid(["supervised"], [0.0], [0], random_init=False),
            recipe,
            {"mnist": TaskPlan(["linear"])},
            Features(),
            Tuning(),
            "sha",
        )
        return [s.key for s in plan.stages]

    before = keys()
    assert keys() == before  # stable
    (tmp_path / "names.txt").write_text("a\nc\n")
    after = keys()
    assert all(a != b for a, b in zip(before, after, strict=True))  # pretrain, features, tune


def test_the_dry_run_estimates_each_stage_from_its_own_recipe_and_its_finished_stages(
    tiny_benchmark, tmp_path
):
    """A pre-training stage costs overhead + rate x (the recipe's epochs x its samples per epoch):
    5 epochs cost 5x the work of 1, read from the recipe as parsed with the study's arguments; once
    a stage of that kind has finished, its measured seconds per sample set the rate of the rest."""
    from nml.checksums import file_sha256
    from nml.shards.manifest import load_manifest, task_sets
    from nml.shards.spec import resolve_shards
    from nml.study.command import DEFAULT_RECIPES
    from nml.study.config import Benchmark, Features
    from nml.study.estimate import DEFAULT_RATES
    from nml.study.plan import build_plan

    sets = task_sets(load_manifest(tiny_benchmark), "pretraining", tiny_benchmark)
    per_epoch = sum(s.size for s in resolve_shards(sets["train"])[:8])  # the recipe's train_shards: 8
    overhead, rate = DEFAULT_RATES["pretrain/supervised"]
    kw = {
        "name": "estimate",
        "grid": Grid(["supervised"], [0.0], [0, 1]),
        "tasks": {"mnist": TaskPlan(["linear"])},
        "benchmark": Benchmark(root=str(tiny_benchmark)),
        "features": Features(),
        "tuning": Tuning(),
        "out": str(tmp_path / "s"),
    }

    def pretrain_seconds(epochs: int) -> float:
        recipe = Recipe("pretrain_supervised_study.yaml", {"trainer": {"max_epochs": epochs}})
        summary = study(**kw, pretrain={"supervised": recipe}, dry_run=True)
        assert "the defaults of the 2-core CPU machine" in summary["from"], summary["from"]
        return summary["seconds_per_stage"]["pretrain/supervised"]

    assert pretrain_seconds(1) == pytest.approx(overhead + rate * per_epoch, abs=0.1)
    assert pretrain_seconds(5) == pytest.approx(overhead + rate * 5 * per_epoch, abs=0.1)

    recipes = {**DEFAULT_RECIPES, "supervised": Recipe("pretrain_supervised_study.yaml")}
    plan = build_plan(
        kw["grid"],
        recipes,
        kw["tasks"],
        kw["features"],
        kw["tuning"],
        file_sha256(tiny_benchmark / "manifest.json"),
    )
    first = next(s for s in plan.stages if s.kind == "pretrain")
    measured = overhead + 10 * rate * 3 * per_epoch  # a finished 3-epoch stage, 10x slower than the default
    first.directory(tmp_path / "s").mkdir(parents=True)
    (first.directory(tmp_path / "s") / "done.json").write_text(json.dumps({"seconds": measured}))
    summary = study(**kw, pretrain={"supervised": recipes["supervised"]}, dry_run=True)
    assert "this study's finished stages" in summary["from"] and summary["cached"] == 1
    assert summary["stages_to_run"]["pretrain/supervised"] == 1
    assert summary["seconds_per_stage"]["pretrain/supervised"] == pytest.approx(measured, abs=0.1)
    (first.directory(tmp_path / "s") / "done.json").write_text('{"seconds": 12')  # damaged: it runs again
    summary = study(**kw, pretrain={"supervised": recipes["supervised"]}, dry_run=True)
    assert summary["cached"] == 0 and summary["stages_to_run"]["pretrain/supervised"] == 2


def test_a_tuning_recipe_keys_only_its_methods_stages_and_reaches_the_model(tiny_benchmark, tmp_path, capsys):
    """``tuning.recipes.nmtune``: NMTune's loss weights set per study (an ablation) change the keys of
    the NMTune stages alone; a study that sets none keeps the keys it had."""
    from dataclasses import asdict

    from nml.study.config import Benchmark
    from nml.study.plan import keyed
    from nml.study.stages import TuneParams

    common = {"benchmark": Benchmark(root=str(tiny_benchmark)), "dry_run": True}
    tasks = {"print_to_mnist": TaskPlan(["linear", "nmtune"])}
    grid = Grid(["supervised"], [0.0], [0], random_init=False)

    def keys(**kw) -> dict[str, str]:  # the dry run's plan: "[study] kind label key state" per stage
        capsys.readouterr()
        study(**common, tasks=tasks, grid=grid, out=str(tmp_path / "s"), **kw)
        rows = [ln.split() for ln in capsys.readouterr().err.splitlines() if ln.startswith("[study] ")]
        return {r[2]: r[3] for r in rows}

    before = keys()
    after = keys(tuning=Tuning(recipes={"nmtune": {"loss": {"mse_weight": 0.5, "reference_dim": None}}}))
    assert before.keys() == after.keys()
    assert {label for label in before if before[label] != after[label]} == {
        label for label in before if label.endswith("-nmtune-t0")
    }
    params = TuneParams("linear", 0, 30, 64, 0.0, "tune_linear.yaml", "")  # no options: the key as before
    assert keyed(params) == {k: v for k, v in asdict(params).items() if k != "model"}


def test_a_stage_that_fails_after_a_sigterm_was_noted_stops_the_study(tmp_path, monkeypatch):
    """A SIGTERM noted during a Lightning run (the study's handler composed into Lightning's) that the
    run turns into another error (Lightning finalizing a logger whose writer is closed) is a stop,
    not a stage failure: the study exits as stopped and a re-run resumes the stage."""
    from types import SimpleNamespace

    import nml.study.runner as runner

    def noted_then_failed(stage, out, root):
        runner._signalled = True  # what raise_stopped does inside Lightning's handler
        raise OSError("Writer is closed")

    stage = SimpleNamespace(kind="tune", label="c-t-linear-t0", deps=[], done=lambda out: None)
    stage.directory = lambda out: tmp_path / "stages" / "tune" / "x"
    monkeypatch.setattr(runner, "run_one", noted_then_failed)
    with pytest.raises(runner.StudyStopped) as stopped:
        runner.execute(SimpleNamespace(stages=[stage]), tmp_path, "")
    assert stopped.value.where == "in stage tune c-t-linear-t0"
    runner._signalled = False

    def failed(stage, out, root):  # without a SIGTERM the same error is the stage's failure
        raise OSError("Writer is closed")

    monkeypatch.setattr(runner, "run_one", failed)
    with pytest.raises(runner.StudyFailed, match="1 stage"):
        runner.execute(SimpleNamespace(stages=[stage]), tmp_path, "")


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _parallel_study(tiny_benchmark, tmp_path, name: str, parallel: int, **trainer) -> list[str]:
    import yaml
    from helpers import PYTHON

    config = {
        "name": name,
        "grid": {"objectives": ["supervised"], "noise_rates": [0.0, 0.3], "seeds": [0], "random_init": False},
        "pretrain": {
            "supervised": {
                "config": "pretrain_supervised_study.yaml",
                "overrides": _stoppable_recipe(**trainer),
            }
        },
        "tasks": {"mnist": {"methods": ["linear", "nmtune"]}},
        "benchmark": {"root": str(tiny_benchmark)},
        "features": {"views": 2, "batch_size": 64, "num_workers": 0},
        "tuning": {"epochs": 1, "seeds": [0], "batch_size": 16},
        "launcher": {"parallel": parallel},
        "out": str(tmp_path / name),
    }
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return [PYTHON, "-m", "nml.cli", "study", "--config", str(tmp_path / f"{name}.yaml")]


@pytest.mark.slow
def test_stages_side_by_side_give_the_sequential_results_and_stop_and_resume_on_sigterm(
    tiny_benchmark, tmp_path
):
    """Two stages at once (worker processes, each stage at its declared threads) give results.csv
    identical to one stage after another; a SIGTERM to the parallel study's process group stops every
    running stage (exit 143, no process of the study left), and a re-run finishes with the same
    results."""
    import signal
    import subprocess
    import time

    from helpers import nml_subprocess_env

    def run(cmd) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, cwd=tmp_path, env=nml_subprocess_env(), capture_output=True, text=True, timeout=600
        )

    sequential = run(_parallel_study(tiny_benchmark, tmp_path, "sequential", 1, max_steps=60))
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    parallel = run(_parallel_study(tiny_benchmark, tmp_path, "parallel", 2, max_steps=60))
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    assert "up to 2 at once" in parallel.stderr
    assert re.search(r"\[study\] \(\d+/8\) tune \S+: done in [\d.]+ s \(8/8 to run done", parallel.stderr)
    expected = (tmp_path / "sequential" / "results.csv").read_text()
    assert (tmp_path / "parallel" / "results.csv").read_text() == expected  # to the last digit

    cmd = _parallel_study(tiny_benchmark, tmp_path, "stopped", 2, max_steps=60)
    proc = _start_in_its_own_group(cmd, tmp_path)

    def training() -> int:  # pre-training stages whose fit has started
        logs = (tmp_path / "stopped").glob("stages/pretrain/*/log.txt")
        return sum("training FLOPs per batch" in p.read_text() for p in logs)

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and training() < 2:
        time.sleep(0.1)  # both pre-training stages are training, side by side
    running = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err[-3000:]
    assert re.search(r"stopped by SIGTERM in stage\(s\) pretrain \S+, pretrain \S+", err), err[-3000:]
    time.sleep(1.0)
    assert len(running) >= 2 and not [p for p in running if _alive(p)]  # no stage left running
    assert not (tmp_path / "stopped" / "results.csv").exists()
    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming this stage's earlier attempt" in "".join(
        p.read_text() for p in (tmp_path / "stopped").glob("stages/pretrain/*/log.txt")
    )
    assert (tmp_path / "stopped" / "results.csv").read_text() == expected


def test_the_local_launcher_runs_as_many_stages_at_once_as_the_cores_allow():
    assert Launcher().stages_at_once(16) == 8 and Launcher().stages_at_once(2) == 1  # one per two cores
    assert Launcher().stages_at_once(1) == 1
    assert Launcher().stages_at_once(16, gpu=True) == 1  # the stages would share the one device
    assert Launcher(parallel=3).stages_at_once(2, gpu=True) == 3  # asked for: as asked
    with pytest.raises(ValueError, match="launcher.parallel: expected >= 1, got 0"):
        Launcher(parallel=0)
