"""Sharpness during training: the top Hessian eigenvalue, and Adam's preconditioned one.

Why warmup works, in the curvature view (Gilmer et al. 2021; Cohen et al. 2021, 2022; Kalra &
Barkeshli 2024): gradient descent with learning rate ``lr`` is unstable along a direction of
curvature ``lambda`` once ``lr * lambda`` passes a constant: 2 for plain gradient descent,
``2 + 2 beta`` with heavy-ball momentum ``beta``. For Adam the quantity is the **preconditioned
sharpness**, ``lambda_max(P^{-1} H)``, against ``(2 + 2 beta1) / (1 - beta1)``.

Definitions (docs/metrics.md, "Curvature"):

* ``sharpness`` = ``lambda_max(H)``, the top eigenvalue of the Hessian of the mean training loss
  on a fixed **probe batch** (drawn once from the training split by the run's seed, without
  augmentation), estimated by ``iters`` Hessian-vector products of power iteration,
  warm-started from the previous estimate's vector (the first estimate, from a random vector,
  takes ``COLD_START`` times as many) (:func:`top_eigenvalue`: the first half finds
  the eigenvalue of largest magnitude; if it is negative, as at initialisation of BN nets, the
  second half iterates on the spectrum shifted above 0, so the result is the top one).
* ``precond_sharpness`` (Adam, AdamW, RAdam) = the same for ``P^{-1/2} H P^{-1/2}``, which has
  the eigenvalues of ``P^{-1} H``, with ``P = diag(sqrt(v_t / (1 - beta2^t)) + eps)``: the
  denominator of Adam's update at the probe's step (``v_t`` the second-moment state
  ``exp_avg_sq``, ``t`` its step count; bias-corrected as in torch's Adam). Undefined (NaN)
  before the first optimizer step, when there is no state.
* ``threshold_ratio`` = ``lr * sharpness / (2 + 2 beta)`` with ``beta`` the momentum (SGD,
  RMSprop) or ``beta1`` (Adam's family); ``precond_threshold_ratio`` = ``lr * precond_sharpness
  / ((2 + 2 beta1) / (1 - beta1))``. ``lr`` is the rate the update at that step uses (the
  schedule's multiplier times the peak). A ratio above 1 means the step is past the edge.

What the probe does to the run: nothing. It reads the parameters, computes gradients with
``torch.autograd.grad`` (``.grad`` is untouched), runs the model in eval mode (no dropout) except
BatchNorm, which uses the probe batch's own statistics on **copies** of the running statistics
(the model's stay as they are), restores every random stream afterwards, and runs in fp32
without autocast. The training trajectory is bit-for-bit the same with the probe on (CPU,
``tests/test_curvature.py``). Everything stays on the device; the estimates are read back with
the other metrics at the flush.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

PROBE_SEED_OFFSET = 7_919  # the probe batch's generator: seed + this (not the sampler's stream)
COLD_START = 3             # the first estimate starts from a random vector: 3 x the iterations
ADAM_FAMILY = ("adam", "adamw", "radam")


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(x * y).sum() for x, y in zip(a, b)]).sum()


def _normalise(v: list[torch.Tensor]) -> list[torch.Tensor]:
    norm = torch.sqrt(_dot(v, v)).clamp(min=torch.finfo(v[0].dtype).tiny)
    return [x / norm for x in v]


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(x: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    return [part.view(t.shape) for part, t in zip(torch.split(x, [t.numel() for t in like]), like)]


def power_iteration(hvp: Callable[[list[torch.Tensor]], list[torch.Tensor]], v: list[torch.Tensor],
                    iters: int, scale: list[torch.Tensor] | None = None,
                    shift: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Eigenvalue of largest magnitude of ``S H S + shift I`` (``S = diag(scale)``, identity when
    None) minus ``shift``, and its unit vector, after ``iters`` steps from ``v``; no host reads.
    The vector lives as one flat tensor (a few operations per step, whatever the number of
    parameter tensors)."""
    x = _flat(v)
    s = None if scale is None else _flat(scale)
    tiny = torch.finfo(x.dtype).tiny
    x = x / x.norm().clamp(min=tiny)
    lam = torch.zeros((), device=x.device, dtype=x.dtype)
    for _ in range(iters):
        w = x if s is None else x * s
        hw = _flat(hvp(_unflat(w, v)))
        if s is not None:
            hw = hw * s
        if shift is not None:
            hw = hw + shift * x
        lam = torch.dot(x, hw)
        x = hw / hw.norm().clamp(min=tiny)
    return (lam if shift is None else lam - shift), _unflat(x, v)


