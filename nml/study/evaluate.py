"""The declared claims (:mod:`nml.study.claims`) evaluated on ``results.csv`` rows under the one
verdict rule (:mod:`nml.study.stats`), on the test sets the inclusion rule keeps
(:mod:`nml.study.floors`), and the declared sensitivity analyses: every set, each included set left
out, the logit scale, and C2 set by set.

Methods are compared only on the (task, test set) pairs both ran on; a value per seed is the mean over
those pairs. A cell missing a set drops that seed from the claim (the report says n of N).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable

from nml.study.claims import CLAIMS, METHOD_NAMES, SLIGHT, Claim
from nml.study.floors import Floors, floors
from nml.study.stats import (
    ALPHA,
    MIN_CLUSTERS,
    association,
    family_level,
    fitted_change,
    holm,
    interval_verdict,
    logit_percent,
    min_detectable_effect,
    paired_test,
    seeds_needed,
    verdict,
)


class Cells:
    """Per (method, group) and cell (noise rate, seed): the metric of each (task, test set) kept."""

    def __init__(
        self,
        rows: list[dict],
        objective: str,
        metric: str,
        init: str = "pretrained",
        keep: set[tuple] | None = None,
        transform: Callable[[float], float] | None = None,
    ):
        self.values: dict[tuple, dict[tuple, dict[tuple, float]]] = defaultdict(lambda: defaultdict(dict))
        for r in rows:
            if r["objective"] != objective or r["init"] != init or r[metric] is None:
                continue
            s = (r["task"], r["test_set"])
            if keep is not None and s not in keep:
                continue
            method = "" if metric != "top1" else r["method"]  # spectra: the frozen features, any method
            value = transform(r[metric]) if transform else r[metric]
            self.values[(method, r["group"])][(r["noise_rate"], r["seed"])][s] = value

    def sets(self, method: str, group: str) -> set[tuple]:
        return {s for cell in self.values[(method, group)].values() for s in cell}

    def mean(self, method: str, group: str, cell: tuple, sets: set[tuple]) -> float | None:
        """The mean over ``sets`` in ``cell``; None unless the cell has every one of them."""
        have = self.values[(method, group)].get(cell, {})
        if not sets or not sets <= set(have):
            return None
        return statistics.fmean(have[s] for s in sets)


def _rates_seeds(rows: list[dict], obj: str) -> tuple[list[float], list[int]]:
    mine = [r for r in rows if r["objective"] == obj and r["init"] == "pretrained"]
    return sorted({r["noise_rate"] for r in mine}), sorted({r["seed"] for r in mine})


def evaluate(rows: list[dict], declared: list[Claim] = CLAIMS) -> list[dict]:
    """Every declared claim per objective: estimate, interval, n, p, MDE and verdict (the primary
    family's intervals at 1 - 0.05/m with Holm's p)."""
    out = []
    for obj in sorted({r["objective"] for r in rows}):
        if all(r["init"] == "fixed" for r in rows if r["objective"] == obj):
            out += _frozen_encoder(rows, obj, declared)
            continue
        rates, _ = _rates_seeds(rows, obj)
        if 0.0 not in rates:
            out.append(
                {
                    "objective": obj,
                    "key": "-",
                    "claim": "all",
                    "family": "primary",
                    "verdict": "not measured (no clean gamma = 0 row)",
                }
            )
            continue
        out += evaluate_objective(rows, obj, declared, floors(rows, obj))
    return out


def evaluate_objective(
    rows: list[dict],
    obj: str,
    declared: list[Claim],
    floor: Floors,
    keep: set[tuple] | None = None,
    transform: Callable[[float], float] | None = None,
    detail: bool = True,
) -> list[dict]:
    """One objective's claims on the sets in ``keep`` (default: those the inclusion rule keeps).
    ``detail=False`` (the sensitivity analyses, which print estimates, intervals and verdicts only)
    skips Holm's p, the MDE and the power figure."""
    rates, seeds = _rates_seeds(rows, obj)
    keep = floor.included if keep is None else keep
    cells = {
        m: Cells(rows, obj, m, keep=keep, transform=transform if m == "top1" else None)
        for m in {"top1", "sve", "lsvr"}
    }
    found = []
    for c in declared:
        groups = ("id", "ood") if c.comparison in ("interaction", "asymmetry_trend") else (c.group,)
        gated = c.comparison != "methods"  # a method comparison is not a finding about noise
        closed = [why for g in groups if gated and (why := floor.gate(g)[1])]
        closed += [
            f"not evaluable (no {g.upper()} test set kept)"
            for g in groups
            if floor.applied and not any(floor.group.get(s) == g for s in keep)
        ]
        for label, values, note in _values(c, cells, rates, seeds):
            found.append(
                {
                    "objective": obj,
                    "key": c.key,
                    "claim": label,
                    "family": c.family,
                    "note": note,
                    "spec": c,
                    "values": None if closed else values,
                    "closed": closed[0] if closed else "",
                    "planned": values is not None,  # the grid measures it (evaluable or not)
                }
            )
    # m is fixed by the plan: every primary row the grid measures, whether or not the data can
    # evaluate it, so a claim that turns out not evaluable does not loosen the others' intervals
    m = sum(1 for f in found if f["family"] == "primary" and f["planned"])
    level = family_level(m)
    primary = [f for f in found if f["family"] == "primary" and f["planned"]]
    tests = {}
    for f in found:
        if f["values"] is None or f["spec"].comparison == "association":
            continue
        lvl = level if f["family"] == "primary" else 0.95
        tests[id(f)] = paired_test(f["values"], f["spec"].direction, f["spec"].bound, lvl)
    # Holm over the planned family: a claim without a p (not evaluable, n < 2) enters as p = 1
    raw = [tests[id(f)].p if id(f) in tests and not math.isnan(tests[id(f)].p) else 1.0 for f in primary]
    adjusted = {
        id(f): p
        for f, p in zip(primary, holm(raw) if detail and primary else [math.nan] * len(primary), strict=True)
        if id(f) in tests and not math.isnan(tests[id(f)].p)
    }
    out = []
    for f in found:
        spec, values = f.pop("spec"), f.pop("values")
        closed = f.pop("closed")
        f.pop("planned")
        if values is None:
            f["verdict"] = closed or f.pop("note")
            f.pop("note", None)
            out.append(f)
            continue
        if spec.comparison == "association":
            out.append(f | _association_row(spec, values))
            continue
        t = tests[id(f)]
        alpha = ALPHA / max(m, 1) if f["family"] == "primary" else ALPHA
        unit = " pt" if spec.metric == "top1" and transform is None else ""
        f |= _test_row(t, alpha, unit, detail) | {"p": adjusted.get(id(f), t.p)}
        if t.n < len(seeds):
            f["note"] = f"n={t.n} of {len(seeds)} seeds: a failed or missing cell" + (
                f"; {f['note']}" if f["note"] else ""
            )
        out.append(f)
    return out


