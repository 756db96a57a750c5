"""Model builders: each takes ``spec: DataSpec`` (plus knobs) and returns an ``nn.Module``.

Used as ``hydra.utils.instantiate(cfg.model, spec=spec)`` with ``conf/model/*.yaml``.
"""

from __future__ import annotations

from torch import nn

from warmup_lab.models.resnet import as_data_spec, cifar_resnet, resnet1d, resnet18
from warmup_lab.models.transformer import transformer

__all__ = [
    "as_data_spec",
    "cifar_resnet",
    "count_parameters",
    "no_decay_param_names",
    "resnet18",
    "resnet1d",
    "transformer",
]

_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared/tied tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def no_decay_param_names(model: nn.Module) -> set[str]:
    """Names (as in ``model.named_parameters()``) of parameters to train without weight decay.

    Rule (nanoGPT's): only parameters with ``dim >= 2`` are decayed, i.e. conv/linear weights
    and token/positional embeddings; biases and normalization-layer parameters
    (BatchNorm/LayerNorm/GroupNorm/InstanceNorm) get no decay. Tied weights appear once.
    """
    names = {n for n, p in model.named_parameters() if p.dim() < 2}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, _NORMS):
            prefix = f"{mod_name}." if mod_name else ""
            names.update(prefix + n for n, _ in mod.named_parameters(recurse=False))
    return names
