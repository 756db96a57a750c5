"""One builder per ``conf/scheduler/<name>.yaml``; :func:`build_schedule` dispatches on ``name``.

Each builder reads its knobs with the defaults of its YAML file (a test keeps the two equal), so a
plain ``{"name": ...}`` dict builds the same schedule as the YAML. Units are optimizer steps.
Shared warmup knobs: ``warmup_steps`` | ``warmup_ratio`` (``ceil(T * ratio)``), ``start_factor``
(multiplier at step 0 as a fraction of the peak; null = ``1/(W+1)``) and ``warmup_type``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from .errors import ScheduleError
from .knobs import Knobs, fmt
from .parts import (
    DECAY_SHAPES,
    WARMUP_TYPES,
    Constant,
    Cosine,
    CosineRestarts,
    Exponential,
    ExpRamp,
    InverseSqrt,
    InverseTime,
    Linear,
    MultiStep,
    Polynomial,
    Ramp,
    StableDecay,
    Step,
)
from .schedule import OneCycle, PiecewiseConstant, Schedule, WarmupThenDecay, WarmupTimesDecay

Builder = Callable[[str, Knobs, int, dict | None], Schedule]
SCHEDULES: dict[str, Builder] = {}

#: Knobs given either as steps or as a fraction of a horizon: set one, the other to null.
STEP_RATIO_PAIRS = (("warmup_steps", "warmup_ratio"), ("step_size", "step_ratio"),
                    ("milestones", "milestone_ratios"), ("boundaries", "boundary_ratios"),
                    ("num_decay_steps", "decay_ratio"))
ADAM_FAMILY = ("adam", "adamw", "radam")  # optimizers whose config has betas: [beta1, beta2]
DAMPENED_DECAYS = ("constant", "linear", "cosine")


def register(name: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        SCHEDULES[name] = fn
        return fn
    return deco


# -- shared pieces ------------------------------------------------------------------------------
def _warmup(k: Knobs, T: int, types: tuple[str, ...] = WARMUP_TYPES,
            default_ratio: float = 0.1) -> Ramp:
    """The shared warmup knobs: length, start factor, shape."""
    W = k.steps_or_ratio("warmup_steps", "warmup_ratio", T, "total_steps",
                         default_ratio=default_ratio)
    kind = k.choice("warmup_type", "linear", types) if len(types) > 1 else types[0]
    a = k.number("start_factor", None, 0.0, 1.0, none_ok=True)
    if a is None:
        a = 1.0 / (W + 1)
    if kind == "exponential" and a == 0 and W > 0:
        k.fail("start_factor", a, "must be > 0 with warmup_type=exponential (geometric growth "
                                  "from start_factor to 1)")
    k.keep("start_factor", a)
    return Ramp(W, a, kind)


def _no_warmup(k: Knobs, name: str, why: str) -> None:
    """Schedules without a settable warmup keep the keys (so sweeps can override them for every
    scheduler) but accept only null or 0."""
    for key in ("warmup_steps", "warmup_ratio"):
        v = k.raw(key, None)
        if v is not None and v != 0:
            k.fail(key, v, f"must be null or 0 for {k.key('name')}={name}: {why}")


def _optimizer_lr(opt: dict | None, key: str) -> float:
    lr = (opt or {}).get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ScheduleError(f"scheduler.{key} is an absolute lr and needs optimizer.lr > 0, "
                            f"got optimizer.lr={fmt(lr)}")
    return float(lr)


def _beta2(opt: dict | None, name: str) -> float:
    """beta2 from the optimizer config (Adam family only)."""
    betas = (opt or {}).get("betas")
    if betas is None:
        raise ScheduleError(
            f"scheduler.name={name} reads beta2 from optimizer.betas, but optimizer.name="
            f"{fmt((opt or {}).get('name'))} has no betas: allowed optimizers "
            f"{', '.join(ADAM_FAMILY)}")
    b2 = betas[1] if isinstance(betas, (list, tuple)) and len(betas) == 2 else None
    if isinstance(b2, bool) or not isinstance(b2, (int, float)) or not 0 < b2 < 1:
        raise ScheduleError(f"optimizer.betas={fmt(betas)} is invalid for scheduler.name={name}: "
                            f"must be [beta1, beta2] with beta2 in (0, 1)")
    return float(b2)


def _dampened_decay(k: Knobs, T: int):
    """The decay a dampening warmup multiplies; its clock starts at step 0, horizon ``T``."""
    kind = k.choice("decay", "constant", DAMPENED_DECAYS)
    return {"constant": Constant(), "linear": Linear(T), "cosine": Cosine(T)}[kind]


def _gamma(k: Knobs) -> float:
    return k.number("gamma", 0.1, 0.0, 1.0, lo_open=True)


def _step_size(k: Knobs, H: int) -> int:
    return k.steps_or_ratio("step_size", "step_ratio", H, "the decay horizon", default_ratio=0.3,
                            lo=1, cap=False)


# -- the transformers / sentence-transformers family ----------------------------------------------
@register("constantlr")
def _constantlr(name, k, T, opt):
    """1 at every step (transformers ``constant``)."""
    _no_warmup(k, name, "it never warms up (use scheduler=warmupconstant)")
    return WarmupThenDecay(name, T, Ramp(0, 1.0), Constant())


@register("warmupconstant")
def _warmupconstant(name, k, T, opt):
    """Warmup, then 1 (transformers ``constant_with_warmup``)."""
    return WarmupThenDecay(name, T, _warmup(k, T), Constant())


@register("warmuplinear")
def _warmuplinear(name, k, T, opt):
    """Warmup, then linear to 0 at step T (transformers ``linear``)."""
    w = _warmup(k, T)
    return WarmupThenDecay(name, T, w, Linear(T - w.steps))


@register("warmupcosine")
def _warmupcosine(name, k, T, opt):
    """Warmup, then half-cosine to 0 at step T (transformers ``cosine``)."""
    w = _warmup(k, T)
    cycles = k.number("num_cycles", 0.5, 0.0, lo_open=True)
    return WarmupThenDecay(name, T, w, Cosine(T - w.steps, cycles))


@register("warmupcosinewithhardrestarts")
def _warmupcosinewithhardrestarts(name, k, T, opt):
    """Warmup, then ``num_cycles`` cosine waves with hard restarts (transformers
    ``cosine_with_restarts``)."""
    w = _warmup(k, T)
    cycles = k.number("num_cycles", 1.0, 0.0, lo_open=True)
    return WarmupThenDecay(name, T, w, CosineRestarts(T - w.steps, cycles))


@register("warmupcosinewithminlr")
def _warmupcosinewithminlr(name, k, T, opt):
    """Warmup, then cosine down to a floor (transformers ``cosine_with_min_lr``)."""
    w = _warmup(k, T)
    cycles = k.number("num_cycles", 0.5, 0.0, lo_open=True)
    rate = k.number("min_lr_rate", 0.1, 0.0, 1.0, none_ok=True)
    min_lr = k.number("min_lr", None, 0.0, none_ok=True)
    if (rate is None) == (min_lr is None):
        raise ScheduleError(f"scheduler.min_lr_rate={fmt(rate)} and scheduler.min_lr="
                            f"{fmt(min_lr)}: set exactly one of them (the other to null)")
    if min_lr is not None:
        lr = _optimizer_lr(opt, "min_lr")
        if min_lr > lr:
            k.fail("min_lr", min_lr, f"must be <= optimizer.lr={lr}")
        rate = k.keep("min_lr_rate", min_lr / lr)
    return WarmupThenDecay(name, T, w, Cosine(T - w.steps, cycles, rate))


@register("polynomialdecay")
def _polynomialdecay(name, k, T, opt):
    """Warmup, then ``(1 - progress)^power`` from the peak to the absolute ``lr_end`` at step T
    (transformers ``polynomial``; ``lr_end`` is relative to ``optimizer.lr`` for every group)."""
    w = _warmup(k, T)
    power = k.number("power", 1.0, 0.0, lo_open=True)
    lr_end = k.number("lr_end", 1e-7, 0.0)
    end = 0.0
    if lr_end > 0:
        lr = _optimizer_lr(opt, "lr_end")
        if not lr_end < lr:
            k.fail("lr_end", lr_end, f"must be < optimizer.lr={lr}")
        end = lr_end / lr
    return WarmupThenDecay(name, T, w, Polynomial(T - w.steps, power, k.keep("end_factor", end)))


@register("inversesqrt")
def _inversesqrt(name, k, T, opt):
    """Warmup, then ``1/sqrt((s - W + timescale)/timescale)`` (transformers ``inverse_sqrt``)."""
    w = _warmup(k, T)
    ts = k.integer("timescale", None, lo=1, none_ok=True)
    ts = k.keep("timescale", ts or w.steps or 10_000)
    return WarmupThenDecay(name, T, w, InverseSqrt(ts))


# -- seed material: Noam, the TF tutorial, GradualWarmupScheduler, Keras decays, ResNet ---------
@register("noam")
def _noam(name, k, T, opt):
    """``scale * d_model^-0.5 * min(s^-0.5, s * W^-1.5)`` (Vaswani et al.): linear warmup to the
    implied peak ``scale * (d_model * W)^-0.5``, then ``peak * sqrt(W / s)``."""
    w = _warmup(k, T, types=("linear",), default_ratio=0.04)
    if w.steps < 1:
        k.fail("warmup_steps", w.steps,
               "must be >= 1 for noam (its peak is scale*(d_model*warmup)^-0.5)")
    d_model = k.integer("d_model", 512, lo=1)
    scale = k.number("scale", 1.0, 0.0, lo_open=True)
    peak = scale * (d_model * w.steps) ** -0.5
    return WarmupThenDecay(name, T, w, InverseSqrt(w.steps), peak=peak)


@register("warmupinversetime")
def _warmupinversetime(name, k, T, opt):
    """Linear warmup, then ``1 / (1 + decay_rate * (s - W) / decay_steps)``: with the defaults
    ``W / s``, the TF tutorial's ``MySchedule`` (1/t decay)."""
    w = _warmup(k, T, types=("linear",))
    rate = k.number("decay_rate", 1.0, 0.0, lo_open=True)
    D = k.integer("decay_steps", None, lo=1, none_ok=True)
    if D is None and w.steps == 0:
        k.fail("decay_steps", None,
               "must be set when the warmup is 0 (its default is warmup_steps)")
    return WarmupThenDecay(name, T, w, InverseTime(k.keep("decay_steps", D or w.steps), rate))


