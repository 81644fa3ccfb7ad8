"""The study's verdict rule, claims, floor, inclusion rule and sensitivity analyses on hand-written
per-seed values and results, and the published reports checked against the rule they print."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from nml.study.claims import CLAIMS, plan_sha256, study_plan
from nml.study.evaluate import evaluate, per_set_trends, sensitivity
from nml.study.floors import floors, head_lifts
from nml.study.stats import (
    association,
    family_level,
    fitted_change,
    holm,
    interval_verdict,
    min_detectable_effect,
    paired_test,
    seeds_needed,
    verdict,
)

ROOT = Path(__file__).resolve().parents[1]

# -- the rule --------------------------------------------------------------------------------------
# per-seed values -> the verdict each must give (bound 1): one row per verdict kind
RULE_TABLE = [
    ("increase", [3.0, 4.0, 5.0], "holds"),  # [1.52, 6.48]: above 0, reaches 1
    ("increase", [0.30, 0.32, 0.34, 0.31, 0.33], "holds, below the SESOI"),  # above 0, below 1
    ("increase", [0.1, -0.1, 0.0, 0.05, -0.05], "does not hold"),  # 0 inside, below 1
    ("increase", [-3.0, -4.0, -5.0], "opposite"),
    ("increase", [-1.0, 2.0, 4.0], "inconclusive at n=3"),  # 0 inside, reaches 1
    ("decrease", [-3.0, -4.0, -5.0], "holds"),
    ("decrease", [-0.30, -0.32, -0.34, -0.31, -0.33], "holds, below the SESOI"),
    ("decrease", [0.1, -0.1, 0.0, 0.05, -0.05], "does not hold"),
    ("decrease", [3.0, 4.0, 5.0], "opposite"),
    ("not_hurt", [0.1, -0.1, 0.0, 0.05, -0.05], "holds"),  # inside +-1, 0 inside
    ("not_hurt", [1.0, 1.2, 1.1, 1.3], "holds, and better"),
    ("not_hurt", [-0.5, -0.45, -0.55, -0.5], "holds, but worse"),  # above -1, below 0
    ("not_hurt", [-3.0, -4.0, -5.0], "does not hold"),
    ("not_hurt", [-1.0, 0.5, -2.5], "inconclusive at n=3"),
]


@pytest.mark.parametrize("direction,values,expected", RULE_TABLE)
def test_each_verdict_kind_comes_out_of_its_interval(direction, values, expected):
    t = paired_test(values, direction, 1.0)
    assert verdict(t) == expected, (t.low, t.high)
    crosses_zero = t.low <= 0 <= t.high
    if crosses_zero and direction != "not_hurt":
        assert not verdict(t).startswith("holds")
    if (
        direction != "not_hurt"
        and max(abs(t.low), abs(t.high)) >= 1.0
        and (t.low < 1 < t.high or t.low < -1 < t.high)
    ):
        assert verdict(t) != "does not hold"


def test_over_every_interval_a_crossing_of_0_never_holds_and_reaching_the_sesoi_never_fails():
    ends = [x / 4 for x in range(-12, 13)]  # -3 .. 3 in quarters, bound 1
    for direction in ("increase", "decrease"):
        sign = 1 if direction == "increase" else -1
        for low in ends:
            for high in (h for h in ends if h >= low):
                v = interval_verdict(direction, low, high, 1.0, 5)
                lo, hi = sorted((sign * low, sign * high))
                if lo <= 0 <= hi:
                    assert not v.startswith("holds") and v != "opposite", (direction, low, high, v)
                if hi >= 1.0:
                    assert v != "does not hold", (direction, low, high, v)
                if lo > 0 and hi >= 1.0:
                    assert v == "holds", (direction, low, high, v)
    for low in ends:  # non-inferiority: holds exactly when the whole interval is above -margin
        for high in (h for h in ends if h >= low):
            v = interval_verdict("not_hurt", low, high, 1.0, 5)
            assert v.startswith("holds") == (low > -1.0), (low, high, v)
            assert (v == "does not hold") == (high < -1.0), (low, high, v)


def test_the_interval_is_95_percent_and_the_p_value_its_one_sided_dual():
    t = paired_test([-3.0, -4.0, -5.0], "decrease", 1.0)  # sd 1, t(0.975, 2) = 4.3027
    assert (t.mean, t.n, t.level) == (-4.0, 3, 0.95)
    assert t.low == pytest.approx(-4 - 4.3027 / math.sqrt(3), abs=1e-3)
    assert t.high == pytest.approx(-4 + 4.3027 / math.sqrt(3), abs=1e-3)
    # duality: the one-sided p crosses 0.025 exactly where the 95 % interval's end crosses 0
    for shift in (-0.2, 0.0, 0.2):
        values = [v - t.high + shift for v in (-3.0, -4.0, -5.0)]
        u = paired_test(values, "decrease", 1.0)
        assert (u.p < 0.025) == (u.high < 0), (shift, u.p, u.high)
    wide = paired_test([-3.0, -4.0, -5.0], "decrease", 1.0, level=family_level(3))
    assert wide.low < t.low and wide.high > t.high and family_level(3) == pytest.approx(1 - 0.05 / 3)
    assert math.isnan(paired_test([1.0], "decrease", 1.0).low)
    assert verdict(paired_test([1.0], "decrease", 1.0)) == "inconclusive at n=1"
    with pytest.raises(ValueError, match="direction: expected one of"):
        paired_test([1.0, 2.0], "change", 1.0)


def test_holm_power_and_the_trend():
    assert holm([0.01, 0.04, math.nan, 0.03]) == pytest.approx([0.03, 0.06, math.nan, 0.06], nan_ok=True)
    few, many = (paired_test([1.0, 2.0, 3.0] * k, "increase", 1.0) for k in (1, 4))
    assert min_detectable_effect(many) < min_detectable_effect(few)
    needed = seeds_needed(min_detectable_effect(few), few.sd)
    assert needed in (3, 4)  # the n at which that effect is detectable (rounded up)
    assert fitted_change([0.0, 0.1, 0.3], [10.0, 9.0, 7.0]) == pytest.approx(-3.0)


def test_the_association_is_within_rate_and_clustered_by_seed():
    k = 10
    rates = [0.1] * k + [0.3] * k
    seeds = list(range(k)) * 2
    wobble = [0.1, -0.1, 0.2, -0.2, 0.05, -0.05, 0.15, -0.15, 0.0, 0.1]
    x = [float(i) for i in range(k)] + [10.0 + i for i in range(k)]  # the rate shifts x by 10
    y = [i + wobble[i] for i in range(k)] + [-50.0 + i - wobble[i] for i in range(k)]  # and y by -50
    a = association(x, y, rates, seeds, "increase")
    assert a.r > 0.95 and a.low > 0.3 and a.p < 0.025  # within a rate: a strong positive link
    raw = sum((xi - sum(x) / len(x)) * yi for xi, yi in zip(x, y, strict=True))
    assert raw < 0  # pooled over rates the link is negative: the rate, not the spectrum
    assert interval_verdict("increase", a.low, a.high, 0.3, a.n) == "holds"
    few = [i for i, s in enumerate(seeds) if s < 6]  # 6 seeds: an estimate, no interval to trust
    b = association(*([v[i] for i in few] for v in (x, y, rates, seeds)), "increase")
    assert b.r > 0.95 and math.isnan(b.low) and b.clusters == 6
    assert math.isnan(association(x[:3], y[:3], rates[:3], seeds[:3], "increase").r)


# -- claims on hand-written results -------------------------------------------------------------------
def _rows(id_at, ood_at, sets_ood=("shift",), floor=None, sve=None, seeds=range(4), rates=(0.0, 0.1, 0.3)):
    """One head ``t``: an ID set ``held`` and OOD sets; ``id_at(g, s)`` / ``ood_at(g, s, set)`` give
    the linear probe's top-1; NMTune is LP + 1. ``floor``: random-init LP per set."""
    rows = []
    for g in rates:
        for s in seeds:
            sets = [("id", "held", id_at(g, s))] + [("ood", o, ood_at(g, s, o)) for o in sets_ood]
            for group, name, value in sets:
                for method, bonus in (("linear", 0.0), ("nmtune", 1.0)):
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
                            "sve": (sve or (lambda g, s: 4.0 + g))(g, s),
                            "lsvr": 3.0 + g,
                        }
                    )
    for name, value in (floor or {}).items():
        rows.append(
            {
                "objective": "supervised",
                "init": "random",
                "noise_rate": None,
                "seed": 0,
                "method": "linear",
                "task": "t",
                "test_set": name,
                "group": "id" if name == "held" else "ood",
                "top1": value,
                "sve": 5.0,
                "lsvr": 2.0,
            }
        )
    return rows