def _test_row(t, alpha: float, unit: str, detail: bool = True) -> dict:
    """A tested claim's columns: the estimate and interval, n, p, the MDE and the seeds 80 % power at
    the bound needs with this spread (both at one-sided ``alpha``; NaN / None without ``detail``),
    and the verdict."""
    return {
        "direction": t.direction,
        "bound": t.bound,
        "mean": t.mean,
        "low": t.low,
        "high": t.high,
        "level": t.level,
        "n": t.n,
        "sd": t.sd,
        "p": t.p,
        "mde": min_detectable_effect(t, alpha) if detail else math.nan,
        "seeds_needed": seeds_needed(t.bound, t.sd, alpha) if detail else None,
        "unit": unit,
        "verdict": verdict(t),
    }


def _association_row(spec: Claim, values: tuple) -> dict:
    xs, ys, rates, seeds = values
    a = association(xs, ys, rates, seeds, spec.direction)
    if math.isnan(a.r):
        return {"verdict": f"inconclusive at n={a.n} cells", "note": "fewer than 4 cells or 3 seeds"}
    if math.isnan(a.low):
        return {
            "direction": spec.direction,
            "bound": spec.bound,
            "mean": a.r,
            "low": math.nan,
            "high": math.nan,
            "level": 0.95,
            "n": a.n,
            "sd": math.nan,
            "p": math.nan,
            "mde": math.nan,
            "seeds_needed": None,
            "unit": "",
            "verdict": f"inconclusive at n={a.n}",
            "note": f"{a.clusters} seeds: a clustered interval needs at least {MIN_CLUSTERS}",
        }
    low, high = max(a.low, -1.0), min(a.high, 1.0)
    return {
        "direction": spec.direction,
        "bound": spec.bound,
        "mean": a.r,
        "low": low,
        "high": high,
        "level": 0.95,
        "n": a.n,
        "sd": math.nan,
        "p": a.p,
        "mde": math.nan,
        "seeds_needed": None,
        "unit": "",
        "verdict": interval_verdict(spec.direction, low, high, spec.bound, a.n),
        "note": f"r over {a.n} cells of {a.clusters} seeds, errors clustered by seed",
    }