def _after_scheduler(node: Any, H: int):
    """The decay GradualWarmupScheduler hands over to; its clock starts at the hand-over."""
    k = Knobs(node if isinstance(node, Mapping) else {"name": node}, "scheduler.after_scheduler")
    kind = k.choice("name", "step", ("constant", "step", "multistep", "cosine", "linear"))
    gamma = _gamma(k)
    k.ignore("step_size", "step_ratio", "milestones", "milestone_ratios")
    if kind == "step":
        decay = Step(_step_size(k, H), gamma)
    elif kind == "multistep":
        decay = MultiStep(k.steps_list_or_ratios("milestones", "milestone_ratios", H,
                                                 default_ratios=[0.5, 0.75]), gamma)
    else:
        decay = {"constant": Constant(), "cosine": Cosine(H), "linear": Linear(H)}[kind]
    k.finish(kind)
    return decay, {f"after_scheduler.{key}": v for key, v in k.resolved.items()}


@register("gradualwarmup")
def _gradualwarmup(name, k, T, opt):
    """GradualWarmupScheduler: linear from the base lr (from 0 if ``multiplier`` = 1) to
    ``multiplier`` x base at step W, then ``multiplier * after(s - W)``."""
    W = k.steps_or_ratio("warmup_steps", "warmup_ratio", T, "total_steps", default_ratio=0.1)
    m = k.number("multiplier", 1.0, 1.0)
    a = k.number("start_factor", None, 0.0, 1.0, none_ok=True)
    a = k.keep("start_factor", (0.0 if m == 1.0 else 1.0 / m) if a is None else a)
    decay, resolved = _after_scheduler(k.raw("after_scheduler", {"name": "step"}), T - W)
    k.resolved.update(resolved)
    return WarmupThenDecay(name, T, Ramp(W, a, "linear"), decay, peak=m)


