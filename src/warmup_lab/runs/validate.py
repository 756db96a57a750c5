"""Checks of a composed config that run before any data is loaded or model built.

Each failure is a ``ConfigError`` whose message is one line naming the key and what is allowed.
The trainer's and scheduler's values are checked here; every knob of the model, data and
optimizer options, and the rules between keys, in ``schema`` (one table).
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from warmup_lab.runs.schema import GROUPED_MODELS, ConfigError, check as check_schema

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16")
UNKNOWN_TOTAL = 10**9  # stands for the total steps before the data is loaded


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(cfg: DictConfig, key: str, optional: bool = False) -> None:
    value = cfg.get(key.split(".")[-1])
    if value is None and optional:
        return
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{key}={value} is invalid: must be an integer >= 1")


def check_device(device: str) -> None:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; cuda and mps must exist here."""
    import torch

    base, _, index = str(device).partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise ConfigError(f"trainer.device={device} is invalid: allowed {', '.join(DEVICES)} or cuda:N")
    if base == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={device} but no CUDA device is available here: "
                              f"use trainer.device=cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"trainer.device={device} but only {torch.cuda.device_count()} CUDA "
                              f"device(s) exist")
    if base == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"trainer.device={device} but MPS is not available here: use cpu or auto")


def check_metrics(m) -> None:
    """``trainer.metrics`` (docs/metrics.md)."""
    if m is None:
        return
    w = m.get("jitter_window")
    if w is not None and (not _is_int(w) or w < 2):
        raise ConfigError(f"trainer.metrics.jitter_window={w} is invalid: must be an integer >= 2")
    if m.get("layer_interval") is not None:
        _positive_int(m, "trainer.metrics.layer_interval")
    for key, lo, hi in (("spike_threshold", 0.0, math.inf), ("early_fraction", 0.0, 1.0)):
        v = m.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi):
            raise ConfigError(f"trainer.metrics.{key}={v} is invalid: must be a number in ({lo:g}, {hi:g}]")
    t = m.get("loss_threshold")
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))):
        raise ConfigError(f"trainer.metrics.loss_threshold={t} is invalid: must be null or a number")
    for key in ("update_ratio", "layers"):
        if not isinstance(m.get(key, True), bool):
            raise ConfigError(f"trainer.metrics.{key}={m.get(key)} is invalid: must be true or false")
    for key in ("curvature_interval", "curvature_batch"):
        if m.get(key) is not None:
            _positive_int(m, f"trainer.metrics.{key}")
    if m.get("curvature_iters") is not None:
        _positive_int(m, "trainer.metrics.curvature_iters")


def validate(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first bad value found."""
    opt, tr = cfg.optimizer, cfg.trainer

    lr = opt.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
        raise ConfigError(f"optimizer.lr={lr} is invalid: must be a finite number > 0")
    from warmup_lab.engine.optim import OPTIMIZERS

    if opt.get("name") not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name={opt.get('name')} is invalid: allowed {', '.join(OPTIMIZERS)}")
    check_schema(cfg)  # every knob of the model, data and optimizer options, and the rules between keys

    _positive_int(tr, "trainer.batch_size")
    _positive_int(tr, "trainer.eval_interval")
    _positive_int(tr, "trainer.log_interval")
    if (tr.max_steps is None) == (tr.epochs is None):
        raise ConfigError(f"trainer.max_steps={tr.max_steps} and trainer.epochs={tr.epochs}: set "
                          f"exactly one of them (the other to null)")
    _positive_int(tr, "trainer.max_steps", optional=True)
    _positive_int(tr, "trainer.epochs", optional=True)
    if tr.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={tr.precision} is invalid: allowed {', '.join(PRECISIONS)}")
    clip = tr.get("grad_clip")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
        raise ConfigError(f"trainer.grad_clip={clip} is invalid: must be null or a number > 0")
    if tr.get("threads") is not None:
        _positive_int(tr, "trainer.threads")
    if tr.get("checkpoint_interval") is not None:
        _positive_int(tr, "trainer.checkpoint_interval")
    if not isinstance(tr.get("resume", False), bool):
        raise ConfigError(f"trainer.resume={tr.get('resume')} is invalid: must be true or false")
    check_metrics(tr.get("metrics"))
    from warmup_lab.engine.fastpath import compile_mode

    if compile_mode(tr.get("compile")) and (tr.get("metrics") or {}).get("curvature_interval"):
        raise ConfigError("trainer.metrics.curvature_interval needs trainer.compile=false: the probe's "
                          "Hessian-vector products run the model eagerly")
    check_device(tr.device)
    if tr.get("stack") == "grouped" and cfg.model.get("_target_") not in GROUPED_MODELS:
        raise ConfigError(f"trainer.stack=grouped needs a CIFAR ResNet (model=resnet20, resnet56 or resnet1d), "
                          f"not model={cfg.model.get('name')}: allowed auto, vmap or loop")

    # The schedule checks its own knobs (warmup range and length, ...). With `epochs` the total is
    # known only once the data is loaded, so here a huge total checks everything else and run()
    # checks again with the real one.
    check_schedule(cfg, tr.max_steps if tr.max_steps is not None else UNKNOWN_TOTAL)
    check_study_block(cfg.get("study"))


def check_study_block(study) -> None:
    """``study.claim`` (schema only: the runs it needs come later) and the sequential knobs."""
    from warmup_lab.analysis.claimspec import ClaimError
    from warmup_lab.sweeps.study import check_study

    try:
        check_study(study)
    except ClaimError as err:
        raise ConfigError(str(err)) from None


def check_schedule(cfg: DictConfig, total_steps: int):
    """Build the schedule (cheap, pure) so its own checks run; returns it."""
    from warmup_lab.schedules import ScheduleError, build_schedule

    try:
        return build_schedule(cfg.scheduler, total_steps=total_steps, optimizer_cfg=cfg.optimizer)
    except ScheduleError as err:
        raise ConfigError(str(err)) from None
