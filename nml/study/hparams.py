"""The study's grid in TensorBoard's HParams dashboard: one session per row of ``results.csv``.

Each row (cell x task x method x test set) becomes a run under ``OUT/tensorboard/hparams/`` whose
hyper-parameters are the row's identity (objective, init, noise rate, seed, task, method, test set,
group) and whose metrics are its numbers (top-1, the spectrum's SVE/LSVR/p1/effective rank, dead
units, memorisation, ...). TensorBoard's HParams tab then filters, sorts and plots the whole grid
(parallel coordinates: noise rate -> method -> OOD top-1) instead of showing the stages' runs one by
one. Rewritten whole with ``results.csv``, so its sessions are always that file's rows.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

IDENTITY = ("objective", "init", "noise_rate", "seed", "task", "method", "test_set", "group")
METRICS = (
    "top1",
    "top1_tune_sd",
    "sve",
    "lsvr",
    "p1",
    "effective_rank",
    "dead_units",
    "memorised",
    "acc_noisy",
    "retrieval_noisy",
    "retrieval_clean",
)
DIRECTORY = Path("tensorboard") / "hparams"


def _hparams(row: dict) -> dict:
    """The row's identity as HParams values (str, int or float; no None): a random or frozen
    encoder's noise rate, which it does not have, is its init (``random``, ``fixed``)."""
    values = {k: row.get(k) for k in IDENTITY}
    if values["noise_rate"] is None:
        values["noise_rate"] = str(values["init"])
    else:
        values["noise_rate"] = f"{float(values['noise_rate']):g}"  # a category: the grid's few rates
    values["seed"] = int(values["seed"]) if values["seed"] is not None else -1
    return {k: (v if isinstance(v, int | float) else str(v)) for k, v in values.items()}


def _run_name(row: dict, i: int) -> str:
    name = "-".join(str(_hparams(row)[k]) for k in IDENTITY)
    return f"{i:04d}-{re.sub(r'[^A-Za-z0-9_.=-]+', '_', name)}"


def write_hparams(rows: list[dict], out: Path) -> Path:
    """Write one HParams session per row under ``out/tensorboard/hparams`` (replacing what an
    earlier write left); returns that directory."""
    from torch.utils.tensorboard import SummaryWriter

    root = out / DIRECTORY
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for i, row in enumerate(rows):
        metrics = {f"results/{k}": float(row[k]) for k in METRICS if row.get(k) is not None}
        with SummaryWriter(log_dir=str(root / _run_name(row, i))) as writer:
            writer.add_hparams(_hparams(row), metrics, run_name=".")
    return root