@register("cosinedecay")
def _cosinedecay(name, k, T, opt):
    """Keras ``CosineDecay``: warmup, then cosine from 1 to ``alpha`` over ``decay_steps`` steps
    after the warmup (default: the rest of training), then ``alpha``."""
    w = _warmup(k, T)
    alpha = k.number("alpha", 0.0, 0.0, 1.0)
    D = k.integer("decay_steps", None, lo=1, none_ok=True)
    return WarmupThenDecay(name, T, w, Cosine(k.keep("decay_steps", D or T - w.steps), 0.5, alpha))


@register("exponentialdecay")
def _exponentialdecay(name, k, T, opt):
    """Keras ``ExponentialDecay``: warmup, then ``decay_rate^((s - W)/decay_steps)`` (floored
    exponent if ``staircase``); default ``decay_steps`` = the rest of training, so the multiplier
    is ``decay_rate`` at step T. Keeps decaying past T."""
    w = _warmup(k, T)
    rate = k.number("decay_rate", 0.1, 0.0, 1.0, lo_open=True)
    D = k.integer("decay_steps", None, lo=1, none_ok=True)
    D = k.keep("decay_steps", D or max(1, T - w.steps))
    return WarmupThenDecay(name, T, w, Exponential(D, rate, k.flag("staircase", False)))


