"""Run until decided: a group-sequential design over rounds of seeds, with alpha spending.

A sequential study (``study.max_seeds=N``) judges its claim after every round of seeds. Looking
at the data after every round and stopping when a part looks decided would inflate the rate of
wrong decisions, so each look ``j`` may only spend its share ``alpha_j`` of the error budget:
``alpha_j = A(t_j) - A(t_{j-1})`` with ``t_j = n_j / N`` the information fraction (seeds so far
over the most seeds) and ``A`` a Lan-DeMets spending function:

* ``obrien_fleming`` (default): ``A(t) = 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t))``: almost nothing
  is spent early, so the last look keeps nearly the power of a fixed design of N seeds, and only
  large effects stop early;
* ``pocock``: ``A(t) = alpha ln(1 + (e - 1) t)``: spends evenly; earlier stops, less power at N.

At look ``j`` every decisive part (primary and context parts) is judged with its interval at
level ``1 - alpha_j`` (Bonferroni-divided within a family, as in a fixed design). A part's first
decision (supported or contradicted) is final. Each wrong decision needs the interval of the look
that made it to miss the true effect, so by the union bound the chance of any wrong decision for
a part over all looks is at most ``sum_j alpha_j = A(1) = alpha``, whatever the correlation
between looks and however many looks the budget allows. Every decision rule asks the interval to
lie in a region, so the union of the t and bootstrap intervals, being wider than the t-interval,
decides no more often than the t-interval alone: :func:`simulate` checks the design with
t-intervals from a noise model. Supplementary parts are descriptive: they are shown at the last
look at the nominal level and are not error-controlled across looks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from warmup_lab.analysis.claims import (CONTRADICTED, INCONCLUSIVE, SUPPORTED, ClaimResult, Part, evaluate_claim, headline_of,
                     verdict_of)
from warmup_lab.analysis.claimspec import ClaimError, ClaimSpec
from warmup_lab.analysis.stats import scipy_stats
from warmup_lab.analysis.load import Run

SPENDING = ("obrien_fleming", "pocock")
from warmup_lab.sweeps.study import STUDY_FILE  # noqa: E402  (sweeps/study.py writes it)


def spent(t: float, alpha: float, kind: str) -> float:
    """Cumulative alpha spent at information fraction ``t`` in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    if t == 0:
        return 0.0
    if kind == "obrien_fleming":
        return float(2 - 2 * scipy_stats().norm.cdf(scipy_stats().norm.ppf(1 - alpha / 2) / math.sqrt(t)))
    if kind == "pocock":
        return float(alpha * math.log(1 + (math.e - 1) * t))
    raise ValueError(f"unknown spending function {kind!r}: allowed {', '.join(SPENDING)}")


@dataclass(frozen=True)
class Design:
    """Looks after ``first`` seeds, then every ``round_seeds`` more, up to ``max_seeds``."""

    first: int
    round_seeds: int
    max_seeds: int
    alpha: float = 0.05
    spending: str = "obrien_fleming"
    budget_minutes: float | None = None

    @property
    def looks(self) -> list[int]:
        """Seed counts at the looks."""
        ns = [min(self.first, self.max_seeds)]
        while ns[-1] < self.max_seeds:
            ns.append(min(ns[-1] + self.round_seeds, self.max_seeds))
        return ns

    def alphas(self) -> list[float]:
        """The error each look may spend; they add up to ``alpha``."""
        out, prev = [], 0.0
        for n in self.looks:
            a = spent(n / self.max_seeds, self.alpha, self.spending)
            out.append(a - prev)
            prev = a
        return out

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "looks": self.looks, "alphas": self.alphas(),
                "method": f"group-sequential, Lan-DeMets {self.spending.replace('_', '-')} alpha spending over "
                          f"{len(self.looks)} looks (union bound across looks), alpha {self.alpha:g}"}

    @staticmethod
    def from_dict(d: dict) -> "Design":
        return Design(int(d["first"]), int(d["round_seeds"]), int(d["max_seeds"]), float(d["alpha"]),
                      str(d["spending"]), d.get("budget_minutes"))


