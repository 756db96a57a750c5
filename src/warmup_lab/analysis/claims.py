"""Claims judged from runs: arms, paired effects, decision rules and a verdict.

A claim is data (:mod:`.claimspec`, docs/claims.md): arms selected by config values, effects as
arithmetic over arm names, and a rule per part. Every claim compares arms **paired by seed**
(the same seed gives the same initialisation and data order in every arm). The default metric is
the run's final validation loss with failed runs counted at the initial loss L0 (``failures:
l0``, ``arms.run_loss``). An arm with ``best_over`` keys is taken at its best level of them
(``reduce: best``), re-chosen inside every bootstrap resample; other reducers (mean over the
grid, lr sensitivity, ...) live in :mod:`.reducers`. Each effect gets a t-interval over the
per-seed values and a paired-seed bootstrap interval; the verdict uses the union of the two
(``stats.effect_interval``).

Decision rules (``decide``), with margin ``m`` (in loss units), on the interval [lo, hi] and the
estimate e:

* ``greater`` (the claim: a positive effect that matters): supported if lo > 0 and e >= m;
  contradicted if hi < 0 (the opposite direction) or the whole interval lies within [-m, m]
  (shown to be negligible); else inconclusive, which is what noise gives;
* ``not_greater`` (the claim: no effect that matters, e.g. "warmup does not help SGD"): supported
  if hi <= m; contradicted if lo > 0 and e > m; else inconclusive;
* ``negligible`` (the claim: |effect| small): supported if [lo, hi] lies within [-m, m];
  contradicted if the interval excludes 0 and |e| > m; else inconclusive;
* ``positive`` (sign only, for quantities not in loss units such as jitter ratios): supported if
  lo > 0, contradicted if hi < 0, else inconclusive.

A claim's verdict combines its primary parts: contradicted if any part is contradicted,
supported if all are supported, else inconclusive; a supported verdict is capped at inconclusive
when a context part is not supported (the question is moot). Fewer than 2 seeds is always
inconclusive. When one question is asked of k arms (parts sharing a ``family``), the intervals
are Bonferroni-widened to level 1 - alpha/k. Under a sequential design (``study.max_seeds``,
:mod:`.sequential`) each look uses its share of alpha.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from warmup_lab.analysis.arms import initial_loss, run_loss
from warmup_lab.analysis.claimspec import (DEFAULT_MARGIN, DEFAULT_METRIC, ClaimError, ClaimSpec, PartSpec, evaluate_effect,
                        load_claim, preset_names)
from warmup_lab.analysis.load import Run
from warmup_lab.analysis.reducers import REDUCERS
from warmup_lab.analysis.stats import Effect, effect_interval

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
__all__ = ["SUPPORTED", "CONTRADICTED", "INCONCLUSIVE", "DEFAULT_MARGIN", "DEFAULT_METRIC", "ClaimError",
           "decide", "combine", "Part", "ClaimResult", "evaluate_claim", "claims_in", "named_claims"]


def decide(kind: str, effect: Effect, margin: float) -> tuple[str, str]:
    """Verdict and the rule that produced it, for one effect."""
    ci = effect.ci
    if ci.n < 2 or not ci.defined:
        vals = np.asarray(effect.per_seed, dtype=float)
        n = int(np.isfinite(vals).sum()) if vals.size else ci.n
        return INCONCLUSIVE, f"fewer than 2 paired seeds with a value (n={n}): no interval"
    lo, hi, est = ci.lo, ci.hi, ci.estimate
    if kind == "greater":
        if lo > 0 and est >= margin:
            return SUPPORTED, f"interval above 0 and estimate >= margin {margin:g}"
        if hi < 0:
            return CONTRADICTED, "interval below 0 (opposite direction)"
        if -margin <= lo and hi <= margin:
            return CONTRADICTED, f"interval within +-{margin:g}: any effect is negligible"
        return INCONCLUSIVE, ("interval contains 0" if lo <= 0 else
                              f"interval above 0 but estimate < margin {margin:g}")
    if kind == "positive":
        if lo > 0:
            return SUPPORTED, "interval above 0"
        if hi < 0:
            return CONTRADICTED, "interval below 0"
        return INCONCLUSIVE, "interval contains 0"
    if kind == "not_greater":
        if hi <= margin:
            return SUPPORTED, f"upper bound <= margin {margin:g}"
        if lo > 0 and est > margin:
            return CONTRADICTED, f"interval above 0 and estimate > margin {margin:g}"
        return INCONCLUSIVE, f"upper bound > margin {margin:g} but not clearly above it"
    if kind == "negligible":
        if -margin <= lo and hi <= margin:
            return SUPPORTED, f"interval within +-{margin:g}"
        if (lo > 0 or hi < 0) and abs(est) > margin:
            return CONTRADICTED, f"interval excludes 0 and |estimate| > margin {margin:g}"
        return INCONCLUSIVE, f"interval not within +-{margin:g}"
    raise ValueError(f"unknown decision kind {kind!r}")


def combine(verdicts: list[str]) -> str:
    if not verdicts:
        return INCONCLUSIVE
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    return INCONCLUSIVE


@dataclass
class Part:
    """One tested statement of a claim, judged."""

    name: str
    kind: str
    effect: Effect
    margin: float
    primary: bool = True
    detail: str = ""
    verdict: str = ""
    rule: str = ""
    id: str = ""
    context: bool = False
    formula: str = ""

    def __post_init__(self):
        if not self.verdict:
            self.verdict, self.rule = decide(self.kind, self.effect, self.margin)

    def as_dict(self) -> dict:
        return {"id": self.id or self.name, "name": self.name, "kind": self.kind, "effect_formula": self.formula,
                "margin": self.margin, "primary": self.primary, "context": self.context, "verdict": self.verdict,
                "rule": self.rule, "detail": self.detail, "effect": self.effect.as_dict()}


@dataclass
class ClaimResult:
    name: str
    title: str
    statement: str
    metric: str
    verdict: str
    headline: Part | None
    parts: list[Part]
    n_seeds: int
    notes: list[str] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list]]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    design: dict | None = None          # the sequential design and its looks (sequential.py)

    def as_dict(self) -> dict:
        h = self.headline
        return {"claim": self.name, "title": self.title, "statement": self.statement,
                "metric": self.metric, "verdict": self.verdict, "n_seeds": self.n_seeds, "seeds": self.seeds,
                "headline": h.as_dict() if h else None, "parts": [p.as_dict() for p in self.parts],
                "notes": self.notes, "design": self.design}


# -- runs into arms ---------------------------------------------------------------------------------
def _same(a, b) -> bool:
    """Config value ``a`` equals the arm's value ``b``: numbers numerically (0 == 0.0), bools only
    as bools, sequences element by element, None only as None."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b) or (a is None and b is None)


