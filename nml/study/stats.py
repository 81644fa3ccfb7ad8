"""The study's statistics: paired tests over pre-training seeds, one verdict rule read off the
interval, Holm's correction within the primary family, power, and the association of two changes.

**The rule.** Every test is one-sided at ``ALPHA`` = 0.025, the dual of the two-sided 95 % t-interval
printed beside it; for a primary family of m claims the interval is at 1 - 0.05/m (Bonferroni, the
dual of a one-sided test at 0.025/m) and Holm's adjusted p is printed beside it. The verdict is read
off that interval and the claim's bound (values signed so that the claimed direction is positive):

* a directional claim (``increase`` / ``decrease``) with SESOI d: *holds* when the interval lies above
  0 and reaches d; *holds, below the SESOI* when it lies above 0 and entirely below d (real, too small
  to matter); *does not hold* when it contains 0 and lies entirely below d; *opposite* when it lies
  entirely on the other side of 0; otherwise *inconclusive at n*;
* non-inferiority (``not_hurt``) with margin D: *holds* when the interval lies above -D (flagged
  "and better" when it lies above 0, "but worse" when it lies below 0); *does not hold* when it lies
  entirely below -D; otherwise *inconclusive at n*.

p-values and intervals come from statsmodels (``DescrStatsW``), Holm from ``multipletests``, power
from ``TTestPower``, the association from ``OLS`` with cluster-robust errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.025  # one-sided: the dual of the two-sided 95 % interval
POWER = 0.8
MIN_CLUSTERS = 10  # below this many seeds a cluster-robust interval is too narrow to trust
DIRECTIONS = ("decrease", "increase", "not_hurt")


@dataclass
class Test:
    """One claim's test on per-seed values: the estimate, its two-sided t-interval at ``level``,
    and the one-sided p-value of the claim's own test (before any correction)."""

    direction: str
    bound: float  # the SESOI, or the non-inferiority margin (positive, in the values' units)
    n: int
    mean: float
    sd: float
    low: float
    high: float
    p: float
    level: float = 0.95


def paired_test(values: list[float], direction: str, bound: float, level: float = 0.95) -> Test:
    """Test the per-seed ``values`` for ``direction`` with SESOI / margin ``bound``; the interval is
    two-sided at ``level`` (0.95, or 1 - 0.05/m in a family of m)."""
    from statsmodels.stats.weightstats import DescrStatsW

    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    if n < 2 or sd == 0 or math.isnan(sd):
        return Test(direction, bound, n, mean, sd, math.nan, math.nan, math.nan, level)
    d = DescrStatsW(x)
    low, high = (float(v) for v in d.tconfint_mean(alpha=1 - level))
    null, alternative = {
        "increase": (0.0, "larger"),
        "decrease": (0.0, "smaller"),
        "not_hurt": (-bound, "larger"),
    }[direction]
    p = float(d.ttest_mean(null, alternative=alternative)[1])
    return Test(direction, bound, n, mean, sd, low, high, p, level)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (NaN entries, untestable claims, stay NaN and do not count)."""
    from statsmodels.stats.multitest import multipletests

    index = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    out = [math.nan] * len(pvalues)
    if index:
        adjusted = multipletests([pvalues[i] for i in index], alpha=ALPHA, method="holm")[1]
        for i, p in zip(index, adjusted, strict=True):
            out[i] = float(p)
    return out


def family_level(m: int) -> float:
    """The interval's confidence for a family of ``m`` claims: 1 - 0.05/m (0.95 for one)."""
    return 1 - 2 * ALPHA / max(m, 1)


def verdict(test: Test) -> str:
    """The verdict read off the interval and the bound (the module's rule)."""
    if test.n < 2 or math.isnan(test.low):
        return f"inconclusive at n={test.n}"
    return interval_verdict(test.direction, test.low, test.high, test.bound, test.n)


def interval_verdict(direction: str, low: float, high: float, bound: float, n: int) -> str:
    """The rule on an interval [low, high] of an effect whose claimed ``direction`` and bound are given."""
    if direction == "not_hurt":
        if low > -bound:
            return "holds, and better" if low > 0 else "holds, but worse" if high < 0 else "holds"
        if high < -bound:
            return "does not hold"
        return f"inconclusive at n={n}"
    lo, hi = (low, high) if direction == "increase" else (-high, -low)  # the claimed direction: positive
    if lo > 0:
        return "holds" if hi >= bound else "holds, below the SESOI"
    if hi < 0:
        return "opposite"
    if hi < bound:
        return "does not hold"
    return f"inconclusive at n={n}"


