"""Multi-node DDP, simulated on this machine: two processes as two nodes of one device each (gloo on
CPU), started as each cluster launcher starts them: Lightning's own variables (``NODE_RANK``),
``torchrun --nnodes 2`` and SLURM's variables. A node killed with SIGKILL mid-epoch takes the run
down within a bounded time, and ``--ckpt_path last`` resumes it to the uninterrupted run's losses."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import PYTHON, REPO, free_port, nml_subprocess_env

from nml.cli.main import main

pytestmark = pytest.mark.slow

NODES = ["--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp"]


def _env(**extra) -> dict[str, str]:
    env = nml_subprocess_env()
    env["PYTHONPATH"] = str(REPO / "tests") + os.pathsep + env["PYTHONPATH"]  # key_recorder's callbacks
    env.update(extra)
    return env


def _launch(launcher: str, rank: int, port: int, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment of node ``rank`` of 2, as ``launcher`` starts it."""
    nml = ["-m", "nml.cli", *argv]
    if launcher == "lightning":  # what Lightning reads when it launches nothing itself
        return [PYTHON, *nml], _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(rank))
    if launcher == "torchrun":  # the README's torchrun command, one per node
        run = [
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc_per_node",
            "1",
            "--node_rank",
            str(rank),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
        ]
        return [PYTHON, *run, *nml], _env()
    raise ValueError(launcher)


def _nodes(
    argv: list[str], logs: Path, launcher: str = "lightning", fail: bool = False, timeout: float = 300
):
    """Run ``nml argv`` as nodes 0 and 1; (stdout, stderr) per node. Output goes to files (a full
    pipe would block one node while the other waits for it)."""
    logs.mkdir(parents=True)
    port, procs = free_port(), []
    for r in (0, 1):
        cmd, env = _launch(launcher, r, port, argv)
        out, err = open(logs / f"node{r}.out", "w"), open(logs / f"node{r}.err", "w")
        procs.append(subprocess.Popen(cmd, env=env, cwd=logs, stdout=out, stderr=err, start_new_session=True))
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
    results = [((logs / f"node{r}.out").read_text(), (logs / f"node{r}.err").read_text()) for r in (0, 1)]
    for p, (_, err) in zip(procs, results, strict=True):
        assert (p.returncode != 0) if fail else (p.returncode == 0), err[-3000:]
    return results


def _fit_options(root: Path, runs: Path, records: Path) -> list[str]:
    """The options of the runs here after ``--config pretrain_supervised.yaml``, nodes aside."""
    return [
        "--trainer.callbacks.at_fit_end=false",  # the config's last callback, FeatureSpectrum: no spectra here
        "--data.root",
        str(root),
        "--data.loader.num_workers",
        "0",
        "--trainer.accelerator",
        "cpu",
        "--trainer.logger.init_args.save_dir",
        str(runs),
        "--data.loader.batch_size",
        "16",
        "--trainer.max_steps",
        "6",
        "--trainer.val_check_interval",
        "3",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.callbacks+=key_recorder.StepLosses",
        f"--trainer.callbacks.out_dir={records}",
    ]


