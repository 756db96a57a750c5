"""Report plots (PNG, matplotlib's Agg backend): loss curves, early jitter, lr sensitivity, schedules.

Every function writes its file even when the sweep lacks what it shows (the figure then says
so), so a report always links four images.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from warmup_lab.analysis.arms import Arm, run_loss  # noqa: E402
from warmup_lab.metrics.loss_windows import rolling_mean  # noqa: E402

MAX_LINES = 8
# Okabe & Ito's palette, readable with the common colour-vision deficiencies, used for every
# plot's line colours (matplotlib's default cycle C0, C1, ... is this palette from here on)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
plt.rcParams["axes.prop_cycle"] = plt.cycler(color=list(PALETTE))


def _panels(arms: list[Arm]) -> dict[str, list[Arm]]:
    """Arms split into panels by the varying setting with the fewest values (not the lr), so
    no panel has too many lines."""
    if len(arms) <= MAX_LINES:
        return {"": arms}
    keys = [k for k in arms[0].settings if k not in ("optimizer.lr",)]
    best = None
    for k in keys:
        values = {str(a.settings.get(k)) for a in arms}
        if 1 < len(values) and (best is None or len(values) < best[1]):
            best = (k, len(values))
    if best is None:
        return {"": arms}
    out: dict[str, list[Arm]] = defaultdict(list)
    for a in arms:
        out[_setting_text(best[0], a.settings.get(best[0]))].append(a)
    return dict(out)


def _key_name(key: str) -> str:
    """``optimizer.name`` -> ``optimizer``, ``model.norm_first`` -> ``norm_first``."""
    head, _, tail = key.rpartition(".")
    return head if tail == "name" and head else tail


def _setting_text(key: str, value) -> str:
    if key == "model.norm_first":
        return "Pre-LN" if str(value) == "True" else "Post-LN"
    return f"{_key_name(key)}={value}"


def _grid(n: int):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _empty(path: Path, text: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return _save(fig, path)


def _band(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over seeds (rows) of a curve stack, NaN where no seed has a value."""
    import warnings

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(stack, 0), np.nanmin(stack, 0), np.nanmax(stack, 0)


def _curve_stack(arm: Arm, tag: str, window: int):
    """Per-seed curves of ``tag`` (smoothed) on the common step grid; a diverged run's curve
    stops at its divergence."""
    series = [r.curves[tag] for r in arm.runs if tag in r.curves and len(r.curves[tag][0])]
    if not series:
        return None, None
    n = max(len(s[0]) for s in series)
    steps = max(series, key=lambda s: len(s[0]))[0]
    stack = np.full((len(series), n), np.nan)
    for i, (_, v) in enumerate(series):
        v = np.where(np.isfinite(v), v, np.nan)
        stack[i, : len(v)] = rolling_mean(v, window) if window > 1 else v
    return steps, stack


def loss_curves(arms: list[Arm], path: Path, window: int = 10) -> Path:
    """Training loss per arm: mean over seeds (line) and min-max over seeds (band), smoothed
    over ``window`` steps; log scale."""
    if not any("train/loss" in r.curves for a in arms for r in a.runs):
        return _empty(path, "no train/loss scalars found in the event files")
    panels = _panels(arms)
    fig, axes = _grid(len(panels))
    for ax, (title, group) in zip(axes, panels.items()):
        for a in group:
            steps, stack = _curve_stack(a, "train/loss", window)
            if steps is None:
                continue
            mean, lo, hi = _band(stack)
            (line,) = ax.plot(steps, mean, lw=1.3, label=f"{a.label} (n={len(a.runs)})")
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
            for r in a.runs:
                if r.diverged and r.metrics.get("diverged_step") is not None:
                    ax.axvline(r.metrics["diverged_step"], color=line.get_color(), ls=":", lw=0.8)
        ax.set_yscale("log")
        _plain_ticks(ax.yaxis)
        ax.set_xlabel("step")
        ax.set_ylabel(f"train loss ({window}-step mean)")
        ax.set_title(title or "training loss: mean over seeds, band = min-max", fontsize=9)
        ax.legend(fontsize=6.5, loc="upper right")
        ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def curvature(arms: list[Arm], path: Path) -> Path | None:
    """Sharpness per arm against the step (mean over seeds, band min-max; log scale) with the
    stability threshold (2 + 2 beta) / lr of the arm's schedule as a dashed line of the same
    colour; beside it the threshold ratio with the line at 1 (and, for Adam, the preconditioned
    ones). None when no run logged curvature."""
    have = [a for a in arms if any("curvature/sharpness" in r.curves for r in a.runs)]
    if not have:
        return None
    precond = any("curvature/precond_threshold_ratio" in r.curves for a in have for r in a.runs)
    cols = 3 if precond else 2
    fig, axes = plt.subplots(1, cols, figsize=(5.2 * cols, 3.8))
    specs = [("curvature/sharpness", "curvature/stability_threshold", "sharpness (top Hessian eigenvalue)", True),
             ("curvature/threshold_ratio", None, "lr x sharpness / (2 + 2 beta)", False)]
    if precond:
        specs.append(("curvature/precond_threshold_ratio", None, "lr x precond. sharpness / ((2+2b1)/(1-b1))", False))
    for ax, (tag, line_tag, title, log) in zip(axes, specs):
        for a in have:
            steps, stack = _curve_stack(a, tag, 1)
            if steps is None:
                continue
            mean, lo, hi = _band(stack)
            (ln,) = ax.plot(steps, mean, lw=1.3, marker=".", ms=3, label=f"{a.label} (n={len(a.runs)})")
            ax.fill_between(steps, lo, hi, color=ln.get_color(), alpha=0.15, lw=0)
            if line_tag is not None:
                tsteps, tstack = _curve_stack(a, line_tag, 1)
                if tsteps is not None:
                    ax.plot(tsteps, np.nanmedian(tstack, 0), ls="--", lw=0.9, color=ln.get_color())
        if not log:
            ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_yscale("log" if log else "linear")
        ax.set_xlabel("step")
        ax.set_title(title + (" (dashed: threshold 2(1+beta)/lr)" if line_tag else " (dashed: 1)"), fontsize=8.5)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6.5, loc="best")
    return _save(fig, path)