JITTER = [0.3, -0.2, 0.1, -0.25]


def _by_key(found):
    out = {}
    for c in found:
        out.setdefault(c["key"], []).append(c)
    return out


def test_c1a_c1_c2_c3_the_paper_pattern_holds_and_the_family_is_bonferroni():
    """Slight noise lifts ID by 2 and drops OOD by 3 (C1a, C1, C3 hold); OOD falls over the grid."""
    rows = _rows(
        lambda g, s: 80 + (2 if g == 0.1 else -1 if g == 0.3 else 0) + JITTER[s] * (1 + g),
        lambda g, s, o: 60 - 30 * g + JITTER[s] * (1 + g),
        floor={"held": 40.0, "shift": 30.0},
    )
    found = _by_key(evaluate(rows))
    assert [c["verdict"] for c in found["C1a"]] == ["holds"]
    assert found["C1"][0]["verdict"] == "holds, and better"
    assert found["C2"][0]["verdict"] == "holds" and found["C2"][0]["mean"] == pytest.approx(-9.0, abs=0.5)
    c3 = found["C3"][0]
    assert c3["mean"] == pytest.approx(2 + 3, abs=0.2) and c3["verdict"] == "holds"
    primary = [c for c in evaluate(rows) if c["family"] == "primary"]
    assert len(primary) == 4 and all(c["level"] == pytest.approx(1 - 0.05 / 4) for c in primary)
    assert found["C3t"][0]["family"] == "secondary"


