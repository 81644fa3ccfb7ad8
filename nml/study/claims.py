"""The study's declared analysis, fixed before any result is read: the claims (:data:`CLAIMS`), the
test-set inclusion rule (:data:`INCLUSION`), each objective's competence gate (:data:`GATES`), the
sensitivity analyses, and the plan's hash (:func:`plan_sha256`), which ``nml study`` writes before
its first stage and the report prints.

Primary claims (one family per objective; Holm's p beside intervals at 1 - 0.05/m):

* **C1a** slight noise *improves* ID transfer (the paper's "can benefit"): superiority of the linear
  probe's ID top-1 at each slight rate (0 < gamma <= 0.1) over gamma = 0, SESOI 1 point;
* **C1** slight noise does not hurt ID: non-inferiority at each slight rate, margin 1 point;
* **C2** OOD falls with noise: the per-seed trend of the linear probe's OOD top-1 over the grid (the
  OLS fit's change from 0 to the largest rate), SESOI 1 point; with a per-set table;
* **C3** the asymmetry where the paper places it, at slight noise: on heads with both an ID and an
  OOD test set, [ID(g) - ID(0)] - [OOD(g) - OOD(0)] > 0 at each slight rate g, SESOI 1 point.

Secondary (declared, unadjusted 95 % intervals): **C3t** the asymmetry as trends over the whole
grid; **S1** a cell's SVE change predicts its ID change (positively), **S2** its LSVR change predicts
its OOD change (negatively: nml's LSVR is -log p1, so a falling top direction raises it), as
within-rate partial correlations over cells, SESOI r = 0.3. Exploratory (unadjusted, labelled so):
NMTune against LP and MLP per rate, its gain's trend, and the spectrum's trends.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

SLIGHT = 0.1  # the paper's "slight" noise: 0 < gamma <= 0.1
METHOD_NAMES = {"linear": "LP", "mlp": "MLP", "nmtune": "NMTune"}


@dataclass(frozen=True)
class Claim:
    """One claim: what is compared, on which metric, groups and methods, in which direction.

    ``comparison``:

    * ``at_rate``: per slight rate g, ``metric(g) - metric(0)`` per seed;
    * ``trend``: per seed, the fitted change of ``metric`` over the grid (``stats.fitted_change``);
    * ``interaction``: per slight rate g and seed, on heads with both groups,
      ``[ID(g) - ID(0)] - [OOD(g) - OOD(0)]`` (mean over those heads);
    * ``asymmetry_trend``: per seed, on heads with both groups, ID trend minus OOD trend;
    * ``methods``: per rate (gamma = 0 included), ``method - other`` per seed on common sets;
    * ``gain_trend``: per seed, the fitted change of ``method - other`` over the grid;
    * ``association``: over cells (g > 0, seed), the within-rate partial correlation of the change
      of ``metric`` (a spectrum) from the seed's clean run with the change of the linear probe's
      top-1 on the same ``group``.

    A spectrum ``metric`` (sve, lsvr) is read from the frozen features (any method's row).
    """

    key: str
    text: str  # {g}: the rate, {gmax}: the grid's largest rate, {other}: the other method
    family: str  # primary | secondary | exploratory
    comparison: str
    metric: str  # top1 | sve | lsvr
    direction: str  # decrease | increase | not_hurt
    bound: float  # the SESOI, or the non-inferiority margin, in the metric's units (r for association)
    group: str = "id"
    method: str = "linear"
    other: str | None = None


CLAIMS: list[Claim] = [
    Claim(
        key="C1a",
        text="slight noise improves ID (LP): ID({g}) - ID(0)",
        family="primary",
        comparison="at_rate",
        metric="top1",
        direction="increase",
        bound=1.0,
    ),
    Claim(
        key="C1",
        text="slight noise does not hurt ID (LP): ID({g}) - ID(0)",
        family="primary",
        comparison="at_rate",
        metric="top1",
        direction="not_hurt",
        bound=1.0,
    ),
    Claim(
        key="C2",
        text="OOD falls with noise (LP): fitted OOD change from 0 to {gmax}",
        family="primary",
        comparison="trend",
        metric="top1",
        direction="decrease",
        bound=1.0,
        group="ood",
    ),
    Claim(
        key="C3",
        text="OOD falls more than ID at slight noise (LP): [ID({g}) - ID(0)] - [OOD({g}) - OOD(0)]",
        family="primary",
        comparison="interaction",
        metric="top1",
        direction="increase",
        bound=1.0,
    ),
    Claim(
        key="C3t",
        text="OOD falls more than ID over the grid (LP): ID trend - OOD trend, 0 to {gmax}",
        family="secondary",
        comparison="asymmetry_trend",
        metric="top1",
        direction="increase",
        bound=1.0,
    ),
    Claim(
        key="S1",
        text="a cell's SVE change predicts its ID change (LP; within-rate partial r)",
        family="secondary",
        comparison="association",
        metric="sve",
        direction="increase",
        bound=0.3,
    ),
    Claim(
        key="S2",
        text="a cell's LSVR change predicts its OOD change, negatively (LP; within-rate partial r)",
        family="secondary",
        comparison="association",
        metric="lsvr",
        direction="decrease",
        bound=0.3,
        group="ood",
    ),
    *(
        Claim(
            key=f"E{i}",
            text="NMTune - {other} on " + group.upper() + " at gamma {g}",
            family="exploratory",
            comparison="methods",
            metric="top1",
            direction="increase",
            bound=1.0,
            group=group,
            method="nmtune",
            other=other,
        )
        for i, (other, group) in enumerate(
            [("linear", "id"), ("linear", "ood"), ("mlp", "id"), ("mlp", "ood")], 1
        )
    ),
    Claim(
        key="E5",
        text="NMTune's gain over {other} on OOD grows with noise: fitted change",
        family="exploratory",
        comparison="gain_trend",
        metric="top1",
        direction="increase",
        bound=1.0,
        group="ood",
        method="nmtune",
        other="linear",
    ),
    Claim(
        key="E6",
        text="noise raises SVE (frozen features, ID sets): fitted change",
        family="exploratory",
        comparison="trend",
        metric="sve",
        direction="increase",
        bound=0.05,
        method="",
    ),
    Claim(
        key="E7",
        text="noise raises LSVR (frozen features, OOD sets): fitted change",
        family="exploratory",
        comparison="trend",
        metric="lsvr",
        direction="increase",
        bound=0.05,
        group="ood",
        method="",
    ),
]


@dataclass(frozen=True)
class Inclusion:
    """Which test sets count. A (task, test set) enters every mean of every claim only when
    pre-training lifts it: its clean (gamma = 0) linear-probe top-1, mean over seeds, is at least
    ``margin`` points above the random-init network's linear probe on the same set. A set that the
    untrained network reads as well as the pre-trained one cannot say what pre-training noise does.
    Without random-init rows the rule cannot be applied: every set counts, and the report says so."""

    margin: float = 5.0
    method: str = "linear"


INCLUSION = Inclusion()


@dataclass(frozen=True)
class Gate:
    """An objective's competence gate: claims on a group (ID or OOD) are evaluable only when the
    clean pre-trained model's linear probe, mean over that group's sets, is at least ``min_lift``
    points above the random-init floor; otherwise they are shown as "not evaluable", not as a finding
    about noise. ``why``: what failing it means for this objective."""

    min_lift: float
    why: str


GATES: dict[str, Gate] = {
    "supervised": Gate(5.0, "the clean classifier's features are no better than an untrained network's"),
    "clip": Gate(5.0, "the clean CLIP image tower's features are no better than an untrained network's"),
}
DEFAULT_GATE = Gate(5.0, "the clean model's features are no better than an untrained network's")

SENSITIVITY = (
    "all test sets (the inclusion rule not applied)",
    "leave one included test set out, each in turn",
    "top-1 on the logit scale, log(p / (1 - p))",
)


def gate(objective: str) -> Gate:
    return GATES.get(objective, DEFAULT_GATE)


def analysis_plan() -> dict:
    """The declared analysis as data: every claim, the rule, the inclusion rule, the gates, the
    sensitivity analyses (what the plan hash covers besides the grid)."""
    from nml.study import stats

    return {
        "claims": [asdict(c) for c in CLAIMS],
        "rule": {
            "alpha_one_sided": stats.ALPHA,
            "power": stats.POWER,
            "primary_interval": "1 - 0.05/m",
            "family_size_m": "every primary row the grid measures, evaluable or not",
            "holm_without_p": "p = 1",
            "verdict": "read off the interval and the bound",
            "association_min_seeds": stats.MIN_CLUSTERS,
        },
        "slight": SLIGHT,
        "inclusion": asdict(INCLUSION),
        "gates": {k: asdict(v) for k, v in sorted(GATES.items())} | {"*": asdict(DEFAULT_GATE)},
        "sensitivity": list(SENSITIVITY),
    }


def study_plan(grid: dict, tasks: dict[str, list[str]]) -> dict:
    """The whole plan of a study: its grid (objectives, rates, seeds, floor), its tasks' methods and
    the declared analysis."""
    return {
        "grid": grid,
        "tasks": {k: sorted(v) for k, v in sorted(tasks.items())},
        "analysis": analysis_plan(),
    }


def plan_sha256(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
