"""How the models of K runs train as one: :func:`stack_models`.

A stack takes the K runs' batches ``xs`` ``(K, B, ...)`` and returns their logits ``(K, B, ...,
n)``; run ``k``'s output depends on run ``k``'s parameters and batch only, so the gradient of
the sum of the K per-run losses is, for each run, the gradient of its own loss.

* ``K = 1``: :class:`Single`, the model itself (``model(xs[0])``); nothing is copied or aliased,
  so a run alone costs what a hand-written loop costs.
* ``K > 1``: every parameter of the K runs lives in one stacked leaf tensor ``(K, ...)``. Run
  ``k``'s own module keeps its parameters under their names, now views of row ``k``, and their
  ``.grad`` views of row ``k`` of the stacked gradient (zeroed in place, never replaced), and its
  buffers (BatchNorm statistics) are views too. So each run's own torch optimizer, gradient
  clipping, telemetry and ``state_dict`` act on that run alone, while forward and backward run
  once for all K:

  - :class:`GroupedResNet`, the fast path for the CIFAR ResNets (2-D and 1-D, as in HFTA, Wang et
    al. 2021): every conv is one grouped conv (``groups=K``) over ``(B, K*C, ...)``, every
    BatchNorm one batch norm over ``K*C`` channels (exactly per-run BN: each channel's statistics
    come from its own run's batch), the head one batched matmul. Faster than ``vmap`` on the CPU
    (docs/performance.md).
  - :class:`VmapStack`, any other module (the Transformer, torchvision's ResNet-18):
    ``torch.func.stack_module_state`` + ``vmap(functional_call)``. BatchNorm statistics are
    stacked buffers updated in place under ``vmap``; dropout draws differ per run
    (``randomness="different"``) but not as the run alone draws them.

  :class:`LoopStack` calls the K models one after another (nothing fused, nothing aliased): the
  fastest where the models are compute-bound. :func:`stack_models` picks one (``trainer.stack``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from warmup_lab.models.resnet import BasicBlock, CifarResNet
from warmup_lab.runs.schema import STACKS


class Stack(nn.Module):
    """K runs' models behind one forward; see the module docstring."""

    k: int

    def zero_grad_(self, optimizers) -> None:
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)

    def check_grads(self) -> None:
        """After a backward: raise if the runs' optimizers would not see their gradients."""


class Single(Stack):
    """K = 1: the run's model itself."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.k, self.model = 1, model

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        return self.model(xs[0]).unsqueeze(0)


class _Aliased(Stack):
    """K > 1: run ``k``'s parameters, gradients and buffers become views of row ``k`` of the
    stacked tensors (:meth:`_alias`)."""

    def _alias(self, models: list[nn.Module], params: dict[str, torch.Tensor],
               buffers: dict[str, torch.Tensor]) -> None:
        self.k, self._stacked = len(models), list(params.values())
        for name, stacked in params.items():
            stacked.grad = torch.zeros_like(stacked)
            for k, m in enumerate(models):
                p = m.get_parameter(name)
                p.data = stacked.data[k]
                p.grad = stacked.grad[k]
        for name, stacked in buffers.items():
            owner, _, attr = name.rpartition(".")
            for k, m in enumerate(models):
                setattr(m.get_submodule(owner), attr, stacked[k])
        self._grad_ptrs = [p.grad.data_ptr() for p in self._stacked]
        self._checked = False

    def zero_grad_(self, optimizers) -> None:
        torch._foreach_zero_([p.grad for p in self._stacked])

    def check_grads(self) -> None:
        """After the first backward: raise if autograd replaced a stacked ``.grad`` instead of
        accumulating into it (the runs' optimizers would then see stale gradients)."""
        if not self._checked:
            self._checked = True
            if any(p.grad is None or p.grad.data_ptr() != g for p, g in zip(self._stacked, self._grad_ptrs)):
                raise RuntimeError("a stacked gradient was replaced; the runs' updates would be wrong")


class LoopStack(Stack):
    """K > 1 models called one after another inside one forward: no kernel is fused, each run's
    tensors stay its own. The fastest stack where the models are compute-bound (small
    Transformers on the CPU, docs/performance.md): the group still shares one process, one data
    set and one step loop."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.k, self.models = len(models), nn.ModuleList(models)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m, x in zip(self.models, xs)])


# -- the CIFAR ResNet fast path ----------------------------------------------------------------------
def fuse_inputs(xs: torch.Tensor) -> torch.Tensor:
    """``(K, B, C, ...)`` per-run batches -> the grouped model's ``(B, K*C, ...)``."""
    k, b, c = xs.shape[:3]
    return xs.transpose(0, 1).reshape(b, k * c, *xs.shape[3:])


class GroupedConv(nn.Module):
    """K bias-free convolutions (1-D or 2-D) as one grouped conv; ``weight`` is ``(K, out, in, *kernel)``."""

    def __init__(self, convs: list[nn.Module]):
        super().__init__()
        c = convs[0]
        if c.groups != 1 or c.bias is not None or set(c.dilation) != {1} or c.padding_mode != "zeros":
            raise ValueError("GroupedConv stacks plain bias-free convolutions only")
        self.k, self.stride, self.padding = len(convs), c.stride, c.padding
        self.conv = F.conv1d if isinstance(c, nn.Conv1d) else F.conv2d
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in convs]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.weight.flatten(0, 1), None, self.stride, self.padding, 1, self.k)