def test_slight_noise_that_costs_id_is_a_loss_not_a_benefit():
    """The paper grid's situation: ID falls a little at slight noise. C1 must not read as the paper's
    benefit: C1a comes out opposite while C1 holds "but worse"."""
    rows = _rows(
        lambda g, s: 80 - 5 * g + 0.05 * JITTER[s] * (1 + g),
        lambda g, s, o: 60 - 10 * g + JITTER[s],
        floor={"held": 40.0, "shift": 30.0},
    )
    found = _by_key(evaluate(rows))
    assert found["C1a"][0]["verdict"] == "opposite"
    assert found["C1"][0]["verdict"] == "holds, but worse"


def test_the_inclusion_rule_drops_a_set_pre_training_does_not_lift_and_the_sensitivity_shows_it():
    """A near-floor OOD set that rises with noise flips C2 when it counts; the rule (lift >= 5 over
    the random-init floor) drops it, the all-sets and leave-one-out analyses show both readings."""

    def ood(g, s, o):
        return 70 - 20 * g + JITTER[s] * (1 + g) if o == "shift" else 20 + 40 * g + JITTER[s] * (1 - g)

    rows = _rows(
        lambda g, s: 80 + JITTER[s] * (1 + g),
        ood,
        sets_ood=("shift", "near_floor"),
        floor={"held": 40.0, "shift": 30.0, "near_floor": 19.0},
    )
    f = floors(rows, "supervised")
    assert (
        f.applied and f.included == {("t", "held"), ("t", "shift")} and f.excluded() == [("t", "near_floor")]
    )
    found = _by_key(evaluate(rows))
    assert found["C2"][0]["mean"] == pytest.approx(-6.0, abs=0.3) and found["C2"][0]["verdict"] == "holds"
    sens = sensitivity(rows, "supervised")
    every = _by_key(sens["all_sets"])
    assert every["C2"][0]["mean"] == pytest.approx((-6.0 + 12.0) / 2, abs=0.3)  # the rising set counted
    assert every["C2"][0]["verdict"] == "opposite"
    assert set(sens["leave_one_out"]) == {("t", "held"), ("t", "shift")}
    assert all(
        c["verdict"].startswith("not evaluable")
        for c in sens["leave_one_out"][("t", "shift")]
        if c["key"] == "C2"
    )
    assert {c["key"] for c in sens["logit"]} == {"C1a", "C1", "C2", "C3", "C3t"}
    per_set = {p["test_set"]: p for p in per_set_trends(rows, "supervised")}
    assert per_set["near_floor"]["verdict"] == "opposite" and not per_set["near_floor"]["included"]
    assert per_set["shift"]["verdict"] == "holds" and per_set["shift"]["included"]
    lifts = {(h["task"], h["group"]): h for h in head_lifts(f)}
    assert (
        lifts[("t", "id")]["lift"] == pytest.approx(40.0 + sum(JITTER) / 4)
        and lifts[("t", "ood")]["included"] == 1
    )


