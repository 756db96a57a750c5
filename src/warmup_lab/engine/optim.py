"""Optimizer construction: `_target_` configs, with norm weights and biases excluded from weight decay."""

from __future__ import annotations

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

OPTIMIZERS = ("sgd", "adamw", "adam", "radam", "rmsprop")
_NOT_TORCH_KWARGS = ("name", "decay_norm_and_bias")


def param_groups(model: torch.nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """One group with decay; unless ``decay_norm_and_bias``, a second with ``weight_decay=0``
    for parameters with fewer than two dimensions (biases, norm scales and shifts)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias or weight_decay == 0:
        return [{"params": params, "weight_decay": weight_decay, "name": "all"}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``cfg`` is a composed ``conf/optimizer/*.yaml``; every key but ``name`` and
    ``decay_norm_and_bias`` goes to the torch optimizer's constructor."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    decay_all = bool(kwargs.pop("decay_norm_and_bias", False))
    kwargs.pop("name", None)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    groups = param_groups(model, float(kwargs.get("weight_decay", 0.0)), decay_all)
    optimizer_class = get_class(kwargs.pop("_target_"))
    return optimizer_class(groups, **kwargs)