def _matches(run: Run, sel: dict[str, tuple]) -> bool:
    return all(any(_same(run.get(k), v) for v in allowed) for k, allowed in sel.items())


def _values_text(runs: list[Run], key: str) -> str:
    vals = sorted({repr(run.get(key)) for run in runs})
    return ", ".join(vals[:8]) + (" ..." if len(vals) > 8 else "")


def assign_arms(spec: ClaimSpec, runs: list[Run]) -> dict[str, list[Run]]:
    """Arm name -> its runs. A run in two arms, or an arm with no run, is a ``ClaimError``."""
    members: dict[str, list[Run]] = {a: [] for a in spec.arms}
    for run in runs:
        hit = [a for a, sel in spec.arms.items() if _matches(run, sel)]
        if len(hit) > 1:
            raise ClaimError(f"claim {spec.name}: run {run.path} matches arms {hit[0]} and {hit[1]}: make the "
                             f"arms' values exclusive")
        if hit:
            members[hit[0]].append(run)
    for arm, sel in spec.arms.items():
        if not members[arm]:
            why = "; ".join(f"{k} in this sweep: {_values_text(runs, k)}" for k in sel)
            want = ", ".join(f"{k}={'|'.join(map(repr, v))}" for k, v in sel.items())
            raise ClaimError(f"claim {spec.name}: arm {arm} ({want}) matches no run ({why})")
    return members


