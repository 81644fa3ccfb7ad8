"""The report's claim sections as Markdown: the plan and its hash, the verdict rule, the claims
tables, the random-init floor per head with the inclusion rule, C2 set by set, and the declared
sensitivity analyses (every set, leave one set out, the logit scale)."""

from __future__ import annotations

import math
import re

from nml.study.claims import GATES, INCLUSION, SLIGHT
from nml.study.evaluate import per_set_trends, sensitivity
from nml.study.floors import floors, head_lifts

RULE = (
    "**The verdict rule.** Every test is one-sided at alpha 0.025, the dual of the two-sided 95 % "
    "interval printed beside it; the primary family's m claims of an objective get intervals at "
    "1 - 0.05/m (Bonferroni), with Holm's adjusted p beside them. Each verdict is read off the interval "
    "and the claim's bound, with the claimed direction counted positive. A directional claim with "
    "SESOI d: *holds* (interval above 0 and reaching d), *holds, below the SESOI* (above 0, entirely "
    "below d: real but too small to matter), *does not hold* (0 inside, entirely below d), *opposite* "
    "(entirely on the other side of 0), else *inconclusive at n*. Non-inferiority with margin D: "
    "*holds* (interval above -D; *and better* when above 0, *but worse* when below 0), *does not hold* "
    "(entirely below -D), else *inconclusive at n*. Holm's p can fall below 0.025 while the "
    "Bonferroni interval still touches 0: the verdict follows the interval. A claim on a group that "
    "fails its objective's competence gate is *not evaluable*: it says nothing about noise."
)


def _interval(c: dict, digits: int = 3) -> str:
    unit = c.get("unit", "")
    if "mean" not in c or math.isnan(c["mean"]):
        return "-"
    ci = "" if math.isnan(c["low"]) else f" [{c['low']:+.{digits}f}, {c['high']:+.{digits}f}]"
    return f"{c['mean']:+.{digits}f}{unit}{ci}"


