"""Read the runs of one or more sweep directories: config, metrics, full-resolution scalars.

A run is any directory below a sweep directory that holds ``metrics.json``. Its config is
``.hydra/config.yaml`` (resolved here with the package's resolvers; interpolations that cannot be
resolved are kept as text) and its overrides ``.hydra/overrides.yaml``. Event files are read with
``size_guidance={"scalars": 0}``: TensorBoard's reader otherwise keeps a reservoir sample of each
tag, and the jitter analysis needs every step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

import warmup_lab  # noqa: F401  (registers wl_mul and friends, used by presets)
from warmup_lab.runs import identity

CURVE_TAGS = ("train/loss", "train/lr", "train/grad_norm", "train/update_ratio", "jitter/loss_std",
              "jitter/loss_abs_change", "jitter/spike_ratio", "val/loss", "curvature/sharpness",
              "curvature/stability_threshold", "curvature/threshold_ratio", "curvature/precond_sharpness",
              "curvature/precond_threshold_ratio")


@dataclass
class Run:
    path: Path
    config: dict            # flat, resolved where possible ("optimizer.lr": 0.003, ...)
    overrides: list[str]
    metrics: dict
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    failed: bool = False
    study: dict = field(default_factory=dict)   # the run's ``study`` block (claim mapping unflattened)
    failure: str | None = None
    arm: str = ""           # filled by arms.group_arms
    label: str = ""

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", self.metrics.get("seed", 0)) or 0)

    @property
    def status(self) -> str:
        return str(self.metrics.get("status", "unknown"))

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def get(self, key: str, default=None):
        """A config key, or ``run.<metric>`` for metrics.json values."""
        if key.startswith("run."):
            return self.metrics.get(key[4:], default)
        return self.config.get(key, default)


def flatten(node) -> dict:
    """A run's config as flat keys, lists as tuples (hashable: arms group on them); the one
    flatten of :mod:`warmup_lab.runs.identity`."""
    return identity.flatten(node, sequences=tuple)


def read_config(run_dir: Path) -> tuple[dict, list[str], dict]:
    """The flat config (``study.claim`` left out), the overrides and the ``study`` block."""
    cfg_path, ovr_path = run_dir / ".hydra" / "config.yaml", run_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in OmegaConf.to_container(OmegaConf.load(ovr_path))] if ovr_path.is_file() else []
    if not cfg_path.is_file():
        return {}, overrides, {}
    cfg = OmegaConf.load(cfg_path)
    try:
        node = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation we cannot resolve here: keep the text
        node = OmegaConf.to_container(cfg, resolve=False)
    study = node.get("study") if isinstance(node.get("study"), dict) else {}
    flat_node = {k: v for k, v in node.items() if k != "study"}
    flat_node["study"] = {k: v for k, v in study.items() if k != "claim"}
    return flatten(flat_node), overrides, study


def read_scalars(run_dir: Path, tags: tuple[str, ...] | None = CURVE_TAGS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every point of the given scalar tags (all tags if None) as (steps, values) arrays; the
    last value wins when a step was written twice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "histograms": 1,
                                                        "images": 1, "audio": 1, "compressedHistograms": 1})
    acc.Reload()
    have = acc.Tags().get("scalars", [])
    out = {}
    for tag in have if tags is None else [t for t in tags if t in have]:
        events = acc.Scalars(tag)
        by_step = {e.step: e.value for e in events}
        steps = np.array(sorted(by_step), dtype=np.int64)
        out[tag] = (steps, np.array([by_step[s] for s in steps], dtype=float))
    return out


def failure_reason(metrics: dict) -> str | None:
    """The failure rule of docs/claims.md: None when the run trained, else why it failed.

    Failed = diverged (non-finite loss), or did not finish, or final training loss >= the
    initial training loss, or (classification) final validation accuracy < 1.5 x chance
    (Kalra & Barkeshli's rule, on validation rather than training accuracy), or (language
    models) final validation loss >= the unigram entropy of the training split
    (``data.unigram_entropy`` in metrics.json, nats): a model that predicts token frequencies and
    nothing else sits on that plateau, and every paper on warmup for Transformers counts it as a
    failure to train."""
    status = metrics.get("status")
    if status == "diverged":
        return f"diverged at step {metrics.get('diverged_step')}"
    if status != "completed":
        return f"status {status}"
    final, init = metrics.get("final_train_loss"), metrics.get("initial_train_loss")
    val = metrics.get("final_val_loss")
    if val is None or not math.isfinite(val):
        return "non-finite validation loss"
    if final is not None and init is not None and final >= init:
        return f"final train loss {final:.4g} >= initial {init:.4g}"
    unigram = (metrics.get("data") or {}).get("unigram_entropy")
    if unigram is not None and val >= unigram:
        return f"final val loss {val:.4g} >= unigram entropy {unigram:.4g} of the training data (byte frequencies only)"
    acc, chance = metrics.get("final_val_acc"), metrics.get("chance_acc")
    if acc is not None and chance and acc < 1.5 * chance:
        return f"val accuracy {acc:.3g} < 1.5 x chance ({chance:.3g})"
    return None


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted({p.parent for p in Path(sweep_dir).rglob("metrics.json")},
                  key=lambda p: (len(p.parts), _natural(p)))


def _natural(p: Path):
    return [int(s) if s.isdigit() else s for s in p.parts]


def load_run(run_dir: Path, curves: bool = True) -> Run:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config, overrides, study = read_config(run_dir)
    reason = failure_reason(metrics)
    run = Run(run_dir, config, overrides, metrics, failed=reason is not None, failure=reason, study=study)
    if curves:
        run.curves = read_scalars(run_dir)
    return run


def load_runs(sweep_dirs, curves: bool = True) -> list[Run]:
    """Every run under the sweep directories (recursively), in job order."""
    runs = []
    for d in sweep_dirs:
        d = Path(d)
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: not a directory")
        runs.extend(load_run(p, curves) for p in find_run_dirs(d))
    return runs


def is_ignored(key: str) -> bool:
    """Keys that never define an arm: seeds, and keys that do not change the numbers
    (:func:`warmup_lab.runs.identity.changes_numbers`)."""
    return not identity.changes_numbers(key)