def _sort_key(v):
    if isinstance(v, tuple):
        return (2, 0, str(v))
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


@dataclass
class ArmCube:
    """An arm's per-run values as ``values[level, seed]``; levels are the arm's ``best_over``
    value combinations in sorted order."""

    arm: str
    keys: tuple[str, ...]
    levels: list[tuple]
    values: np.ndarray
    collisions: int


def _run_value(run: Run, part: PartSpec, l0: float) -> float:
    if part.metric == "trained":
        v = 0.0 if run.failed else 1.0
    elif part.failures == "l0":
        v = run_loss(run, l0, part.metric)
    else:
        raw = run.metrics.get(part.metric)
        if part.failures == "exclude" and run.failed:
            return math.nan
        v = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else math.nan
    if part.transform == "log10":
        v = math.log10(v) if v > 0 else math.nan
    return v


def arm_cube(arm: str, keys: tuple[str, ...], runs: list[Run], seeds: list[int], value) -> ArmCube:
    level_of = [tuple(r.get(k) for k in keys) for r in runs]
    levels = sorted(set(level_of), key=lambda lv: tuple(_sort_key(x) for x in lv))
    values = np.full((len(levels), len(seeds)), np.nan)
    seen = np.zeros_like(values, dtype=bool)
    collisions = 0
    for r, lv in zip(runs, level_of):
        i, j = levels.index(lv), seeds.index(r.seed)
        collisions += bool(seen[i, j])
        seen[i, j] = True
        values[i, j] = value(r)
    return ArmCube(arm, keys, levels, values, collisions)


# -- judging --------------------------------------------------------------------------------------
@dataclass
class _Judge:
    spec: ClaimSpec
    members: dict[str, list[Run]]
    seeds: list[int]
    l0: float
    n_boot: int
    cubes: dict = field(default_factory=dict)

    def cube(self, arm: str, part: PartSpec) -> ArmCube:
        key = (arm, part.metric, part.failures, part.transform)
        if key not in self.cubes:
            self.cubes[key] = arm_cube(arm, self.spec.best_over[arm], self.members[arm], self.seeds,
                                       lambda r: _run_value(r, part, self.l0))
        return self.cubes[key]

    def per_seed(self, part: PartSpec):
        cubes = {a: self.cube(a, part) for a in part.arms}
        red = REDUCERS[part.reduce]

        def fn(idx):
            return np.asarray(evaluate_effect(part.effect, {a: red(c.values, idx)[0] for a, c in cubes.items()}),
                              dtype=float)
        return fn, cubes

    def part(self, p: PartSpec, level: float) -> Part:
        fn, cubes = self.per_seed(p)
        n = len(self.seeds)
        per_seed = fn(np.arange(n))

        def stat(idx):
            v = fn(idx)
            v = v[np.isfinite(v)]
            return float(v.mean()) if v.size else math.nan

        eff = effect_interval(per_seed, stat=stat, n_units=n, level=level, n_boot=self.n_boot)
        return Part(p.name, p.rule, eff, p.margin, primary=p.primary, detail=self.detail(p, cubes, level), id=p.id,
                    context=p.context, formula=p.effect)

    def detail(self, p: PartSpec, cubes: dict[str, ArmCube], level: float) -> str:
        bits = [f"{p.effect}"]
        if p.reduce == "best":
            picks = []
            for a, c in cubes.items():
                if c.keys and len(c.levels) > 1:
                    _, b = REDUCERS["best"](c.values, np.arange(len(self.seeds)))
                    picks.append(f"{a} at " + ", ".join(f"{k.split('.')[-1]}={_fmt(v)}"
                                                        for k, v in zip(c.keys, c.levels[b])))
            if picks:
                bits.append("best: " + "; ".join(picks))
        elif p.reduce != "best":
            bits.append(f"reduce {p.reduce} over {', '.join(sorted({k for c in cubes.values() for k in c.keys}))}")
        if p.metric != self.spec.metric or p.transform:
            bits.append(f"metric {p.transform + '(' if p.transform else ''}{p.metric}{')' if p.transform else ''}")
        if p.family:
            bits.append(f"{level:.2%} interval (Bonferroni over family {p.family})")
        if p.detail:
            bits.append(p.detail)
        return "; ".join(bits)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "/".join(map(_fmt, v))
    return str(v)