class GroupedBatchNorm(nn.Module):
    """K BatchNorms of C channels as one batch norm over ``K*C`` channels (statistics per
    channel, so per run); parameters and running statistics are ``(K, C)``."""

    def __init__(self, bns: list[nn.Module]):
        super().__init__()
        b = bns[0]
        if not (b.affine and b.track_running_stats) or b.momentum is None:
            raise ValueError("GroupedBatchNorm needs affine BN with running stats and a momentum")
        self.eps, self.momentum = b.eps, b.momentum
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in bns]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in bns]))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, torch.stack([getattr(m, name) for m in bns]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1),
                            self.weight.view(-1), self.bias.view(-1), self.training, self.momentum, self.eps)


class GroupedLinear(nn.Module):
    """K ``Linear(C, n)``: input ``(B, K, C)``, output ``(K, B, n)``."""

    def __init__(self, fcs: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in fcs]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in fcs]))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), h.transpose(0, 1), self.weight.transpose(1, 2))


class GroupedBlock(nn.Module):
    """K :class:`BasicBlock` (same attribute names, so parameter names match)."""

    def __init__(self, blocks: list[BasicBlock]):
        super().__init__()
        b = blocks[0]
        self.k, self.stride, self.pad, self.dim = len(blocks), b.stride, b.pad, b.dim
        self.conv1 = GroupedConv([m.conv1 for m in blocks])
        self.bn1 = GroupedBatchNorm([m.bn1 for m in blocks])
        self.conv2 = GroupedConv([m.conv2 for m in blocks])
        self.bn2 = GroupedBatchNorm([m.bn2 for m in blocks])
        self.projection = None
        if b.projection is not None:
            self.projection = nn.Sequential(GroupedConv([m.projection[0] for m in blocks]),
                                            GroupedBatchNorm([m.projection[1] for m in blocks]))

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            return self.projection(x)
        if self.stride != 1:
            x = x[..., :: self.stride] if self.dim == 1 else x[:, :, :: self.stride, :: self.stride]
        if self.pad:  # zero channels appended to each run's channels
            b, kc, *rest = x.shape
            x = F.pad(x.reshape(b, self.k, kc // self.k, *rest), (0, 0) * self.dim + (0, self.pad))
            x = x.reshape(b, -1, *rest)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))


