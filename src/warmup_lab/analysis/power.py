"""How many seeds a part needs: a paired t-test power calculation from the observed spread.

For a part with per-seed paired differences of standard deviation ``sd`` (estimated from the
sweep), the seeds needed to tell a true effect ``delta`` away from a decision threshold with
power ``power`` are the smallest n with ``P(T > t_{1 - alpha/2, n-1}) >= power``, T noncentral t
with n - 1 degrees of freedom and noncentrality ``delta sqrt(n) / sd`` (the exact small-sample
formula, not the normal approximation, since seed counts here are small). "At the margin" uses
``delta = margin``: the smallest effect the claim says matters. "At this estimate" uses the
distance of the observed estimate from the rule's nearest threshold. The spread of a few seeds
is itself noisy, so the numbers are estimates ("about N seeds at this noise").
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

from warmup_lab.analysis.claims import Part


def seeds_needed(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8, max_n: int = 100_000) -> int | None:
    """Smallest n >= 2 whose two-sided level-``alpha`` paired t-test finds a shift ``delta`` with
    probability ``power``; None when ``delta`` is 0 or ``sd`` is not finite."""
    if not (math.isfinite(sd) and math.isfinite(delta)) or delta == 0:
        return None
    if sd == 0:
        return 2
    delta = abs(delta)

    def pw(n):
        df = n - 1
        return 1 - _st.nct.cdf(_st.t.ppf(1 - alpha / 2, df), df, delta * math.sqrt(n) / sd)

    z = _st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power)
    n = max(2, int(math.floor((z * sd / delta) ** 2)) - 1)
    while n <= max_n and pw(n) < power:
        n += 1
    return n if n <= max_n else None


def thresholds(kind: str, margin: float) -> list[float]:
    return {"greater": [0.0, margin, -margin], "not_greater": [margin, 0.0], "negligible": [-margin, margin, 0.0],
            "positive": [0.0]}[kind]


def plan_part(part: Part, alpha: float = 0.05, power: float = 0.8) -> dict:
    """Spread, current seeds, and seeds needed at the margin and at the observed estimate."""
    vals = np.asarray(part.effect.per_seed, dtype=float)
    vals = vals[np.isfinite(vals)]
    sd = float(vals.std(ddof=1)) if vals.size > 1 else math.nan
    est = part.effect.ci.estimate
    at_margin = seeds_needed(sd, part.margin, alpha, power) if part.kind != "positive" else None
    dist = min(abs(est - t) for t in thresholds(part.kind, part.margin)) if est is not None else math.nan
    at_est = seeds_needed(sd, dist, alpha, power)
    return {"part": part.name, "id": part.id, "rule": part.kind, "margin": part.margin, "n_seeds": int(vals.size),
            "sd": sd, "estimate": est, "seeds_at_margin": at_margin, "seeds_at_estimate": at_est,
            "verdict": part.verdict, "primary": part.primary or part.context}


def plan_text(plan: dict) -> str:
    def n(v):
        return "n/a" if v is None else str(v)

    sd = "n/a" if not math.isfinite(plan["sd"]) else f"{plan['sd']:.3g}"
    return (f"{plan['part']}: sd of paired differences {sd} over {plan['n_seeds']} seeds; about "
            f"{n(plan['seeds_at_margin'])} seeds to decide at the margin {plan['margin']:g}, "
            f"{n(plan['seeds_at_estimate'])} at this estimate (80% power)")
