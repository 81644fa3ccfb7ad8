"""Multi-node DDP, simulated on this machine: two `nml fit` processes as two nodes of one device
each (gloo on CPU), as a cluster launcher would start them."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter

import pytest
from helpers import PYTHON, REPO, free_port, nml_subprocess_env

pytestmark = pytest.mark.slow


def _env(**extra) -> dict[str, str]:
    env = nml_subprocess_env()
    env["PYTHONPATH"] = str(REPO / "tests") + os.pathsep + env["PYTHONPATH"]  # key_recorder.KeyRecorder
    env.update(extra)
    return env


def _nodes(argv: list[str], logs) -> list[tuple[str, str]]:
    """Run ``nml argv`` as node 0 and node 1 (Lightning's MASTER_ADDR / MASTER_PORT / NODE_RANK);
    output goes to files (a full pipe would block one node while the other waits for it)."""
    logs.mkdir(parents=True)
    port, procs = str(free_port()), []
    for r in (0, 1):
        out, err = open(logs / f"node{r}.out", "w"), open(logs / f"node{r}.err", "w")
        env = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(r))
        procs.append(
            subprocess.Popen([PYTHON, "-m", "nml.cli", *argv], env=env, cwd=logs, stdout=out, stderr=err)
        )
    try:
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:
            p.kill()
    results = [((logs / f"node{r}.out").read_text(), (logs / f"node{r}.err").read_text()) for r in (0, 1)]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    return results


def test_two_simulated_nodes_train_on_disjoint_samples_and_evaluate_exactly(tiny_benchmark, tmp_path):
    common = ["--config", "pretrain_supervised.yaml", "--data.root", str(tiny_benchmark), "--data.num_workers", "0",
              "--trainer.accelerator", "cpu", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]  # fmt: skip
    nodes = ["--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp"]
    fit = ["fit", *common, *nodes, "--data.batch_size", "16", "--trainer.max_steps", "6",
           "--trainer.limit_val_batches", "2", "--trainer.callbacks+=key_recorder.KeyRecorder",
           f"--trainer.callbacks.out_dir={tmp_path / 'keys'}"]  # fmt: skip
    _nodes(fit, tmp_path / "fit")
    ranks = [json.loads((tmp_path / "keys" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [len(r["batches"]) for r in ranks] == [6, 6]
    seen = [Counter(k for b in r["batches"] for k in b) for r in ranks]
    assert not set(seen[0]) & set(seen[1])  # the two nodes read disjoint parts of the epoch

    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    test = ["test", *common, "--ckpt_path", str(ckpt), "--trainer.enable_progress_bar", "false"]
    single = subprocess.run([PYTHON, "-m", "nml.cli", *test], env=_env(), cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    outs = _nodes([*test, *nodes], tmp_path / "test")
    # every test sample counted once over the two nodes: the same metrics as one process
    assert json.loads(outs[0][0])["metrics"] == pytest.approx(json.loads(single.stdout)["metrics"], abs=1e-6)
    assert json.loads(outs[0][0])["samples"] == json.loads(single.stdout)["samples"]
    assert json.loads(single.stdout)["samples"]["glyphs_heldout"] == 52 * 3
    assert outs[1][0].strip() == ""  # only global rank 0 prints the JSON
