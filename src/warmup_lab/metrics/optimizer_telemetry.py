"""Optimizer telemetry: what each update did to the parameters (definitions in docs/metrics.md).

* ``train/update_ratio`` every step: ``||theta_{t+1} - theta_t|| / ||theta_t||``, from a snapshot of
  the parameters taken before the step (one flat buffer when they allow it);
* every ``metrics.layer_interval`` steps: per-layer gradient norms (before clipping) and update
  ratios (``layer/*``) and the quantiles of Adam's effective per-coordinate step
  (``train/adam/eff_lr_*``).

Everything stays on the device until the trainer's flush reads it back with the step buffer.
The loss windows are :mod:`warmup_lab.metrics.loss_windows`.
"""

from __future__ import annotations

import math

import torch

from warmup_lab.metrics.loss_windows import MetricsConfig

ADAM_QUANTILES = (0.1, 0.5, 0.9)
MAX_QUANTILE_ELEMENTS = 1 << 20  # effective steps subsampled (evenly strided) above this size


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


class OptimizerTelemetry:
    """What one run's optimizer steps do (see the module docstring).

    The trainer calls ``before_step(step)`` after the gradient norm and before clipping (it copies
    the parameters and, on layer steps, takes per-layer gradient norms) and ``after_step(step)``
    right after ``optimizer.step()``; at each flush it takes the queued per-layer values with
    ``take_layer_stats()`` (device tensors) and reads them back with the step buffer.
    """

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], optimizer, cfg: MetricsConfig):
        self.cfg, self.optimizer = cfg, optimizer
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.layer_idx = [i for i, p in enumerate(self.params) if p.ndim >= 2]
        # the update ratio: parameters snapshotted before the step, into one flat buffer when
        # they allow it (flat_views: one cat and a few reductions per step instead of four
        # operations per tensor, 0.85 -> 0.2 ms per ResNet-20 step on the CPU), else per tensor
        self.prev: torch.Tensor | list[torch.Tensor] | None = None
        self._views: list[torch.Tensor] | None = None
        self._ptrs: list[int] = []
        self._layer_queue: list[tuple[int, dict[str, torch.Tensor]]] = []
        self._layer_grads: dict[str, torch.Tensor] = {}

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
            if self.prev is None or self._ptrs != [p.data_ptr() for p in self.params]:
                self._snapshot_setup()  # first step, or a parameter's storage was replaced
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

    def take_layer_stats(self) -> list[tuple[int, dict[str, torch.Tensor]]]:
        """The queued per-layer/Adam values as device tensors (steps in order); empties the queue."""
        queue, self._layer_queue = self._layer_queue, []
        return queue

    def pending_layer_stats(self) -> list[tuple[int, dict[str, float]]]:
        """:meth:`take_layer_stats` copied to the host in one transfer."""
        queue = self.take_layer_stats()
        if not queue:
            return []
        values = iter(torch.stack([v.float().reshape(()) for _, s in queue for v in s.values()]).cpu().tolist())
        return [(step, {k: next(values) for k in stats}) for step, stats in queue]

    def state_dict(self) -> dict:
        """The per-layer statistics still waiting for a flush (CPU tensors)."""
        return {"layer_queue": [(s, {k: v.detach().cpu() for k, v in d.items()}) for s, d in self._layer_queue]}

    def load_state_dict(self, state: dict) -> None:
        dev = self.params[0].device if self.params else torch.device("cpu")
        self._layer_queue = [(s, {k: v.to(dev) for k, v in d.items()}) for s, d in state.get("layer_queue", [])]
