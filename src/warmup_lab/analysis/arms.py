"""Arms: runs that share every setting but the seed; per-arm aggregates over seeds.

The arm of a run is its whole flattened config minus the seed and settings that do not change
the numbers (:func:`warmup_lab.runs.identity.changes_numbers`), so runs from several sweep directories group correctly
whatever overrides made them. Arm labels name only what varies, in a fixed priority (layer-norm
placement, optimizer, schedule, lr, warmup steps, then the rest), leaving out keys that the
earlier ones already determine (``study.lr_mult`` once ``optimizer.lr`` is shown, SGD's momentum
once the optimizer is shown).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from warmup_lab.analysis.load import Run, is_ignored
from warmup_lab.analysis.stats import summarize, wilson

# warmup is named as the sweep set it: a fraction of the steps (scheduler.warmup_ratio, shown as
# a percentage) before steps, so a 2% arm reads "warmup=2%", not the steps that 2% became
LABEL_PRIORITY = ("model.name", "model.norm_first", "model.depth", "optimizer.name", "scheduler.name",
                  "optimizer.lr", "scheduler.warmup_ratio", "run.warmup_steps", "optimizer.betas")
SHORT = {"model.norm_first": "pre_ln", "optimizer.name": "", "scheduler.name": "", "optimizer.lr": "lr",
         "scheduler.warmup_ratio": "warmup", "run.warmup_steps": "warmup_steps", "optimizer.betas": "betas",
         "model.name": "", "model.depth": "depth"}
# per-run numbers aggregated per arm (all from metrics.json; "loss" is defined below)
METRICS = ("loss", "final_val_loss", "final_val_acc", "final_train_loss", "train_loss_auc",
           "early_jitter", "early_mean_abs_change", "early_max_spike_ratio", "max_spike_ratio",
           "spike_count", "steps_to_loss_threshold", "early_max_grad_norm", "early_max_update_ratio")


def run_loss(run: Run, l0: float, metric: str = "final_val_loss") -> float:
    """The comparison loss of a run: ``metric`` (final validation loss by default), with a
    failed run (diverged, or not trained, see ``load.failure_reason``) counted at the initial
    loss ``l0`` and any loss capped at ``l0`` (Wortsman et al.'s ``min(L, L0)``), so failures
    rank last instead of going missing."""
    v = run.metrics.get(metric)
    if run.failed or v is None or not math.isfinite(v):
        return l0
    return min(float(v), l0)


def initial_loss(runs: list[Run]) -> float:
    """L0: the median first-step training loss over the runs (ln of the class count if none)."""
    vals = [r.metrics.get("initial_train_loss") for r in runs]
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if vals:
        return float(np.median(vals))
    chance = next((r.metrics.get("chance_acc") for r in runs if r.metrics.get("chance_acc")), None)
    return math.log(1 / chance) if chance else math.log(256)


@dataclass
class Arm:
    key: tuple
    label: str
    settings: dict          # the varying settings that name the arm
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

    def value(self, name: str, l0: float, metric: str = "final_val_loss") -> list[float]:
        """Per-run values of a metric in seed order (NaN where missing); ``loss`` is
        :func:`run_loss` of ``metric``."""
        out = []
        for r in sorted(self.runs, key=lambda r: r.seed):
            v = run_loss(r, l0, metric) if name == "loss" else r.metrics.get(name)
            out.append(float(v) if isinstance(v, (int, float)) and v is not None else math.nan)
        return out

    def summary(self, l0: float, metric: str = "final_val_loss") -> dict:
        n = len(self.runs)
        div = sum(r.diverged for r in self.runs)
        fail = sum(r.failed for r in self.runs)
        d, f = wilson(div, n), wilson(fail, n)
        out = {"arm": self.label, **{k: _fmt_setting(v) for k, v in self.settings.items()},
               "n_runs": n, "seeds": " ".join(map(str, self.seeds)),
               "diverged": div, "diverged_rate": d.estimate, "diverged_ci_lo": d.lo, "diverged_ci_hi": d.hi,
               "failed": fail, "failed_rate": f.estimate, "failed_ci_lo": f.lo, "failed_ci_hi": f.hi}
        for m in METRICS:
            vals = self.value(m, l0, metric)
            if m != "loss":  # other metrics: only runs that trained
                vals = [v for v, r in zip(vals, sorted(self.runs, key=lambda r: r.seed)) if not r.failed]
            s = summarize(vals)
            for k, v in s.items():
                out[f"{m}_{k}"] = v
        return out


def _fmt_setting(v):
    if isinstance(v, tuple):
        return "/".join(map(str, v))
    return v


def run_settings(run: Run) -> dict:
    """Flat config of a run without ignored keys, plus ``run.warmup_steps`` and ``run.total_steps``."""
    s = {k: v for k, v in run.config.items() if not is_ignored(k)}
    s["run.warmup_steps"] = run.metrics.get("warmup_steps")
    s["run.total_steps"] = run.metrics.get("total_steps")
    return s


def _determined(key: str, by: list[str], rows: list[dict]) -> bool:
    """True when ``key`` is a function of the keys ``by`` over ``rows``."""
    seen: dict = {}
    for r in rows:
        k = tuple(_hashable(r.get(b)) for b in by)
        v = _hashable(r.get(key))
        if seen.setdefault(k, v) != v:
            return False
    return True


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


def label_keys(rows: list[dict]) -> list[str]:
    """The varying keys that name arms (see the module docstring)."""
    keys = sorted({k for r in rows for k in r})
    varying = [k for k in keys if len({_hashable(r.get(k)) for r in rows}) > 1]
    order = [k for k in LABEL_PRIORITY if k in varying] + [k for k in varying if k not in LABEL_PRIORITY]
    chosen: list[str] = []
    for k in order:
        if not chosen or not _determined(k, chosen, rows):
            chosen.append(k)
    return chosen


def _fmt_value(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (tuple, list)):
        return "/".join(_fmt_value(x) for x in v)
    return str(v)


def make_label(settings: dict, keys: list[str]) -> str:
    parts = []
    for k in keys:
        v = settings.get(k)
        if k == "model.norm_first":
            parts.append("Pre-LN" if v else "Post-LN")
            continue
        short = SHORT.get(k, k.split(".")[-1])
        if k == "scheduler.warmup_ratio" and isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"warmup={v * 100:g}%")
            continue
        parts.append(f"{short}={_fmt_value(v)}" if short else _fmt_value(v))
    return " ".join(parts) or "all runs"


def absent_keys(rows: list[dict]) -> list[str]:
    """Keys that some runs lack and all others share one value of: a knob added to the code
    between runs (its default reproduces the old behaviour) or one that only some options of a
    group have (the option's name already tells the arms apart). Left out of the arm key."""
    present: dict[str, set] = {}
    for r in rows:
        for k, v in r.items():
            present.setdefault(k, set()).add(_hashable(v))
    return sorted(k for k, vals in present.items()
                  if len(vals) == 1 and sum(k in r for r in rows) < len(rows))


def group_arms(runs: list[Run]) -> list[Arm]:
    """Arms in first-seen order; sets ``run.arm`` and ``run.label``."""
    rows = [run_settings(r) for r in runs]
    drop = set(absent_keys(rows))
    rows = [{k: v for k, v in r.items() if k not in drop} for r in rows]
    keys = label_keys(rows)
    arms: dict[tuple, Arm] = {}
    for run, row in zip(runs, rows):
        key = tuple(sorted((k, _hashable(v)) for k, v in row.items()))
        if key not in arms:
            settings = {k: row.get(k) for k in keys}
            arms[key] = Arm(key, make_label(row, keys), settings)
        arms[key].runs.append(run)
    for i, arm in enumerate(arms.values()):
        for r in arm.runs:
            r.arm, r.label = f"a{i}", arm.label
    _dedupe_labels(list(arms.values()))
    return list(arms.values())


def _dedupe_labels(arms: list[Arm]) -> None:
    counts = defaultdict(int)
    for a in arms:
        counts[a.label] += 1
    for i, a in enumerate(arms):
        if counts[a.label] > 1:
            a.label = f"{a.label} #{i}"
            for r in a.runs:
                r.label = a.label
