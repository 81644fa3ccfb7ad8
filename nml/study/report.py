"""``report.md`` and figures from ``results.csv`` (plus ``memorisation.csv`` and
``singular_values.npz`` when present): what ``nml report STUDY_DIR`` rebuilds.

First the plan's hash and the primary claims (:mod:`nml.study.claims`) with intervals at
1 - 0.05/m, Holm-adjusted p, the minimum detectable effect and a verdict under the one rule
(:mod:`nml.study.stats`); the floor and inclusion rule, C2 set by set, the secondary claims and the
sensitivity analyses (:mod:`nml.study.report_claims`); then the tables (ID and OOD mean top-1 per noise rate and method, mean +- sd over pre-training seeds, per test
set, and the spectrum of the frozen features), the exploratory comparisons and the figures.
Nothing is tuned to make a claim hold.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path

from nml.study.claims import plan_sha256, study_plan
from nml.study.evaluate import evaluate
from nml.study.hparams import write_hparams
from nml.study.report_claims import (
    RULE,
    claims_table,
    floor_section,
    per_set_section,
    plan_section,
    sensitivity_section,
)
from nml.study.results import read_plan, read_results


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


def _noise_label(noise, init: str = "") -> str:
    if init == "fixed":
        return "frozen"
    return "random init" if noise is None else f"{noise:g}"


def _init_of(rows: list[dict], obj: str, noise) -> str:
    """``pretrained``, ``random`` or ``fixed`` (a frozen encoder) for an objective's noise level."""
    if noise is not None:
        return "pretrained"
    return "fixed" if any(r["objective"] == obj and r["init"] == "fixed" for r in rows) else "random"


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
        over = (
            "replicates (tuning seeds) of the frozen encoder"
            if any(r["objective"] == obj and r["init"] == "fixed" for r in rows)
            else "pre-training seeds"
        )
        lines += [
            f"### {obj}: mean top-1 (%) over the ID and OOD test sets (every set: the claims use the sets "
            f"the inclusion rule keeps), mean ± sd over {over}",
            "",
        ]
        lines += ["| gamma | " + " | ".join(f"{m} ID | {m} OOD" for m in methods) + " |"]
        lines += ["|---|" + "---|---|" * len(methods)]
        for g in noises:
            init = _init_of(rows, obj, g)
            cells = []
            for m in methods:
                for group in ("id", "ood"):
                    v = [
                        val
                        for k, val in means.items()
                        if k[:3] == (obj, init, g) and k[4] == m and k[5] == group
                    ]
                    cells.append(_fmt(v))
            lines.append(f"| {_noise_label(g, init)} | " + " | ".join(cells) + " |")
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
                    lines.append(
                        f"| {_noise_label(g, _init_of(rows, obj, g))} | {m} | " + " | ".join(vals) + " |"
                    )
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
            "| gamma | SVE (ID) | LSVR (ID) | SVE (OOD) | LSVR (OOD) | effective rank (ID) | dead units (%, ID) | "
            + " | ".join(title for _, title in fitted)
            + " |"
        ]
        lines += ["|---" * (7 + len(fitted)) + "|"]
        for g in noises:
            init = _init_of(rows, obj, g)
            spec = {}
            for metric, group in (
                ("sve", "id"),
                ("lsvr", "id"),
                ("sve", "ood"),
                ("lsvr", "ood"),
                ("effective_rank", "id"),
                ("dead_units", "id"),
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
                f"| {_noise_label(g, init)} | {_fmt(spec[('sve', 'id')], 3)} | {_fmt(spec[('lsvr', 'id')], 3)} | "
                f"{_fmt(spec[('sve', 'ood')], 3)} | {_fmt(spec[('lsvr', 'ood')], 3)} | {_fmt(spec[('effective_rank', 'id')], 1)} | "
                f"{_fmt(spec[('dead_units', 'id')], 1)} | "
                + " | ".join(_fmt([v for _, v in mem[c]], 1) for c, _ in fitted)
                + " |"
            )
        lines += ["", *loss_terms_table(rows, obj, noises), ""]
    return "\n".join(lines)


