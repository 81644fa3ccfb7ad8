"""Preemption: SLURM's requeue signal and SIGTERM save checkpoints, the job exits cleanly, and the
same command with ``--ckpt_path last`` continues the run with the uninterrupted run's losses."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from nml.cli.main import main

pytestmark = pytest.mark.slow


def _fit(root: Path, runs: Path, records: Path, *extra: str) -> int:
    return main(
        [
            "fit",
            "--config",
            "pretrain_supervised.yaml",
            "--data.root",
            str(root),
            "--data.loader.num_workers",
            "0",
            "--data.loader.batch_size",
            "16",
            "--trainer.accelerator",
            "cpu",
            "--trainer.max_steps",
            "6",
            "--trainer.limit_val_batches",
            "0",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.callbacks.at_fit_end=false",  # the config's last callback, FeatureSpectrum: no spectra here
            "--trainer.logger.init_args.save_dir",
            str(runs),
            "--trainer.callbacks+=key_recorder.StepLosses",
            f"--trainer.callbacks.out_dir={records}",
            "--ckpt_path",
            "last",
            *extra,
        ]
    )


def _losses(records: Path) -> list[tuple[int, float]]:
    lines = (records / "rank0.losses.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def test_slurm_requeue_signal_and_sigterm_save_and_the_same_command_resumes(
    tiny_benchmark, tmp_path, monkeypatch, caplog
):
    """The sbatch template's cycle, in-process: SLURM sends SIGUSR1 (``--signal=SIGUSR1@90``):
    Lightning saves ``hpc_ckpt_1.ckpt`` and runs ``scontrol requeue``; SLURM then sends SIGTERM: the
    run stops after that step, saves it as ``last.ckpt`` and exits with 143. The requeued job runs
    the same command (``--ckpt_path last``) and continues the same run directory: its losses are
    the uninterrupted run's, and so are the final weights."""
    reference = _fit(tiny_benchmark, tmp_path / "ref", tmp_path / "rec_ref")
    assert reference == 0 and [s for s, _ in _losses(tmp_path / "rec_ref")] == [1, 2, 3, 4, 5, 6]

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    slurm = {
        "SLURM_NTASKS": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "nml-fit",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "127.0.0.1",
    }
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # Lightning's default_root_dir: where hpc_ckpt_N.ckpt goes

    with caplog.at_level("INFO"):
        first = _fit(
            tiny_benchmark,
            tmp_path / "runs",
            tmp_path / "rec",
            "--trainer.callbacks+=key_recorder.SendSignals",
            '--trainer.callbacks.signals={"2": "SIGUSR1", "3": "SIGTERM"}',
        )
    assert first == 143
    assert "--ckpt_path last: no checkpoint under" in caplog.text  # the job's first start
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 2
    last = tmp_path / "runs" / "pretrain_supervised" / "version_0" / "checkpoints" / "last.ckpt"
    assert not last.is_symlink() and torch.load(last, weights_only=True)["global_step"] == 3
    assert "SIGTERM: stopped after step 3" in caplog.text and "--ckpt_path last" in caplog.text

    caplog.clear()
    with caplog.at_level("INFO"):
        assert _fit(tiny_benchmark, tmp_path / "runs", tmp_path / "rec") == 0  # the requeued job
    assert "--ckpt_path last: resuming last.ckpt in" in caplog.text and "version_0" in caplog.text
    assert not (tmp_path / "runs" / "pretrain_supervised" / "version_1").exists()  # the same run directory
    assert _losses(tmp_path / "rec") == _losses(tmp_path / "rec_ref")  # steps 1-3, then 4-6 resumed: equal
    final = torch.load(last, weights_only=True)["state_dict"]
    ref = torch.load(next((tmp_path / "ref").rglob("last.ckpt")), weights_only=True)["state_dict"]
    assert final.keys() == ref.keys() and all(torch.equal(final[k], ref[k]) for k in ref)


def test_an_unreachable_rendezvous_fails_within_the_timeout_naming_it(
    tiny_benchmark, tmp_path, monkeypatch, capsys
):
    """Node 1 of 2 whose MASTER_ADDR:MASTER_PORT has nothing listening: an error naming them after
    the strategy's timeout, not a hang."""
    import time

    from helpers import free_port
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    port = free_port()
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(
        rank_zero_only, "rank", rank_zero_only.rank
    )  # the DDP setup makes this process rank 1
    t0 = time.monotonic()
    code = main(
        [
            "fit",
            "--config",
            "pretrain_supervised.yaml",
            "--data.root",
            str(tiny_benchmark),
            "--data.loader.num_workers",
            "0",
            "--trainer.accelerator",
            "cpu",
            "--trainer.num_nodes",
            "2",
            "--trainer.devices",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.strategy",
            "lightning.pytorch.strategies.DDPStrategy",
            "--trainer.strategy.timeout",
            "0:00:03",
            "--trainer.strategy.process_group_backend",
            "gloo",
        ]
    )
    assert code == 1 and time.monotonic() - t0 < 60
    err = capsys.readouterr().err
    assert f"MASTER_ADDR=127.0.0.1 MASTER_PORT={port}" in err and "--trainer.strategy.timeout" in err