def test_a_head_pre_training_does_not_lift_is_not_evaluable():
    rows = _rows(
        lambda g, s: 80 - 10 * g + JITTER[s] * (1 + g),
        lambda g, s, o: 60 - 30 * g + JITTER[s] * (1 + g),
        floor={"held": 78.0, "shift": 30.0},
    )
    found = _by_key(evaluate(rows))
    for key in ("C1a", "C1", "C3"):
        assert all(c["verdict"].startswith("not evaluable") for c in found[key]), key
    assert found["C2"][0]["verdict"] == "holds"  # OOD is lifted 30 points: evaluable
    assert (
        found["E1"][0]["verdict"] == "not evaluable (no ID test set kept)"
    )  # the rule holds for every claim
    assert all(c["mean"] == pytest.approx(1.0) for c in found["E2"])  # NMTune = LP + 1 on the lifted OOD set


def test_without_a_floor_every_set_counts_and_the_report_says_so(tmp_path):
    from nml.study.report import build_report
    from nml.study.results import COLUMNS

    rows = _rows(lambda g, s: 80 + JITTER[s], lambda g, s, o: 60 - 10 * g + JITTER[s])
    assert not floors(rows, "supervised").applied
    import csv

    with open(tmp_path / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS, restval="")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    build_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "no random-init rows: the rule and the gate cannot be applied" in text
    assert "No plan file (`plan.json`)" in text and "(dotted: random init)" not in text


def test_the_spectrum_association_is_evaluated_across_cells():
    """ID gains 3 points per 0.1 of SVE gained, seed by seed (10 seeds): S1 holds; on 4 seeds the
    same data give an estimate but no clustered interval, so no verdict."""
    wobble = [0.3, -0.2, 0.1, -0.25, 0.2, -0.1, 0.05, -0.3, 0.15, 0.0]

    def sve(g, s):
        return 4.0 + (0.02 * (s + 1) + 0.01 * g if g else 0.0)

    rows = _rows(
        lambda g, s: 80 + 300 * (sve(g, s) - 4.0) - 5 * g,
        lambda g, s, o: 60 - 10 * g + wobble[s] * (1 + g),
        sve=sve,
        floor={"held": 40.0, "shift": 30.0},
        seeds=range(10),
    )
    s1 = _by_key(evaluate(rows))["S1"][0]
    assert s1["family"] == "secondary" and s1["n"] == 20 and s1["mean"] > 0.9 and s1["verdict"] == "holds"
    few = [r for r in rows if r["seed"] < 4 or r["init"] == "random"]
    s1 = _by_key(evaluate(few))["S1"][0]
    assert s1["mean"] > 0.9 and math.isnan(s1["low"]) and s1["verdict"] == "inconclusive at n=8"
    assert "a clustered interval needs at least 10" in s1["note"]


def test_the_plan_hash_covers_the_grid_the_tasks_and_the_declared_claims(monkeypatch):
    grid = {"objectives": ["supervised"], "noise_rates": [0.0, 0.1], "seeds": [3, 4], "random_init": True}
    a = plan_sha256(study_plan(grid, {"digits": ["linear", "nmtune"]}))
    assert a == plan_sha256(study_plan(dict(grid), {"digits": ["nmtune", "linear"]}))
    assert a != plan_sha256(study_plan(grid | {"seeds": [3, 5]}, {"digits": ["linear", "nmtune"]}))
    import dataclasses

    import nml.study.claims as claims

    monkeypatch.setattr(claims, "CLAIMS", [dataclasses.replace(CLAIMS[0], bound=0.5), *CLAIMS[1:]])
    assert a != plan_sha256(study_plan(grid, {"digits": ["linear", "nmtune"]}))


def test_an_edited_plan_file_is_refused_naming_it(tmp_path):
    from nml.study.results import read_plan, write_plan

    grid = {"objectives": ["supervised"], "noise_rates": [0.0], "seeds": [3], "random_init": True}
    sha = write_plan(tmp_path, study_plan(grid, {"d": ["linear"]}), "before the first stage")
    assert read_plan(tmp_path)[1:] == (sha, "before the first stage")
    assert write_plan(tmp_path, study_plan(grid, {"d": ["linear"]}), "when 3 of 3 stages had finished") == sha
    assert read_plan(tmp_path)[2] == "before the first stage"  # the same plan keeps when it was fixed
    text = (tmp_path / "plan.json").read_text().replace('"linear"', '"mlp"')
    (tmp_path / "plan.json").write_text(text)
    with pytest.raises(ValueError, match=r"plan.json: its sha256 .* does not match its plan"):
        read_plan(tmp_path)


