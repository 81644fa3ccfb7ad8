"""The random-init floor and what it decides: how far pre-training lifts each head above the
untrained network (per task and group), which test sets the inclusion rule keeps, and whether an
objective passes its competence gate per group (:mod:`nml.study.claims` declares the rule and gates).

The floor is one untrained network per objective (the first seed's init): a lift is the clean
pre-trained linear probe per seed minus that one floor value, so its interval holds the pre-training
seeds' spread, not the floor's.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from nml.study.claims import INCLUSION, gate


@dataclass
class Floors:
    """An objective's floor: per (task, test set) the random-init LP and the clean LP per seed."""

    objective: str
    random: dict[tuple, float]  # (task, test set) -> random-init LP top-1
    clean: dict[tuple, dict[int, float]]  # (task, test set) -> seed -> clean pre-trained LP top-1
    group: dict[tuple, str]  # (task, test set) -> id | ood
    included: set[tuple] = field(default_factory=set)
    applied: bool = False  # False: no random-init rows, every set counts

    def lift(self, s: tuple) -> float | None:
        if s not in self.random or not self.clean.get(s):
            return None
        return statistics.fmean(self.clean[s].values()) - self.random[s]

    def excluded(self) -> list[tuple]:
        return sorted(s for s in self.group if s not in self.included)

    def gate(self, group: str) -> tuple[bool, str]:
        """(evaluable, reason) for claims on ``group`` under the objective's competence gate."""
        if not self.applied:
            return True, ""
        g = gate(self.objective)
        lifts = [v for s, grp in self.group.items() if grp == group and (v := self.lift(s)) is not None]
        if not lifts:
            return False, f"not evaluable (no {group.upper()} test set has a random-init floor)"
        mean = statistics.fmean(lifts)
        if mean < g.min_lift:
            return False, (
                f"not evaluable: pre-training lifts the {group.upper()} sets {mean:+.1f} pt above the "
                f"random-init floor (gate: {g.min_lift:g} pt; {g.why})"
            )
        if not any(self.group[s] == group for s in self.included):
            return False, f"not evaluable (no {group.upper()} test set passes the inclusion rule)"
        return True, ""


def floors(rows: list[dict], objective: str) -> Floors:
    """The floor of ``objective`` from ``results.csv`` rows and the sets the inclusion rule keeps."""
    method = INCLUSION.method
    random: dict[tuple, float] = {}
    clean: dict[tuple, dict[int, float]] = defaultdict(dict)
    group: dict[tuple, str] = {}
    for r in rows:
        if r["objective"] != objective or r["method"] != method or r["top1"] is None:
            continue
        s = (r["task"], r["test_set"])
        if r["init"] == "random":
            random[s] = r["top1"]
            group[s] = r["group"]
        elif r["init"] == "pretrained" and r["noise_rate"] == 0.0:
            clean[s][r["seed"]] = r["top1"]
            group[s] = r["group"]
    out = Floors(objective, random, dict(clean), group, applied=bool(random))
    if not out.applied:
        out.included = set(group)
        return out
    out.included = {s for s in group if (v := out.lift(s)) is not None and v >= INCLUSION.margin}
    return out


def head_lifts(f: Floors) -> list[dict]:
    """Per (task, group): the floor, the clean LP, the lift per seed with its 95 % interval (mean over
    the group's sets of that task), and how many of its sets the inclusion rule keeps."""
    from nml.study.stats import paired_test

    out = []
    for task, grp in sorted({(s[0], g) for s, g in f.group.items()}):
        sets = [s for s, g in f.group.items() if s[0] == task and g == grp]
        with_floor = [s for s in sets if s in f.random and f.clean.get(s)]
        if not with_floor:
            continue
        seeds = sorted(set.intersection(*(set(f.clean[s]) for s in with_floor)))
        floor = statistics.fmean(f.random[s] for s in with_floor)
        per_seed = [statistics.fmean(f.clean[s][seed] for s in with_floor) for seed in seeds]
        t = paired_test([v - floor for v in per_seed], "increase", INCLUSION.margin)
        out.append(
            {
                "task": task,
                "group": grp,
                "floor": floor,
                "clean": statistics.fmean(per_seed),
                "lift": t.mean,
                "low": t.low,
                "high": t.high,
                "n": t.n,
                "included": sum(1 for s in sets if s in f.included),
                "sets": len(sets),
            }
        )
    return out