def _g(v, digits=4) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


def part_levels(spec: ClaimSpec, alpha: float | None = None, alpha_other: float | None = None) -> dict[str, float]:
    """Interval level of each part: ``1 - alpha / k`` with k the size of its family (1 alone).
    ``alpha`` (default ``1 - spec.level``) is for the decisive parts (primary and context),
    ``alpha_other`` (default: the same) for supplementary ones."""
    alpha = 1 - spec.level if alpha is None else alpha
    alpha_other = alpha if alpha_other is None else alpha_other
    sizes: dict[str, int] = {}
    for p in spec.parts:
        if p.family:
            sizes[p.family] = sizes.get(p.family, 0) + 1
    return {p.id: 1 - (alpha if p.primary or p.context else alpha_other) / (sizes[p.family] if p.family else 1)
            for p in spec.parts}


def with_overrides(spec: ClaimSpec, margin: float | None = None, metric: str | None = None) -> ClaimSpec:
    """The claim with every part's margin set to ``margin`` and the claim's metric replaced by
    ``metric`` (where a part used the claim's metric), from analyze.py's --margin/--metric."""
    if margin is None and metric is None:
        return spec
    parts = tuple(dataclasses.replace(
        p, margin=float(margin) if margin is not None else p.margin,
        metric=metric if metric is not None and p.metric == spec.metric else p.metric) for p in spec.parts)
    return dataclasses.replace(spec, parts=parts, margin=float(margin) if margin is not None else spec.margin,
                               metric=metric or spec.metric)


def evaluate_claim(claim, runs: list[Run], margin: float | None = None, metric: str | None = None,
                   n_boot: int = 4000, alpha: float | None = None, alpha_other: float | None = None,
                   l0: float | None = None) -> ClaimResult:
    """Judge ``claim`` (a :class:`ClaimSpec`, a mapping, a YAML path or a preset name) on ``runs``.
    ``alpha``: the error this look may spend on decisive parts (default ``1 - claim.level``);
    ``alpha_other``: on supplementary parts (default: ``alpha``). ``l0``: the initial loss
    (default: the median over the claim's runs)."""
    spec = claim if isinstance(claim, ClaimSpec) else load_claim(claim, "claim")
    spec = with_overrides(spec, margin, metric)
    members = assign_arms(spec, runs)
    used = [r for rs in members.values() for r in rs]
    seeds = sorted({r.seed for r in used})
    l0 = initial_loss(used) if l0 is None else l0
    judge = _Judge(spec, members, seeds, l0, n_boot)
    levels = part_levels(spec, alpha, alpha_other)
    parts = [judge.part(p, levels[p.id]) for p in spec.parts]
    notes = list(spec.notes)
    collided = collisions(spec, members)
    if collided:
        notes.append(f"{collided} runs share an (arm, {'/'.join(sorted({k for ks in spec.best_over.values() for k in ks})) or 'level'}, "
                     f"seed) cell: the sweep varies more than this claim models; later runs overwrote earlier ones")
    if len(used) < len(runs):
        notes.append(f"{len(runs) - len(used)} of {len(runs)} runs belong to no arm of this claim and are not used")
    if any(p.reduce == "lr_sensitivity" for p in spec.parts) and not any(r.failed for r in used):
        notes.append("no run failed anywhere on the lr grid: the grid does not reach the stability boundary, so "
                     "this sweep cannot show a wider stable range (extend it upward); the lr-sensitivity part still "
                     "compares how fast the loss degrades at high lr")
    verdict = verdict_of(parts)
    if verdict[1]:
        notes.append(verdict[1])
    return ClaimResult(spec.name, spec.title, spec.statement, metric_text(spec, l0), verdict[0],
                       headline_of(spec, parts, verdict[0]), parts, len(seeds), notes, [arm_table(spec, judge)],
                       seeds=seeds)