# -- the published reports -------------------------------------------------------------------------
RESULTS = sorted((ROOT / "docs" / "results").glob("*/report.md"))
ROW = re.compile(
    r"^\| (?P<obj>[\w-]+) \| (?P<key>\w+) \| (?P<claim>[^|]+) \| (?P<est>[+-][\d.]+)(?: pt)? "
    r"\[(?P<low>[+-][\d.]+), (?P<high>[+-][\d.]+)\] \| (?P<level>[\d.]+) % \| (?P<n>\d+) \| [^|]+ \| [^|]+ \| "
    r"(?P<kind>SESOI|margin) (?P<bound>[\d.]+)(?: pt)?(?: \(r\))? \| [^|]+ \| \*\*(?P<verdict>[^*]+)\*\*"
)


def _report_verdicts(path: Path) -> list[dict]:
    return [m.groupdict() for line in path.read_text().splitlines() if (m := ROW.match(line))]


def test_four_reports_are_published():
    assert {p.parent.name for p in RESULTS} == {"quickstart", "paper", "clip", "text"}


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.parent.name)
def test_every_published_verdict_follows_the_rule_from_its_printed_interval(path):
    rows = _report_verdicts(path)
    assert len(rows) >= 4, path
    text = path.read_text()
    assert re.search(r"Plan sha256 `[0-9a-f]{64}`", text), f"{path}: no plan hash"
    assert "## The floor and the inclusion rule" in text and "leave one set out" in text
    for r in rows:
        low, high, bound = float(r["low"]), float(r["high"]), float(r["bound"])
        if r["kind"] == "margin":
            direction = "not_hurt"
        else:
            spec = next(c for c in CLAIMS if c.key == r["key"])
            direction = spec.direction
        expected = interval_verdict(direction, low, high, bound, int(r["n"]))
        assert r["verdict"] == expected, (path.parent.name, r)
        if low <= 0 <= high:
            assert r["verdict"] != "holds" or direction == "not_hurt", r
        if r["level"] != "95" and r["key"].startswith("C") and r["key"] != "C3t":
            m = sum(1 for x in rows if x["obj"] == r["obj"] and x["level"] != "95")
            assert float(r["level"]) == pytest.approx(100 * (1 - 0.05 / m), abs=0.01), r


def test_every_verdict_the_readme_and_the_study_page_quote_equals_the_report():
    """A verdict in italics in the README or the manual is quoted as ``KEY ... ESTIMATE [LOW, HIGH]
    ... *VERDICT*`` and must equal a row of the report linked nearest to it (in its paragraph, else
    the last one linked before), to the printed digits; no italic verdict goes unchecked."""
    keys = r"\b(?:C1a|C1|C2|C3t|C3|S1|S2|E\d)\b"
    quote = re.compile(  # the key nearest before the interval: the gap crosses no other key
        rf"({keys})(?:(?!{keys})[^*\[\]])*?([+-]?\d+\.\d+)\s\[([+-]?\d+\.\d+),\s([+-]?\d+\.\d+)\]"
        r"[^*]*?(?<!\*)\*([^*]+)\*(?!\*)"
    )
    said_verdict = re.compile(
        r"(?<!\*)\*(holds[^*]*|does not hold|opposite|inconclusive[^*]*|not evaluable)\*(?!\*)"
    )
    link = re.compile(r"results/(\w+)/report\.md")
    published = {p.parent.name: _report_verdicts(p) for p in RESULTS}
    checked = 0
    for doc in (ROOT / "README.md", ROOT / "docs" / "study.md", ROOT / "docs" / "text.md"):
        last = None
        for para in doc.read_text().split("\n\n"):
            links = [(m.start(), m.group(1)) for m in link.finditer(para)]
            quotes = list(quote.finditer(para))
            assert len(quotes) == len(said_verdict.findall(para)), (
                f"{doc.name}: a verdict not quoted as KEY EST [CI] *VERDICT*: {para[:200]}"
            )
            for q in quotes:
                key, est, low, high, said = q.groups()
                said = " ".join(said.split())  # a verdict wrapped across lines
                name = min(links, key=lambda x: abs(x[0] - q.start()))[1] if links else last
                assert name, f"{doc.name}: {key} quoted with no report linked before it"
                matches = [
                    r
                    for r in published[name]
                    if r["key"] == key
                    and abs(float(r["est"]) - float(est)) < 0.006
                    and abs(float(r["low"]) - float(low)) < 0.006
                    and abs(float(r["high"]) - float(high)) < 0.006
                ]
                assert matches, f"{doc.name}: {key} {est} [{low}, {high}] is not a row of {name}'s report"
                assert said in {m["verdict"] for m in matches}, (
                    f"{doc.name}: {key} says {said!r}, the report {matches[0]['verdict']!r}"
                )
                checked += 1
            last = links[-1][1] if links else last
    assert checked >= 12