def min_detectable_effect(test: Test, alpha: float = ALPHA) -> float:
    """The smallest true effect (in the values' units) this n and spread detect with 80 % power at
    one-sided ``alpha``; NaN below n = 2."""
    from statsmodels.stats.power import TTestPower

    if test.n < 2 or not test.sd or math.isnan(test.sd):
        return math.nan
    d = TTestPower().solve_power(
        effect_size=None, nobs=test.n, alpha=alpha, power=POWER, alternative="larger"
    )
    return float(d) * test.sd


def seeds_needed(effect: float, sd: float, alpha: float = ALPHA) -> int | None:
    """Pre-training seeds a paired one-sided t-test at ``alpha`` needs to detect ``effect`` with 80 %
    power (at least 2); None when the spread is unknown (n < 2) or zero."""
    import warnings

    from statsmodels.stats.power import TTestPower

    if not sd or math.isnan(sd) or not effect or math.isnan(effect):
        return None
    power = TTestPower()
    kw = {"effect_size": abs(effect) / sd, "alpha": alpha, "alternative": "larger"}
    if power.power(nobs=2, **kw) >= POWER:
        return 2
    with warnings.catch_warnings():  # statsmodels warns, then returns NaN, when its root finder fails
        warnings.simplefilter("ignore")
        n = float(power.solve_power(nobs=None, power=POWER, **kw))
    return max(2, math.ceil(n)) if math.isfinite(n) else None


def fitted_change(noise_rates: list[float], values: list[float]) -> float:
    """The OLS slope of ``values`` on the noise rate times the grid's largest rate: the change the
    trend predicts from gamma = 0 to gamma_max (a per-seed trend across the whole grid)."""
    g, y = np.asarray(noise_rates, dtype=float), np.asarray(values, dtype=float)
    if len(g) < 2 or np.ptp(g) == 0:
        return math.nan
    slope = np.polyfit(g, y, 1)[0]
    return float(slope * g.max())


def logit_percent(top1: float) -> float:
    """log(p / (1 - p)) of a top-1 in %, clipped to [0.5, 99.5] % so a perfect or empty set stays finite."""
    p = min(max(top1, 0.5), 99.5) / 100
    return math.log(p / (1 - p))


@dataclass
class Association:
    """Within-rate association of two per-cell changes (x: a spectrum change, y: an accuracy change):
    the partial correlation with its interval, from standardised residuals after removing each rate's
    mean, with errors clustered on the pre-training seed (cells of one seed share their clean run)."""

    n: int  # cells
    clusters: int  # seeds
    r: float
    low: float
    high: float
    p: float  # one-sided, in the declared direction


def association(
    x: list[float], y: list[float], rates: list[float], seeds: list[int], direction: str
) -> Association:
    """Regress standardised within-rate y on standardised within-rate x (statsmodels OLS, cluster-
    robust by seed, t reference with clusters - 1 degrees of freedom); the slope is the partial
    correlation. ``direction``: ``increase`` (a positive association is claimed) or ``decrease``.
    With fewer than ``MIN_CLUSTERS`` seeds the interval is NaN: the sandwich variance is biased
    down with few clusters, so an interval would claim more than the data hold."""
    import statsmodels.api as sm

    xs, ys, gs = (np.asarray(v, dtype=float) for v in (x, y, rates))
    n, clusters = len(xs), len(set(seeds))
    if n < 4 or clusters < 3:
        return Association(n, clusters, math.nan, math.nan, math.nan, math.nan)
    for arr in (xs, ys):  # remove each rate's mean: the association within a rate, not through it
        for g in set(gs.tolist()):
            arr[gs == g] -= arr[gs == g].mean()
    if xs.std() == 0 or ys.std() == 0:
        return Association(n, clusters, math.nan, math.nan, math.nan, math.nan)
    zx, zy = (xs - xs.mean()) / xs.std(), (ys - ys.mean()) / ys.std()
    fit = sm.OLS(zy, zx).fit(  # t reference with clusters - 1 degrees of freedom (use_t)
        cov_type="cluster",
        cov_kwds={"groups": np.asarray(seeds), "use_correction": True, "df_correction": True},
        use_t=True,
    )
    r = float(fit.params[0])
    if clusters < MIN_CLUSTERS:  # the sandwich estimator's small-cluster bias: an estimate, no interval
        return Association(n, clusters, r, math.nan, math.nan, math.nan)
    low, high = (float(v) for v in fit.conf_int(alpha=2 * ALPHA)[0])
    p2 = float(fit.pvalues[0])  # two-sided; the claim's one-sided p from it
    toward = r > 0 if direction == "increase" else r < 0
    p = p2 / 2 if toward else 1 - p2 / 2
    return Association(n, clusters, r, low, high, p)