def design_from_study(study, first_seeds: int) -> Design | None:
    """The design a run config's ``study`` block asks for, or None for a fixed design. Raises
    ``ClaimError`` (one line) for a bad value."""
    get = (lambda k: study.get(k)) if study is not None else (lambda k: None)
    max_seeds, budget = get("max_seeds"), get("budget_minutes")
    if max_seeds is None:
        if budget is not None:
            raise ClaimError("study.budget_minutes needs study.max_seeds: the sequential design spends its error "
                             "over the looks up to max_seeds")
        return None
    for key, val in (("study.max_seeds", max_seeds), ("study.round_seeds", get("round_seeds"))):
        if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 1):
            raise ClaimError(f"{key}={val} is invalid: must be an integer >= 1")
    if max_seeds < 2:
        raise ClaimError(f"study.max_seeds={max_seeds} is invalid: must be an integer >= 2 (paired intervals need "
                         f"2 seeds)")
    alpha = get("alpha") if get("alpha") is not None else 0.05
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 0.5:
        raise ClaimError(f"study.alpha={alpha} is invalid: must be a number in (0, 0.5)")
    spending = get("spending") or "obrien_fleming"
    if spending not in SPENDING:
        raise ClaimError(f"study.spending={spending} is invalid: allowed {', '.join(SPENDING)}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise ClaimError(f"study.budget_minutes={budget} is invalid: must be a number > 0")
    rs = get("round_seeds") or first_seeds
    return Design(first_seeds, int(rs), max(int(max_seeds), first_seeds), float(alpha), spending,
                  None if budget is None else float(budget))


def round_seeds(first: list[int], design: Design, look: int) -> list[int]:
    """The seeds added at look ``look`` (0-based): the first round's own list, then the next
    unused integers after the largest seed so far."""
    if look == 0:
        return list(first)[: design.looks[0]]
    ns = design.looks
    start = max(first) + 1 + (ns[look - 1] - ns[0])
    return list(range(start, start + ns[look] - ns[look - 1]))


def seeds_through(first: list[int], design: Design, look: int) -> list[int]:
    return [s for j in range(look + 1) for s in round_seeds(first, design, j)]


def judge(spec: ClaimSpec, runs: list[Run], design: Design, first: list[int], n_looks: int | None = None,
          n_boot: int = 4000, l0: float | None = None) -> ClaimResult:
    """The claim judged at each look so far (``n_looks``, default every look that has runs),
    decisions frozen at the first look that made them. ``result.design`` lists the looks."""
    alphas = design.alphas()
    have = {r.seed for r in runs}
    if n_looks is None:
        n_looks = sum(1 for j in range(len(design.looks))
                      if set(round_seeds(first, design, j)) & have)
    n_looks = max(1, min(n_looks, len(design.looks)))
    from warmup_lab.analysis.arms import initial_loss

    frozen: dict[str, tuple[Part, int]] = {}
    looks = []
    last = None
    for j in range(n_looks):
        seeds = set(seeds_through(first, design, j))
        sub = [r for r in runs if r.seed in seeds]
        # L0 of this look's own runs: a look judged again later (a new round, analyze.py) sees
        # exactly the data it saw the first time, so a decision made there stays made
        res = evaluate_claim(spec, sub, n_boot=n_boot, alpha=alphas[j], alpha_other=design.alpha,
                             l0=initial_loss(sub) if l0 is None else l0)
        for p in res.parts:
            if (p.primary or p.context) and p.id not in frozen and p.verdict in (SUPPORTED, CONTRADICTED):
                frozen[p.id] = (p, j)
        looks.append({"look": j + 1, "seeds": sorted(seeds & have), "n_seeds": len(seeds & have),
                      "alpha": alphas[j], "parts": {p.id: (frozen[p.id][0].verdict if p.id in frozen else p.verdict)
                                                    for p in res.parts if p.primary or p.context}})
        last = res
    parts = []
    for p in last.parts:
        if p.id in frozen:
            q, j = frozen[p.id]
            parts.append(dataclasses.replace(q, detail=f"{q.detail}; decided at look {j + 1} "
                                                         f"({looks[j]['n_seeds']} seeds, alpha {alphas[j]:.3g})"))
        else:
            parts.append(p)
    verdict, note = verdict_of(parts)
    notes = [n for n in last.notes if "so the question is moot" not in n] + ([note] if note else [])
    decided = all(p.id in frozen for p in parts if p.primary or p.context)
    state = ("decided" if decided else "undecided at the largest seed count" if n_looks == len(design.looks)
             else "undecided")
    design_info = {**design.as_dict(), "first_seeds": list(first), "looks_taken": looks, "state": state}
    return dataclasses.replace(last, verdict=verdict, parts=parts, notes=notes,
                               headline=headline_of(spec, parts, verdict), design=design_info)


def undecided(result: ClaimResult) -> list[Part]:
    """Decisive parts (primary and context) still undecided."""
    return [p for p in result.parts if (p.primary or p.context) and p.verdict not in (SUPPORTED, CONTRADICTED)]


# -- simulation of the design (no training) -----------------------------------------------------------
def _decide_vec(rule: str, lo, hi, est, margin):
    """Vectorised ``claims.decide``: +1 supported, -1 contradicted, 0 inconclusive."""
    out = np.zeros_like(est, dtype=int)
    if rule == "greater":
        out[(lo > 0) & (est >= margin)] = 1
        out[(hi < 0) | ((lo >= -margin) & (hi <= margin))] = -1
    elif rule == "not_greater":
        out[hi <= margin] = 1
        out[(lo > 0) & (est > margin)] = -1
    elif rule == "negligible":
        out[(lo >= -margin) & (hi <= margin)] = 1
        out[((lo > 0) | (hi < 0)) & (np.abs(est) > margin)] = -1
    elif rule == "positive":
        out[lo > 0] = 1
        out[hi < 0] = -1
    return out


def simulate(design: Design, rule: str, effect: float, sd: float, margin: float, n_sims: int = 4000,
             seed: int = 0, sequential: bool = True) -> dict:
    """Simulated claims of one part: per-seed paired differences ~ Normal(effect, sd), judged with
    t-intervals at each look of ``design`` (or once, at ``max_seeds`` and level 1 - alpha, for
    the fixed design), decisions frozen at the first. Returns the rates of each final decision
    and the mean number of seeds used."""
    rng = np.random.default_rng(seed)
    x = rng.normal(effect, sd, size=(n_sims, design.max_seeds))
    looks = design.looks if sequential else [design.max_seeds]
    alphas = design.alphas() if sequential else [design.alpha]
    decision = np.zeros(n_sims, dtype=int)
    used = np.full(n_sims, looks[-1])
    open_ = np.ones(n_sims, dtype=bool)
    for n, a in zip(looks, alphas):
        if n < 2:
            continue
        xs = x[:, :n]
        m, s = xs.mean(axis=1), xs.std(axis=1, ddof=1)
        h = scipy_stats().t.ppf(1 - a / 2, n - 1) * s / math.sqrt(n)
        d = _decide_vec(rule, m - h, m + h, m, margin)
        new = open_ & (d != 0)
        decision[new] = d[new]
        used[new] = n
        open_ &= ~new
    return {"supported": float(np.mean(decision == 1)), "contradicted": float(np.mean(decision == -1)),
            "inconclusive": float(np.mean(decision == 0)), "mean_seeds": float(used.mean()),
            "n_sims": n_sims}


def null_scenarios(margin: float) -> list[tuple[str, float, str]]:
    """(rule, true effect, the decision that would be wrong) at the boundaries of each rule."""
    return [("greater", 0.0, "supported"), ("greater", margin, "contradicted"),
            ("not_greater", margin, "supported"), ("not_greater", 0.0, "contradicted"),
            ("negligible", margin, "supported"), ("negligible", -margin, "supported"),
            ("positive", 0.0, "supported"), ("positive", 0.0, "contradicted")]


__all__ = ["Design", "SPENDING", "design_from_study", "judge", "round_seeds", "seeds_through", "simulate",
           "null_scenarios", "spent", "undecided", "INCONCLUSIVE"]