@register("piecewiseconstant")
def _piecewiseconstant(name, k, T, opt):
    """Keras ``PiecewiseConstantDecay`` with ``values`` as multipliers of the optimizer lr."""
    _no_warmup(k, name, "its boundaries and values define the whole schedule")
    bounds = k.steps_list_or_ratios("boundaries", "boundary_ratios", T,
                                    default_ratios=[0.25, 0.5, 0.75])
    values = k.numbers("values", [1.0, 0.8, 0.4, 0.1], lo=0.0)
    if len(values) != len(bounds) + 1:
        k.fail("values", list(values), f"must have len(boundaries) + 1 = {len(bounds) + 1} entries")
    return PiecewiseConstant(name, T, bounds, values)


@register("constantwarmup")
def _constantwarmup(name, k, T, opt):
    """ResNet-paper warmup: ``factor`` for the warmup steps, then 1 (torch ``ConstantLR``)."""
    W = k.steps_or_ratio("warmup_steps", "warmup_ratio", T, "total_steps", default_ratio=0.1)
    factor = k.keep("start_factor", k.number("factor", 0.1, 0.0, 1.0))
    return WarmupThenDecay(name, T, Ramp(W, factor, "constant"), Constant())


# -- from the field ---------------------------------------------------------------------------
@register("warmupstabledecay")
def _warmupstabledecay(name, k, T, opt):
    """Warmup, stable at 1, then a ``decay_type`` decay to ``min_lr_ratio`` ending at step T
    (transformers ``warmup_stable_decay``)."""
    w = _warmup(k, T)
    D = k.steps_or_ratio("num_decay_steps", "decay_ratio", T, "total_steps", default_ratio=0.2)
    if D > T - w.steps:
        k.fail("num_decay_steps", D, f"must be <= total_steps - warmup_steps = {T - w.steps}")
    kind = k.choice("decay_type", "cosine", DECAY_SHAPES)
    floor = k.number("min_lr_ratio", 0.0, 0.0, 1.0)
    cycles = k.number("num_cycles", 0.5, 0.0, lo_open=True)
    stable = k.keep("num_stable_steps", T - w.steps - D)
    return WarmupThenDecay(name, T, w, StableDecay(stable, D, kind, floor, cycles))


@register("onecycle")
def _onecycle(name, k, T, opt):
    """torch ``OneCycleLR``: peak at step W (``pct_start = (W+1)/T``), final lr at step T-1."""
    W = k.steps_or_ratio("warmup_steps", "warmup_ratio", T, "total_steps", default_ratio=0.3)
    div = k.number("div_factor", 25.0, 1.0)
    final_div = k.number("final_div_factor", 1e4, 1.0)
    anneal = k.choice("anneal_strategy", "cos", ("cos", "linear"))
    three = k.flag("three_phase", False)
    if three and 2 * W > T - 1:
        k.fail("warmup_steps", W,
               f"must be <= (total_steps - 1) / 2 = {(T - 1) / 2} with three_phase")
    k.keep("start_factor", 1.0 / div)
    return OneCycle(name, T, W, div, final_div, anneal, three)


@register("stepdecay")
def _stepdecay(name, k, T, opt):
    """Warmup, then ``gamma^((s - W) // step_size)`` (torch ``StepLR`` after the warmup)."""
    w = _warmup(k, T)
    return WarmupThenDecay(name, T, w, Step(_step_size(k, T - w.steps), _gamma(k)))


@register("multistepdecay")
def _multistepdecay(name, k, T, opt):
    """Warmup, then ``gamma^k`` after the k-th milestone, milestones counted from the end of the
    warmup (torch ``MultiStepLR`` after the warmup)."""
    w = _warmup(k, T)
    ms = k.steps_list_or_ratios("milestones", "milestone_ratios", T - w.steps,
                                default_ratios=[0.5, 0.75])
    return WarmupThenDecay(name, T, w, MultiStep(ms, _gamma(k)))


