"""Many runs per device: K CIFAR ResNets of one architecture trained as one fused model.

Horizontal fusion (HFTA, Wang et al. 2021): run ``k``'s channels are the ``k``-th block of every
activation, so

* every conv is one grouped conv (``groups=K``) over ``(B, K*C, H, W)``;
* every BatchNorm is one batch norm over ``K*C`` channels, which is exactly per-run BN (each
  channel's statistics come from that run's own batch);
* the classifier is one batched matmul ``(K, B, C) @ (K, C, n)``;
* the loss is the sum of the K per-run mean losses, so run ``k``'s gradient is that of its own loss.

Every parameter has a leading run dimension (``conv1.weight`` is ``(K, 16, 3, 3, 3)``; ``[k]`` is
run ``k``'s tensor, with the same name as in :class:`~warmup_lab.models.resnet.CifarResNet`), and
all parameters and gradients live in one flat buffer each, so the optimizer update is a handful of
element-wise kernels for all K runs together whatever the number of tensors. Each run has its own
seed (initialisation and data order), learning rate, schedule and weight decay; the lrs of all steps
are a ``(steps, K)`` table on the device, so a step reads no host value and never recompiles.

:func:`train_fused` trains the runs of K composed configs fused; each run gets the numbers it would
get from ``warmup_lab.runs.run.run`` alone (same seed), to float rounding: ``tests/test_fused.py``
checks losses, gradient norms, lrs, validation metrics and final weights against the real trainer.
Supported: ``model`` a CIFAR ResNet (resnet20/56/...), image classification data, optimizers
sgd, adam and adamw (no amsgrad), any schedule. Runs may differ in ``seed``, ``optimizer.lr``,
``optimizer.weight_decay`` and ``scheduler.*``; everything else must be the same.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from warmup_lab.data.cifar import apply_crop_flip, crop_flip_params, random_crop_flip
from warmup_lab.models.resnet import BasicBlock, CifarResNet
from warmup_lab.runs.identity import PER_RUN, fuse_key
from warmup_lab.metrics.jitter import log_step_stats
from warmup_lab.schedules import ScheduleLR
from warmup_lab.schedules.registry import VAL_DRIVEN

FUSED_OPTIMIZERS = ("sgd", "adam", "adamw")
PER_RUN_KEYS = PER_RUN  # what runs of one group may differ in (warmup_lab.runs.identity)


# -- the fused model -----------------------------------------------------------------------------
class FusedConv(nn.Module):
    """K bias-free ``Conv2d`` as one grouped conv; ``weight`` is ``(K, out, in, kh, kw)``."""

    def __init__(self, convs: list[nn.Conv2d]):
        super().__init__()
        c = convs[0]
        if c.groups != 1 or c.bias is not None or c.dilation != (1, 1) or c.padding_mode != "zeros":
            raise ValueError("FusedConv fuses plain bias-free convolutions only")
        self.k, self.stride, self.padding = len(convs), c.stride, c.padding
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in convs]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.flatten(0, 1), None, self.stride, self.padding, 1, self.k)


class FusedBatchNorm(nn.Module):
    """K ``BatchNorm2d(C)`` as one batch norm over ``K*C`` channels (statistics per channel, so
    per run); parameters and running statistics are ``(K, C)``."""

    def __init__(self, bns: list[nn.BatchNorm2d]):
        super().__init__()
        b = bns[0]
        if not (b.affine and b.track_running_stats) or b.momentum is None:
            raise ValueError("FusedBatchNorm needs affine BN with running stats and a momentum")
        self.eps, self.momentum = b.eps, b.momentum
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in bns]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in bns]))
        self.register_buffer("running_mean", torch.stack([m.running_mean for m in bns]))
        self.register_buffer("running_var", torch.stack([m.running_var for m in bns]))
        self.register_buffer("num_batches_tracked", torch.stack([m.num_batches_tracked for m in bns]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1),
                            self.weight.view(-1), self.bias.view(-1), self.training,
                            self.momentum, self.eps)


class FusedLinear(nn.Module):
    """K ``Linear(C, n)``: ``weight`` ``(K, n, C)``, ``bias`` ``(K, n)``; input ``(B, K, C)``,
    output ``(K, B, n)``."""

    def __init__(self, fcs: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in fcs]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in fcs]))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), h.transpose(0, 1), self.weight.transpose(1, 2))


class FusedBlock(nn.Module):
    def __init__(self, blocks: list[BasicBlock]):
        super().__init__()
        b = blocks[0]
        self.k, self.stride, self.pad = len(blocks), b.stride, b.pad
        self.conv1 = FusedConv([m.conv1 for m in blocks])
        self.bn1 = FusedBatchNorm([m.bn1 for m in blocks])
        self.conv2 = FusedConv([m.conv2 for m in blocks])
        self.bn2 = FusedBatchNorm([m.bn2 for m in blocks])
        self.projection = None
        if b.projection is not None:
            self.projection = nn.Sequential(FusedConv([m.projection[0] for m in blocks]),
                                            FusedBatchNorm([m.projection[1] for m in blocks]))

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            return self.projection(x)
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:  # zero channels appended to each run's channels
            b, kc, h, w = x.shape
            x = F.pad(x.reshape(b, self.k, kc // self.k, h, w), (0, 0, 0, 0, 0, self.pad))
            x = x.reshape(b, -1, h, w)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))


class FusedCifarResNet(nn.Module):
    """K :class:`CifarResNet` of one architecture as one module. Input ``(B, K*C, H, W)`` (run
    ``k``'s images in channels ``k*C:(k+1)*C``), output logits ``(K, B, classes)``."""

    def __init__(self, models: list[CifarResNet]):
        super().__init__()
        if not models or not all(isinstance(m, CifarResNet) for m in models):
            raise TypeError("FusedCifarResNet fuses CifarResNet models (resnet20, resnet56, ...)")
        shapes = {tuple((n, tuple(p.shape)) for n, p in m.state_dict().items()) for m in models}
        if len(shapes) != 1:
            raise ValueError("fused runs must share one architecture")
        self.k = len(models)
        self.conv1 = FusedConv([m.conv1 for m in models])
        self.bn1 = FusedBatchNorm([m.bn1 for m in models])
        self.blocks = nn.Sequential(*[FusedBlock([m.blocks[i] for m in models])
                                      for i in range(len(models[0].blocks))])
        self.fc = FusedLinear([m.fc for m in models])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        h = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(h.view(h.shape[0], self.k, -1))

    def run_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Run ``k``'s weights and BN statistics as a ``CifarResNet`` state dict."""
        return {name: t[k].detach().clone() for name, t in self.state_dict().items()}


def fuse_inputs(xs: torch.Tensor) -> torch.Tensor:
    """``(K, B, C, H, W)`` per-run batches -> the fused model's ``(B, K*C, H, W)``."""
    k, b, c, h, w = xs.shape
    return xs.transpose(0, 1).reshape(b, k * c, h, w)


# -- the fused optimizer ---------------------------------------------------------------------------
class FusedOptimizer:
    """SGD (momentum, nesterov, dampening), Adam or AdamW over the K runs of a fused model, with
    torch's update rules; each run has its own lr (a ``(K,)`` tensor passed to :meth:`step`) and
    weight decay. Weight decay applies, as in ``warmup_lab.engine.optim.param_groups``, to parameters
    whose per-run tensor has ``>= 2`` dimensions unless ``decay_norm_and_bias``.

    All parameters are re-pointed into one flat buffer and their ``.grad`` into another (autograd
    accumulates into an existing ``.grad`` in place), so an update is a few kernels in all."""

    def __init__(self, model: nn.Module, k: int, name: str, weight_decay: list[float],
                 momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 decay_norm_and_bias: bool = False, channels_last: bool = False):
        if name not in FUSED_OPTIMIZERS:
            raise ValueError(f"fused runs support optimizer.name in {FUSED_OPTIMIZERS}, got {name!r}")
        self.name, self.k = name, k
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov
        self.betas, self.eps = tuple(betas), eps
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        self.layer_idx = [i for i, p in enumerate(self.params) if p.dim() - 1 >= 2]  # per run >= 2-D
        first = self.params[0]
        total = sum(p.numel() for p in self.params)
        self.flat = torch.empty(total, dtype=first.dtype, device=first.device)
        self.grad = torch.zeros_like(self.flat)
        run = torch.empty(total, dtype=torch.long)
        decay = torch.empty(total, dtype=first.dtype)
        self.views = []                               # per parameter: flat buffer -> its shape
        off = 0
        with torch.no_grad():
            for p in self.params:
                n = p.numel()
                if p.shape[0] != k:
                    raise ValueError(f"parameter of shape {tuple(p.shape)} has no leading run dim {k}")
                if channels_last and p.dim() == 5:  # conv weight (K, out, in, kh, kw), stored NHWC
                    kk, o, i, kh, kw = p.shape
                    self.flat[off:off + n].copy_(p.permute(0, 1, 3, 4, 2).reshape(-1))
                    view = lambda buf, off=off, n=n, shape=(kk, o, kh, kw, i): (  # noqa: E731
                        buf[off:off + n].view(shape).permute(0, 1, 4, 2, 3))
                else:
                    self.flat[off:off + n].copy_(p.reshape(-1))
                    view = lambda buf, off=off, n=n, shape=p.shape: buf[off:off + n].view(shape)  # noqa: E731
                p.data = view(self.flat)
                p.grad = view(self.grad)
                self.views.append(view)
                run[off:off + n] = torch.arange(k).repeat_interleave(n // k)
                decay[off:off + n] = float(decay_norm_and_bias or p.dim() - 1 >= 2)
                off += n
        self.grad_slices = self._slices(self.grad)   # [param][run] views, for per-run norms
        self.run = run.to(first.device)
        wd = torch.tensor([float(w) for w in weight_decay], dtype=first.dtype, device=first.device)
        self.has_decay = bool(any(weight_decay)) and bool(decay.any())
        self.decay = wd[self.run] * decay.to(first.device)   # per-element weight decay
        self.buf = self.exp_avg = self.exp_avg_sq = None
        self.steps = 0
        self.prev = self.delta = None   # update-ratio snapshots (snapshot / update_ratios)

    def _slices(self, buf: torch.Tensor) -> list[torch.Tensor]:
        """``[param][run]`` views of a flat buffer laid out like the parameters."""
        return [t for view in self.views for t in view(buf).unbind(0)]

    def _tensor_norms(self, slices: list[torch.Tensor]) -> torch.Tensor:
        """L2 norm of every ``[param][run]`` slice from :meth:`_slices`, as ``(P, K)``."""
        return torch.stack(torch._foreach_norm(slices)).view(-1, self.k)

    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy the parameters before a step (one copy of the flat buffer)."""
        if self.prev is None:
            self.prev, self.delta = torch.empty_like(self.flat), torch.empty_like(self.flat)
            self._prev_slices, self._delta_slices = self._slices(self.prev), self._slices(self.delta)
        self.prev.copy_(self.flat)

    @torch.no_grad()
    def update_ratios(self) -> torch.Tensor:
        """Per-run ``||theta_{t+1} - theta_t|| / ||theta_t||`` ``(K,)`` since :meth:`snapshot`,
        the ``train/update_ratio`` of each run alone; no host sync."""
        self._p_norms = self._tensor_norms(self._prev_slices)
        torch.sub(self.flat, self.prev, out=self.delta)
        self._d_norms = self._tensor_norms(self._delta_slices)
        p_norms = torch.linalg.vector_norm(self._p_norms, dim=0)
        return torch.linalg.vector_norm(self._d_norms, dim=0) / p_norms.clamp(min=torch.finfo(p_norms.dtype).tiny)

    @torch.no_grad()
    def layer_stats(self, update_ratio: bool) -> dict[str, torch.Tensor]:
        """What :class:`warmup_lab.metrics.jitter.JitterTracker` logs per run on layer steps, as ``(K,)``
        device tensors: per-layer gradient norms (before clipping, from :meth:`grad_norms`),
        per-layer update ratios (after :meth:`update_ratios`) and, for Adam, the quantiles of
        the effective per-coordinate step. Call it after :meth:`step`."""
        tiny = torch.finfo(self.flat.dtype).tiny
        out = {f"layer/grad_norm/{self.names[i]}": self._grad_norms[i] for i in self.layer_idx}
        if update_ratio:
            out.update({f"layer/update_ratio/{self.names[i]}": self._d_norms[i] / self._p_norms[i].clamp(min=tiny)
                        for i in self.layer_idx})
        if self.exp_avg_sq is not None:
            v_hat = self.exp_avg_sq / (1 - self.betas[1] ** self.steps)
            eff = self._lr_e / (v_hat.sqrt() + self.eps)
            slices = self._slices(eff)
            per_run = [log_step_stats(torch.cat([t.reshape(-1) for t in slices[k::self.k]]))
                       for k in range(self.k)]
            out.update({f"train/adam/eff_lr_{key}": torch.stack([r[key] for r in per_run])
                        for key in per_run[0]})
        return out

    def zero_grad(self) -> None:
        self.grad.zero_()

    def state_dict(self) -> dict:
        """The parameters (flat), the update's buffers and the step count (tensors on the CPU)."""
        def cpu(t):
            return None if t is None else t.detach().cpu().clone()
        return {"flat": cpu(self.flat), "buf": cpu(self.buf), "exp_avg": cpu(self.exp_avg),
                "exp_avg_sq": cpu(self.exp_avg_sq), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.flat.copy_(state["flat"])
        def dev(t):
            return None if t is None else t.to(self.flat.device, self.flat.dtype)
        self.buf, self.exp_avg, self.exp_avg_sq = dev(state["buf"]), dev(state["exp_avg"]), dev(state["exp_avg_sq"])
        self.steps = int(state["steps"])

    def check_grads(self) -> None:
        """Raise if autograd replaced a ``.grad`` instead of accumulating into the flat buffer."""
        lo = self.grad.data_ptr()
        hi = lo + self.grad.numel() * self.grad.element_size()
        if any(p.grad is None or not lo <= p.grad.data_ptr() < hi for p in self.params):
            raise RuntimeError("a gradient left the flat buffer; fused updates would be wrong")

    def grad_norms(self) -> torch.Tensor:
        """Per-run global L2 norm of the gradients, ``(K,)``, computed as
        ``torch.nn.utils.get_total_norm`` does (norm of the per-tensor norms); no host sync.
        The per-tensor norms ``(P, K)`` are kept for :meth:`layer_stats`."""
        self._grad_norms = self._tensor_norms(self.grad_slices)
        return torch.linalg.vector_norm(self._grad_norms, dim=0)

    def clip_(self, norms: torch.Tensor, max_norm: float) -> None:
        """``torch.nn.utils.clip_grads_with_norm_`` per run."""
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        self.grad.mul_(coef[self.run])

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        lr_e = self._lr_e = lr.to(self.flat.dtype)[self.run]
        p, g = self.flat, self.grad
        self.steps += 1
        if self.name == "sgd":
            if self.has_decay:
                g = g.addcmul(p, self.decay)
            if self.momentum:
                if self.buf is None:
                    self.buf = g.clone()
                else:
                    self.buf.mul_(self.momentum).add_(g, alpha=1 - self.dampening)
                g = g.add(self.buf, alpha=self.momentum) if self.nesterov else self.buf
            p.addcmul_(g, lr_e, value=-1)
            return
        beta1, beta2 = self.betas
        if self.exp_avg is None:
            self.exp_avg, self.exp_avg_sq = torch.zeros_like(p), torch.zeros_like(p)
        if self.has_decay:
            if self.name == "adamw":
                p.mul_(1 - lr_e * self.decay)
            else:
                g = g.addcmul(p, self.decay)
        self.exp_avg.lerp_(g, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** self.steps
        bias_correction2_sqrt = (1 - beta2 ** self.steps) ** 0.5
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        p.addcmul_(self.exp_avg / denom, lr_e / bias_correction1, value=-1)


# -- training K runs from K configs ----------------------------------------------------------------
@dataclass
class FusedResult:
    """Per-run sequences, index ``[k][step]``; ``status[k]`` is completed or diverged."""

    seeds: list[int]
    loss: list[list[float]]
    grad_norm: list[list[float]]
    lr: list[list[float]]
    val: list[list[dict]]
    status: list[str]
    diverged_step: list[int | None]
    steps: int = 0
    state_dicts: list[dict] = field(default_factory=list)


def check_fusable(cfgs: list[DictConfig]) -> None:
    """``ValueError`` unless the configs differ only in :data:`PER_RUN_KEYS`."""
    first = fuse_key(cfgs[0])
    for i, cfg in enumerate(cfgs[1:], 1):
        other = fuse_key(cfg)
        diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if diff:
            raise ValueError(f"config {i} differs from config 0 in {', '.join(diff)}; fused runs "
                             f"may differ only in {', '.join(PER_RUN_KEYS)}")
    if cfgs[0].optimizer.name not in FUSED_OPTIMIZERS:
        raise ValueError(f"fused runs support optimizer.name in {FUSED_OPTIMIZERS}, "
                         f"got {cfgs[0].optimizer.name!r}")
    if cfgs[0].optimizer.get("amsgrad"):
        raise ValueError("fused runs do not support amsgrad")


FUSED_MODELS = ("warmup_lab.models.cifar_resnet",)
FUSED_DATA = ("warmup_lab.data.load_digits", "warmup_lab.data.load_cifar10")


def fusable(cfg: DictConfig) -> str | None:
    """Why the run of ``cfg`` cannot be trained fused, or None when it can: a CIFAR ResNet on
    image classification data with sgd, adam or adamw (no amsgrad)."""
    if cfg.model.get("_target_") not in FUSED_MODELS:
        return f"model {cfg.model.get('name')} is not a CIFAR ResNet"
    if cfg.data.get("_target_") not in FUSED_DATA:
        return f"data {cfg.data.get('name')} is not image classification"
    if cfg.optimizer.get("name") not in FUSED_OPTIMIZERS:
        return f"optimizer {cfg.optimizer.get('name')} is not one of {', '.join(FUSED_OPTIMIZERS)}"
    if cfg.optimizer.get("amsgrad"):
        return "amsgrad"
    if (cfg.trainer.get("metrics") or {}).get("curvature_interval"):
        return "the curvature probe runs in the trainer of a run alone"
    if cfg.scheduler.get("name") in VAL_DRIVEN:
        return f"scheduler {cfg.scheduler.get('name')} follows the run's own validation loss"
    return None


def fused_groups(cfgs: list[DictConfig], max_runs: int) -> list[list[int]]:
    """Indices of ``cfgs`` in groups of at most ``max_runs`` that may train fused (same config
    outside :data:`PER_RUN_KEYS`, each :func:`fusable`), in first-seen order; a config that
    cannot be fused is a group of its own."""
    groups: dict[str, list[list[int]]] = {}
    order: list[list[int]] = []
    for i, cfg in enumerate(cfgs):
        if fusable(cfg) is not None:
            order.append([i])
            continue
        key = repr(sorted(fuse_key(cfg).items()))
        chunks = groups.setdefault(key, [])
        if not chunks or len(chunks[-1]) >= max_runs:
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(i)
    return order


def lr_table(cfgs: list[DictConfig], schedules: list, steps: int) -> list[list[float]]:
    """``[step][k]`` lrs exactly as :class:`ScheduleLR` sets them for each run alone."""
    cols = []
    for cfg, schedule in zip(cfgs, schedules):
        dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=float(cfg.optimizer.lr))
        adapter = ScheduleLR(dummy, schedule)
        col = []
        for _ in range(steps):
            col.append(adapter.get_last_lr()[0])
            adapter.step()
        cols.append(col)
    return [list(row) for row in zip(*cols)]


class FusedTrainer:
    """The fused counterpart of :class:`warmup_lab.engine.trainer.Trainer` for K runs: same batches,
    same update, metrics kept on the device and read every ``log_interval`` steps."""

    def __init__(self, model: FusedCifarResNet, optimizer: FusedOptimizer, lrs: list[list[float]],
                 data, samplers: list, *, device: torch.device, eval_interval: int,
                 log_interval: int, grad_clip: float | None = None, precision: str = "fp32",
                 channels_last: bool = False, eval_batch_size: int = 512, step_fn=None,
                 update_ratio: bool = False, layer_interval: int | None = None,
                 checkpoint_interval: int | None = None, checkpoint_fn=None):
        self.model, self.optimizer, self.data, self.samplers = model, optimizer, data, samplers
        self.k, self.device = model.k, device
        self.total_steps = len(lrs)
        self.lrs_host = lrs
        self.lrs = torch.tensor(lrs, dtype=torch.float32, device=device).reshape(-1, self.k)
        self.eval_interval, self.log_interval = eval_interval, log_interval
        self.grad_clip, self.eval_batch_size = grad_clip, eval_batch_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                         if precision == "bf16" else nullcontext())
        self.forward = step_fn or model
        self.track_update = update_ratio
        self.layer_interval = layer_interval  # per-layer stats every this many steps (None: off)
        self.layer_queue: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.block_layer_stats: dict[int, dict[str, list[float]]] = {}  # of the last flush
        self.extra: list[float] = []  # flush(extra=...) read back, flat
        self.buffer = torch.full((log_interval, 3, self.k), float("nan"), device=device)
        self.filled: list[int] = []
        self.step = 0
        k = self.k
        self.loss = [[] for _ in range(k)]
        self.grad_norm = [[] for _ in range(k)]
        self.update_ratio = [[] for _ in range(k)]
        self.val = [[] for _ in range(k)]
        self.stop_requested = False  # set by a signal handler: end after the current step
        self.checkpoint_interval, self.checkpoint_fn = checkpoint_interval, checkpoint_fn
        self.status = ["running"] * k
        self.diverged_step: list[int | None] = [None] * k

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The K runs' next batches, fused: ``x`` ``(B, K*C, H, W)``, ``y`` ``(K, B)``; each run
        draws from its own sampler and generator in the order ``Trainer`` does."""
        idx = [s.next() for s in self.samplers]
        aug = self.data.augment
        if aug is random_crop_flip:
            params = torch.stack([crop_flip_params(len(i), s.generator) for i, s in zip(idx, self.samplers)])
        idx_d = torch.stack(idx).to(self.data.train_x.device, non_blocking=True)   # (K, B)
        y = self.data.train_y[idx_d]
        x = self.data.train_x[idx_d.t()]                                        # (B, K, C, H, W)
        b, k, c, h, w = x.shape
        if aug is random_crop_flip:  # one batched crop for all runs
            x = apply_crop_flip(x.reshape(b * k, c, h, w), params.permute(1, 2, 0).reshape(3, -1))
        elif aug is not None:
            x = torch.stack([aug(x[:, j], s.generator) for j, s in enumerate(self.samplers)], 1)
        return x.reshape(b, k * c, h, w).contiguous(memory_format=self.memory_format), y

    def train_step(self) -> None:
        self.model.train()
        x, y = self.batch()
        with self.autocast:
            logits = self.forward(x)
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        losses = losses.view(self.k, -1).mean(1)
        self.optimizer.zero_grad()
        losses.sum().backward()
        if self.step == 0:
            self.optimizer.check_grads()
        norms = self.optimizer.grad_norms()
        if self.grad_clip is not None:
            self.optimizer.clip_(norms, self.grad_clip)
        if self.track_update:
            self.optimizer.snapshot()
        self.optimizer.step(self.lrs[self.step])
        row = len(self.filled)
        self.buffer[row, 0] = losses.detach()
        self.buffer[row, 1] = norms
        if self.track_update:
            self.buffer[row, 2] = self.optimizer.update_ratios()
        if self.layer_interval and self.step % self.layer_interval == 0:
            self.layer_queue.append((self.step, self.optimizer.layer_stats(self.track_update)))
        self.filled.append(self.step)
        self.step += 1

    def flush(self, extra: torch.Tensor | None = None) -> list[list[int]]:
        """Read the buffered block, the queued layer statistics and ``extra`` (a device tensor,
        e.g. metrics computed on the block, left as ``self.extra`` in a flat list) back in one
        transfer; returns, per run, the indices of the block's rows that belong to it (a run's
        rows end at its first non-finite loss)."""
        if not self.filled:
            return [[] for _ in range(self.k)]
        n = len(self.filled)
        queue, self.layer_queue = self.layer_queue, []
        parts = [self.buffer[:n].flatten()] + [t.float().flatten() for _, d in queue for t in d.values()]
        if extra is not None:
            parts.append(extra.float().flatten())
        host = torch.cat(parts).cpu().tolist()
        self.buffer[:n] = float("nan")
        width = 3 * self.k
        self.rows = rows = [[host[i * width + j * self.k:i * width + (j + 1) * self.k] for j in range(3)]
                            for i in range(n)]
        pos = n * width
        self.block_layer_stats = {}  # step -> tag -> K values
        for step, d in queue:
            self.block_layer_stats[step] = {tag: host[pos + j * self.k:pos + (j + 1) * self.k]
                                            for j, tag in enumerate(d)}
            pos += len(d) * self.k
        self.extra = host[pos:]
        kept: list[list[int]] = [[] for _ in range(self.k)]
        for i, (step, (losses, norms, ratios)) in enumerate(zip(self.filled, rows)):
            for k in range(self.k):
                if self.status[k] != "running":
                    continue
                kept[k].append(i)
                self.loss[k].append(losses[k])
                self.grad_norm[k].append(norms[k])
                if self.track_update:
                    self.update_ratio[k].append(ratios[k])
                if not math.isfinite(losses[k]):
                    self.status[k], self.diverged_step[k] = "diverged", step
        self.block_steps, self.filled = self.filled, []
        return kept

    @torch.no_grad()
    def evaluate(self) -> list[int]:
        """Validation loss and accuracy of every running run; returns their indices."""
        self.model.eval()
        loss = torch.zeros(self.k, device=self.device)
        correct = torch.zeros(self.k, device=self.device)
        count = 0
        for x, y in self.data.val_batches(self.eval_batch_size):
            xk = x.repeat(1, self.k, 1, 1).contiguous(memory_format=self.memory_format)
            with self.autocast:
                logits = self.model(xk).float()                      # (K, b, n)
            target = y.expand(self.k, -1)
            loss += F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(self.k, -1).sum(1)
            correct += (logits.argmax(-1) == target).sum(1)
            count += len(y)
        losses, accs = (loss / count).tolist(), (correct / count).tolist()
        running = [k for k in range(self.k) if self.status[k] == "running"]
        for k in running:
            self.val[k].append({"step": self.step, "loss": losses[k], "acc": accs[k]})
        return running

    def fit(self) -> None:
        """Train from ``self.step`` to ``total_steps``, or until every run diverged.

        ``stop_requested`` (a signal) ends it after the current step and the evaluation due at
        it, with a checkpoint, and the running runs ``interrupted``. Checkpoints (with a
        ``checkpoint_fn``) are taken every ``checkpoint_interval`` steps after that step's
        flush and evaluation, so they hold no pending rows."""
        while self.step < self.total_steps and "running" in self.status:
            self.train_step()
            if len(self.filled) == self.log_interval or self.step == self.total_steps:
                self.flush()
            more = self.step < self.total_steps
            save = self.checkpoint_fn is not None and more and (
                self.stop_requested or (self.checkpoint_interval and self.step % self.checkpoint_interval == 0))
            if save:
                self.flush()
            if more and self.step % self.eval_interval == 0 and "running" in self.status:
                self.evaluate()
            if save:
                self.checkpoint_fn(self.state_dict())
            if self.stop_requested:
                break
        self.flush()
        if self.stop_requested and self.step < self.total_steps:
            self.status = ["interrupted" if s == "running" else s for s in self.status]
            return
        self.evaluate()
        self.status = ["completed" if s == "running" else s for s in self.status]

    def state_dict(self) -> dict:
        """Everything needed to continue exactly after a flush (tensors and plain types, so it
        loads with ``weights_only``): model (BN statistics), optimizer, samplers, RNG states and
        the per-run sequences so far."""
        from warmup_lab.runs.checkpoint import rng_state

        assert not self.filled, "a fused checkpoint is taken right after a flush"
        return {"step": self.step, "purge_step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "lr_adapter": None,
                "sampler": [s.state_dict() for s in self.samplers], "rng": rng_state(),
                "result": {"loss": self.loss, "grad_norm": self.grad_norm, "update_ratio": self.update_ratio,
                           "val": self.val, "status": self.status, "diverged_step": self.diverged_step}}

    def load_state_dict(self, state: dict) -> None:
        from warmup_lab.runs.checkpoint import set_rng_state

        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for sampler, s in zip(self.samplers, state["sampler"]):
            sampler.load_state_dict(s)
        r = state["result"]
        self.loss, self.grad_norm, self.update_ratio = r["loss"], r["grad_norm"], r["update_ratio"]
        self.val, self.status, self.diverged_step = r["val"], list(r["status"]), list(r["diverged_step"])
        self.step = int(state["step"])
        set_rng_state(state["rng"])


def build_fused(cfgs: list[DictConfig], device: torch.device | str | None = None, *,
                channels_last: bool = False):
    """The fused model, optimizer, per-run schedules' lr table, data and samplers for ``cfgs``,
    built as ``warmup_lab.runs.run.run`` builds each run alone (same seeds, same order)."""
    from warmup_lab.runs.run import resolve_device, total_steps
    from warmup_lab.runs.validate import check_schedule, validate

    for cfg in cfgs:
        validate(cfg)
    check_fusable(cfgs)
    base = cfgs[0]
    tr = base.trainer
    device = torch.device(device) if device is not None else resolve_device(tr.device)
    data = instantiate(base.data).to(device)
    if data.spec.is_lm:
        raise ValueError("fused runs support image classification data only")
    samplers = [data.sampler(tr.batch_size, int(cfg.seed)) for cfg in cfgs]
    steps = total_steps(base, samplers[0].steps_per_epoch)
    schedules = [check_schedule(cfg, steps) for cfg in cfgs]
    models = []
    for cfg in cfgs:
        torch.manual_seed(int(cfg.seed))
        models.append(instantiate(cfg.model, _partial_=True)(spec=data.spec))
    model = FusedCifarResNet(models).to(device)
    opt = OmegaConf.to_container(base.optimizer, resolve=True)
    optimizer = FusedOptimizer(
        model, len(cfgs), opt["name"], [float(c.optimizer.get("weight_decay", 0.0)) for c in cfgs],
        momentum=float(opt.get("momentum", 0.0)), dampening=float(opt.get("dampening", 0.0)),
        nesterov=bool(opt.get("nesterov", False)), betas=tuple(opt.get("betas", (0.9, 0.999))),
        eps=float(opt.get("eps", 1e-8)), decay_norm_and_bias=bool(opt.get("decay_norm_and_bias", False)),
        channels_last=channels_last)
    lrs = lr_table(cfgs, schedules, steps)
    return model, optimizer, lrs, data, samplers, device


def train_fused(cfgs: list[DictConfig], device: torch.device | str | None = None, *,
                channels_last: bool | None = None, compile: bool | None = None,
                keep_state: bool = False) -> FusedResult:
    """Train the runs of ``cfgs`` (composed ``train.yaml`` configs differing only in
    :data:`PER_RUN_KEYS`) fused on one device; returns per-run loss, grad-norm, lr and validation
    sequences. ``trainer.precision``/``channels_last``/``compile`` of the first config apply."""
    tr = cfgs[0].trainer
    channels_last = bool(tr.get("channels_last", False)) if channels_last is None else channels_last
    model, optimizer, lrs, data, samplers, device = build_fused(cfgs, device, channels_last=channels_last)
    compile = bool(tr.get("compile", False)) if compile is None else compile
    step_fn = torch.compile(model) if compile else None
    trainer = FusedTrainer(model, optimizer, lrs, data, samplers, device=device,
                           eval_interval=tr.eval_interval, log_interval=tr.log_interval,
                           grad_clip=tr.grad_clip, precision=tr.precision,
                           channels_last=channels_last, step_fn=step_fn)
    trainer.fit()
    k = len(cfgs)
    return FusedResult(
        seeds=[int(c.seed) for c in cfgs], loss=trainer.loss, grad_norm=trainer.grad_norm,
        lr=[[row[j] for row in lrs[: len(trainer.loss[j])]] for j in range(k)], val=trainer.val,
        status=trainer.status, diverged_step=trainer.diverged_step, steps=trainer.step,
        state_dicts=[model.run_state_dict(j) for j in range(k)] if keep_state else [])
