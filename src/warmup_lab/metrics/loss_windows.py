"""Loss windows: the jitter and stability metrics of a run's per-step training losses
(definitions in docs/metrics.md).

* small **pure functions** on 1-D tensors (``rolling_std``, ``rolling_mean_abs_change``,
  ``spike_ratio``, ``spike_count``); each takes an optional ``history`` (the values before ``x``),
  so a stream cut into chunks gives exactly the values of the whole series;
* :class:`LossWindows`, what the trainer keeps per run: the loss-window metrics of a whole block
  of steps, computed on the device at the flush from the loss column of the step buffer (no host
  synchronisation), the host history of the flushed losses, and the end-of-run summary
  (:func:`stability_summary`).

Windows count steps (optimizer updates); losses are the per-step training (minibatch) losses.
What the optimizer did (update ratios, per-layer norms, Adam's effective step) is
:mod:`warmup_lab.metrics.optimizer_telemetry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

JITTER_TAGS = ("jitter/loss_std", "jitter/loss_abs_change", "jitter/spike_ratio", "jitter/spike_count")
JITTER_COLUMNS = tuple(t.split("/", 1)[1] for t in JITTER_TAGS)

def _windows(z: torch.Tensor, window: int, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Trailing windows of ``z`` for positions ``start..len(z)-1`` (one row each, ending at that
    position) and the index into ``z`` of every entry (negative before the start of ``z``)."""
    pad = torch.zeros(window - 1, dtype=z.dtype, device=z.device)
    rows = torch.cat([pad, z]).unfold(0, window, 1)[start:]
    pos = (torch.arange(start, z.shape[0], device=z.device)[:, None] - (window - 1)
           + torch.arange(window, device=z.device)[None, :])
    return rows, pos


def _history(x: torch.Tensor, history: torch.Tensor | None, keep: int) -> tuple[torch.Tensor, int]:
    x = x.float()
    if history is None or keep <= 0:
        return x, 0
    h = history.float()[-keep:].to(x.device)
    return torch.cat([h, x]), h.shape[0]


def rolling_std(x: torch.Tensor, window: int, history: torch.Tensor | None = None) -> torch.Tensor:
    """Sample standard deviation (n-1) of the last ``window`` losses up to and including each
    step of ``x``; over fewer points while fewer exist, 0 with a single point. ``history``: the
    losses before ``x`` (only its last ``window - 1`` are used)."""
    _check_window(window)
    z, start = _history(x, history, window - 1)
    rows, pos = _windows(z, window, start)
    mask = pos >= 0
    count = mask.sum(1)
    mean = torch.where(mask, rows, 0.0).sum(1) / count
    sq = torch.where(mask, (rows - mean[:, None]) ** 2, 0.0).sum(1)
    var = sq / (count - 1).clamp(min=1)
    return torch.where(count > 1, var.sqrt(), torch.zeros_like(var))


