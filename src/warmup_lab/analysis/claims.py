"""Claims: a question over arms, a metric, a decision rule, and a verdict.

Every claim compares arms **paired by seed** (the same seed gives the same initialisation and
data order in every arm). The metric is the run's final validation loss with failed runs
counted at the initial loss L0 (``arms.run_loss``; the preset may pick another loss metric with
``study.metric``). Effects are loss differences between arms (each part states its formula):
``greater`` parts claim the effect is positive, ``not_greater`` parts claim it is at most the
margin. Each effect gets a t-interval over the
per-seed values and a paired-seed bootstrap interval that redoes any best-lr selection in every
resample; the verdict uses the union of the two (``stats.effect_interval``).

Decision rules (``decide``), with margin ``m`` (``study.margin``, in loss units), on the interval
[lo, hi] and the estimate e:

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
supported if all are supported, else inconclusive. Fewer than 2 seeds is always inconclusive.
When one question is asked of k arms (claims 3 and 4), the intervals are Bonferroni-widened to
level 1 - 0.05/k.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .arms import initial_loss, run_loss
from .load import Run
from .stats import LEVEL, Effect, effect_interval

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
DEFAULT_MARGIN = 0.02
DEFAULT_METRIC = "final_val_loss"


def decide(kind: str, effect: Effect, margin: float) -> tuple[str, str]:
    """Verdict and the rule that produced it, for one effect."""
    ci = effect.ci
    if ci.n < 2 or not ci.defined:
        return INCONCLUSIVE, f"fewer than 2 paired seeds (n={ci.n}): no interval"
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
    """One tested statement of a claim."""

    name: str
    kind: str
    effect: Effect
    margin: float
    primary: bool = True
    detail: str = ""
    verdict: str = ""
    rule: str = ""

    def __post_init__(self):
        if not self.verdict:
            self.verdict, self.rule = decide(self.kind, self.effect, self.margin)

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "margin": self.margin, "primary": self.primary,
                "verdict": self.verdict, "rule": self.rule, "detail": self.detail,
                "effect": self.effect.as_dict()}


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

    def as_dict(self) -> dict:
        h = self.headline
        return {"claim": self.name, "title": self.title, "statement": self.statement,
                "metric": self.metric, "verdict": self.verdict, "n_seeds": self.n_seeds,
                "headline": h.as_dict() if h else None, "parts": [p.as_dict() for p in self.parts],
                "notes": self.notes}


# -- the grid of per-seed values -----------------------------------------------------------------
class Grid:
    """``values[level_0, ..., level_k, seed]`` of a per-run number over the given axes (NaN where
    no run). Two runs in one cell means the sweep varies something the claim does not model:
    ``collisions`` lists them and the claim says so."""

    def __init__(self, runs: list[Run], axes: dict[str, Callable[[Run], object]],
                 value: Callable[[Run], float]):
        self.axes = list(axes)
        self.seeds = sorted({r.seed for r in runs})
        self.levels = {a: sorted({f(r) for r in runs}, key=_sort_key) for a, f in axes.items()}
        shape = [len(self.levels[a]) for a in self.axes] + [len(self.seeds)]
        self.values = np.full(shape, np.nan)
        self.collisions: list[tuple] = []
        for r in runs:
            idx = tuple(self.levels[a].index(f(r)) for a, f in axes.items()) + (self.seeds.index(r.seed),)
            if not np.isnan(self.values[idx]):
                self.collisions.append(idx)
            self.values[idx] = value(r)

    def index(self, axis: str, level) -> int:
        return self.levels[axis].index(level)


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def _nanmean(a: np.ndarray, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def best_index(cube: np.ndarray) -> int:
    """Index along the first axis of the lowest seed-mean (cube: (levels, seeds)); ties and
    all-NaN rows resolve to the first."""
    means = _nanmean(cube, axis=-1)
    means = np.where(np.isnan(means), np.inf, means)
    return int(np.argmin(means))


# -- context shared by the claims ------------------------------------------------------------------
@dataclass
class Context:
    runs: list[Run]
    l0: float
    metric: str
    margin: float
    level: float = LEVEL
    n_boot: int = 4000

    def loss(self, r: Run) -> float:
        return run_loss(r, self.l0, self.metric)


def has_warmup(r: Run) -> bool:
    return (r.metrics.get("warmup_steps") or 0) > 0


def lr_of(r: Run) -> float:
    return float(r.metrics.get("peak_lr") or r.config.get("optimizer.lr"))


def paired_effect(ctx: Context, per_seed_fn: Callable[[np.ndarray], np.ndarray], n_seeds: int,
                  level: float | None = None) -> Effect:
    """``per_seed_fn(idx)`` returns the per-seed effect values for the seeds ``idx`` (selections
    inside it are made on those seeds only); the estimate is their mean."""
    all_idx = np.arange(n_seeds)
    per_seed = per_seed_fn(all_idx)

    def stat(idx):
        v = per_seed_fn(idx)
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else math.nan

    return effect_interval(per_seed, stat=stat, n_units=n_seeds, level=level or ctx.level,
                           n_boot=ctx.n_boot)


# -- claim 1 and 2: warmup matters for one level of a factor, not for another ------------------------
def warmup_by_factor(ctx: Context, *, factor: str, factor_of: Callable[[Run], object], needs, not_needs,
                     needs_name: str, not_needs_name: str) -> tuple[list[Part], list[str], list]:
    """Parts: warmup helps ``needs`` (greater), does not help ``not_needs`` (not_greater), and
    helps ``needs`` more (interaction, greater); each at each arm's best lr of the grid, plus
    the same effects averaged over the lr grid (supplementary)."""
    grid = Grid(ctx.runs, {factor: factor_of, "warmup": has_warmup, "lr": lr_of}, ctx.loss)
    notes = []
    if grid.collisions:
        notes.append(f"{len(grid.collisions)} runs share a (factor, warmup, lr, seed) cell: the sweep "
                     f"varies more than this claim models; later runs overwrote earlier ones")
    levels = grid.levels[factor]
    if needs not in levels or not_needs not in levels or grid.levels["warmup"] != [False, True]:
        missing = [n for lv, n in ((needs, needs_name), (not_needs, not_needs_name)) if lv not in levels]
        if grid.levels["warmup"] != [False, True]:
            missing.append("runs with and without warmup")
        notes.append(f"cannot judge: the sweep lacks {', '.join(missing)}")
        return [], notes, []
    V = grid.values  # (factor, warmup, lr, seed)
    n = len(grid.seeds)

    def best_lr_effect(fi):
        def fn(idx):
            sub = V[fi][:, :, idx]  # (warmup, lr, seeds)
            b0, b1 = best_index(sub[0]), best_index(sub[1])
            return sub[0, b0] - sub[1, b1]
        return fn

    def grid_effect(fi):
        def fn(idx):
            sub = V[fi][:, :, idx]
            return _nanmean(sub[0] - sub[1], axis=0)
        return fn

    fa, fb = grid.index(factor, needs), grid.index(factor, not_needs)
    lrs = grid.levels["lr"]
    parts = []
    e_a = paired_effect(ctx, best_lr_effect(fa), n)
    e_b = paired_effect(ctx, best_lr_effect(fb), n)
    e_ab = paired_effect(ctx, lambda idx: best_lr_effect(fa)(idx) - best_lr_effect(fb)(idx), n)
    sel = {}
    for fi, name in ((fa, needs_name), (fb, not_needs_name)):
        sel[name] = [lrs[best_index(V[fi][w])] for w in (0, 1)]
    parts.append(Part(f"{needs_name}: warmup lowers the loss (each arm at its best lr)", "greater", e_a,
                      ctx.margin, detail=f"loss(no warmup) - loss(warmup); best lr without / with warmup: "
                             f"{sel[needs_name][0]:g} / {sel[needs_name][1]:g}"))
    parts.append(Part(f"{not_needs_name}: warmup does not lower the loss by more than the margin "
                      f"(each arm at its best lr)", "not_greater", e_b, ctx.margin,
                      detail=f"loss(no warmup) - loss(warmup); best lr without / with warmup: "
                             f"{sel[not_needs_name][0]:g} / {sel[not_needs_name][1]:g}"))
    parts.append(Part(f"interaction: the warmup benefit is larger for {needs_name} than for {not_needs_name}",
                      "greater", e_ab, ctx.margin, detail=f"benefit({needs_name}) - benefit({not_needs_name}), "
                                                          "benefit = loss(no warmup) - loss(warmup)"))
    if len(lrs) > 1:
        g_a, g_b = paired_effect(ctx, grid_effect(fa), n), paired_effect(ctx, grid_effect(fb), n)
        g_ab = paired_effect(ctx, lambda idx: grid_effect(fa)(idx) - grid_effect(fb)(idx), n)
        parts.append(Part(f"{needs_name}: warmup lowers the loss, averaged over the lr grid", "greater",
                          g_a, ctx.margin, primary=False))
        parts.append(Part(f"{not_needs_name}: warmup benefit <= margin, averaged over the lr grid",
                          "not_greater", g_b, ctx.margin, primary=False))
        parts.append(Part("interaction, averaged over the lr grid", "greater", g_ab, ctx.margin, primary=False))
    # early-phase jitter: log10(jitter without / with warmup), paired by seed, mean over the grid
    J = Grid(ctx.runs, {factor: factor_of, "warmup": has_warmup, "lr": lr_of},
             lambda r: math.log10(r.metrics["early_jitter"]) if (r.metrics.get("early_jitter") or 0) > 0
             else math.nan).values
    for fi, name in ((fa, needs_name), (fb, not_needs_name)):
        eff = paired_effect(ctx, lambda idx, fi=fi: _nanmean(J[fi][0][:, idx] - J[fi][1][:, idx], axis=0), n)
        parts.append(Part(f"{name}: warmup lowers the early-phase jitter (log10 ratio none/warmup, mean over "
                          f"the lr grid)", "positive", eff, ctx.margin, primary=False,
                          detail=f"jitter ratio {10 ** eff.ci.estimate:.3g}x" if eff.ci.estimate is not None else ""))
    # table: mean loss per (factor, warmup, lr)
    rows = []
    for fi, lv in enumerate(levels):
        for li, lr in enumerate(lrs):
            m0, m1 = (_nanmean(V[fi, w, li]) for w in (0, 1))
            if np.isnan(m0) and np.isnan(m1):
                continue
            rows.append([str(lv), f"{lr:g}", _f(m0), _f(m1), _f(m0 - m1)])
    table = ("Mean loss over seeds (failed runs at L0)", [factor, "lr", "no warmup", "warmup", "difference"], rows)
    return parts, notes, [table]


def _f(v, digits=4):
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"


# -- claim 3: RAdam / untuned warmup replaces tuned warmup -------------------------------------------
UNTUNED = {"untunedlinearwarmup": "untuned linear warmup", "untunedexponentialwarmup": "untuned exponential warmup"}


def method_of(r: Run) -> str:
    sched, opt = r.config.get("scheduler.name"), r.config.get("optimizer.name")
    if sched in UNTUNED:
        return UNTUNED[sched]
    if not has_warmup(r):
        return "RAdam, no warmup" if opt == "radam" else "no warmup"
    return "tuned warmup"


def replaces_tuned(ctx: Context) -> tuple[list[Part], list[str], list]:
    """Each replacement (RAdam without warmup, untuned warmups) is not worse than the tuned warmup
    by more than the margin (not_greater on replacement - tuned); tuned = the best (warmup length,
    lr) of the grid, each replacement at its best lr. Context: warmup itself must matter
    (no warmup - tuned, greater), or the question is moot."""
    runs = [r for r in ctx.runs if r.config.get("optimizer.name") in ("adam", "adamw", "radam")]
    grid = Grid(runs, {"method": method_of, "wsteps": lambda r: r.metrics.get("warmup_steps") or 0,
                       "lr": lr_of}, ctx.loss)
    notes = []
    methods = grid.levels["method"]
    if "tuned warmup" not in methods:
        return [], ["cannot judge: no tuned-warmup arm (AdamW with a warmup_ratio/warmup_steps schedule)"], []
    V, n = grid.values, len(grid.seeds)

    def best_of(mi):
        def fn(idx):
            sub = V[mi][:, :, idx].reshape(-1, len(idx))  # (wsteps*lr, seeds)
            return sub[best_index(sub)]
        return fn

    ti = grid.index("method", "tuned warmup")
    others = [m for m in methods if m not in ("tuned warmup", "no warmup")]
    k = max(1, len(others))
    level = 1 - (1 - ctx.level) / k
    parts = []
    for m in others:
        mi = grid.index("method", m)
        eff = paired_effect(ctx, lambda idx, mi=mi: best_of(mi)(idx) - best_of(ti)(idx), n, level=level)
        parts.append(Part(f"{m} is not worse than tuned warmup by more than the margin", "not_greater",
                          eff, ctx.margin, detail=f"loss({m}) - loss(tuned); {level:.1%} interval (Bonferroni, k={k})"))
    if "no warmup" in methods:
        ni = grid.index("method", "no warmup")
        ctx_part = Part("context: warmup matters here (no warmup is worse than tuned warmup)", "greater",
                        paired_effect(ctx, lambda idx: best_of(ni)(idx) - best_of(ti)(idx), n), ctx.margin,
                        primary=False, detail="loss(no warmup) - loss(tuned)")
        parts.append(ctx_part)
        if ctx_part.verdict != SUPPORTED:
            notes.append("warmup itself made no detectable difference in this setting, so whether RAdam or an "
                         "untuned warmup can replace it is moot here: the verdict is capped at inconclusive")
    if not others:
        notes.append("cannot judge: no RAdam or untuned-warmup arm")
    rows = []
    sub = V.reshape(len(methods), -1, n)
    for mi, m in enumerate(methods):
        b = best_index(sub[mi])
        wi, li = divmod(b, len(grid.levels["lr"]))
        rows.append([m, f"{grid.levels['wsteps'][wi]}", f"{grid.levels['lr'][li]:g}", _f(_nanmean(sub[mi, b]))])
    return parts, notes, [("Best setting of each method (mean over seeds)", ["method", "warmup steps",
                                                                             "lr", "mean loss"], rows)]


# -- claim 4: about 10% of steps is a good warmup length -------------------------------------------------
def fraction_of(r: Run) -> float:
    total = r.metrics.get("total_steps") or 1
    return round((r.metrics.get("warmup_steps") or 0) / total, 3)


def _pct(f: float) -> str:
    return f"{f * 100:g}%"


def ten_percent(ctx: Context, reference: float = 0.1) -> tuple[list[Part], list[str], list]:
    """10% (the fraction closest to ``reference``) is within the margin of every other fraction
    (not_greater on loss(10%) - loss(f), Bonferroni over the fractions), each at its best lr."""
    grid = Grid(ctx.runs, {"fraction": fraction_of, "lr": lr_of}, ctx.loss)
    fr = grid.levels["fraction"]
    if len(fr) < 2:
        return [], ["cannot judge: fewer than two warmup fractions"], []
    ref = min(fr, key=lambda f: abs(f - reference))
    notes = [] if abs(ref - reference) < 0.02 else [f"no 10% arm; the closest fraction is {ref:g}"]
    V, n = grid.values, len(grid.seeds)
    ri = fr.index(ref)
    others = [f for f in fr if f != ref]
    level = 1 - (1 - ctx.level) / len(others)

    def at_best(fi):
        return lambda idx: V[fi][:, idx][best_index(V[fi][:, idx])]

    parts = []
    for f in others:
        fi = fr.index(f)
        eff = paired_effect(ctx, lambda idx, fi=fi: at_best(ri)(idx) - at_best(fi)(idx), n, level=level)
        parts.append(Part(f"{_pct(ref)} warmup is not worse than {_pct(f)} by more than the margin", "not_greater",
                          eff, ctx.margin, detail=f"loss({ref:g}) - loss({f:g}); {level:.1%} interval "
                                                  f"(Bonferroni, k={len(others)})"))
    if 0.0 in fr:
        zi = fr.index(0.0)
        parts.append(Part(f"context: warmup matters here (no warmup is worse than {_pct(ref)})", "greater",
                          paired_effect(ctx, lambda idx: at_best(zi)(idx) - at_best(ri)(idx), n), ctx.margin,
                          primary=False, detail=f"loss(0) - loss({ref:g})"))
    rows = []
    for i, f in enumerate(fr):
        b = best_index(V[i])
        vals = V[i][b][np.isfinite(V[i][b])]
        rows.append([f"{f:g}", f"{grid.levels['lr'][b]:g}", _f(vals.mean() if vals.size else math.nan),
                     _f(vals.std(ddof=1) if vals.size > 1 else math.nan)])
    return parts, notes, [("Loss per warmup fraction (at its best lr; mean and std over seeds)",
                           ["warmup fraction", "best lr", "mean loss", "std"], rows)]


# -- claim 5: warmup widens the range of stable learning rates -------------------------------------------
def lr_stability(ctx: Context) -> tuple[list[Part], list[str], list]:
    """LR sensitivity (Wortsman et al.): per seed, the mean over the log-lr grid of
    min(L(lr), L0) - L*, L* the best loss of that arm and seed. Effect: LRS(no warmup) -
    LRS(warmup), pooled over optimizers (primary) and per optimizer; also the number of grid
    lrs that trained (not failed), warmup minus none."""
    grid = Grid(ctx.runs, {"opt": lambda r: r.config.get("optimizer.name"), "warmup": has_warmup, "lr": lr_of},
                ctx.loss)
    trained = Grid(ctx.runs, {"opt": lambda r: r.config.get("optimizer.name"), "warmup": has_warmup, "lr": lr_of},
                   lambda r: 0.0 if r.failed else 1.0)
    if grid.levels["warmup"] != [False, True] or len(grid.levels["lr"]) < 3:
        return [], ["cannot judge: needs runs with and without warmup over at least 3 learning rates"], []
    V, T, n = grid.values, trained.values, len(grid.seeds)
    opts = grid.levels["opt"]

    def lrs_eff(oi):
        def fn(idx):
            sub = V[oi][:, :, idx]                          # (warmup, lr, seeds)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                sens = _nanmean(sub - np.nanmin(sub, axis=1, keepdims=True), axis=1)  # (warmup, seeds)
            return sens[0] - sens[1]
        return fn

    def width_eff(oi):
        return lambda idx: np.nansum(T[oi][1][:, idx], axis=0) - np.nansum(T[oi][0][:, idx], axis=0)

    pooled = paired_effect(ctx, lambda idx: _nanmean(np.stack([lrs_eff(o)(idx) for o in range(len(opts))]), axis=0), n)
    parts = [Part("warmup lowers the lr sensitivity (LRS, pooled over optimizers)", "greater", pooled, ctx.margin,
                  detail="LRS(no warmup) - LRS(warmup), mean over optimizers")]
    for oi, o in enumerate(opts):
        parts.append(Part(f"{o}: warmup lowers the lr sensitivity", "greater", paired_effect(ctx, lrs_eff(oi), n),
                          ctx.margin, primary=False, detail="LRS(no warmup) - LRS(warmup)"))
        parts.append(Part(f"{o}: warmup trains at more grid lrs (count of lrs, warmup - none)", "positive",
                          paired_effect(ctx, width_eff(oi), n), ctx.margin, primary=False,
                          detail="trained lrs with warmup - without"))
    rows = []
    lrs = grid.levels["lr"]
    for oi, o in enumerate(opts):
        for w in (0, 1):
            have = [li for li in range(len(lrs)) if np.isfinite(T[oi, w, li]).any()]
            ok = [lrs[li] for li in have if np.nanmin(T[oi, w, li]) == 1]
            rate = [f"{lrs[li]:g}: {_f(_nanmean(1 - T[oi, w, li]), 2)}" for li in have]
            rows.append([o, "yes" if w else "no", f"{max(ok):g}" if ok else "none", ", ".join(rate)])
    table = ("Stability per arm: largest lr at which every seed trained; failure rate at each lr",
             ["optimizer", "warmup", "max stable lr", "lr: failure rate"], rows)
    notes = []
    if np.nanmax(1 - T) == 0:
        notes.append("no run failed anywhere on the lr grid: the grid does not reach the stability boundary, so "
                     "this sweep cannot show a wider stable range (extend it upward, e.g. study.lr_mult); the LRS "
                     "part still compares how fast the loss degrades at high lr")
    return parts, notes, [table]


# -- the registry ----------------------------------------------------------------------------------------
@dataclass
class ClaimSpec:
    name: str
    title: str
    statement: str
    evaluate: Callable[[Context], tuple[list[Part], list[str], list]]
    headline: Callable[[list[Part]], Part | None]


def _first(parts):
    return parts[0] if parts else None


def _interaction(parts):
    return next((p for p in parts if p.name.startswith("interaction")), None)


def _worst(parts):
    prim = [p for p in parts if p.primary and p.effect.ci.estimate is not None]
    return max(prim, key=lambda p: p.effect.ci.estimate) if prim else None


CLAIMS: dict[str, ClaimSpec] = {c.name: c for c in [
    ClaimSpec("warmup_adam_vs_sgd", "Warmup matters for Adam, not SGD",
              "With each optimizer at its best lr, warmup lowers AdamW's final loss, does not lower SGD's "
              "by more than the margin, and helps AdamW more than SGD (interaction).",
              lambda ctx: warmup_by_factor(ctx, factor="optimizer", factor_of=lambda r: r.config.get("optimizer.name"),
                                           needs="adamw", not_needs="sgd", needs_name="AdamW", not_needs_name="SGD"),
              _interaction),
    ClaimSpec("postln_needs_warmup", "Post-LN Transformers need warmup; Pre-LN do not",
              "Warmup lowers the final loss of a Post-LN Transformer, does not lower a Pre-LN one's by more "
              "than the margin, and helps Post-LN more (interaction); each arm at its best lr.",
              lambda ctx: warmup_by_factor(ctx, factor="norm", factor_of=lambda r: "Pre-LN" if r.config.get(
                  "model.norm_first") else "Post-LN", needs="Post-LN", not_needs="Pre-LN",
                  needs_name="Post-LN", not_needs_name="Pre-LN"),
              _interaction),
    ClaimSpec("radam_untuned_replaces_warmup", "RAdam or untuned warmup (2/(1-beta2)) replaces tuned warmup",
              "AdamW with RAdam's rectification (no warmup), untuned linear warmup (2/(1-beta2) steps) or untuned "
              "exponential warmup ends no worse than AdamW with the best warmup length of a grid, within the margin.",
              replaces_tuned, _worst),
    ClaimSpec("warmup_fraction", "About 10% of steps is a good warmup length",
              "The final loss with 10% warmup is within the margin of the best of the other warmup fractions.",
              ten_percent, _worst),
    ClaimSpec("warmup_lr_stability", "Warmup widens the range of stable learning rates",
              "Warmup lowers the lr sensitivity (mean excess loss over a log lr grid, failed runs at L0).",
              lr_stability, _first),
]}


def evaluate_claim(name: str, runs: list[Run], margin: float | None = None, metric: str | None = None,
                   n_boot: int = 4000) -> ClaimResult:
    spec = CLAIMS[name]
    margin = margin if margin is not None else _study(runs, "margin", DEFAULT_MARGIN)
    metric = metric or _study(runs, "metric", DEFAULT_METRIC)
    ctx = Context(runs, initial_loss(runs), metric, float(margin), n_boot=n_boot)
    parts, notes, tables = spec.evaluate(ctx)
    primary = [p for p in parts if p.primary]
    verdict = combine([p.verdict for p in primary]) if primary else INCONCLUSIVE
    if any("moot" in n for n in notes) and verdict == SUPPORTED:
        verdict = INCONCLUSIVE
    seeds = sorted({r.seed for r in runs})
    metric_text = (f"{metric} at the end of training, failed runs (diverged, or final train loss >= initial, or "
                   f"val acc < 1.5x chance) counted at L0 = {ctx.l0:.4g} (median first-step loss) and every loss "
                   f"capped at L0; margin {ctx.margin:g}")
    # the headline is the part that decided a contradiction, else the claim's designated part
    deciding = next((p for p in primary if p.verdict == CONTRADICTED), None) if verdict == CONTRADICTED else None
    return ClaimResult(name, spec.title, spec.statement, metric_text, verdict, deciding or spec.headline(parts),
                       parts, len(seeds), notes, tables)


def _study(runs: list[Run], key: str, default):
    vals = {r.config.get(f"study.{key}") for r in runs} - {None}
    return vals.pop() if len(vals) == 1 else default


def claims_in(runs: list[Run]) -> list[str]:
    """Claims named by the runs' ``study.claim`` (known ones only)."""
    return sorted({r.config.get("study.claim") for r in runs} & set(CLAIMS))
