"""``report.md`` and figures from ``results.csv`` (plus ``memorisation.csv`` and
``singular_values.npz`` when present): what ``nml report STUDY_DIR`` rebuilds.

Tables: ID and OOD mean top-1 per noise rate and method (mean +- sd over pre-training seeds), per
test set, and the spectrum of the frozen features. Then each claim of the paper next to what was
measured, as a paired comparison over pre-training seeds with a 95 % t-interval, and a verdict:
*holds*, *does not hold*, or *inconclusive at this n*. Nothing is tuned to make a claim hold.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from nml.study.results import read_results

NOT_HURT_MARGIN = 1.0  # points: "does not hurt" holds when the interval excludes a loss larger than this


# -- statistics -----------------------------------------------------------------------------------
def interval(diffs: list[float]) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of a 95 % t-interval of paired differences (low = high = nan for n < 2)."""
    n = len(diffs)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = statistics.fmean(diffs)
    if n < 2:
        return m, math.nan, math.nan, n
    from scipy.stats import t

    half = t.ppf(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return m, m - half, m + half, n


def verdict(kind: str, lo: float, hi: float, n: int) -> str:
    """``kind``: decrease | increase | change | not_hurt (the claimed direction of the difference)."""
    if n < 2 or math.isnan(lo):
        return f"inconclusive at n={n}"
    rules = {
        "decrease": (hi < 0, lo >= 0),
        "increase": (lo > 0, hi <= 0),
        "change": (lo > 0 or hi < 0, False),
        "not_hurt": (lo > -NOT_HURT_MARGIN, hi < 0),
    }
    holds, fails = rules[kind]
    return "holds" if holds else "does not hold" if fails else f"inconclusive at n={n}"


# -- aggregation ----------------------------------------------------------------------------------
def group_means(rows: list[dict], metric: str = "top1") -> dict[tuple, float]:
    """(objective, init, noise, seed, method, group) -> mean of ``metric`` over that group's test sets."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r[metric] is not None:
            acc[(r["objective"], r["init"], r["noise_rate"], r["seed"], r["method"], r["group"])].append(
                r[metric]
            )
    return {k: statistics.fmean(v) for k, v in acc.items()}


def spectrum_means(rows: list[dict], metric: str, group: str = "id") -> dict[tuple, float]:
    """(objective, init, noise, seed) -> mean ``metric`` of the frozen features over the group's sets
    (one value per (task, test set), whatever the method)."""
    seen: dict[tuple, dict[tuple, float]] = defaultdict(dict)
    for r in rows:
        if r["group"] == group and r[metric] is not None:
            seen[(r["objective"], r["init"], r["noise_rate"], r["seed"])][(r["task"], r["test_set"])] = r[
                metric
            ]
    return {k: statistics.fmean(v.values()) for k, v in seen.items()}


def _fmt(values: list[float], digits: int = 2) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _noise_label(noise) -> str:
    return "random init" if noise is None else f"{noise:g}"


def _paired(values: dict[tuple, float], a: tuple, b: tuple, seeds: list[int]) -> list[float]:
    """values[a + (seed,)] - values[b + (seed,)] for the seeds where both exist."""
    return [values[(*a, s)] - values[(*b, s)] for s in seeds if (*a, s) in values and (*b, s) in values]


# -- the claims ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """One claim of the paper, as data: what is compared, on which metric and groups, in which
    direction. :func:`claims` evaluates every entry of :data:`CLAIMS` the same way.

    ``comparison``:

    * ``noise``: per noisy rate g of ``rates`` (``noisy``: every g > 0; ``slight``: 0 < g <= 0.1),
      ``metric(g) - metric(0)`` paired over pre-training seeds, for ``method`` (top-1 on ``group``)
      or for the frozen features (a spectrum ``metric`` over ``group``'s sets);
    * ``methods``: ``method - other`` on ``group``, paired over noise rates x seeds;
    * ``gain_gap``: (``method - other`` on OOD) - (the same on ID), from the point estimates.
    """

    text: str  # the report's wording; {g}: the noise rate, {other}: the other method's name
    family: str  # which question it answers: noise_effect | spectrum | nmtune
    comparison: str  # noise | methods | gain_gap
    metric: str  # top1 | sve | lsvr
    direction: str  # decrease | increase | change | not_hurt (see verdict())
    group: str = "id"
    method: str | None = "linear"
    other: str | None = None
    rates: str = "noisy"  # noise comparisons: noisy | slight
    missing: str | None = None  # the claim's text when the grid has no rate for it


METHOD_NAMES = {"linear": "LP", "mlp": "MLP", "nmtune": "NMTune"}

CLAIMS: list[Claim] = [
    Claim(
        "slight noise does not hurt ID (LP): ID({g}) - ID(0)",
        "noise_effect",
        "noise",
        "top1",
        "not_hurt",
        rates="slight",
        missing="slight noise (5-10 %) does not hurt or slightly helps ID (LP)",
    ),
    Claim(
        "OOD falls with noise (LP): OOD({g}) - OOD(0)",
        "noise_effect",
        "noise",
        "top1",
        "decrease",
        group="ood",
    ),
    Claim(
        "noise raises SVE (ID sets, frozen features): SVE({g}) - SVE(0)",
        "spectrum",
        "noise",
        "sve",
        "increase",
        method=None,
    ),
    Claim(
        "noise changes LSVR (ID sets, frozen features): LSVR({g}) - LSVR(0)",
        "spectrum",
        "noise",
        "lsvr",
        "change",
        method=None,
    ),
    *(
        claim
        for other in ("linear", "mlp")
        for claim in (
            Claim(
                "NMTune beats {other} on ID (paired over noise rates x seeds)",
                "nmtune",
                "methods",
                "top1",
                "increase",
                method="nmtune",
                other=other,
            ),
            Claim(
                "NMTune beats {other} on OOD (paired over noise rates x seeds)",
                "nmtune",
                "methods",
                "top1",
                "increase",
                group="ood",
                method="nmtune",
                other=other,
            ),
            Claim(
                "NMTune's gain over {other} is larger on OOD than on ID",
                "nmtune",
                "gain_gap",
                "top1",
                "increase",
                method="nmtune",
                other=other,
            ),
        )
    ),
]  # fmt: skip  (one claim per entry reads as a table)


def claims(rows: list[dict], declared: list[Claim] = CLAIMS) -> list[dict]:
    """Each declared claim against the measured, paired-over-seeds differences, per objective."""
    out = []
    means = group_means(rows)
    seeds = sorted({r["seed"] for r in rows})
    for obj in sorted({r["objective"] for r in rows}):
        noises = sorted(
            {r["noise_rate"] for r in rows if r["objective"] == obj and r["noise_rate"] is not None}
        )
        if 0.0 not in noises:
            out.append({"claim": "all", "objective": obj, "verdict": "not measured (no clean gamma = 0 row)"})
            continue
        by_seed = {
            (k[4], k[5], k[2], k[3]): v for k, v in means.items() if k[0] == obj and k[1] == "pretrained"
        }
        gains: dict[tuple, float] = {}
        for c in declared:
            found = _evaluate(c, obj, rows, by_seed, noises, seeds, gains)
            out += [{"claim": "...", "objective": obj, **f} for f in found]
    return out


def _evaluate(c: Claim, obj: str, rows, by_seed: dict, noises: list, seeds: list, gains: dict) -> list[dict]:
    """The rows of one claim for one objective (``gains`` carries method gains to ``gain_gap``)."""
    other = METHOD_NAMES.get(c.other or "", c.other)
    if c.comparison == "noise":
        rates = [g for g in noises if g > 0 and (c.rates == "noisy" or g <= 0.1)]
        if not rates and c.missing:
            return [{"claim": c.missing, "verdict": "not measured (no rate in (0, 0.1] in the grid)"}]
        if c.method is None:  # the frozen features' spectrum
            values = {
                (k[2], k[3]): v
                for k, v in spectrum_means(rows, c.metric, c.group).items()
                if k[0] == obj and k[1] == "pretrained"
            }
            key = ()
        else:
            values, key = by_seed, (c.method, c.group)
        found = []
        for g in rates:
            m, lo, hi, n = interval(_paired(values, (*key, g), (*key, 0.0), seeds))
            row = {
                "claim": c.text.format(g=f"{g:g}"),
                "mean": m,
                "low": lo,
                "high": hi,
                "n": n,
                "verdict": verdict(c.direction, lo, hi, n),
            }
            found.append(row if c.metric == "top1" else {**row, "unit": ""})
        return found
    if c.comparison == "methods":
        d = [
            by_seed[(c.method, c.group, g, s)] - by_seed[(c.other, c.group, g, s)]
            for g in noises
            for s in seeds
            if (c.method, c.group, g, s) in by_seed and (c.other, c.group, g, s) in by_seed
        ]
        m, lo, hi, n = interval(d)
        gains[(c.method, c.other, c.group)] = m
        return [
            {
                "claim": c.text.format(other=other),
                "mean": m,
                "low": lo,
                "high": hi,
                "n": n,
                "verdict": verdict(c.direction, lo, hi, n) if n else "not measured (no paired runs)",
            }
        ]
    if c.comparison == "gain_gap":
        ood, id_ = (
            gains.get((c.method, c.other, "ood"), math.nan),
            gains.get((c.method, c.other, "id"), math.nan),
        )
        if math.isnan(ood) or math.isnan(id_):
            return []
        return [
            {
                "claim": c.text.format(other=other),
                "mean": ood - id_,
                "n": None,
                "verdict": "holds" if ood > id_ else "does not hold",
            }
        ]
    raise ValueError(f"claim {c.text!r}: unknown comparison {c.comparison!r}")


def tables(rows: list[dict]) -> str:
    lines = []
    means = group_means(rows)
    for obj in sorted({r["objective"] for r in rows}):
        methods = [
            m
            for m in ("linear", "mlp", "nmtune")
            if any(r["method"] == m and r["objective"] == obj for r in rows)
        ]
        noises = sorted(
            {r["noise_rate"] for r in rows if r["objective"] == obj}, key=lambda g: (g is None, g or 0)
        )
        lines += [
            f"### {obj}: mean top-1 (%) over the ID and OOD test sets, mean ± sd over pre-training seeds",
            "",
        ]
        lines += ["| gamma | " + " | ".join(f"{m} ID | {m} OOD" for m in methods) + " |"]
        lines += ["|---|" + "---|---|" * len(methods)]
        for g in noises:
            init = "random" if g is None else "pretrained"
            cells = []
            for m in methods:
                for group in ("id", "ood"):
                    v = [
                        val
                        for k, val in means.items()
                        if k[:3] == (obj, init, g) and k[4] == m and k[5] == group
                    ]
                    cells.append(_fmt(v))
            lines.append(f"| {_noise_label(g)} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"### {obj}: top-1 (%) per test set (linear probe unless noted), mean ± sd over seeds",
            "",
        ]
        sets = sorted({(r["group"], r["task"], r["test_set"]) for r in rows if r["objective"] == obj})
        lines += ["| gamma | method | " + " | ".join(f"{s} ({g})" for g, _, s in sets) + " |"]
        lines += ["|---|---|" + "---|" * len(sets)]
        for g in noises:
            for m in methods:
                vals = []
                for _group, task, s in sets:
                    v = [
                        r["top1"]
                        for r in rows
                        if r["objective"] == obj
                        and r["noise_rate"] == g
                        and r["method"] == m
                        and r["task"] == task
                        and r["test_set"] == s
                    ]
                    vals.append(_fmt(v, 1))
                if any(v != "-" for v in vals):
                    lines.append(f"| {_noise_label(g)} | {m} | " + " | ".join(vals) + " |")
        lines += [
            "",
            f"### {obj}: spectrum of the frozen features (mean over the ID / OOD test sets) and memorisation",
            "",
        ]
        fitted = (("memorised", "memorised (%)"), ("acc_noisy", "acc. on flipped (%)"))
        if obj == "clip":  # CLIP's counterpart: in-batch retrieval on swapped / intact pairs
            fitted = (
                ("retrieval_noisy", "retrieval on swapped pairs (%)"),
                ("retrieval_clean", "retrieval on intact pairs (%)"),
            )
        lines += [
            "| gamma | SVE (ID) | LSVR (ID) | SVE (OOD) | LSVR (OOD) | effective rank (ID) | "
            + " | ".join(title for _, title in fitted)
            + " |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for g in noises:
            init = "random" if g is None else "pretrained"
            spec = {}
            for metric, group in (
                ("sve", "id"),
                ("lsvr", "id"),
                ("sve", "ood"),
                ("lsvr", "ood"),
                ("effective_rank", "id"),
            ):
                spec[(metric, group)] = [
                    v for k, v in spectrum_means(rows, metric, group).items() if k[:3] == (obj, init, g)
                ]
            mem = {
                c: sorted(
                    {
                        (r["seed"], r[c])
                        for r in rows
                        if r["objective"] == obj
                        and r["noise_rate"] == g
                        and r["init"] == init
                        and r[c] is not None
                    }
                )
                for c, _ in fitted
            }
            lines.append(
                f"| {_noise_label(g)} | {_fmt(spec[('sve', 'id')], 3)} | {_fmt(spec[('lsvr', 'id')], 3)} | "
                f"{_fmt(spec[('sve', 'ood')], 3)} | {_fmt(spec[('lsvr', 'ood')], 3)} | {_fmt(spec[('effective_rank', 'id')], 1)} | "
                + " | ".join(_fmt([v for _, v in mem[c]], 1) for c, _ in fitted)
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def claims_table(found: list[dict]) -> str:
    lines = ["| objective | claim | measured difference (95 % CI) | n | verdict |", "|---|---|---|---|---|"]
    for c in found:
        if "mean" not in c or math.isnan(c["mean"]):
            lines.append(f"| {c['objective']} | {c['claim']} | - | - | {c['verdict']} |")
            continue
        unit = c.get("unit", " pt")
        ci = (
            ""
            if c.get("n") in (None, 0, 1) or math.isnan(c.get("low", math.nan))
            else f" [{c['low']:+.3f}, {c['high']:+.3f}]"
        )
        lines.append(
            f"| {c['objective']} | {c['claim']} | {c['mean']:+.3f}{unit}{ci} | {c.get('n') or '-'} | **{c['verdict']}** |"
        )
    return "\n".join(lines)


def _style(ax, xlabel: str, ylabel: str, title: str | None, legend: int = 8) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend)


def _save(fig, out: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _series(ax, noises: list[float], ys: list[list[float]], label: str) -> None:
    """Mean +- sd over seeds against the noise rate (in %), where there are values."""
    keep = [i for i, y in enumerate(ys) if y]
    if keep:
        means = [statistics.fmean(ys[i]) for i in keep]
        sds = [statistics.stdev(ys[i]) if len(ys[i]) > 1 else 0 for i in keep]
        ax.errorbar([100 * noises[i] for i in keep], means, yerr=sds, marker="o", capsize=3, label=label)


def figures(rows: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    made = []
    means = group_means(rows)
    for obj in sorted({r["objective"] for r in rows}):
        noises = sorted(
            {r["noise_rate"] for r in rows if r["objective"] == obj and r["noise_rate"] is not None}
        )
        methods = [
            m
            for m in ("linear", "mlp", "nmtune")
            if any(r["method"] == m and r["objective"] == obj for r in rows)
        ]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
        for ax, group in zip(axes, ("id", "ood"), strict=True):
            for m in methods:
                ys = [
                    [
                        v
                        for k, v in means.items()
                        if k[:3] == (obj, "pretrained", g) and k[4] == m and k[5] == group
                    ]
                    for g in noises
                ]
                _series(ax, noises, ys, m)
                floor = [
                    v for k, v in means.items() if k[:2] == (obj, "random") and k[4] == m and k[5] == group
                ]
                if floor:
                    ax.axhline(
                        statistics.fmean(floor),
                        ls=":",
                        lw=1,
                        color=ax.lines[-1].get_color() if ax.lines else "gray",
                    )
            _style(
                ax,
                "pre-training noise rate (%)",
                f"{group.upper()} mean top-1 (%)",
                f"{obj}: {group.upper()} (dotted: random init)",
                legend=8,
            )
        made.append(_save(fig, out, f"accuracy_vs_noise_{obj}.png"))

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=110)
        for ax, metric in zip(axes, ("sve", "lsvr"), strict=True):
            for group in ("id", "ood"):
                sm = spectrum_means(rows, metric, group)
                ys = [[v for k, v in sm.items() if k[:3] == (obj, "pretrained", g)] for g in noises]
                _series(ax, noises, ys, group.upper())
            _style(ax, "pre-training noise rate (%)", metric.upper(), None, legend=8)
        fig.suptitle(f"{obj}: spectrum of the frozen features", fontsize=9)
        made.append(_save(fig, out, f"spectrum_vs_noise_{obj}.png"))

    sv = out / "singular_values.npz"
    if sv.is_file():
        with np.load(sv) as z:
            by_obj: dict[str, list[str]] = defaultdict(list)
            for k in z.files:
                by_obj[k.split("-")[0]].append(k)
            for obj, keys in by_obj.items():
                id_sets = sorted(
                    {(r["task"], r["test_set"]) for r in rows if r["objective"] == obj and r["group"] == "id"}
                )
                if not id_sets:
                    continue
                task, test_set = id_sets[0]
                fig, ax = plt.subplots(figsize=(4.8, 3.4), dpi=110)
                first_seed = min(r["seed"] for r in rows)
                for k in sorted(keys):
                    cell, t, s = k.split("/")
                    if (t, s) != (task, test_set) or not cell.endswith(f"-s{first_seed}"):
                        continue
                    p = z[k] / z[k].sum()
                    ax.semilogy(
                        np.arange(1, len(p) + 1),
                        np.clip(p, 1e-9, None),
                        lw=1.2,
                        label=cell.split("-", 1)[1].rsplit("-s", 1)[0],
                    )
                _style(
                    ax, "rank i", "p_i = s_i / sum s", f"{obj}: spectra on {test_set} (first seed)", legend=7
                )
                made.append(_save(fig, out, f"spectra_{obj}.png"))

    mem = out / "memorisation.csv"
    if mem.is_file():
        with open(mem, newline="") as fh:
            curves = list(csv.DictReader(fh))
        for obj in sorted({c["objective"] for c in curves}):
            metric = (
                "train/memorised"
                if any(c.get("train/memorised") for c in curves if c["objective"] == obj)
                else "train/retrieval_noisy"
            )
            fig, ax = plt.subplots(figsize=(4.8, 3.4), dpi=110)
            for g, s in sorted(
                {
                    (c["noise_rate"], c["seed"])
                    for c in curves
                    if c["objective"] == obj and c["noise_rate"] not in ("", "0.0")
                }
            ):
                pts = [
                    (int(c["epoch"]), 100 * float(c[metric]))
                    for c in curves
                    if c["objective"] == obj and c["noise_rate"] == g and c["seed"] == s and c.get(metric)
                ]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker=".", label=f"gamma {float(g):g}, seed {s}")
            _style(
                ax,
                "epoch",
                f"{metric.split('/')[1]} (%)",
                f"{obj}: flipped samples fitted to their noisy label",
                legend=7,
            )
            made.append(_save(fig, out, f"memorisation_{obj}.png"))
    return made


def build_report(study_dir: str | Path, title: str | None = None, extra: str = "") -> dict:
    """Write ``report.md`` and the figures into ``study_dir`` from its ``results.csv``."""
    out = Path(study_dir)
    results = out / "results.csv"
    if not results.is_file():
        raise FileNotFoundError(f"{str(results)!r} not found: run `nml study` first (it writes results.csv)")
    rows = read_results(results)
    if not rows:
        raise ValueError(f"{results}: no rows")
    found = claims(rows)
    made = figures(rows, out)
    text = (
        [f"# {title or out.name}: noisy model learning study", "", extra.strip(), ""]
        if extra
        else [f"# {title or out.name}", ""]
    )
    text += [
        "## Results",
        "",
        tables(rows),
        "## The paper's claims, as measured here",
        "",
        "Paired differences over pre-training seeds (top-1 in points, spectra in their units), 95 % "
        f"t-intervals; *does not hurt* holds when the interval excludes a loss of more than {NOT_HURT_MARGIN:g} point.",
        "",
        claims_table(found),
        "",
        "## Figures",
        "",
    ]
    text += [f"![{m}]({m})" for m in made]
    (out / "report.md").write_text("\n".join(text) + "\n")
    return {
        "report": str(out / "report.md"),
        "figures": made,
        "rows": len(rows),
        "claims": [
            {"objective": c["objective"], "claim": c["claim"], "verdict": c["verdict"]} for c in found
        ],
    }
