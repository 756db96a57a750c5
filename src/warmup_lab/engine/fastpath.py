"""The speed knobs of ``conf/trainer/default.yaml`` applied to a built model and optimizer.

* ``trainer.channels_last``: image models in NHWC memory format. Weights only: a convolution
  whose weight is channels-last computes in that format and converts its input itself, so the
  data and the trainer are unchanged.
* ``trainer.compile``: ``model.compile()`` (``torch.compile`` in place, so parameter names and
  checkpoints are unchanged); ``true`` or a ``torch.compile`` mode (``reduce-overhead`` adds CUDA
  graphs, ``max-autotune``). Every param group's lr becomes a 0-dim CPU tensor that
  :class:`~warmup_lab.schedules.ScheduleLR` updates in place, so schedule changes never
  recompile a compiled optimizer step.
* ``trainer.compile_optimizer``: also ``torch.compile`` the optimizer step.
* On CUDA, ``cudnn.benchmark`` (static shapes; off with ``trainer.deterministic``).

Nothing here changes what a run computes beyond float rounding (bf16 is ``trainer.precision``).
Measured effects: docs/performance.md.
"""

from __future__ import annotations

import torch
from torch import nn

from warmup_lab.runs.validate import ConfigError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(value) -> str | None:
    """``trainer.compile`` as a ``torch.compile`` mode, or None when off."""
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ConfigError(f"trainer.compile={value} is invalid: allowed false, true or one of "
                      f"{', '.join(COMPILE_MODES)}")


def tensor_lrs(optimizer: torch.optim.Optimizer) -> None:
    """Make every param group's lr a 0-dim float32 CPU tensor (kept, and filled in place, by
    ``ScheduleLR``): a compiled optimizer step then sees a tensor, not a changing constant."""
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32)


def apply(model: nn.Module, optimizer: torch.optim.Optimizer, trainer_cfg, device: torch.device,
          is_image: bool) -> nn.Module:
    """Apply ``trainer.{channels_last, compile, compile_optimizer}`` (see the module docstring);
    returns ``model`` (the same object, compiled in place when asked)."""
    get = trainer_cfg.get
    mode = compile_mode(get("compile", False))
    if device.type == "cuda" and not get("deterministic", False):
        torch.backends.cudnn.benchmark = True
    if get("channels_last", False):
        if not is_image:
            raise ConfigError("trainer.channels_last=true needs image data (NCHW inputs)")
        model.to(memory_format=torch.channels_last)
    if mode is not None or get("compile_optimizer", False):
        tensor_lrs(optimizer)
    if mode is not None:
        model.compile(mode=None if mode == "default" else mode)
    if get("compile_optimizer", False):
        optimizer.step = torch.compile(optimizer.step, fullgraph=False)
    return model


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of ``grads`` as one reduction over their concatenation (a 0-dim tensor on
    their device, no host sync). Equal to ``torch.nn.utils.get_total_norm`` up to summation order,
    and cheaper on the CPU, where that takes one reduction per tensor (0.45 vs 0.65 ms per
    ResNet-20 step here, docs/performance.md)."""
    if not grads:
        return torch.zeros(())
    if len({(g.device, g.dtype) for g in grads}) > 1:
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