def _slight(rates: list[float]) -> list[float]:
    return [g for g in rates if 0 < g <= SLIGHT]


def _values(c: Claim, cells: dict[str, Cells], rates: list[float], seeds: list[int]):
    """(label, per-seed values or None, note) rows of one claim."""
    gmax, other = max(rates), METHOD_NAMES.get(c.other or "", c.other)
    fmt = {"gmax": f"{gmax:g}", "other": other}
    cm = cells[c.metric]
    if c.comparison in ("at_rate", "interaction"):
        chosen = _slight(rates)
        if not chosen:
            yield (
                c.text.format(g=f"0-{SLIGHT:g}", **fmt),
                None,
                f"not measured (no rate in (0, {SLIGHT:g}] in the grid)",
            )
            return
        for g in chosen:
            if c.comparison == "at_rate":
                sets = cm.sets(c.method, c.group)
                diffs = [
                    a - b
                    for s in seeds
                    if (a := cm.mean(c.method, c.group, (g, s), sets)) is not None
                    and (b := cm.mean(c.method, c.group, (0.0, s), sets)) is not None
                ]
                yield c.text.format(g=f"{g:g}", **fmt), diffs, ""
            else:
                yield from _per_head(c, cm, seeds, fmt | {"g": f"{g:g}"}, lambda v, g=g: _change(v, g))
    elif c.comparison == "trend":
        if len(rates) < 2:
            yield c.text.format(**fmt), None, "not measured (one noise rate)"
            return
        sets = cm.sets(c.method, c.group)
        yield (
            c.text.format(**fmt),
            _trends(lambda cell: cm.mean(c.method, c.group, cell, sets), rates, seeds),
            "",
        )
    elif c.comparison == "asymmetry_trend":
        yield from _per_head(c, cm, seeds, fmt, lambda v: _trend_of(v, rates))
    elif c.comparison in ("methods", "gain_trend"):
        sets = cm.sets(c.method, c.group) & cm.sets(c.other, c.group)
        if not sets:
            yield (
                c.text.format(g="-", **fmt),
                None,
                f"not measured ({c.method} and {c.other} share no {c.group} test set)",
            )
            return

        def gain(cell):
            a, b = cm.mean(c.method, c.group, cell, sets), cm.mean(c.other, c.group, cell, sets)
            return None if a is None or b is None else a - b

        if c.comparison == "methods":
            for g in rates:
                yield (
                    c.text.format(g=f"{g:g}", **fmt),
                    [v for s in seeds if (v := gain((g, s))) is not None],
                    "",
                )
        else:
            yield c.text.format(**fmt), _trends(gain, rates, seeds), ""
    elif c.comparison == "association":
        top1, spec = cells["top1"], cm
        sets_acc, sets_spec = top1.sets("linear", c.group), spec.sets("", c.group)
        xs, ys, rs, ss = [], [], [], []
        for g in (g for g in rates if g > 0):
            for s in seeds:
                vals = [
                    top1.mean("linear", c.group, (g, s), sets_acc),
                    top1.mean("linear", c.group, (0.0, s), sets_acc),
                    spec.mean("", c.group, (g, s), sets_spec),
                    spec.mean("", c.group, (0.0, s), sets_spec),
                ]
                if None not in vals:
                    ys.append(vals[0] - vals[1])
                    xs.append(vals[2] - vals[3])
                    rs.append(g)
                    ss.append(s)
        yield c.text.format(**fmt), (xs, ys, rs, ss), ""
    else:
        raise ValueError(f"claim {c.key}: unknown comparison {c.comparison!r}")


def _change(value, g: float):
    """Per seed: value((g, seed)) - value((0, seed))."""

    def per_seed(s):
        a, b = value((g, s)), value((0.0, s))
        return None if a is None or b is None else a - b

    return per_seed


def _trend_of(value, rates: list[float]):
    def per_seed(s):
        ys = [value((g, s)) for g in rates]
        return None if any(y is None for y in ys) else fitted_change(rates, ys)

    return per_seed


def _per_head(c: Claim, cm: Cells, seeds: list[int], fmt: dict, change_of):
    """Per seed, the mean over heads with both groups of [ID change - OOD change]."""
    heads = sorted({t for t, _ in cm.sets(c.method, "id")} & {t for t, _ in cm.sets(c.method, "ood")})
    if not heads:
        yield c.text.format(**fmt), None, "not measured (no head has both an ID and an OOD test set)"
        return
    per_seed: dict[int, list[float]] = defaultdict(list)
    for head in heads:
        change = {}
        for group in ("id", "ood"):
            sets = {s for s in cm.sets(c.method, group) if s[0] == head}
            change[group] = change_of(lambda cell, g=group, st=sets: cm.mean(c.method, g, cell, st))
        for s in seeds:
            a, b = change["id"](s), change["ood"](s)
            if a is not None and b is not None:
                per_seed[s].append(a - b)
    values = [statistics.fmean(v) for _, v in sorted(per_seed.items()) if len(v) == len(heads)]
    yield c.text.format(**fmt) + f" ({', '.join(heads)})", values, ""