class GroupedResNet(_Aliased):
    """K :class:`CifarResNet` of one architecture (1-D or 2-D) as one grouped model."""

    def __init__(self, models: list[CifarResNet], channels_last: bool = False):
        super().__init__()
        shapes = {tuple((n, tuple(p.shape)) for n, p in m.state_dict().items()) for m in models}
        if len(shapes) != 1:
            raise ValueError("stacked runs must share one architecture")
        self.dim, self.channels_last = models[0].dim, channels_last and models[0].dim == 2
        self.conv1 = GroupedConv([m.conv1 for m in models])
        self.bn1 = GroupedBatchNorm([m.bn1 for m in models])
        self.blocks = nn.Sequential(*[GroupedBlock([m.blocks[i] for m in models])
                                      for i in range(len(models[0].blocks))])
        self.fc = GroupedLinear([m.fc for m in models])
        self._alias(models, dict(self.named_parameters()), dict(self.named_buffers()))

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        x = fuse_inputs(xs)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        h = x.mean(-1) if self.dim == 1 else F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(h.view(h.shape[0], self.k, -1))


# -- any other module -------------------------------------------------------------------------------
class VmapStack(_Aliased):
    """K modules of one architecture through ``vmap(functional_call)`` over stacked parameters
    (build the models on their device first: the stack aliases their tensors)."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        from torch.func import functional_call, stack_module_state, vmap

        params, self.buffers_ = stack_module_state(models)
        self.base = copy.deepcopy(models[0]).to("meta")  # the structure only; train()/eval() reach it
        self._alias(models, params, self.buffers_)
        # tied parameters (a tied LM head) under every name they have, so no meta tensor is left
        first = {}
        for name, p in models[0].named_parameters(remove_duplicate=False):
            first.setdefault(id(p), name)
        self._call_params = {name: params[first[id(p)]] for name, p in models[0].named_parameters(remove_duplicate=False)}

        def one(p, b, x):
            return functional_call(self.base, (p, b), (x,))

        self._forward = vmap(one, randomness="different")

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        return self._forward(self._call_params, self.buffers_, xs)


def models_state(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    """The K runs' state dicts as one, whatever the stack: each run's own module's state dict,
    as it is alone for K = 1 and stacked by name (a new ``(K, ...)`` tensor per entry) for K > 1,
    so a checkpoint resumes under another ``trainer.stack`` or device."""
    if len(models) == 1:
        return models[0].state_dict()
    states = [m.state_dict() for m in models]
    return {name: torch.stack([s[name] for s in states]) for name in states[0]}


def load_models_state(models: list[nn.Module], state: dict[str, torch.Tensor]) -> None:
    """Copy :func:`models_state` into the runs' modules, in place (stacked views stay views)."""
    if len(models) == 1:
        models[0].load_state_dict(state)
        return
    for k, m in enumerate(models):
        m.load_state_dict({name: t[k] for name, t in state.items()})


def stack_models(models: list[nn.Module], how: str = "auto", channels_last: bool = False) -> Stack:
    """One :class:`Stack` for the K runs' models (same architecture, built on their device).

    ``how`` (``trainer.stack``): ``grouped`` (CIFAR ResNets only), ``vmap``, ``loop``, or ``auto``:
    the grouped model for CIFAR ResNets, ``vmap`` for other models on an accelerator and ``loop``
    for them on the CPU, where vmap's batched matmuls were slower than one GEMM per run
    (docs/performance.md, section 5). K = 1 is always the model itself."""
    if how not in STACKS:
        raise ValueError(f"trainer.stack={how} is invalid: allowed {', '.join(STACKS)}")
    if len(models) == 1:
        return Single(models[0])
    grouped = all(type(m) is CifarResNet for m in models)
    if how == "auto":
        how = "grouped" if grouped else "vmap" if next(models[0].parameters()).device.type != "cpu" else "loop"
    if how == "grouped":
        if not grouped:
            raise ValueError("trainer.stack=grouped needs a CIFAR ResNet (model=resnet20, resnet56, resnet1d)")
        return GroupedResNet(models, channels_last)
    return VmapStack(models) if how == "vmap" else LoopStack(models)