@register("exponentialwarmup")
def _exponentialwarmup(name, k, T, opt):
    """``(1 - (1-a) exp(-s/tau)) * decay(s)`` with ``tau`` = warmup_steps (pytorch_warmup
    ``ExponentialWarmup``; null start_factor = ``1 - exp(-1/tau)``, its ``(s+1)`` convention)."""
    tau = k.steps_or_ratio("warmup_steps", "warmup_ratio", T, "total_steps", default_ratio=0.1)
    if tau < 1:
        k.fail("warmup_steps", tau,
               "must be >= 1 for exponentialwarmup (it is the time constant tau)")
    return _exp_dampened(name, k, T, tau)


def _exp_dampened(name, k, T, tau):
    a = k.number("start_factor", None, 0.0, 1.0, none_ok=True)
    a = k.keep("start_factor", 1.0 - math.exp(-1.0 / tau) if a is None else a)
    return WarmupTimesDecay(name, T, ExpRamp(tau, a), _dampened_decay(k, T), tau)


@register("untunedlinearwarmup")
def _untunedlinearwarmup(name, k, T, opt):
    """Ma & Yarats: ``min(1, (s+1)/tau)``, ``tau = round(2/(1-beta2))`` with beta2 from the
    optimizer, times ``decay(s)`` (pytorch_warmup ``UntunedLinearWarmup``); W = tau - 1."""
    _no_warmup(k, name, "its warmup is 2/(1-beta2) steps, beta2 from optimizer.betas")
    b2 = k.keep("beta2", _beta2(opt, name))
    tau = k.keep("tau", round(2.0 / (1.0 - b2)))
    W = tau - 1
    if W > T:
        k.fail("name", name, f"its warmup 2/(1-beta2)-1 = {W} steps (optimizer.betas[1]={b2}) "
                             f"is longer than total_steps={T}: use a smaller beta2 or a longer run")
    a = k.number("start_factor", None, 0.0, 1.0, none_ok=True)
    a = k.keep("start_factor", 1.0 / tau if a is None else a)
    return WarmupTimesDecay(name, T, Ramp(W, a, "linear"), _dampened_decay(k, T), W)


@register("untunedexponentialwarmup")
def _untunedexponentialwarmup(name, k, T, opt):
    """Ma & Yarats: ``1 - exp(-(s+1)/tau)``, ``tau = round(1/(1-beta2))`` with beta2 from the
    optimizer, times ``decay(s)`` (pytorch_warmup ``UntunedExponentialWarmup``)."""
    _no_warmup(k, name, "its time constant is 1/(1-beta2) steps, beta2 from optimizer.betas")
    b2 = k.keep("beta2", _beta2(opt, name))
    tau = k.keep("tau", round(1.0 / (1.0 - b2)))
    if tau > T:
        k.fail("name", name, f"its warmup time constant 1/(1-beta2) = {tau} steps "
                             f"(optimizer.betas[1]={b2}) is longer than total_steps={T}: "
                             f"use a smaller beta2 or a longer run")
    return _exp_dampened(name, k, T, tau)


# -- entry point --------------------------------------------------------------------------------
def _plain(cfg: Any) -> dict | None:
    if cfg is None:
        return None
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def _scalar(v: Any) -> Any:
    return fmt(v) if isinstance(v, (list, tuple)) or v is None else v


def build_schedule(cfg_scheduler: Any, total_steps: int, optimizer_cfg: Any = None) -> Schedule:
    """Validate ``cfg_scheduler`` (a composed ``conf/scheduler/<name>.yaml`` or a dict) and build
    its schedule for a run of ``total_steps`` optimizer steps. ``optimizer_cfg`` supplies ``lr``
    (for absolute knobs such as ``lr_end`` and for ``info()['peak_lr']``) and ``betas`` (untuned
    warmups).
    Raises :class:`ScheduleError` with a one-line message on any bad value."""
    data, opt = _plain(cfg_scheduler) or {}, _plain(optimizer_cfg)
    name = data.get("name")
    if name not in SCHEDULES:
        raise ScheduleError(f"scheduler.name={fmt(name)} is unknown: allowed "
                            f"{', '.join(SCHEDULES)}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ScheduleError(f"total_steps={total_steps!r} is invalid: must be an int >= 1 "
                            f"(the trainer's number of optimizer steps)")
    k = Knobs(data)
    sched = SCHEDULES[name](name, k, total_steps, opt)
    k.finish(name)
    extra = {key: _scalar(v) for key, v in k.resolved.items() if key != "warmup_steps"}
    lr = (opt or {}).get("lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        extra["peak_lr"] = float(lr) * sched.peak
    return replace(sched, extra=tuple(extra.items()))