def top_eigenvalue(hvp, v: list[torch.Tensor], iters: int, scale: list[torch.Tensor] | None = None):
    """The largest (algebraic) eigenvalue of ``S H S``, with no data-dependent branch: power
    iteration finds the eigenvalue of largest magnitude ``mu`` (``iters // 2`` steps); when
    ``mu < 0`` the rest of the steps iterate on ``S H S - mu I``, whose spectrum is shifted
    above 0 so its dominant eigenvalue is the top one, and ``mu`` is added back; when ``mu >= 0``
    the shift is 0 and the same iteration goes on."""
    first = max(1, iters // 2)
    mu, v = power_iteration(hvp, v, first, scale)
    if iters - first <= 0:
        return mu, v
    shift = torch.clamp(-mu, min=0.0)
    return power_iteration(hvp, v, iters - first, scale, shift)


def stability_constant(optimizer_name: str, group: dict) -> float:
    """2 + 2 beta: beta the momentum of SGD/RMSprop, beta1 for Adam's family."""
    if optimizer_name in ADAM_FAMILY:
        beta = group["betas"][0]
    else:
        beta = group.get("momentum", 0.0) or 0.0
    return 2.0 + 2.0 * float(beta)


def precond_constant(group: dict) -> float:
    """(2 + 2 beta1) / (1 - beta1) (Cohen et al. 2022): 38 at beta1 = 0.9."""
    b1 = float(group["betas"][0])
    return (2.0 + 2.0 * b1) / (1.0 - b1)


class CurvatureProbe:
    """Estimates sharpness (and, for Adam's family, preconditioned sharpness) every
    ``interval`` steps on a fixed probe batch; results wait on the device in ``pending``."""

    def __init__(self, model: nn.Module, optimizer, optimizer_name: str, data, loss_fn, *, seed: int,
                 interval: int, iters: int, batch_size: int, device: torch.device):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.interval, self.iters = int(interval), int(iters)
        self.precond = optimizer_name in ADAM_FAMILY
        group = optimizer.param_groups[0]
        self.constant = stability_constant(optimizer_name, group)
        self.precond_const = precond_constant(group) if self.precond else None
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        group_of = {id(q): g for g in optimizer.param_groups for q in g["params"]}
        self.groups = [group_of.get(id(p), group) for p in self.params]
        self.x, self.y = probe_batch(data, seed, batch_size)
        gen = torch.Generator().manual_seed(int(seed) + PROBE_SEED_OFFSET + 1)
        start = [torch.randn(p.shape, generator=gen).to(device=p.device, dtype=torch.float32) for p in self.params]
        self.v = _normalise(start)
        self.u = [x.clone() for x in self.v] if self.precond else None
        self.cold = self.u_cold = True  # no warm start yet
        self.pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []

    def due(self, step: int) -> bool:
        return step % self.interval == 0

    def measure(self, step: int, lr: float) -> None:
        """Queue the estimates at the current parameters (before the update of ``step``)."""
        model = self.model
        modes = [(m, m.training) for m in model.modules()]
        model.eval()  # no dropout, in whatever form a module applies it ...
        for m in model.modules():  # ... and BatchNorm on the probe batch's own statistics
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
        rng = torch.random.fork_rng(devices=[self.params[0].device] if self.params[0].is_cuda else [])
        rng.__enter__()  # and should anything draw a random number, the run's streams are restored
        try:
            params = {n: p.detach().float().requires_grad_(True) for n, p in zip(self.names, self.params)}
            buffers = {n: b.clone() for n, b in model.named_buffers()}  # BN running stats: copies
            # the math attention kernel: fused CPU/GPU attention kernels have no double backward
            with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
                out = functional_call(model, (params, buffers), (self.x,))
                loss = self.loss_fn(out.float(), self.y)
                plist = list(params.values())
                grads = torch.autograd.grad(loss, plist, create_graph=True)

                def hvp(vec):
                    return list(torch.autograd.grad(grads, plist, grad_outputs=vec, retain_graph=True))

                # a cold start (the first estimate, from a random vector) gets COLD_START x the steps
                lam, self.v = top_eigenvalue(hvp, self.v, self.iters * (COLD_START if self.cold else 1))
                lam_p = torch.full((), math.nan, device=lam.device)
                scale = self.precond_scale() if self.precond else None
                if scale is not None:
                    lam_p, self.u = top_eigenvalue(hvp, self.u, self.iters * (COLD_START if self.u_cold else 1), scale)
                    self.u_cold = False
                self.cold = False
            self.v = [x.detach() for x in self.v]
            if self.u is not None:
                self.u = [x.detach() for x in self.u]
        finally:
            rng.__exit__(None, None, None)
            for m, mode in modes:
                m.training = mode
        self.pending.append((step, float(lr), lam.detach(), lam_p.detach()))

    def precond_scale(self) -> list[torch.Tensor] | None:
        """``P^{-1/2}`` per parameter from Adam's state, or None before its first step."""
        out = []
        for p, group in zip(self.params, self.groups):
            state = self.optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                return None
            beta2, eps = group["betas"][1], group["eps"]
            t = state["step"]
            t = float(t) if not torch.is_tensor(t) else t.to(state["exp_avg_sq"].device, torch.float32)
            denom = (state["exp_avg_sq"].float() / (1 - beta2 ** t)).sqrt() + eps
            out.append(denom.rsqrt())
        return out

    def drain(self) -> list[tuple[int, dict[str, float]]]:
        """The queued estimates as host numbers, per step: sharpness, lr x sharpness, threshold
        ratio, the sharpness threshold (2 + 2 beta) / lr, and the preconditioned ones."""
        if not self.pending:
            return []
        values = torch.stack([torch.stack([lam, lam_p]) for _, _, lam, lam_p in self.pending]).cpu().tolist()
        out = []
        for (step, lr, _, _), (lam, lam_p) in zip(self.pending, values):
            row = {"curvature/sharpness": lam, "curvature/lr_sharpness": lr * lam,
                   "curvature/threshold_ratio": lr * lam / self.constant,
                   "curvature/stability_threshold": self.constant / lr if lr > 0 else math.inf}
            if self.precond:
                row.update({"curvature/precond_sharpness": lam_p,
                            "curvature/precond_threshold_ratio": lr * lam_p / self.precond_const,
                            "curvature/precond_stability_threshold": self.precond_const / lr if lr > 0 else math.inf})
            out.append((step, row))
        self.pending = []
        return out

    def state_dict(self) -> dict:
        return {"v": [x.detach().cpu() for x in self.v], "u": None if self.u is None else [x.detach().cpu() for x in self.u],
                "cold": [self.cold, self.u_cold],
                "pending": [(s, lr, lam.cpu(), lam_p.cpu()) for s, lr, lam, lam_p in self.pending]}

    def load_state_dict(self, state: dict) -> None:
        dev = self.params[0].device
        self.v = [x.to(dev) for x in state["v"]]
        if state.get("u") is not None:
            self.u = [x.to(dev) for x in state["u"]]
        self.pending = [(int(s), float(lr), lam.to(dev), lam_p.to(dev)) for s, lr, lam, lam_p in state["pending"]]
        self.cold, self.u_cold = (bool(c) for c in state.get("cold", [False, False]))


def probe_batch(data, seed: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of the training split, drawn by its own generator (seed + offset) so the
    run's sampler is untouched; no augmentation."""
    gen = torch.Generator().manual_seed(int(seed) + PROBE_SEED_OFFSET)
    if data.spec.is_lm:
        t = data.spec.input_shape[0]
        starts = torch.randint(0, len(data.train_x) - t - 1, (batch_size,), generator=gen)
        window = starts[:, None] + torch.arange(t + 1)
        tokens = data.train_x[window.to(data.train_x.device)]
        return tokens[:, :-1], tokens[:, 1:]
    idx = torch.randperm(len(data.train_x), generator=gen)[: min(batch_size, len(data.train_x))]
    idx = idx.to(data.train_x.device)
    return data.train_x[idx], data.train_y[idx]


def summary(rows: list[tuple[int, dict]], early_steps: int, warmup_steps: int) -> dict:
    """``metrics.json`` numbers from the logged estimates: the largest threshold ratio in the
    first ``early_steps`` steps, how many estimates were above 1, the step of the first one, and
    the sharpness at the end of warmup (the first estimate at a step >= ``warmup_steps``)."""
    out: dict = {}
    for prefix in ("", "precond_"):
        ratios = [(s, r.get(f"curvature/{prefix}threshold_ratio")) for s, r in rows]
        ratios = [(s, v) for s, v in ratios if v is not None and math.isfinite(v)]
        if not ratios:
            continue
        early = [v for s, v in ratios if s < early_steps]
        above = [s for s, v in ratios if v > 1]
        at_w = next((r.get(f"curvature/{prefix}sharpness") for s, r in rows if s >= warmup_steps), None)
        out.update({f"early_max_{prefix}threshold_ratio": max(early) if early else None,
                    f"max_{prefix}threshold_ratio": max(v for _, v in ratios),
                    f"{prefix}threshold_crossings": len(above),
                    f"first_{prefix}crossing_step": above[0] if above else None,
                    f"{prefix}sharpness_at_warmup_end": at_w})
    return out