def rolling_mean_abs_change(x: torch.Tensor, window: int,
                            history: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``|loss_s - loss_{s-1}|`` over the ``window - 1`` step-to-step changes inside the
    last ``window`` losses (fewer at the start of the series; 0 at its very first step)."""
    _check_window(window)
    z, start = _history(x, history, window - 1)
    change = torch.cat([torch.zeros(1, device=z.device), (z[1:] - z[:-1]).abs()])
    rows, pos = _windows(change, window - 1, start)
    mask = pos >= 1  # change[0] has no predecessor in z (z starts the series or the window)
    count = mask.sum(1)
    total = torch.where(mask, rows, 0.0).sum(1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def running_min_before(x: torch.Tensor, prev_min: torch.Tensor | float = math.inf) -> torch.Tensor:
    """``min(prev_min, x_0..x_{t-1})`` for each step ``t`` of ``x`` (NaN losses are ignored)."""
    x = x.float()
    prev = torch.as_tensor(prev_min, dtype=x.dtype, device=x.device).reshape(1)
    clean = torch.where(torch.isnan(x), torch.full_like(x, math.inf), x)
    incl = torch.minimum(torch.cummin(clean, 0).values, prev)
    return torch.cat([prev, incl[:-1]])


def spike_ratio(x: torch.Tensor, prev_min: torch.Tensor | float = math.inf) -> torch.Tensor:
    """``loss_t / min_{s<t} loss_s`` (1 at the first step); for positive losses."""
    before = running_min_before(x, prev_min)
    ratio = x.float() / before
    return torch.where(torch.isinf(before), torch.ones_like(ratio), ratio)


def spike_count(ratio: torch.Tensor, threshold: float, prev_count: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Cumulative number of steps whose spike ratio exceeds ``threshold``."""
    prev = torch.as_tensor(prev_count, dtype=torch.float32, device=ratio.device)
    return prev + torch.cumsum((ratio > threshold).float(), 0)


def _check_window(window: int) -> None:
    if not isinstance(window, int) or window < 2:
        raise ValueError(f"jitter window={window} is invalid: must be an integer >= 2")



# -- per run ----------------------------------------------------------------------------------------
@dataclass
class MetricsConfig:
    """``trainer.metrics`` (conf/trainer/default.yaml): the loss windows, the optimizer telemetry
    and the curvature probe."""

    jitter_window: int = 20
    spike_threshold: float = 2.0
    loss_threshold: float | None = None
    early_fraction: float = 0.1
    layer_interval: int | None = None
    update_ratio: bool = True
    layers: bool = True
    curvature_interval: int | None = None   # steps between sharpness estimates (curvature.py); None = off
    curvature_iters: int = 6                # Hessian-vector products per estimate (warm-started)
    curvature_batch: int | None = 32        # probe batch size; None = the training batch size

    @classmethod
    def from_dict(cls, d: dict | None, log_interval: int) -> "MetricsConfig":
        cfg = cls(**{k: v for k, v in (d or {}).items() if v is not None or k in ("loss_threshold", "curvature_batch")})
        if cfg.layer_interval is None:
            cfg.layer_interval = 10 * log_interval
        return cfg

class LossWindows:
    """The loss-window metrics of one run, block by block, and its flushed history.

    At each flush the trainer calls ``block(losses)`` with the loss column of the step buffer (a
    device tensor; no host read) and, once the block is on the host, ``record(cols)``."""

    def __init__(self, cfg: MetricsConfig, total_steps: int, device: torch.device):
        self.cfg, self.total_steps = cfg, total_steps
        self.tail = torch.empty(0, device=device)      # the last window-1 losses
        self.run_min = torch.full((), math.inf, device=device)
        self.count = torch.zeros((), device=device)
        self._seen = 0
        # host-side history for the end-of-run summary (filled at flushes)
        self.history: dict[str, list[float]] = {"loss": [], "grad_norm": [], "update_ratio": []}

    @torch.no_grad()
    def block(self, losses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Jitter metrics for the next ``len(losses)`` steps (device tensors of that length)."""
        w = self.cfg.jitter_window
        x = losses.float()
        hist = self.tail if self._seen else None
        std = rolling_std(x, w, hist)
        change = rolling_mean_abs_change(x, w, hist)
        ratio = spike_ratio(x, self.run_min)
        count = spike_count(ratio, self.cfg.spike_threshold, self.count)
        clean = torch.where(torch.isnan(x), torch.full_like(x, math.inf), x)
        self.run_min = torch.minimum(self.run_min, clean.min())
        self.count = count[-1]
        self.tail = torch.cat([self.tail, x])[-(w - 1):]
        self._seen += x.shape[0]
        return {"loss_std": std, "loss_abs_change": change, "spike_ratio": ratio, "spike_count": count}

    def record(self, cols: dict[str, list[float]]) -> None:
        """Keep the host copies of a flushed block (loss, grad norm, update ratio) for ``summary``."""
        for key in self.history:
            if key in cols:
                self.history[key].extend(cols[key])

    def state_dict(self) -> dict:
        """Tensors and plain types only (checkpoints load with ``weights_only``)."""
        return {"tail": self.tail.cpu(), "run_min": self.run_min.cpu(), "count": self.count.cpu(),
                "seen": self._seen, "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        dev = self.run_min.device
        self.tail, self.run_min = state["tail"].to(dev), state["run_min"].to(dev)
        self.count, self._seen = state["count"].to(dev), int(state["seen"])
        self.history = {k: list(v) for k, v in state["history"].items()}

    def summary(self, chance_acc: float | None = None) -> dict:
        return stability_summary(self.history["loss"], self.cfg, self.total_steps,
                                 grad_norm=self.history["grad_norm"],
                                 update_ratio=self.history["update_ratio"], chance_acc=chance_acc)


# -- end of run -------------------------------------------------------------------------------------
def early_steps(total_steps: int, fraction: float) -> int:
    """Length of the early phase: ``ceil(fraction * total_steps)``, at least 2 steps."""
    return max(2, math.ceil(fraction * total_steps))


def _finite_prefix(values: list[float]) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    bad = np.flatnonzero(~np.isfinite(a))
    return a[: bad[0]] if bad.size else a


def _r(v, digits: int = 6):
    return None if v is None or not math.isfinite(v) else float(f"{v:.{digits}g}")


def stability_summary(losses: list[float], cfg: MetricsConfig, total_steps: int, *,
                      grad_norm: list[float] | None = None, update_ratio: list[float] | None = None,
                      chance_acc: float | None = None) -> dict:
    """The run-level numbers for ``metrics.json`` (see docs/metrics.md), from per-step losses.

    Steps after the first non-finite loss are not used. ``train_loss_auc`` is the mean training
    loss over all ``total_steps`` (the area under the curve per step), null if the run did not
    finish them with finite losses."""
    raw = np.asarray(losses, dtype=float)
    x = _finite_prefix(losses)
    n_early = early_steps(total_steps, cfg.early_fraction)
    out: dict = {"early_steps": n_early, "jitter_window": cfg.jitter_window,
                 "spike_threshold": cfg.spike_threshold}
    if x.size == 0:
        return {**out, "initial_train_loss": _r(raw[0]) if raw.size else None}
    t = torch.from_numpy(x)
    ratio = spike_ratio(t).numpy()
    early = x[:n_early]
    d_early = np.diff(early)
    threshold = cfg.loss_threshold if cfg.loss_threshold is not None else 0.5 * x[0]
    smooth = rolling_mean(x, cfg.jitter_window)
    hit = np.flatnonzero(smooth <= threshold)
    completed = raw.size >= total_steps and x.size == raw.size
    out.update(
        initial_train_loss=_r(x[0]),
        early_jitter=_r(float(d_early.std(ddof=1))) if d_early.size > 1 else None,
        early_mean_abs_change=_r(float(np.abs(d_early).mean())) if d_early.size else None,
        early_loss_std=_r(float(early.std(ddof=1))) if early.size > 1 else None,
        early_max_spike_ratio=_r(float(ratio[:n_early].max())),
        max_spike_ratio=_r(float(ratio.max())),
        max_spike_step=int(ratio.argmax()),
        spike_count=int((ratio > cfg.spike_threshold).sum()),
        loss_threshold=_r(float(threshold)),
        steps_to_loss_threshold=int(hit[0]) if hit.size else None,
        train_loss_auc=_r(float(x.mean())) if completed else None,
        chance_acc=chance_acc,
    )
    for name, series in (("grad_norm", grad_norm), ("update_ratio", update_ratio)):
        s = _finite_prefix(series or [])[:n_early]
        if s.size:
            out[f"early_max_{name}"] = _r(float(s.max()))
            out[f"early_mean_{name}"] = _r(float(s.mean()))
    return out


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (fewer at the start)."""
    c = np.cumsum(np.insert(np.asarray(x, dtype=float), 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)
