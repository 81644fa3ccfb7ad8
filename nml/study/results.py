"""The study's tidy outputs, assembled from the finished stages.

* ``results.csv``: one row per objective x init x noise rate x seed x method x task x test set:
  top-1 (mean over tuning seeds, in %), the test set's group (id/ood), the spectrum of the frozen
  features on it (SVE, LSVR, p1, effective rank, and ``dead_units``: the % of feature units that are
  0 on every sample of the set), the pre-training run's final training metrics (``memorised`` and
  ``acc_noisy`` for supervised, ``retrieval_noisy`` / ``retrieval_clean`` for CLIP), and the tuning
  run's last-epoch loss terms as they enter its loss (``loss_ce``, ``loss_mse``, ``loss_cov``,
  ``loss_svd``; mean over tuning seeds; empty where a method has no such term).
* ``memorisation.csv``: the training metrics of every pre-training run per epoch.
* ``singular_values.npz``: the spectrum of every (cell, test set), keys ``<cell>/<task>/<test set>``.
* ``plan.json``: the plan (grid, tasks' methods, declared analysis) and its sha256, written before
  the first stage.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from nml.study.plan import Plan

COLUMNS = [
    "objective",
    "init",
    "noise_rate",
    "seed",
    "method",
    "task",
    "test_set",
    "group",
    "top1",
    "top1_tune_sd",
    "tune_seeds",
    "sve",
    "lsvr",
    "p1",
    "effective_rank",
    "dead_units",
    "memorised",
    "acc_noisy",
    "retrieval_noisy",
    "retrieval_clean",
    "pretrain_epochs",
    "loss_ce",
    "loss_mse",
    "loss_cov",
    "loss_svd",
]
TRAIN_COLUMNS = ("memorised", "acc_noisy", "retrieval_noisy", "retrieval_clean")
LOSS_TERMS = {
    f"loss_{k}": f"train/{w}{k}_epoch" for k, w in (("ce", ""), ("mse", "w_"), ("cov", "w_"), ("svd", "w_"))
}


def _loss_terms(runs: list[dict]) -> dict:
    """The last epoch's loss terms of a method's tuning runs (mean over tuning seeds)."""
    out = {}
    for column, key in LOSS_TERMS.items():
        values = [r.get("train", {}).get(key) for r in runs]
        out[column] = round(statistics.fmean(values), 6) if values and None not in values else ""
    return out


def collect(plan: Plan, out: Path, tasks: dict) -> list[dict]:
    rows = []
    for cell in plan.cells:
        b = plan.backbone[cell.label].done(out)
        final = b.get("final", {})
        for task, task_plan in tasks.items():
            f = plan.features[(cell.label, task)].done(out)
            for method in task_plan.methods:
                runs = [s.done(out) for s in plan.tunes[(cell.label, task, method)]]
                losses = _loss_terms(runs)
                for key in sorted(runs[0]["test"]):
                    parts = key.split("/")
                    if len(parts) != 4 or parts[3] != "top1":
                        continue
                    group, name = parts[1], parts[2]
                    if task_plan.test_sets is not None and name not in task_plan.test_sets:
                        continue
                    values = [100.0 * r["test"][key] for r in runs]
                    spectrum = f["spectra"].get(name, {})
                    rows.append(
                        {
                            "objective": cell.objective,
                            "init": cell.init,
                            "noise_rate": "" if cell.noise_rate is None else cell.noise_rate,
                            "seed": cell.seed,
                            "method": method,
                            "task": task,
                            "test_set": name,
                            "group": group,
                            "top1": round(statistics.fmean(values), 4),
                            "top1_tune_sd": round(statistics.stdev(values), 4) if len(values) > 1 else "",
                            "tune_seeds": len(values),
                            **{
                                k: round(spectrum[k], 6) if k in spectrum else ""
                                for k in ("sve", "lsvr", "p1", "effective_rank")
                            },
                            "dead_units": round(100.0 * spectrum["dead_units"], 4)
                            if "dead_units" in spectrum
                            else "",
                            **{
                                k: round(100.0 * final[f"train/{k}"], 4) if f"train/{k}" in final else ""
                                for k in TRAIN_COLUMNS
                            },
                            "pretrain_epochs": len(b.get("epochs", [])),
                            **losses,
                        }
                    )
    return rows


def write_results(plan: Plan, out: Path, tasks: dict) -> Path:
    import numpy as np

    rows = collect(plan, out, tasks)
    path = out / "results.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    curves = []
    for cell in plan.cells:
        for e in plan.backbone[cell.label].done(out).get("epochs", []):
            curves.append(
                {"objective": cell.objective, "noise_rate": cell.noise_rate, "seed": cell.seed, **e}
            )
    keys = sorted({k for c in curves for k in c} - {"objective", "noise_rate", "seed", "epoch"})
    with open(out / "memorisation.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["objective", "noise_rate", "seed", "epoch", *keys])
        w.writeheader()
        w.writerows(curves)
    values, seen = {}, set()
    for (label, task), stage in plan.features.items():
        if stage.key in seen:  # a frozen encoder's features, shared by its replicates: stored once
            continue
        seen.add(stage.key)
        with np.load(stage.directory(out) / "singular_values.npz") as z:
            values.update({f"{label}/{task}/{name}": z[name] for name in z.files})
    np.savez(out / "singular_values.npz", **values)
    return path


REQUIRED = ("objective", "init", "noise_rate", "seed", "method", "task", "test_set", "group", "top1")
TEXT_COLUMNS = ("objective", "init", "method", "task", "test_set", "group")


def read_results(path: str | Path) -> list[dict]:
    """results.csv with numbers parsed (empty cells become None). A file written by an earlier nml,
    without some of the optional columns, is read with those columns missing (None, logged once);
    a row with an empty identity cell is an error naming its line and column."""
    import logging

    out = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ValueError(f"{path}: not a study results.csv (missing columns {sorted(missing)})")
        absent = [c for c in COLUMNS if c not in header]
        if absent:
            logging.getLogger("nml.study").warning(
                "%s: no columns %s (written by an earlier nml?): reported as missing", path, absent
            )
        for line, row in enumerate(reader, 2):
            if None in row or None in row.values():  # a cut-off or over-long row
                raise ValueError(
                    f"{path}, line {line}: expected {len(header)} columns, got a row of "
                    f"{len([v for v in row.values() if v is not None])} (a truncated or edited results.csv?)"
                )
            parsed = dict.fromkeys(absent)
            for k, v in row.items():
                if k in TEXT_COLUMNS:
                    parsed[k] = v
                elif v == "":
                    parsed[k] = None
                else:
                    try:
                        x = float(v)
                    except ValueError:
                        raise ValueError(
                            f"{path}, line {line}: column {k!r} is not a number: {v!r}"
                        ) from None
                    parsed[k] = (
                        int(x) if k in ("seed", "tune_seeds", "pretrain_epochs") and math.isfinite(x) else x
                    )
            empty = [
                k
                for k in REQUIRED
                if parsed.get(k) in (None, "")
                and not (
                    k == "noise_rate" and parsed.get("init") in ("random", "fixed")
                )  # no rate: by design
                and k != "top1"  # a failed run's top-1 is missing, not malformed
            ]
            if empty:
                raise ValueError(
                    f"{path}, line {line}: empty {empty[0]!r} (every row needs {list(REQUIRED[:-1])})"
                )
            out.append(parsed)
    return out


PLAN = "plan.json"


def write_plan(out: Path, plan: dict, written: str) -> str:
    """Write ``plan.json`` (the plan, its sha256, and ``written``: when, against the study's stages,
    it was fixed) into the study directory; returns the hash. A plan.json holding the same plan is
    kept as it is, so it keeps saying when that plan was first fixed."""
    import json

    from nml.study.claims import plan_sha256

    sha = plan_sha256(plan)
    Path(out).mkdir(parents=True, exist_ok=True)
    if (Path(out) / PLAN).is_file():
        try:
            if read_plan(out)[1] == sha:
                return sha
        except ValueError:
            pass  # a damaged or edited plan.json is replaced by the plan this run follows
    record = {"sha256": sha, "written": written, "plan": plan}
    (Path(out) / PLAN).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return sha


def read_plan(out: Path) -> tuple[dict | None, str | None, str | None]:
    """(plan, sha256, when it was written) from ``plan.json``; Nones when absent. A file whose hash
    does not match its plan is an error naming it (it was edited by hand)."""
    import json

    from nml.study.claims import plan_sha256

    path = Path(out) / PLAN
    if not path.is_file():
        return None, None, None
    try:
        data = json.loads(path.read_text())
        plan, sha = data["plan"], data["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a study plan (expected {{'sha256': ..., 'plan': ...}}): {e}") from None
    if plan_sha256(plan) != sha:
        raise ValueError(f"{path}: its sha256 {sha} does not match its plan (edited after it was written?)")
    return plan, sha, data.get("written")