def early_jitter(arms: list[Arm], path: Path, metric: str = "early_jitter") -> Path:
    """Early-phase jitter per arm: one dot per seed (hollow = failed run) and the geometric mean
    with its 95% t-interval (of the log values) as a bar with whiskers; log axis, no bars from an
    arbitrary origin."""
    from warmup_lab.analysis.stats import t_interval

    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(arms) + 1.4))
    y = np.arange(len(arms))
    any_value = False
    for i, a in enumerate(arms):
        color = PALETTE[i % len(PALETTE)]
        vals = [(r.metrics.get(metric), r.failed) for r in a.runs]
        ok = [v for v, f in vals if isinstance(v, (int, float)) and v is not None and math.isfinite(v) and v > 0]
        for v, f in vals:
            if isinstance(v, (int, float)) and v is not None and math.isfinite(v) and v > 0:
                ax.plot(v, i, "o", mfc="none" if f else color, mec=color, ms=3.5, alpha=0.6)
        if ok:
            any_value = True
            ci = t_interval(np.log10(ok))
            mid = 10 ** ci.estimate
            lo, hi = (10 ** ci.lo, 10 ** ci.hi) if ci.defined else (mid, mid)
            ax.errorbar(mid, i, xerr=[[mid - lo], [hi - mid]], fmt="D", color=color, ms=5, capsize=3, lw=1.2)
    ax.set_yticks(y, [a.label for a in arms], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric}: std of the step-to-step loss change over the early phase")
    if any_value:
        ax.set_xscale("log")
        _plain_ticks(ax.xaxis)
    ax.set_title("early-phase jitter per arm (dots: seeds, hollow = failed; diamond: geometric mean, "
                 "95% t-interval)", fontsize=8.5)
    ax.grid(alpha=0.3, axis="x", which="both")
    return _save(fig, path)


