"""The paper's claims as data (:data:`CLAIMS`), evaluated on ``results.csv`` rows.

Primary claims (one family per objective, Holm-corrected within it):

* **C1** slight noise (5 % and 10 %) does not hurt ID transfer: non-inferiority of the linear
  probe's ID top-1 at each slight rate against gamma = 0, margin 1 point;
* **C2** OOD falls with noise: the per-seed trend of the linear probe's OOD top-1 across the whole
  grid (the OLS fit's change from 0 to the largest rate) is negative, SESOI 1 point;
* **C3** the asymmetry: on the heads that have both an ID and an OOD test set, the ID trend minus the
  OOD trend is positive (OOD falls more than ID), SESOI 1 point.

Everything else is exploratory (unadjusted, labelled so): NMTune against LP and MLP at each rate,
whether NMTune's gain grows with noise, and the spectrum's trends. Methods are compared only on the
(task, test set) pairs both ran on; a value per seed is the mean over those pairs. Each claim states
its smallest effect of interest (``bound``) and can come out *holds*, *does not hold* or
*inconclusive* (:mod:`nml.study.stats`).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

from nml.study.stats import (
    ALPHA,
    Test,
    fitted_change,
    holm,
    min_detectable_effect,
    paired_test,
    seeds_needed,
    verdict,
)

METHOD_NAMES = {"linear": "LP", "mlp": "MLP", "nmtune": "NMTune"}


@dataclass(frozen=True)
class Claim:
    """One claim: what is compared, on which metric, groups and methods, in which direction.

    ``comparison``:

    * ``at_rate``: per rate g (``rates``: ``slight`` 0 < g <= 0.1, ``noisy`` g > 0), ``metric(g) -
      metric(0)`` per seed;
    * ``trend``: per seed, the fitted change of ``metric`` over the grid (``stats.fitted_change``);
    * ``asymmetry``: per seed, on heads with both groups, ID trend minus OOD trend;
    * ``methods``: per rate (gamma = 0 included), ``method - other`` per seed on common sets;
    * ``gain_trend``: per seed, the fitted change of ``method - other`` over the grid.

    A spectrum ``metric`` (sve, lsvr) is read from the frozen features (any method's row).
    """

    key: str
    text: str  # {g}: the rate, {gmax}: the grid's largest rate, {other}: the other method, {group}
    family: str  # primary | exploratory
    comparison: str
    metric: str  # top1 | sve | lsvr
    direction: str  # decrease | increase | not_hurt | change
    bound: float  # the SESOI, or the non-inferiority margin, in the metric's units
    group: str = "id"
    method: str = "linear"
    other: str | None = None
    rates: str = "noisy"


CLAIMS: list[Claim] = [
    Claim(
        "C1",
        "slight noise does not hurt ID (LP): ID({g}) - ID(0)",
        "primary",
        "at_rate",
        "top1",
        "not_hurt",
        1.0,
        rates="slight",
    ),
    Claim(
        "C2",
        "OOD falls with noise (LP): fitted OOD change from 0 to {gmax}",
        "primary",
        "trend",
        "top1",
        "decrease",
        1.0,
        group="ood",
    ),
    Claim(
        "C3",
        "OOD falls more than ID (LP, heads with both): ID change - OOD change",
        "primary",
        "asymmetry",
        "top1",
        "increase",
        1.0,
    ),
    *(
        Claim(
            f"E{i}",
            "NMTune - {other} on {group} at gamma {g}",
            "exploratory",
            "methods",
            "top1",
            "increase",
            1.0,
            group=group,
            method="nmtune",
            other=other,
            rates="all",
        )
        for i, (other, group) in enumerate(
            [("linear", "id"), ("linear", "ood"), ("mlp", "id"), ("mlp", "ood")], 1
        )
    ),
    Claim(
        "E5",
        "NMTune's gain over {other} on OOD grows with noise: fitted change",
        "exploratory",
        "gain_trend",
        "top1",
        "increase",
        1.0,
        group="ood",
        method="nmtune",
        other="linear",
    ),
    Claim(
        "E6",
        "noise raises SVE (frozen features, ID sets): fitted change",
        "exploratory",
        "trend",
        "sve",
        "increase",
        0.05,
        method="",
    ),
    Claim(
        "E7",
        "noise raises LSVR (frozen features, OOD sets): fitted change",
        "exploratory",
        "trend",
        "lsvr",
        "increase",
        0.05,
        group="ood",
        method="",
    ),
]


class Cells:
    """Per (method, group) and cell (noise rate, seed): the metric of each (task, test set)."""

    def __init__(self, rows: list[dict], objective: str, metric: str, init: str = "pretrained"):
        self.values: dict[tuple, dict[tuple, dict[tuple, float]]] = defaultdict(lambda: defaultdict(dict))
        for r in rows:
            if r["objective"] != objective or r["init"] != init or r[metric] is None:
                continue
            method = "" if metric != "top1" else r["method"]  # spectra: the frozen features, any method
            self.values[(method, r["group"])][(r["noise_rate"], r["seed"])][(r["task"], r["test_set"])] = r[
                metric
            ]

    def sets(self, method: str, group: str) -> set[tuple]:
        return {s for cell in self.values[(method, group)].values() for s in cell}

    def mean(self, method: str, group: str, cell: tuple, sets: set[tuple]) -> float | None:
        """The mean over ``sets`` in ``cell``; None unless the cell has every one of them."""
        have = self.values[(method, group)].get(cell, {})
        if not sets or not sets <= set(have):
            return None
        return statistics.fmean(have[s] for s in sets)


def evaluate(rows: list[dict], declared: list[Claim] = CLAIMS) -> list[dict]:
    """Every declared claim per objective: estimate, 95 % CI, n, p, MDE and verdict (primary claims
    Holm-corrected within the objective)."""
    out = []
    for obj in sorted({r["objective"] for r in rows}):
        if all(r["init"] == "fixed" for r in rows if r["objective"] == obj):
            out += _frozen_encoder(rows, obj, declared)
            continue
        rates = sorted(
            {r["noise_rate"] for r in rows if r["objective"] == obj and r["noise_rate"] is not None}
        )
        seeds = sorted({r["seed"] for r in rows if r["objective"] == obj and r["init"] == "pretrained"})
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
        found = []
        cells = {metric: Cells(rows, obj, metric) for metric in {c.metric for c in declared}}
        for c in declared:
            for label, values, note in _values(c, cells[c.metric], rates, seeds):
                found.append(
                    {
                        "objective": obj,
                        "key": c.key,
                        "claim": label,
                        "family": c.family,
                        "note": note,
                        "claim_spec": c,
                        "values": values,
                    }
                )
        primary = [f for f in found if f["family"] == "primary" and f["values"] is not None]
        tests = {
            id(f): paired_test(f["values"], f["claim_spec"].direction, f["claim_spec"].bound)
            for f in found
            if f["values"] is not None
        }
        adjusted_holds = holm([tests[id(f)].p_holds for f in primary])
        adjusted_fails = holm([tests[id(f)].p_fails for f in primary])
        family_size = sum(1 for f in primary if not math.isnan(tests[id(f)].p_holds))
        position = {id(f): i for i, f in enumerate(primary)}
        for f in found:
            spec = f.pop("claim_spec")
            values = f.pop("values")
            if values is None:
                f["verdict"] = f.pop("note")
                out.append(f)
                continue
            t: Test = tests[id(f)]
            if f["family"] == "primary":
                i = position[id(f)]
                p_holds, p_fails = adjusted_holds[i], adjusted_fails[i]
                alpha = ALPHA / max(family_size, 1)  # Holm's first step: the MDE at the strictest level
            else:
                p_holds, p_fails, alpha = t.p_holds, t.p_fails, ALPHA
            f |= {
                "direction": spec.direction,
                "bound": spec.bound,
                "mean": t.mean,
                "low": t.low,
                "high": t.high,
                "n": t.n,
                "sd": t.sd,
                "p": p_holds,
                "mde": min_detectable_effect(t, alpha),
                # the power analysis: seeds for 80 % power at the bound with this spread
                "seeds_needed": seeds_needed(spec.bound, t.sd, alpha, two_sided=spec.direction == "change"),
                "unit": " pt" if spec.metric == "top1" else "",
                "verdict": verdict(t, p_holds, p_fails),
            }
            if t.n < len(seeds):
                f["note"] = f"n={t.n} of {len(seeds)} seeds: a failed or missing cell" + (
                    f"; {f['note']}" if f["note"] else ""
                )
            out.append(f)
    return out


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
        label = c.text.format(g="-", gmax="-", other=other, group=c.group.upper()).replace(
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
        t = paired_test(values, c.direction, c.bound)
        found.append(
            base
            | {
                "note": "",
                "direction": c.direction,
                "bound": c.bound,
                "mean": t.mean,
                "low": t.low,
                "high": t.high,
                "n": t.n,
                "sd": t.sd,
                "p": t.p_holds,
                "mde": min_detectable_effect(t, ALPHA),
                "seeds_needed": seeds_needed(c.bound, t.sd, ALPHA, two_sided=c.direction == "change"),
                "unit": " pt",
                "verdict": verdict(t, t.p_holds, t.p_fails),
            }
        )
    return found


def _values(c: Claim, cells: Cells, rates: list[float], seeds: list[int]):
    """(label, per-seed values or None, note) rows of one claim."""
    gmax, other = max(rates), METHOD_NAMES.get(c.other or "", c.other)
    fmt = {"gmax": f"{gmax:g}", "other": other, "group": c.group.upper()}
    if c.comparison == "at_rate":
        chosen = [g for g in rates if g > 0 and (c.rates == "noisy" or g <= 0.1)]
        if not chosen:
            yield c.text.format(g="0.05-0.1", **fmt), None, "not measured (no rate in (0, 0.1] in the grid)"
        sets = cells.sets(c.method, c.group)
        for g in chosen:
            diffs = [
                a - b
                for s in seeds
                if (a := cells.mean(c.method, c.group, (g, s), sets)) is not None
                and (b := cells.mean(c.method, c.group, (0.0, s), sets)) is not None
            ]
            yield c.text.format(g=f"{g:g}", **fmt), diffs, ""
    elif c.comparison == "trend":
        if len(rates) < 2:
            yield c.text.format(**fmt), None, "not measured (one noise rate)"
            return
        sets = cells.sets(c.method, c.group)
        yield (
            c.text.format(**fmt),
            _trends(lambda cell: cells.mean(c.method, c.group, cell, sets), rates, seeds),
            "",
        )
    elif c.comparison == "asymmetry":
        heads = sorted(
            {t for t, _ in cells.sets(c.method, "id")} & {t for t, _ in cells.sets(c.method, "ood")}
        )
        if not heads:
            yield c.text.format(**fmt), None, "not measured (no head has both an ID and an OOD test set)"
            return
        per_seed: dict[int, list[float]] = defaultdict(list)
        for head in heads:
            change = {}
            for group in ("id", "ood"):
                sets = {s for s in cells.sets(c.method, group) if s[0] == head}
                change[group] = dict(
                    zip(
                        seeds,
                        _trends(
                            lambda cell, g=group, s=sets: cells.mean(c.method, g, cell, s), rates, seeds, True
                        ),
                        strict=True,
                    )
                )
            for s in seeds:
                if not math.isnan(change["id"][s]) and not math.isnan(change["ood"][s]):
                    per_seed[s].append(change["id"][s] - change["ood"][s])
        values = [statistics.fmean(v) for s, v in sorted(per_seed.items()) if len(v) == len(heads)]
        yield c.text.format(**fmt) + f" ({', '.join(heads)})", values, ""
    elif c.comparison in ("methods", "gain_trend"):
        sets = cells.sets(c.method, c.group) & cells.sets(c.other, c.group)
        if not sets:
            yield (
                c.text.format(g="-", **fmt),
                None,
                f"not measured ({c.method} and {c.other} share no {c.group} test set)",
            )
            return

        def gain(cell):
            a, b = cells.mean(c.method, c.group, cell, sets), cells.mean(c.other, c.group, cell, sets)
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
    else:
        raise ValueError(f"claim {c.key}: unknown comparison {c.comparison!r}")


def _trends(value, rates: list[float], seeds: list[int], keep_missing: bool = False) -> list[float]:
    """Per seed, the fitted change over the grid of ``value((rate, seed))``; a seed missing a rate is
    dropped (NaN with ``keep_missing``)."""
    out = []
    for s in seeds:
        ys = [value((g, s)) for g in rates]
        if any(y is None for y in ys):
            if keep_missing:
                out.append(math.nan)
            continue
        out.append(fitted_change(rates, ys))
    return out