def _losses(records: Path, rank: int = 0) -> list[tuple[int, float]]:
    lines = (records / f"rank{rank}.losses.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


FAKE_SRUN = """#!/bin/sh
# stands in for srun: the job's tasks as local processes, with the variables srun gives each task
pids=""
for r in $(seq 0 $((SLURM_NTASKS - 1))); do
  SLURM_PROCID=$r SLURM_LOCALID=0 SLURM_NODEID=$r "$@" > task$r.out 2> task$r.err &
  pids="$pids $!"
done
status=0
for p in $pids; do wait $p || status=1; done
exit $status
"""


@pytest.fixture(scope="module")
def two_node_fit(tiny_benchmark, tmp_path_factory) -> Path:
    """The reference run: 6 steps of the supervised config on two nodes, submitted as the README
    says, ``tools/slurm/fit.sbatch`` (run by bash, with a stand-in srun and the variables sbatch
    sets for ``--nodes 2 --ntasks-per-node 1``)."""
    out = tmp_path_factory.mktemp("two_node_fit")
    (out / "bin").mkdir()
    (out / "bin" / "srun").write_text(FAKE_SRUN)
    (out / "bin" / "srun").chmod(0o755)
    sbatch = {
        "SLURM_JOB_ID": "777",
        "SLURM_JOB_NAME": "nml-fit",
        "SLURM_NTASKS": "2",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NODELIST": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "PATH": os.pathsep.join([str(out / "bin"), str(Path(PYTHON).parent), os.environ["PATH"]]),
    }
    fit = _fit_options(tiny_benchmark, out / "runs", out / "losses")  # the template sets nodes and devices
    run = subprocess.run(
        [
            "bash",
            str(REPO / "tools" / "slurm" / "fit.sbatch"),
            "pretrain_supervised.yaml",
            *fit,
            "--trainer.strategy",
            "ddp",
            "--trainer.callbacks+=key_recorder.KeyRecorder",
            f"--trainer.callbacks.out_dir={out / 'keys'}",
        ],
        env=_env(**sbatch),
        cwd=out,
        capture_output=True,
        text=True,
        timeout=300,
    )
    tasks = [(out / f"task{r}.err").read_text() if (out / f"task{r}.err").exists() else "" for r in (0, 1)]
    assert run.returncode == 0, (run.stderr[-2000:], tasks[0][-3000:], tasks[1][-3000:])
    assert len(list((out / "runs" / "pretrain_supervised").glob("run-*/checkpoints/last.ckpt"))) == 1
    assert "MEMBER: 2/2" in tasks[1]  # SLURM_PROCID 1: global rank 1 of 2
    return out


def test_two_nodes_train_on_disjoint_samples_and_evaluate_exactly(
    tiny_benchmark, two_node_fit, tmp_path, monkeypatch, capsys
):
    ranks = [json.loads((two_node_fit / "keys" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [len(r["batches"]) for r in ranks] == [6, 6]
    seen = [Counter(k for b in r["batches"] for k in b) for r in ranks]
    assert not set(seen[0]) & set(seen[1])  # the two nodes read disjoint parts of the epoch

    ckpt = next((two_node_fit / "runs").rglob("last.ckpt"))
    test = [
        "test",
        "--config",
        "pretrain_supervised.yaml",
        "--data.root",
        str(tiny_benchmark),
        "--data.loader.num_workers",
        "0",
        "--trainer.accelerator",
        "cpu",
        "--ckpt_path",
        str(ckpt),
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks.at_test_end=false",
    ]
    monkeypatch.chdir(tmp_path)
    assert main(test) == 0  # one process: this one
    single = json.loads(capsys.readouterr().out)
    outs = _nodes([*test, *NODES], tmp_path / "test")
    # every test sample counted once over the two nodes: the same metrics as one process
    assert json.loads(outs[0][0])["metrics"] == pytest.approx(single["metrics"], abs=1e-6)
    assert json.loads(outs[0][0])["samples"] == single["samples"]
    assert single["samples"]["glyphs_heldout"] == 44 * 3
    assert outs[1][0].strip() == ""  # only global rank 0 prints the JSON


def test_torchrun_nodes_killed_mid_epoch_resume_from_last_to_the_same_losses(
    tiny_benchmark, two_node_fit, tmp_path
):
    """torchrun, two nodes: node 1 is SIGKILLed after step 5 of a 10-step epoch (step checkpoints every
    2 steps); node 0 must fail within a bounded time, not hang. The same command with ``--ckpt_path
    last`` resumes from step 4: every logged loss and the final validation metrics equal the
    uninterrupted run's (which was launched by Lightning's variables: the launchers agree too)."""
    fit = [
        "fit",
        "--config",
        "pretrain_supervised.yaml",
        *NODES,
        *_fit_options(tiny_benchmark, tmp_path / "runs", tmp_path / "losses"),
    ]
    fit += [
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.filename=every2-{step}",
        "--trainer.callbacks.every_n_train_steps=2",
    ]
    kill = [
        "--trainer.callbacks+=key_recorder.SendSignals",
        '--trainer.callbacks.signals={"5": "SIGKILL"}',
        "--trainer.callbacks.rank=1",
    ]
    t0 = time.monotonic()
    _nodes([*fit, *kill], tmp_path / "killed", launcher="torchrun", fail=True, timeout=240)
    print(f"the killed run ended in {time.monotonic() - t0:.0f} s")  # bounded by the timeout above
    _nodes([*fit, "--ckpt_path", "last"], tmp_path / "resumed", launcher="torchrun")
    resumed_log = (tmp_path / "resumed" / "node0.err").read_text()
    assert "--ckpt_path last: resuming every2-step=4.ckpt" in resumed_log, resumed_log[-3000:]

    for rank in (0, 1):  # each rank logs the loss of its own half of the global batch
        reference = dict(_losses(two_node_fit / "losses", rank))
        assert sorted(reference) == [1, 2, 3, 4, 5, 6]
        logged = _losses(tmp_path / "losses", rank)
        assert {s for s, _ in logged} == set(reference)  # the killed run's steps, then 5-6 again
        assert all(loss == reference[step] for step, loss in logged), (rank, logged, reference)
    final = json.loads((tmp_path / "losses" / "rank0.final.json").read_text())
    ref_final = json.loads((two_node_fit / "losses" / "rank0.final.json").read_text())
    val = {k for k in ref_final if k.startswith("val/")}
    assert val and {k: final[k] for k in val} == {k: ref_final[k] for k in val}


def test_the_sbatch_template_names_the_run_after_the_command_so_a_resubmit_resumes(tmp_path):
    """A requeue keeps its job id, a resubmit gets a new one: both must land in the same run directory
    (``--ckpt_path last`` resumes there), and another command in another one."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text('#!/bin/sh\necho "$@" >> srun.log\n')
    (tmp_path / "bin" / "srun").chmod(0o755)

    def version(job_id: str, *args: str) -> str:
        env = _env(
            SLURM_JOB_ID=job_id,
            SLURM_JOB_NUM_NODES="1",
            SLURM_NTASKS_PER_NODE="1",
            PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        )
        subprocess.run(
            ["bash", str(REPO / "tools" / "slurm" / "fit.sbatch"), "c.yaml", *args],
            env=env,
            cwd=tmp_path,
            check=True,
            timeout=30,
        )
        words = (tmp_path / "srun.log").read_text().splitlines()[-1].split()
        return words[words.index("--trainer.logger.init_args.version") + 1]

    first = version("100", "--data.noise.rate", "0.4")
    assert first.startswith("run-") and version("101", "--data.noise.rate", "0.4") == first  # resubmitted
    assert version("102", "--data.noise.rate", "0.2") != first