def claims_table(found: list[dict], family: str) -> str:
    """The claims of one family: estimate with its interval (at 1 - 0.05/m for the primary family),
    n, p (Holm-adjusted for the primary family), the minimum detectable effect at this n, the bound,
    the seeds 80 % power at the bound needs, and the verdict."""
    mine = [c for c in found if c["family"] == family]
    if not mine:
        return "(none)"
    p_title = "p (Holm, one-sided)" if family == "primary" else "p (one-sided)"
    lines = [
        f"| objective | | claim | estimate [CI] | CI level | n | {p_title} | MDE (80 % power) | bound | "
        "seeds for 80 % power at the bound | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in mine:
        if "mean" not in c:
            lines.append(
                f"| {c['objective']} | {c['key']} | {c['claim']} | - | - | - | - | - | - | - | {c['verdict']} |"
            )
            continue
        unit = c.get("unit", "")
        p = "-" if math.isnan(c["p"]) else f"{c['p']:.3g}"
        mde = "-" if math.isnan(c["mde"]) else f"{c['mde']:.2f}{unit}"
        kind = "margin" if c["direction"] == "not_hurt" else "SESOI"
        bound = f"{kind} {c['bound']:g}{unit}" + (" (r)" if c["key"].startswith("S") else "")
        note = f" ({c['note']})" if c.get("note") else ""
        lines.append(
            f"| {c['objective']} | {c['key']} | {c['claim']} | {_interval(c)} | {100 * c['level']:.4g} % | "
            f"{c['n']} | {p} | {mde} | {bound} | {c.get('seeds_needed') or '-'} | **{c['verdict']}**{note} |"
        )
    return "\n".join(lines)


def plan_section(
    plan: dict | None, sha: str | None, current_sha: str | None, written: str | None
) -> list[str]:
    lines = ["## The plan", ""]
    if not plan:
        return lines + [
            "No plan file (`plan.json`) beside these results: the analysis below is the current "
            "declaration, not one fixed before this study ran.",
            "",
        ]
    grid = plan["grid"]
    lines += [
        f"Plan sha256 `{sha}` (`plan.json`, written {written or 'at an unrecorded time'}): objectives "
        f"{grid['objectives']}, "
        f"noise rates {grid['noise_rates']}, seeds {grid['seeds']}, random-init floor "
        f"{'yes' if grid.get('random_init') else 'no'}; slight noise 0 < gamma <= {SLIGHT:g}; the claims, "
        "bounds, inclusion rule, competence gates and sensitivity analyses of `nml/study/claims.py`.",
        "",
    ]
    if current_sha and current_sha != sha:
        lines += [
            f"**The declared analysis has changed since this plan** (now `{current_sha}`): the "
            "verdicts below follow the current declaration.",
            "",
        ]
    return lines


def floor_section(rows: list[dict], objectives: list[str]) -> list[str]:
    lines = [
        "## The floor and the inclusion rule",
        "",
        f"Inclusion rule: a test set counts in every claim's means only when the clean linear probe, mean "
        f"over seeds, is at least {INCLUSION.margin:g} points above the random-init network's linear probe "
        "on it. Competence gate per objective: claims on a group (ID, OOD) are evaluable only when "
        "pre-training lifts that group's mean by at least "
        + ", ".join(f"{g.min_lift:g} pt ({k})" for k, g in sorted(GATES.items()))
        + ". The floor is one untrained network (the first seed's init): a lift's interval holds the "
        "pre-training seeds' spread only.",
        "",
    ]
    for obj in objectives:
        f = floors(rows, obj)
        if not f.applied:
            lines += [
                f"**{obj}**: no random-init rows: the rule and the gate cannot be applied; every set counts.",
                "",
            ]
            continue
        lines += [
            f"### {obj}: how far pre-training lifts each head (linear probe, clean, top-1 %)",
            "",
            "| head | group | random init | clean | lift [95 % CI] | sets kept |",
            "|---|---|---|---|---|---|",
        ]
        for h in head_lifts(f):
            ci = "" if math.isnan(h["low"]) else f" [{h['low']:+.2f}, {h['high']:+.2f}]"
            lines.append(
                f"| {h['task']} | {h['group'].upper()} | {h['floor']:.2f} | {h['clean']:.2f} | {h['lift']:+.2f}{ci} | "
                f"{h['included']} of {h['sets']} |"
            )
        gates = [f"{g.upper()}: {'passes' if ok else why}" for g in ("id", "ood") for ok, why in [f.gate(g)]]
        dropped = ", ".join(
            f"{t}/{s} (lift {f.lift((t, s)):+.1f} pt)" for t, s in f.excluded() if f.lift((t, s)) is not None
        )
        lines += ["", f"Gate: {'; '.join(gates)}. Sets left out by the rule: {dropped or 'none'}.", ""]
    return lines


def per_set_section(rows: list[dict], objectives: list[str]) -> list[str]:
    lines = [
        "## C2 set by set: does every OOD set fall?",
        "",
        "Per OOD test set, the per-seed fitted change of the linear probe over the grid (unadjusted 95 % "
        "intervals, SESOI 1 point), whether the inclusion rule keeps it, and its lift over the floor.",
        "",
    ]
    for obj in objectives:
        per = per_set_trends(rows, obj)
        if not per:
            continue
        lines += [
            "| objective | OOD set | kept | lift | change [95 % CI] | n | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in per:
            lift = "-" if p["lift"] is None else f"{p['lift']:+.1f}"
            lines.append(
                f"| {obj} | {p['task']}/{p['test_set']} | {'yes' if p['included'] else 'no'} | {lift} | "
                f"{_interval(p | {'unit': ' pt'}, 2)} | {p['n']} | {p['verdict']} |"
            )
        kept = [p for p in per if p["included"]]
        falls = sum(1 for p in kept if not math.isnan(p["high"]) and p["high"] < 0)
        rises = sum(1 for p in kept if not math.isnan(p["low"]) and p["low"] > 0)
        summary = (
            f"of {len(kept)} kept OOD sets, {falls} fall (interval below 0), {rises} rise (interval above 0), "
            f"{len(kept) - falls - rises} cannot be told from no change."
            if kept
            else "no OOD set is kept by the inclusion rule."
        )
        lines += ["", f"{obj}: {summary}", ""]
    return lines


def sensitivity_section(rows: list[dict], objectives: list[str]) -> list[str]:
    lines = [
        "## Sensitivity analyses (declared)",
        "",
        "The primary family and the secondary C3t re-evaluated with the same rule and intervals: on every "
        "test set (the inclusion rule not applied), with each kept set left out in turn, and with top-1 on "
        "the logit scale (no declared bound there: read the interval's sign).",
        "",
    ]
    for obj in objectives:
        sens = sensitivity(rows, obj)
        variants = []
        if sens["all_sets"] is not None:
            variants.append(("all sets", sens["all_sets"]))
        variants += [(f"without {t}/{s}", v) for (t, s), v in sens["leave_one_out"].items()]
        if not variants:
            continue
        claims = [c for c in variants[0][1] if c["family"] != "exploratory"]
        header = [f"{c['key']} {re.sub(r' [(][^)]*[)]$', '', c['claim'].split(': ')[-1])}" for c in claims]
        lines += [
            f"### {obj}: every set and leave one set out",
            "",
            "| variant | " + " | ".join(header) + " |",
            "|---|" + "---|" * len(header),
        ]
        for name, found in variants:
            cells = [f"{_interval(c, 2)} {c['verdict']}" for c in found if c["family"] != "exploratory"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"### {obj}: the logit scale",
            "",
            "| claim | estimate [CI] (logit) | reading |",
            "|---|---|---|",
        ]
        for c in sens["logit"]:
            if c["family"] == "exploratory" or "mean" not in c:
                continue
            if math.isnan(c["low"]):
                reading = "-"
            else:
                reading = "above 0" if c["low"] > 0 else "below 0" if c["high"] < 0 else "crosses 0"
            lines.append(f"| {c['key']} {c['claim']} | {_interval(c, 4)} | {reading} |")
        lines.append("")
    return lines
