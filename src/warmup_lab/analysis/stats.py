"""Intervals for means and paired differences over seeds (scipy's t and Wilson intervals; our
own paired-seed bootstrap, which redoes a selection inside every resample).

Small seed counts are the norm here (3-5), and a percentile bootstrap over 3 seeds has only 10
distinct resamples: its interval is too narrow. Every effect is therefore given two 95%
intervals, the t-interval of the per-seed values and the paired-seed bootstrap interval, and the
verdicts use their union (the wider bound on each side): see :func:`effect_interval`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 4000


def scipy_stats():
    """scipy.stats, imported on first use (0.4 s that a training process does not need)."""
    from scipy import stats

    return stats


@dataclass
class Interval:
    """An estimate with its interval; ``lo``/``hi`` are None when it cannot be formed."""

    estimate: float | None
    lo: float | None
    hi: float | None
    n: int
    level: float = LEVEL
    method: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def defined(self) -> bool:
        return self.lo is not None and self.hi is not None

    def fmt(self, digits: int = 3) -> str:
        if self.estimate is None:
            return "n/a"
        if not self.defined:
            return f"{self.estimate:.{digits}g} (no interval, n={self.n})"
        return f"{self.estimate:+.{digits}g} [{self.lo:+.{digits}g}, {self.hi:+.{digits}g}]"


def _finite(x) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    return a[np.isfinite(a)]


def t_interval(x: Sequence[float], level: float = LEVEL) -> Interval:
    """Student-t interval of the mean of the finite values (needs n >= 2)."""
    a = _finite(x)
    n = a.size
    if n == 0:
        return Interval(None, None, None, 0, level, "t")
    m = float(a.mean())
    if n < 2:
        return Interval(m, None, None, n, level, "t")
    se = float(a.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return Interval(m, m, m, n, level, "t")
    lo, hi = scipy_stats().t.interval(level, n - 1, loc=m, scale=se)  # scipy's t-interval of the mean
    return Interval(m, float(lo), float(hi), n, level, "t")


def bootstrap(stat: Callable[[np.ndarray], float], n_units: int, level: float = LEVEL,
              n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """Percentile bootstrap of ``stat(idx)``, where ``idx`` resamples ``range(n_units)`` with
    replacement (units are seeds: everything measured with one seed moves together, which is
    what pairs the arms). Resamples where ``stat`` is not finite are dropped."""
    if n_units == 0:
        return Interval(None, None, None, 0, level, "bootstrap")
    est = stat(np.arange(n_units))
    est = float(est) if est is not None and math.isfinite(est) else None
    if n_units < 2:
        return Interval(est, None, None, n_units, level, "bootstrap")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(n_boot, n_units))
    vals = np.array([stat(d) for d in draws], dtype=float)
    vals = vals[np.isfinite(vals)]
    if vals.size < n_boot // 2:
        return Interval(est, None, None, n_units, level, "bootstrap")
    lo, hi = np.quantile(vals, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(est, float(lo), float(hi), n_units, level, "bootstrap")


def bootstrap_mean(x: Sequence[float], level: float = LEVEL, n_boot: int = N_BOOT,
                   seed: int = 0) -> Interval:
    a = _finite(x)
    return bootstrap(lambda i: float(a[i].mean()), a.size, level, n_boot, seed)


@dataclass
class Effect:
    """A paired effect over seeds: the per-seed values, the t and bootstrap intervals, and
    their union (``ci``), which the decision rules use."""

    per_seed: list[float]
    t: Interval
    boot: Interval
    ci: Interval

    def as_dict(self) -> dict:
        return {"per_seed": self.per_seed, "t": self.t.as_dict(), "bootstrap": self.boot.as_dict(),
                "ci": self.ci.as_dict()}


def union(a: Interval, b: Interval) -> Interval:
    """The wider bound on each side of two intervals of the same estimate."""
    est = a.estimate if a.estimate is not None else b.estimate
    if not (a.defined and b.defined):
        one = a if a.defined else b
        return Interval(est, one.lo, one.hi, max(a.n, b.n), a.level, one.method)
    return Interval(est, min(a.lo, b.lo), max(a.hi, b.hi), max(a.n, b.n), a.level, "t+bootstrap")


def effect_interval(per_seed: Sequence[float], stat: Callable[[np.ndarray], float] | None = None,
                    n_units: int | None = None, level: float = LEVEL, n_boot: int = N_BOOT,
                    seed: int = 0) -> Effect:
    """Effect whose per-seed values are ``per_seed`` (the t-interval uses them). The bootstrap
    resamples seeds and recomputes ``stat`` (default: the mean of ``per_seed``), so a statistic
    with a selection step (best lr of a grid) redoes the selection in every resample."""
    vals = np.asarray(per_seed, dtype=float)
    t = t_interval(vals, level)
    if stat is None:
        fin = _finite(vals)
        boot = bootstrap(lambda i: float(fin[i].mean()), fin.size, level, n_boot, seed)
    else:
        boot = bootstrap(stat, n_units if n_units is not None else vals.size, level, n_boot, seed)
    ci = union(t, boot)
    if stat is not None and boot.estimate is not None:
        ci.estimate = boot.estimate
    return Effect([float(v) for v in vals], t, boot, ci)


def wilson(k: int, n: int, level: float = LEVEL) -> Interval:
    """Wilson score interval of a proportion ``k / n`` (divergence and failure rates)."""
    if n == 0:
        return Interval(None, None, None, 0, level, "wilson")
    ci = scipy_stats().binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    lo, hi = float(ci.low), float(ci.high)
    lo, hi = (0.0 if lo < 1e-12 else lo), (1.0 if hi > 1 - 1e-12 else hi)  # float noise at the ends
    return Interval(k / n, lo, hi, n, level, "wilson")


def summarize(x: Sequence[float], level: float = LEVEL) -> dict:
    """n, mean, std and t-interval of the finite values."""
    a = _finite(x)
    ti = t_interval(a, level)
    return {"n": int(a.size), "mean": ti.estimate,
            "std": float(a.std(ddof=1)) if a.size > 1 else None, "ci_lo": ti.lo, "ci_hi": ti.hi}