def test_signals_sent_to_the_process_group_reach_only_the_main_process(tiny_benchmark, tmp_path):
    """A scheduler signals the whole process group, DataLoader workers included: SIGUSR1 at step 2
    must requeue once (not once per worker) and SIGTERM at step 3 must save step 3 and exit 143,
    not end in "DataLoader worker ... is killed by signal". The run is its own session, 2 workers."""
    import subprocess

    from helpers import PYTHON, nml_subprocess_env

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = nml_subprocess_env() | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{nml_subprocess_env()['PYTHONPATH']}",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_ID": "4343",
        "SLURM_JOB_NAME": "nml-fit",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "127.0.0.1",
    }
    runs = tmp_path / "runs"
    args = [
        "fit",
        "--config",
        "pretrain_supervised.yaml",
        "--data.root",
        str(tiny_benchmark),
        "--data.loader.num_workers",
        "2",
        "--data.loader.batch_size",
        "16",
        "--trainer.accelerator",
        "cpu",
        "--trainer.max_steps",
        "6",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks.at_fit_end=false",
        "--trainer.logger.init_args.save_dir",
        str(runs),
        "--trainer.callbacks+=key_recorder.SendSignals",
        '--trainer.callbacks.signals={"2": "SIGUSR1", "3": "SIGTERM"}',
        "--trainer.callbacks.group=true",
    ]
    r = subprocess.run(
        [PYTHON, "-m", "nml.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    assert r.returncode == 143, r.stderr[-3000:]
    assert "is killed by signal" not in r.stderr
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4343"]  # once: the main process
    assert [p.name for p in tmp_path.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_1.ckpt"]
    last = runs / "pretrain_supervised" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3


def _late_worker_init() -> None:
    import time

    from nml.data.pipeline import ignore_stop_signals

    time.sleep(0.5)  # a worker still starting up when the group's SIGTERM arrives
    ignore_stop_signals(0)


def test_a_stop_signal_while_a_worker_starts_does_not_kill_it():
    """Workers are created with the stop signals blocked: a SIGTERM sent to the process group
    between a worker's fork and its worker_init_fn stays pending and is then ignored."""
    import multiprocessing as mp
    import signal

    from nml.data.pipeline import stop_signals_blocked

    ctx = mp.get_context("fork")
    with stop_signals_blocked():
        assert signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        worker = ctx.Process(target=_late_worker_init)
        worker.start()
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # this process: as before
    os.kill(worker.pid, signal.SIGTERM)
    worker.join(10)
    assert worker.exitcode == 0
    unprotected = ctx.Process(target=_late_worker_init)
    unprotected.start()
    time.sleep(0.1)
    os.kill(unprotected.pid, signal.SIGTERM)
    unprotected.join(10)
    assert unprotected.exitcode == -signal.SIGTERM  # what the block prevents


def _ignore_sigterm_and_wait(ready) -> None:
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as nml's loader workers do
    ready.set()
    time.sleep(600)


def test_worker_processes_that_ignore_sigterm_are_stopped_before_exit():
    """After a stop signal, nml fit and nml study stop the loader workers an interrupted loop left:
    they ignore SIGTERM, which is what multiprocessing sends its children at exit, so the exit would
    otherwise wait on them for ever (a study stopped mid-epoch hung so)."""
    import multiprocessing

    from nml.data.loading import stop_worker_processes

    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    worker = ctx.Process(target=_ignore_sigterm_and_wait, args=(ready,), daemon=True)
    worker.start()
    assert ready.wait(30)
    worker.terminate()  # multiprocessing's own exit-time stop: ignored
    worker.join(1)
    assert worker.is_alive()
    assert stop_worker_processes(grace=10) >= 1
    assert not worker.is_alive()


@pytest.mark.slow
def test_a_script_that_leaves_persistent_workers_running_exits(tmp_path):
    """A loader's persistent workers ignore SIGTERM, which multiprocessing stops its children with
    at exit before joining them: a script that reads an epoch and ends without closing the loader
    hung at exit until nml shut tracked workers down in order from an exit handler."""
    import subprocess
    import sys

    from helpers import nml_subprocess_env, write_shards

    spec = write_shards(tmp_path / "d", [40, 40])
    script = (
        "from nml.data.modules import ClassificationShards\n"
        f"dm = ClassificationShards(train={spec!r}, num_classes=5, image={{'image_size': 8}},\n"
        "    loader={'batch_size': 8, 'num_workers': 2, 'persistent_workers': True})\n"
        "dm.setup('fit')\n"
        "print(sum(len(b['key']) for b in dm.train_dataloader()))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=nml_subprocess_env()
    )
    assert r.returncode == 0 and r.stdout.strip() == "80", r.stderr[-2000:]
