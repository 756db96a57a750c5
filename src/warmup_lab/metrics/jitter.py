"""Loss-jitter and stability metrics (definitions in docs/metrics.md).

Two layers:

* small **pure functions** on 1-D tensors (``rolling_std``, ``rolling_mean_abs_change``,
  ``spike_ratio``, ``spike_count``) and on optimizer state (``effective_step_stats``): each takes
  an optional ``history`` (the values before ``x``), so a stream cut into chunks gives exactly
  the values of the whole series;
* :class:`JitterTracker`, what the trainer calls. Per step it only queues device work (the
  update norm for ``train/update_ratio``); the loss-window metrics are computed on the device
  for a whole block of steps at the flush, from the loss column of the step buffer, so they
  add no host synchronisation. Per-layer and Adam-state metrics run every ``layer_interval``
  steps and stay on the device until the flush.

Windows count steps (optimizer updates); losses are the per-step training (minibatch) losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

JITTER_TAGS = ("jitter/loss_std", "jitter/loss_abs_change", "jitter/spike_ratio", "jitter/spike_count")
ADAM_QUANTILES = (0.1, 0.5, 0.9)
MAX_QUANTILE_ELEMENTS = 1 << 20  # effective steps subsampled (evenly strided) above this size


# -- pure functions ------------------------------------------------------------------------------
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


def update_ratio(delta_norms: list[torch.Tensor], param_norms: list[torch.Tensor]) -> torch.Tensor:
    """``||theta_{t+1} - theta_t|| / ||theta_t||`` over all tensors, from per-tensor norms."""
    d = torch.linalg.vector_norm(torch.stack(delta_norms))
    p = torch.linalg.vector_norm(torch.stack(param_norms))
    return d / p.clamp(min=torch.finfo(p.dtype).tiny)


def flat_views(tensors: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """A 1-D view of each tensor's memory, or None unless all share one device and dtype and each
    is dense (contiguous, or channels-last: the view then follows memory order, which norms and
    differences do not depend on). ``torch.cat(views, out=buf)`` then snapshots every tensor in
    one operation instead of one per tensor."""
    if not tensors or len({(t.device, t.dtype) for t in tensors}) > 1:
        return None
    views = []
    for t in tensors:
        t = t.detach()
        if t.is_contiguous():
            views.append(t.view(-1))
        elif t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last):
            views.append(t.as_strided((t.numel(),), (1,), t.storage_offset()))
        else:
            return None
    return views


def effective_steps(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """Flat tensor of Adam's per-coordinate effective step ``lr / (sqrt(v_hat) + eps)`` with
    ``v_hat = exp_avg_sq / (1 - beta2^t)``, over every parameter that has Adam state; None for
    optimizers without ``exp_avg_sq`` (SGD, RMSprop keeps ``square_avg``). No host-device
    copies: a step count or lr held on the CPU (torch's default) is read there, one held on the
    device (capturable/fused Adam) enters as a device tensor."""
    parts = []
    for group in optimizer.param_groups:
        betas, eps = group.get("betas"), group.get("eps", 0.0)
        if betas is None:
            continue
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            v = state.get("exp_avg_sq")
            if v is None or "step" not in state:
                continue
            bias = 1.0 - _on(v.device, state["step"], lambda t: float(betas[1]) ** t)
            if torch.is_tensor(bias):
                bias = bias.clamp(min=torch.finfo(torch.float32).tiny)
            lr = _on(v.device, group["lr"], lambda t: t)  # a 0-dim CPU tensor under compile
            parts.append(lr / (v.float().flatten() / bias).sqrt().add_(eps))
    return torch.cat(parts) if parts else None


def _on(device: torch.device, value, fn):
    """``fn(value)`` as a Python number when ``value`` is one or lives on the CPU while ``device``
    does not (reading it costs no device synchronisation), else on ``value``'s tensor."""
    if torch.is_tensor(value) and (value.device.type != "cpu" or device.type == "cpu"):
        return fn(value.to(torch.float32))
    return fn(float(value))


def sorted_quantiles(x: torch.Tensor, quantiles) -> list[torch.Tensor]:
    """Quantiles of a 1-D tensor with linear interpolation (``torch.quantile``'s default), as
    0-dim tensors on its device. Positions come from the shape alone, so nothing is read back
    from the device; NaNs sort last instead of making every quantile NaN."""
    s = torch.sort(x).values
    n, out = s.numel(), []
    for q in quantiles:
        pos = q * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        out.append(s[lo] + (s[hi] - s[lo]) * (pos - lo))
    return out


def effective_step_stats(optimizer: torch.optim.Optimizer, quantiles=ADAM_QUANTILES,
                         max_elements: int = MAX_QUANTILE_ELEMENTS) -> dict[str, torch.Tensor]:
    """Quantiles and the std of log10 of Adam's effective per-coordinate step (0-dim device
    tensors), or ``{}`` without Adam state. More than ``max_elements`` coordinates are
    subsampled with an even stride (bounds the sort)."""
    eff = effective_steps(optimizer)
    if eff is None or eff.numel() == 0:
        return {}
    return log_step_stats(eff, quantiles, max_elements)


def log_step_stats(eff: torch.Tensor, quantiles=ADAM_QUANTILES,
                   max_elements: int = MAX_QUANTILE_ELEMENTS) -> dict[str, torch.Tensor]:
    """:func:`effective_step_stats` of a flat tensor of effective steps."""
    if eff.numel() > max_elements:
        eff = eff[:: math.ceil(eff.numel() / max_elements)]
    logs = torch.log10(eff.clamp(min=torch.finfo(torch.float32).tiny))
    q = sorted_quantiles(logs, quantiles)
    out = {f"p{round(qq * 100)}": 10.0 ** q[i] for i, qq in enumerate(quantiles)}
    out["log10_std"] = logs.std() if logs.numel() > 1 else torch.zeros((), device=logs.device)
    return out


def _check_window(window: int) -> None:
    if not isinstance(window, int) or window < 2:
        raise ValueError(f"jitter window={window} is invalid: must be an integer >= 2")


# -- the tracker ---------------------------------------------------------------------------------
@dataclass
class MetricsConfig:
    """``trainer.metrics`` (conf/trainer/default.yaml)."""

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


class JitterTracker:
    """Device-side stability metrics for one run (see the module docstring).

    The trainer calls ``before_step(step)`` after the gradient norm and before clipping (it copies
    the parameters and, on layer steps, takes per-layer gradient norms), ``after_step(step)``
    right after ``optimizer.step()``, then at each flush ``block(losses)`` with the loss column of
    the step buffer (a device tensor), ``pending_layer_stats()`` and ``record(cols)``.
    """

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], optimizer,
                 cfg: MetricsConfig, total_steps: int, device: torch.device | None = None):
        self.cfg, self.optimizer, self.total_steps = cfg, optimizer, total_steps
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.layer_idx = [i for i, p in enumerate(self.params) if p.ndim >= 2]
        if device is None:  # without parameters (loss windows only): the device of the losses
            device = self.params[0].device if self.params else torch.device("cpu")
        self.tail = torch.empty(0, device=device)      # the last window-1 losses
        self.run_min = torch.full((), math.inf, device=device)
        self.count = torch.zeros((), device=device)
        # the update ratio: parameters snapshotted before the step, into one flat buffer when
        # they allow it (flat_views: one cat and a few reductions per step instead of four
        # operations per tensor, 0.85 -> 0.2 ms per ResNet-20 step on the CPU), else per tensor
        self.prev: torch.Tensor | list[torch.Tensor] | None = None
        self._views: list[torch.Tensor] | None = None
        self._ptrs: list[int] = []
        self._layer_queue: list[tuple[int, dict[str, torch.Tensor]]] = []
        self._layer_grads: dict[str, torch.Tensor] = {}
        self._seen = 0
        # host-side history for the end-of-run summary (filled at flushes)
        self.history: dict[str, list[float]] = {"loss": [], "grad_norm": [], "update_ratio": []}

    # per step -------------------------------------------------------------------------------
    @property
    def tracks_update(self) -> bool:
        return self.cfg.update_ratio and bool(self.params)

    def is_layer_step(self, step: int) -> bool:
        return self.cfg.layers and step % self.cfg.layer_interval == 0

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        """Copy the parameters into one preallocated buffer so the update can be measured; on
        layer steps, queue the per-layer gradient norms (call it before clipping)."""
        if self.tracks_update:
            if self.prev is None:
                self._snapshot_setup()
            if self._views is not None:
                torch.cat(self._views, out=self.prev)
            else:
                torch._foreach_copy_(self.prev, [p.detach() for p in self.params])
        if self.is_layer_step(step):
            idx = [i for i in self.layer_idx if self.params[i].grad is not None]
            norms = torch._foreach_norm([self.params[i].grad for i in idx]) if idx else []
            self._layer_grads = {f"layer/grad_norm/{self.names[i]}": g for i, g in zip(idx, norms)}

    @torch.no_grad()
    def after_step(self, step: int) -> torch.Tensor | None:
        """The total update ratio (0-dim device tensor, or None when off); on layer steps also
        queues per-layer update ratios and Adam's effective-step summary."""
        ratio = None
        layer_step = self.is_layer_step(step)
        if self.tracks_update:
            if self._views is not None:
                delta = torch.cat(self._views, out=self._delta)
                p_norm = torch.linalg.vector_norm(self.prev)
                delta.sub_(self.prev)
                ratio = torch.linalg.vector_norm(delta) / p_norm.clamp(min=torch.finfo(p_norm.dtype).tiny)
                if layer_step:
                    p_norms = torch._foreach_norm(list(self.prev.split(self._numels)))
                    d_norms = torch._foreach_norm(list(delta.split(self._numels)))
            else:
                p_norms = torch._foreach_norm(self.prev)
                torch._foreach_sub_(self.prev, [p.detach() for p in self.params])
                d_norms = torch._foreach_norm(self.prev)
                ratio = update_ratio(d_norms, p_norms)
        if not layer_step:
            return ratio
        stats: dict[str, torch.Tensor] = dict(self._layer_grads)
        self._layer_grads = {}
        if self.tracks_update:
            tiny = torch.finfo(torch.float32).tiny
            for i in self.layer_idx:
                stats[f"layer/update_ratio/{self.names[i]}"] = d_norms[i] / p_norms[i].clamp(min=tiny)
        for k, v in effective_step_stats(self.optimizer).items():
            stats[f"train/adam/eff_lr_{k}"] = v
        if stats:
            self._layer_queue.append((step, stats))
        return ratio

    def _snapshot_setup(self) -> None:
        """Allocate the snapshot: a flat buffer over :func:`flat_views`, or per-tensor clones."""
        self._views = flat_views(self.params)
        self._ptrs = [p.data_ptr() for p in self.params]
        if self._views is None:
            self.prev = [p.detach().clone() for p in self.params]
            return
        self._numels = [v.numel() for v in self._views]
        self.prev = torch.empty(sum(self._numels), dtype=self._views[0].dtype,
                                device=self._views[0].device)
        self._delta = torch.empty_like(self.prev)

    # per flush ------------------------------------------------------------------------------
    @torch.no_grad()
    def block(self, losses: torch.Tensor) -> dict[str, torch.Tensor]:
        """Jitter metrics for the next ``len(losses)`` steps (device tensors of that length)."""
        if self._ptrs and self._ptrs != [p.data_ptr() for p in self.params]:
            self.prev = None  # a parameter's storage was replaced: rebuild the views next step
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

    def pending_layer_stats(self) -> list[tuple[int, dict[str, float]]]:
        """Queued per-layer/Adam values, copied to the host in one transfer; empties the queue."""
        if not self._layer_queue:
            return []
        queue, self._layer_queue = self._layer_queue, []
        flat = torch.stack([v.float().reshape(()) for _, stats in queue for v in stats.values()])
        values = iter(flat.cpu().tolist())
        return [(step, {k: next(values) for k in stats}) for step, stats in queue]

    def record(self, cols: dict[str, list[float]]) -> None:
        """Keep the host copies of a flushed block (loss, grad norm, update ratio) for ``summary``."""
        for key in self.history:
            if key in cols:
                self.history[key].extend(cols[key])

    # state (checkpoint/resume) ----------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors and plain types only (checkpoints load with ``weights_only``), including the
        per-layer statistics still waiting for a flush."""
        return {"tail": self.tail.cpu(), "run_min": self.run_min.cpu(), "count": self.count.cpu(),
                "seen": self._seen, "history": {k: list(v) for k, v in self.history.items()},
                "layer_queue": [(s, {k: v.detach().cpu() for k, v in d.items()})
                                for s, d in self._layer_queue]}

    def load_state_dict(self, state: dict) -> None:
        dev = self.run_min.device
        self.tail, self.run_min = state["tail"].to(dev), state["run_min"].to(dev)
        self.count, self._seen = state["count"].to(dev), int(state["seen"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self._layer_queue = [(s, {k: v.to(dev) for k, v in d.items()})
                             for s, d in state.get("layer_queue", [])]

    # end of run ---------------------------------------------------------------------------------
    def summary(self, chance_acc: float | None = None) -> dict:
        return stability_summary(self.history["loss"], self.cfg, self.total_steps,
                                 grad_norm=self.history["grad_norm"],
                                 update_ratio=self.history["update_ratio"], chance_acc=chance_acc)


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
