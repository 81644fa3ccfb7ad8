"""The study's statistics: paired tests over pre-training seeds with a verdict that can come out
either way, Holm's correction within a family of claims, and the minimum detectable effect.

A claim is tested on n per-seed values (differences, or fitted changes over the noise grid):

* ``decrease`` / ``increase``: *holds* when the one-sided t-test rejects "no change in that
  direction"; *does not hold* when the equivalence-side test rejects "a change of at least the
  smallest effect of interest (SESOI)" in that direction, i.e. the effect is conclusively smaller
  than the SESOI or of the other sign;
* ``not_hurt`` (non-inferiority with margin ``delta``): *holds* when the test rejects "worse by at
  least delta"; *does not hold* when it rejects "worse by less than delta";
* ``change`` (two-sided): *holds* when the two-sided test rejects 0; *does not hold* when the TOST
  equivalence test puts the effect inside +-SESOI.

Otherwise *inconclusive at n*. p-values come from statsmodels (``DescrStatsW.ttest_mean`` and
``ttost_mean``); Holm's step-down correction from ``multipletests``; power from ``TTestPower``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
POWER = 0.8
DIRECTIONS = ("decrease", "increase", "not_hurt", "change")


@dataclass
class Test:
    """One claim's test on per-seed values: the estimate, its 95 % t-interval, and the p-values of
    the two sides (``p_holds``: the claim's test; ``p_fails``: the opposite conclusion's)."""

    direction: str
    bound: float  # the SESOI, or the non-inferiority margin
    n: int
    mean: float
    sd: float
    low: float
    high: float
    p_holds: float
    p_fails: float


def paired_test(values: list[float], direction: str, bound: float) -> Test:
    """Test the per-seed ``values`` (differences) for ``direction`` with SESOI / margin ``bound``."""
    from statsmodels.stats.weightstats import DescrStatsW

    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n > 1 else math.nan
    if n < 2 or sd == 0 or math.isnan(sd):
        return Test(direction, bound, n, mean, sd, math.nan, math.nan, math.nan, math.nan)
    d = DescrStatsW(x)
    low, high = (float(v) for v in d.tconfint_mean(alpha=ALPHA))
    p = {  # one-sided p-values of "mean > v" ("larger") and "mean < v" ("smaller")
        ("larger", v): float(d.ttest_mean(v, alternative="larger")[1]) for v in (0.0, bound, -bound)
    } | {("smaller", v): float(d.ttest_mean(v, alternative="smaller")[1]) for v in (0.0, bound, -bound)}
    if direction == "decrease":
        holds, fails = p[("smaller", 0.0)], p[("larger", -bound)]
    elif direction == "increase":
        holds, fails = p[("larger", 0.0)], p[("smaller", bound)]
    elif direction == "not_hurt":
        holds, fails = p[("larger", -bound)], p[("smaller", -bound)]
    else:  # change: two-sided against 0; TOST inside +-bound
        holds = float(d.ttest_mean(0.0)[1])
        fails = float(d.ttost_mean(-bound, bound)[0])
    return Test(direction, bound, n, mean, sd, low, high, holds, fails)


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


def verdict(test: Test, p_holds: float, p_fails: float) -> str:
    """``holds`` / ``does not hold`` / ``inconclusive at n=N`` from (adjusted) p-values."""
    if test.n < 2 or math.isnan(p_holds):
        return f"inconclusive at n={test.n}"
    if p_holds < ALPHA:
        return "holds"
    if p_fails < ALPHA:
        return "does not hold"
    return f"inconclusive at n={test.n}"


def min_detectable_effect(test: Test, alpha: float = ALPHA) -> float:
    """The smallest true effect (in the values' units) this n and spread detect with 80 % power at
    ``alpha`` (one-sided; two-sided for ``change``); NaN below n = 2."""
    from statsmodels.stats.power import TTestPower

    if test.n < 2 or not test.sd or math.isnan(test.sd):
        return math.nan
    alternative = "two-sided" if test.direction == "change" else "larger"
    d = TTestPower().solve_power(
        effect_size=None, nobs=test.n, alpha=alpha, power=POWER, alternative=alternative
    )
    return float(d) * test.sd


def seeds_needed(effect: float, sd: float, alpha: float = ALPHA, two_sided: bool = False) -> int | None:
    """Pre-training seeds a paired t-test needs to detect ``effect`` with 80 % power at ``alpha``
    (at least 2); None when the spread is unknown (n < 2) or zero."""
    import warnings

    from statsmodels.stats.power import TTestPower

    if not sd or math.isnan(sd) or not effect or math.isnan(effect):
        return None
    power = TTestPower()
    kw = {
        "effect_size": abs(effect) / sd,
        "alpha": alpha,
        "alternative": "two-sided" if two_sided else "larger",
    }
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
