"""TensorBoard view of a sweep: per-arm mean curves in a log dir of their own, and layouts.

Written into the sweep directory (``out``):

* ``tensorboard/<nn>_<label>/``: one TensorBoard run per arm holding ``arm/<tag>/mean``,
  ``/min`` and ``/max`` over its seeds at every step (for ``train/loss``, ``train/lr``,
  ``train/grad_norm``, ``train/update_ratio``, ``jitter/loss_std``, ``jitter/spike_ratio``), so
  arms sit side by side as lines with bands, plus the custom-scalars layout of those Margin
  charts. It holds only the arms: TensorBoard's frontend selects no run at all once a log dir
  has more than 40, and a claim preset's sweep has 48-72 jobs, so the arms must not share the
  sweep's log dir. Open it with ``tensorboard --logdir <sweep>/tensorboard --samples_per_plugin
  scalars=100000``.
* an event file of the sweep directory itself (suffix ``.layout``) with the per-run layout:
  Multiline charts whose regexes match every run's tags, for ``--logdir <sweep>``.

Re-running the analysis replaces both.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter

from warmup_lab.runs.tb import tensorboard_command, time_series_url  # noqa: F401  (re-exported for the report)
from warmup_lab.analysis.arms import Arm

ARM_TAGS = ("train/loss", "train/lr", "train/grad_norm", "train/update_ratio", "jitter/loss_std",
            "jitter/spike_ratio")
#: The arm runs' cards pinned on top of Time Series (see :func:`warmup_lab.runs.tb.time_series_url`).
ARM_PINNED = ("arm/train/loss/mean", "arm/train/lr/mean", "arm/jitter/loss_std/mean")
LAYOUT_SUFFIX = ".layout"


ARM_DIR = "tensorboard"
MAX_FRONTEND_RUNS = 40  # TensorBoard's frontend selects no run above this many in a log dir


#: The arm layout's categories, in the order the page shows them (loss and lr first).
ARM_CATEGORIES = {"arms: train loss and lr": ("train/loss", "train/lr"),
                  "arms: stability": ("train/grad_norm", "train/update_ratio"),
                  "arms: jitter": ("jitter/loss_std", "jitter/spike_ratio")}


def arm_layout() -> dict:
    """Custom-scalars layout of the arm log dir: a Margin chart (mean, min-max band over seeds)
    per tag of :data:`ARM_TAGS`, two to a category. The charts of a category are listed last
    first: TensorBoard's page (2.x, seen in headless Chromium) shows a category's Margin charts in
    reverse order (its Multiline charts in order), so train/loss comes out first."""
    return {cat: {f"{t} (arm mean, band = min-max over seeds)": ["Margin", [f"arm/{t}/{k}" for k in ("mean", "min", "max")]]
                  for t in reversed(tags)} for cat, tags in ARM_CATEGORIES.items()}


def layout() -> dict:
    """Custom-scalars layout of the sweep's own log dir: {category: {chart: [type, [regexes]]}}."""
    return {
        "runs: loss and lr": {"train/loss": ["Multiline", [r"^train/loss$"]],
                              "val/loss": ["Multiline", [r"^val/loss$"]],
                              "train/lr": ["Multiline", [r"^train/lr(/.*)?$"]]},
        "runs: jitter": {"rolling loss std": ["Multiline", [r"^jitter/loss_std$"]],
                         "mean |loss change|": ["Multiline", [r"^jitter/loss_abs_change$"]],
                         "spike ratio": ["Multiline", [r"^jitter/spike_ratio$"]],
                         "spike count": ["Multiline", [r"^jitter/spike_count$"]]},
        "runs: stability": {"grad norm (pre-clip)": ["Multiline", [r"^train/grad_norm$"]],
                            "update ratio": ["Multiline", [r"^train/update_ratio$"]],
                            "Adam effective step quantiles": ["Multiline", [r"^train/adam/eff_lr_p\d+$"]],
                            "Adam log10 effective-step std": ["Multiline", [r"^train/adam/eff_lr_log10_std$"]]},
        "runs: curvature": {
            "sharpness and its stability threshold 2(1+beta)/lr": [
                "Multiline", [r"^curvature/sharpness$", r"^curvature/stability_threshold$"]],
            "threshold ratio (lr x sharpness / (2+2beta)); above 1 = past the edge": [
                "Multiline", [r"^curvature/threshold_ratio$"]],
            "Adam: preconditioned sharpness and its threshold (2+2b1)/((1-b1) lr)": [
                "Multiline", [r"^curvature/precond_sharpness$", r"^curvature/precond_stability_threshold$"]],
            "Adam: preconditioned threshold ratio": ["Multiline", [r"^curvature/precond_threshold_ratio$"]]},
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9=._-]+", "_", text).strip("_")[:80] or "arm"


def _arm_curves(arm: Arm, tag: str):
    series = [r.curves[tag] for r in arm.runs if tag in r.curves and len(r.curves[tag][0])]
    if not series:
        return None
    steps = np.array(sorted({int(s) for st, _ in series for s in st}))
    stack = np.full((len(series), len(steps)), np.nan)
    pos = {s: i for i, s in enumerate(steps)}
    for i, (st, v) in enumerate(series):
        idx = [pos[int(s)] for s in st]
        stack[i, idx] = np.where(np.isfinite(v), v, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return steps, np.nanmean(stack, 0), np.nanmin(stack, 0), np.nanmax(stack, 0)


def write_tensorboard(arms: list[Arm], out: Path) -> Path:
    """Write the per-arm runs and both layouts; returns the arm log dir."""
    out = Path(out)
    arm_root = out / ARM_DIR
    for stale in (arm_root, out / "_arms"):  # _arms: where earlier versions put the arm runs
        if stale.exists():
            shutil.rmtree(stale)
    for old in out.glob(f"events.out.tfevents.*{LAYOUT_SUFFIX}"):
        old.unlink()
    for i, arm in enumerate(arms):
        w = SummaryWriter(log_dir=str(arm_root / f"{i:02d}_{_slug(arm.label)}"))
        per_step: dict[int, list] = {}
        for tag in ARM_TAGS:
            c = _arm_curves(arm, tag)
            if c is None:
                continue
            for s, m, lo, hi in zip(*c):
                vals = per_step.setdefault(int(s), [])
                for kind, v in (("mean", m), ("min", lo), ("max", hi)):
                    if np.isfinite(v):
                        vals.append(Summary.Value(tag=f"arm/{tag}/{kind}", simple_value=float(v)))
        for s in sorted(per_step):
            if per_step[s]:
                w.file_writer.add_summary(Summary(value=per_step[s]), s)
        w.add_text("arm", f"{arm.label}: {len(arm.runs)} runs, seeds {arm.seeds}", 0)
        w.close()
    w = SummaryWriter(log_dir=str(arm_root), filename_suffix=LAYOUT_SUFFIX)
    w.add_custom_scalars(arm_layout())
    w.close()
    w = SummaryWriter(log_dir=str(out), filename_suffix=LAYOUT_SUFFIX)
    w.add_custom_scalars(layout())
    w.close()
    return arm_root