def _trends(value, rates: list[float], seeds: list[int]) -> list[float]:
    """Per seed, the fitted change over the grid of ``value((rate, seed))``; a seed missing a rate is
    dropped."""
    per_seed = _trend_of(value, rates)
    return [v for s in seeds if (v := per_seed(s)) is not None]


def _frozen_encoder(rows: list[dict], obj: str, declared: list[Claim]) -> list[dict]:
    """A frozen encoder's method comparisons (exploratory): per replicate (its tuning seeds), the
    method minus the other on their common (task, test set) pairs, a paired test over replicates."""
    cells = Cells(rows, obj, "top1", init="fixed")
    seeds = sorted({r["seed"] for r in rows if r["objective"] == obj})
    found = []
    for c in declared:
        if c.comparison != "methods":
            continue
        other = METHOD_NAMES.get(c.other or "", c.other)
        label = c.text.format(g="-", gmax="-", other=other).replace(
            " at gamma -", " (frozen encoder; n = replicates)"
        )
        sets = cells.sets(c.method, c.group) & cells.sets(c.other, c.group)
        base = {"objective": obj, "key": c.key, "claim": label, "family": "exploratory"}
        if not sets:
            found.append(
                base | {"verdict": f"not measured ({c.method} and {c.other} share no {c.group} test set)"}
            )
            continue
        values = []
        for s in seeds:
            a = cells.mean(c.method, c.group, (None, s), sets)
            b = cells.mean(c.other, c.group, (None, s), sets)
            if a is not None and b is not None:
                values.append(a - b)
        found.append(base | {"note": ""} | _test_row(paired_test(values, c.direction, c.bound), ALPHA, " pt"))
    return found


# -- the declared sensitivity analyses ---------------------------------------------------------------
def on_accuracy(declared: list[Claim] = CLAIMS) -> list[Claim]:
    """The claims the sensitivity analyses re-evaluate: the primary family and the secondary claims
    on top-1 (C3t); the family's size, so its intervals, stay the primary claims'."""
    return [c for c in declared if c.family == "primary" or (c.family == "secondary" and c.metric == "top1")]


def sensitivity(rows: list[dict], obj: str) -> dict:
    """The primary family (and the secondary top-1 claims) re-evaluated: on every set, with each
    included set left out, and on the logit scale (estimates and intervals; the logit scale has no
    declared bound, so its reading is the interval's sign)."""
    floor = floors(rows, obj)
    primary = on_accuracy()
    every = {s for s in floor.group}
    out = {
        "all_sets": evaluate_objective(rows, obj, primary, floor, keep=every, detail=False)
        if floor.applied
        else None,
        "leave_one_out": {
            s: evaluate_objective(rows, obj, primary, floor, keep=floor.included - {s}, detail=False)
            for s in sorted(floor.included)
        },
        "logit": evaluate_objective(rows, obj, primary, floor, transform=logit_percent, detail=False),
    }
    return out


def per_set_trends(rows: list[dict], obj: str, group: str = "ood") -> list[dict]:
    """C2 set by set (descriptive, unadjusted 95 % intervals): per (task, test set) of ``group``, the
    per-seed fitted change of the linear probe's top-1 over the grid, whether the inclusion rule
    keeps the set, and the verdict of "it falls" (SESOI 1 point) under the rule."""
    rates, seeds = _rates_seeds(rows, obj)
    floor = floors(rows, obj)
    cm = Cells(rows, obj, "top1")
    c2 = next(c for c in CLAIMS if c.key == "C2")
    out = []
    for s in sorted(cm.sets("linear", group)):
        values = _trends(lambda cell, st={s}: cm.mean("linear", group, cell, st), rates, seeds)
        t = paired_test(values, c2.direction, c2.bound)
        out.append(
            {
                "task": s[0],
                "test_set": s[1],
                "included": s in floor.included,
                "lift": floor.lift(s),
                "mean": t.mean,
                "low": t.low,
                "high": t.high,
                "n": t.n,
                "verdict": verdict(t),
            }
        )
    return out