def collisions(spec: ClaimSpec, members: dict[str, list[Run]]) -> int:
    """Runs that share an (arm, best_over level, seed) cell with an earlier run."""
    n = 0
    for arm, runs in members.items():
        cells = [(tuple(repr(r.get(k)) for k in spec.best_over[arm]), r.seed) for r in runs]
        n += len(cells) - len(set(cells))
    return n


def verdict_of(parts: list[Part]) -> tuple[str, str]:
    """The claim's verdict from its judged parts, and a note when a context part capped it."""
    primary = [p for p in parts if p.primary]
    verdict = combine([p.verdict for p in primary])
    moot = [p for p in parts if p.context and p.verdict != SUPPORTED]
    if moot and verdict == SUPPORTED:
        return INCONCLUSIVE, (f"context not supported ({moot[0].name}: {moot[0].verdict}), so the question is moot "
                              f"in this setting: the verdict is capped at inconclusive")
    return verdict, ""


def headline_of(spec: ClaimSpec, parts: list[Part], verdict: str) -> Part | None:
    """The part that decided a contradiction, else the claim's designated part."""
    primary = [p for p in parts if p.primary]
    if verdict == CONTRADICTED:
        return next(p for p in primary if p.verdict == CONTRADICTED)
    if spec.headline == "first":
        return primary[0] if primary else None
    if spec.headline == "largest":
        est = [p for p in primary if p.effect.ci.estimate is not None]
        return max(est, key=lambda p: p.effect.ci.estimate) if est else None
    return next(p for p in parts if p.id == spec.headline)


def metric_text(spec: ClaimSpec, l0: float) -> str:
    return (f"{spec.metric} at the end of training, failed runs (diverged, not finished, final train loss >= "
            f"initial, val acc < 1.5x chance, or a language model at or above the unigram entropy of its data) "
            f"counted at L0 = {l0:.4g} (median first-step loss) and every loss capped at L0; margin {spec.margin:g}")


def arm_table(spec: ClaimSpec, judge: _Judge) -> tuple[str, list[str], list[list]]:
    """Mean loss per arm and level (over seeds), runs and failures; * marks each arm's best level."""
    loss_part = PartSpec(id="_", name="_", effect="_", rule="greater", arms=(), metric=spec.metric)
    rows = []
    for arm, runs in judge.members.items():
        c = judge.cube(arm, loss_part)
        best = REDUCERS["best"](c.values, np.arange(len(judge.seeds)))[1]
        fails = {}
        for r in runs:
            lv = tuple(r.get(k) for k in c.keys)
            fails[lv] = fails.get(lv, 0) + r.failed
        for i, lv in enumerate(c.levels):
            vals = c.values[i][np.isfinite(c.values[i])]
            rows.append([arm, ", ".join(f"{k}={_fmt(v)}" for k, v in zip(c.keys, lv)) or "(one level)",
                         _g(vals.mean() if vals.size else math.nan), _g(vals.std(ddof=1) if vals.size > 1 else math.nan),
                         int(vals.size), fails.get(lv, 0), "*" if i == best and len(c.levels) > 1 else ""])
    return (f"Loss per arm and level (mean and std over seeds, failed runs at L0; * = the arm's best level)",
            ["arm", "level", "mean loss", "std", "runs", "failed", "best"], rows)


# -- which claims a sweep names ---------------------------------------------------------------------
def named_claims() -> list[str]:
    """Preset names whose preset carries a claim (``conf/experiment/<name>.yaml``)."""
    return preset_names()


def claims_in(runs: list[Run]) -> list:
    """The claims the runs' configs name (``study.claim``: a mapping, a path or a preset name),
    each once, in first-seen order."""
    out, seen = [], set()
    for r in runs:
        ref = r.study.get("claim") if r.study else None
        if ref is None:
            continue
        key = repr(ref)
        if key not in seen:
            seen.add(key)
            out.append(ref)
    return out


def ensure_spec(ref) -> ClaimSpec:
    return ref if isinstance(ref, ClaimSpec) else load_claim(ref)