def _plain_ticks(axis) -> None:
    """Tick labels as plain numbers (0.3, 1, 3) on a log axis, not 3x10^0."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(fmt)


def lr_sensitivity(arms: list[Arm], path: Path, l0: float, metric: str = "final_val_loss") -> Path | None:
    """Final loss against peak lr, one line (colour and marker of its own) per (optimizer,
    warmup) and any other varying setting; solid = warmup, dashed = none. The y range is that of
    the runs that trained; failed runs are an x on the top edge with their count. None (no plot)
    when the sweep has a single lr."""
    groups: dict[tuple, list] = defaultdict(list)
    for a in arms:
        for r in a.runs:  # one line per arm setting other than the lr (schedule names included)
            opt = r.config.get("optimizer.name", "?")
            warm = (r.metrics.get("warmup_steps") or 0) > 0
            other = tuple((k, str(v)) for k, v in a.settings.items()
                          if k not in ("optimizer.lr", "optimizer.name", "run.warmup_steps", "scheduler.warmup_ratio",
                                       "scheduler.warmup_steps") and not k.startswith("study."))
            groups[(opt, warm, other)].append(r)
    lr_values = {float(r.metrics.get("peak_lr") or r.config.get("optimizer.lr") or 0) for rs in groups.values() for r in rs}
    if len(lr_values) < 2:  # one lr: every point at one x says nothing about sensitivity
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    trained = [run_loss(r, l0, metric) for rs in groups.values() for r in rs if not r.failed]
    for gi, ((opt, warm, other), runs) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        color, marker = PALETTE[gi % len(PALETTE)], MARKERS[gi % len(MARKERS)]
        by_lr = defaultdict(list)
        for r in runs:
            lr = float(r.metrics.get("peak_lr") or r.config.get("optimizer.lr"))
            by_lr[lr].append(r)
        lrs = sorted(by_lr)
        means = []
        for lr in lrs:
            rs = by_lr[lr]
            ok = [run_loss(r, l0, metric) for r in rs if not r.failed]
            means.append(np.mean([run_loss(r, l0, metric) for r in rs]))
            ax.plot([lr] * len(ok), ok, marker, color=color, alpha=0.35, ms=3.5, mfc="none")
            nf = sum(r.failed for r in rs)
            if nf:  # failed runs: an x on the top edge (they count at L0, off the trained range)
                ax.plot(lr, 1.0, "x", color=color, ms=8, mew=2, transform=ax.get_xaxis_transform(), clip_on=False)
                ax.annotate(f"{nf}/{len(rs)} failed", (lr, 1.0), xycoords=("data", "axes fraction"),
                            textcoords="offset points", xytext=(3, -10), fontsize=6, color=color)
        other_txt = " ".join(_setting_text(k, v) for k, v in other)
        ok_means = [(lr, m) for lr, m in zip(lrs, means) if m < l0]
        ax.plot([p[0] for p in ok_means], [p[1] for p in ok_means], "-" if warm else "--", color=color,
                marker=marker, ms=5, lw=1.6, label=f"{opt} {'warmup' if warm else 'no warmup'} {other_txt}".strip())
    ax.set_xscale("log")
    ax.set_yscale("log")
    if trained:  # the range of the runs that trained, not the L0 cap
        lo, hi = min(trained), max(trained)
        ax.set_ylim(lo / 1.15, hi * 1.15)
    _plain_ticks(ax.yaxis)
    _plain_ticks(ax.xaxis)
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(f"{metric} (mean over seeds that trained)")
    ax.set_title("lr sensitivity: solid = warmup, dashed = no warmup; x at the top = failed runs (L0)", fontsize=8.5)
    ax.legend(fontsize=6.5, handlelength=3.5)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def lr_schedules(arms: list[Arm], path: Path) -> Path:
    """The lr each arm used (``train/lr`` of its first seed): left, absolute (log scale), one
    line per arm; right, relative to the peak, one line per distinct shape."""
    shapes: dict[tuple, list[str]] = {}
    curves, absolute = {}, []
    for a in arms:
        r = next((r for r in a.runs if "train/lr" in r.curves), None)
        if r is None:
            continue
        steps, lr = r.curves["train/lr"]
        absolute.append((a.label, steps, lr))
        peak = float(r.metrics.get("peak_lr") or np.nanmax(lr) or 1.0)
        rel = lr / peak if peak else lr
        key = tuple(np.round(rel[:: max(1, len(rel) // 200)], 4))
        shapes.setdefault(key, []).append(a.label)
        curves[key] = (steps, rel)
    if not curves:
        return _empty(path, "no train/lr scalars found in the event files")
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, steps, lr in absolute[:24]:
        ax0.plot(steps, np.where(lr > 0, lr, np.nan), lw=1.1, label=label)
    ax0.set_yscale("log")
    ax0.set_xlabel("step")
    ax0.set_ylabel("learning rate")
    ax0.set_title("lr per arm" + (" (first 24 arms)" if len(absolute) > 24 else ""), fontsize=9)
    ax0.legend(fontsize=5.5, ncol=2 if len(absolute) > 12 else 1)
    ax0.grid(alpha=0.3, which="both")
    for key, labels in shapes.items():
        steps, rel = curves[key]
        text = labels[0] if len(labels) == 1 else f"{labels[0]} (+{len(labels) - 1} arms)"
        ax1.plot(steps, rel, lw=1.3, label=text)
    ax1.set_xlabel("step")
    ax1.set_ylabel("lr / peak lr")
    ax1.set_title("distinct schedule shapes", fontsize=9)
    ax1.legend(fontsize=6.5)
    ax1.grid(alpha=0.3)
    return _save(fig, path)


def all_plots(arms: list[Arm], out: Path, l0: float, metric: str = "final_val_loss",
              window: int = 10) -> dict[str, Path]:
    out = Path(out)
    figs = {"loss_curves": loss_curves(arms, out / "loss_curves.png", window),
            "early_jitter": early_jitter(arms, out / "early_jitter.png"),
            "lr_sensitivity": lr_sensitivity(arms, out / "lr_sensitivity.png", l0, metric),
            "lr_schedules": lr_schedules(arms, out / "lr_schedules.png")}
    if figs["lr_sensitivity"] is None:  # no lr grid: no plot (and no stale one from an earlier analysis)
        del figs["lr_sensitivity"]
        (out / "lr_sensitivity.png").unlink(missing_ok=True)
    curv = curvature(arms, out / "curvature.png")
    if curv is not None:
        figs["curvature"] = curv
    return figs