def loss_terms_table(rows: list[dict], obj: str, noises: list) -> list[str]:
    """Each NMTune loss term as it enters the loss at the last epoch (mean over seeds and heads), so
    a reader sees which regularisers act at this feature dimension."""
    terms = ("loss_ce", "loss_mse", "loss_cov", "loss_svd")
    lines = [
        f"### {obj}: NMTune's loss terms at the last epoch (weighted as in the loss; mean over seeds and heads)",
        "",
        "| gamma | CE | MSE | COV | SVD |",
        "|---|---|---|---|---|",
    ]
    for g in noises:
        per_run = {
            (r["seed"], r["task"]): r
            for r in rows
            if r["objective"] == obj and r["noise_rate"] == g and r["method"] == "nmtune"
        }
        if not per_run:
            continue
        cells = []
        for t in terms:
            values = [r[t] for r in per_run.values() if r.get(t) is not None]
            cells.append(f"{statistics.fmean(values):.3g}" if values else "-")
        lines.append(f"| {_noise_label(g, _init_of(rows, obj, g))} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 4 else []


def _style(ax, xlabel: str, ylabel: str, title: str | None, legend: int = 8) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a grid of one rate draws no memorisation curve
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
    for obj in sorted({r["objective"] for r in rows if r["init"] != "fixed"}):  # frozen encoders: tables
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
            floors = 0  # random-init levels drawn in this panel
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
                    floors += 1
                    ax.axhline(
                        statistics.fmean(floor),
                        ls=":",
                        lw=1,
                        color=ax.lines[-1].get_color() if ax.lines else "gray",
                        label=f"{m}, random init",
                    )
            title = f"{obj}: {group.upper()}" + (" (dotted: random init)" if floors else "")
            _style(ax, "pre-training noise rate (%)", f"{group.upper()} mean top-1 (%)", title, legend=8)
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
            frozen = {r["objective"] for r in rows if r["init"] == "fixed"}
            for obj, keys in by_obj.items():
                if obj in frozen:  # one spectrum per frozen encoder: in the tables
                    continue
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
    found = evaluate(rows)
    made = figures(rows, out)
    hparams = write_hparams(rows, out)
    plan, sha, written = read_plan(out)
    current = plan_sha256(study_plan(plan["grid"], plan["tasks"])) if plan else None
    graded = sorted({r["objective"] for r in rows if r["init"] != "fixed"})
    text = (
        [f"# {title or out.name}: noisy model learning study", "", extra.strip(), ""]
        if extra
        else [f"# {title or out.name}", ""]
    )
    text += plan_section(plan, sha, current, written)
    text += [
        "## The primary claims",
        "",
        "The paper's central finding as declared claims, one family per objective: C1a slight noise "
        "improves ID (superiority), C1 slight noise does not hurt ID (non-inferiority), C2 OOD falls with "
        "noise (the per-seed trend over the grid), C3 OOD falls more than ID at slight noise on the same "
        "heads. Per-seed values over pre-training seeds, on the test sets the inclusion rule keeps; the "
        "minimum detectable effect at this n (80 % power, one-sided alpha 0.025 / m).",
        "",
        RULE,
        "",
        claims_table(found, "primary"),
        "",
        *floor_section(rows, graded),
        *per_set_section(rows, graded),
        "## Secondary claims",
        "",
        "Declared with the primary ones, not in their family: unadjusted 95 % intervals, the same rule. "
        "S1 and S2 are partial correlations within a noise rate (cells: rate x seed, changes from the "
        "seed's clean run), with errors clustered by seed.",
        "",
        claims_table(found, "secondary"),
        "",
        *sensitivity_section(rows, graded),
        "## Results",
        "",
        tables(rows),
        "## Exploratory comparisons",
        "",
        "Not corrected for multiplicity: read as estimates with intervals, not as confirmed claims. "
        "Methods are compared only on the (task, test set) pairs both ran on.",
        "",
        claims_table(found, "exploratory"),
        "",
        "## Figures",
        "",
    ]
    text += [f"![{m}]({m})" for m in made]
    (out / "report.md").write_text("\n".join(text) + "\n")
    return {
        "report": str(out / "report.md"),
        "figures": made,
        "hparams": str(hparams),
        "rows": len(rows),
        "plan_sha256": sha,
        "claims": [{k: c[k] for k in ("objective", "key", "family", "claim", "verdict")} for c in found],
    }
