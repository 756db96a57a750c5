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

from warmup_lab.schedules.errors import ScheduleError
from warmup_lab.schedules.knobs import Knobs, fmt
from warmup_lab.schedules.parts import (
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
    WarmRestarts,
)
from warmup_lab.schedules.schedule import (Cyclic, OneCycle, PiecewiseConstant, Plateau, Schedule, ShiftedCosine, TimmCosine, WarmupThenDecay,
                       WarmupTimesDecay)

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


def _step_size(k: Knobs, H: int) -> int | float:
    """Steps between decays: an int, a fraction of the horizon (``step_ratio``), or a float number
    of steps such as 2.5 (timm's float ``decay_t``: the decay count is ``t // step_size``)."""
    v = k.raw("step_size", None)
    if isinstance(v, float):
        if not (math.isfinite(v) and v > 0):
            k.fail("step_size", v, "must be > 0 (an int, or a float number of steps)")
        k.number("step_ratio", 0.3, 0.0, 1.0, hi_open=True, none_ok=True)  # read: step_size wins
        return k.keep("step_size", v)
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


def _min_lr_rate(k: Knobs, opt) -> float:
    """The cosine floor as a fraction of the peak: ``min_lr_rate``, or the absolute ``min_lr``
    divided by optimizer.lr (set exactly one; transformers' two ways of saying it)."""
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
    return rate


@register("warmupcosinewithminlr")
def _warmupcosinewithminlr(name, k, T, opt):
    """Warmup, then cosine down to a floor (transformers ``cosine_with_min_lr``)."""
    w = _warmup(k, T)
    cycles = k.number("num_cycles", 0.5, 0.0, lo_open=True)
    rate = _min_lr_rate(k, opt)
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


@register("cosinewarmupwithminlr")
def _cosinewarmupwithminlr(name, k, T, opt):
    """transformers ``cosine_warmup_with_min_lr``: ``(s+1)/W`` for ``s < W`` (1 at the last warmup
    step, W-1), then cosine over progress ``(s - W + 1)/(T - W)``, which reaches the floor
    ``min_lr_rate`` at step T-1, the last update. ``warmup_lr_rate`` (null = the ``(s+1)/W``
    form): linear from it to 1 over steps 0..W-1."""
    W = k.steps_or_ratio("warmup_steps", "warmup_ratio", T, "total_steps", default_ratio=0.1)
    cycles = k.number("num_cycles", 0.5, 0.0, lo_open=True)
    rate = _min_lr_rate(k, opt)
    w_rate = k.number("warmup_lr_rate", None, 0.0, 1.0, none_ok=True)
    if w_rate is None:  # (s+1)/W: a ramp over W-1 steps from 1/W
        ramp = Ramp(max(0, W - 1), 1.0 / W if W else 1.0, "linear")
    else:
        ramp = Ramp(max(1, W - 1) if W else 0, w_rate, "linear")
    horizon = max(1, T - W)
    return ShiftedCosine(name, T, ramp, W, horizon, cycles, rate)


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
    if k.integer("count_from", 0, lo=0) == 1:  # the Annotated Transformer's NoamOpt: rate(s + 1)
        if k.raw("start_factor", None) is not None:
            k.fail("start_factor", k.raw("start_factor", None), "must be null with count_from=1 "
                   "(the first update uses rate(1) = peak / warmup_steps)")
        W = w.steps  # (s+1)/W up to the peak at step W-1, then sqrt(W/(s+1))
        return WarmupThenDecay(name, T, Ramp(W - 1, k.keep("start_factor", 1.0 / W), "linear"), InverseSqrt(W),
                               peak=peak)
    if k.resolved["count_from"] != 0:
        k.fail("count_from", k.resolved["count_from"], "allowed 0 (Vaswani et al.: rate(s)) or 1 "
               "(the Annotated Transformer's NoamOpt: rate(s + 1))")
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


def _untuned_period(k: Knobs, exact: float) -> int:
    """The untuned warmup period from its formula's value: ``round`` (the default: 2/(1-0.999)
    is 1999.9999999999998 in floats, and the paper's period is 2000) or ``truncate``
    (pytorch_warmup's ``int(...)``: 1999)."""
    how = k.choice("tau_rounding", "round", ("round", "truncate"))
    return max(1, round(exact) if how == "round" else int(exact))


@register("linearwarmup")
def _linearwarmup(name, k, T, opt):
    """pytorch_warmup ``LinearWarmup(warmup_period=tau)``: ``min(1, (s+1)/tau) * decay(s)`` with
    ``tau`` = warmup_steps, the decay's clock from step 0 (a dampened warmup with a chosen
    period, no beta2); W = tau - 1."""
    tau = k.steps_or_ratio("warmup_steps", "warmup_ratio", T, "total_steps", default_ratio=0.1)
    if tau < 1:
        k.fail("warmup_steps", tau, "must be >= 1 for linearwarmup (it is the warmup period tau)")
    a = k.number("start_factor", None, 0.0, 1.0, none_ok=True)
    a = k.keep("start_factor", 1.0 / tau if a is None else a)
    return WarmupTimesDecay(name, T, Ramp(tau - 1, a, "linear"), _dampened_decay(k, T), tau - 1)


@register("untunedlinearwarmup")
def _untunedlinearwarmup(name, k, T, opt):
    """Ma & Yarats: ``min(1, (s+1)/tau)``, ``tau = 2/(1-beta2)`` with beta2 from the optimizer,
    rounded (``tau_rounding: round``) or truncated as pytorch_warmup does (``truncate``), times
    ``decay(s)`` (pytorch_warmup ``UntunedLinearWarmup``); W = tau - 1."""
    _no_warmup(k, name, "its warmup is 2/(1-beta2) steps, beta2 from optimizer.betas")
    b2 = k.keep("beta2", _beta2(opt, name))
    tau = k.keep("tau", _untuned_period(k, 2.0 / (1.0 - b2)))
    W = tau - 1
    if W > T:
        k.fail("name", name, f"its warmup 2/(1-beta2)-1 = {W} steps (optimizer.betas[1]={b2}) "
                             f"is longer than total_steps={T}: use a smaller beta2 or a longer run")
    a = k.number("start_factor", None, 0.0, 1.0, none_ok=True)
    a = k.keep("start_factor", 1.0 / tau if a is None else a)
    return WarmupTimesDecay(name, T, Ramp(W, a, "linear"), _dampened_decay(k, T), W)


@register("untunedexponentialwarmup")
def _untunedexponentialwarmup(name, k, T, opt):
    """Ma & Yarats: ``1 - exp(-(s+1)/tau)``, ``tau = 1/(1-beta2)`` with beta2 from the optimizer,
    rounded or truncated (``tau_rounding``), times ``decay(s)`` (pytorch_warmup
    ``UntunedExponentialWarmup``)."""
    _no_warmup(k, name, "its time constant is 1/(1-beta2) steps, beta2 from optimizer.betas")
    b2 = k.keep("beta2", _beta2(opt, name))
    tau = k.keep("tau", _untuned_period(k, 1.0 / (1.0 - b2)))
    if tau > T:
        k.fail("name", name, f"its warmup time constant 1/(1-beta2) = {tau} steps "
                             f"(optimizer.betas[1]={b2}) is longer than total_steps={T}: "
                             f"use a smaller beta2 or a longer run")
    return _exp_dampened(name, k, T, tau)


# -- restarts, cycles, plateaus --------------------------------------------------------------------
def _floor_from_lr(k: Knobs, key: str, opt, default=0.0) -> float:
    """An absolute lr floor (``eta_min``, ``lr_min``) as a fraction of optimizer.lr."""
    v = k.number(key, default, 0.0)
    if v == 0:
        return 0.0
    lr = _optimizer_lr(opt, key)
    if v > lr:
        k.fail(key, v, f"must be <= optimizer.lr={lr}")
    return v / lr


@register("sgdr")
def _sgdr(name, k, T, opt):
    """SGDR, torch ``CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)`` stepped per update:
    cosine periods of ``t_0`` steps (or ``t_0_ratio`` of the steps after the warmup), each next
    one ``t_mult`` times longer, restarting at the peak. Optional warmup first (then the periods
    start when it ends; torch's has none)."""
    w = _warmup(k, T, default_ratio=0.0)
    t_0 = k.steps_or_ratio("t_0", "t_0_ratio", T - w.steps, "total_steps - warmup_steps",
                           default_ratio=0.25, lo=1, cap=False)
    t_mult = k.integer("t_mult", 1, lo=1)
    floor = k.keep("floor", _floor_from_lr(k, "eta_min", opt))
    return WarmupThenDecay(name, T, w, WarmRestarts(t_0, t_mult, floor))


@register("timmcosine")
def _timmcosine(name, k, T, opt):
    """timm ``CosineLRScheduler`` per update: warmup from ``warmup_lr_init`` over W steps (inside
    the first cycle unless ``warmup_prefix``), cycles of ``t_initial`` steps (null = the run,
    less the warmup with ``warmup_prefix``) with ``cycle_mul``, ``cycle_decay`` and
    ``cycle_limit``, down to ``lr_min``; ``k_decay``; ``cycle_warmup`` warms up every cycle."""
    W = k.steps_or_ratio("warmup_steps", "warmup_ratio", T, "total_steps", default_ratio=0.0)
    prefix = k.flag("warmup_prefix", False)
    t_initial = k.integer("t_initial", None, lo=1, none_ok=True)
    t_initial = k.keep("t_initial", t_initial or max(1, T - W if prefix else T))
    a = k.keep("start_factor", _floor_from_lr(k, "warmup_lr_init", opt))
    floor = k.keep("floor", _floor_from_lr(k, "lr_min", opt))
    cycle_mul = k.number("cycle_mul", 1.0, 0.0, lo_open=True)
    cycle_decay = k.number("cycle_decay", 1.0, 0.0, 1.0, lo_open=True)
    cycle_limit = k.integer("cycle_limit", 1, lo=1)
    k_decay = k.number("k_decay", 1.0, 0.0, lo_open=True)
    cycle_warmup = k.flag("cycle_warmup", False)
    if cycle_warmup and W >= t_initial:
        k.fail("warmup_steps", W, f"must be < t_initial={t_initial} with cycle_warmup")
    return TimmCosine(name, T, W, t_initial, a, floor, cycle_mul, cycle_decay, cycle_limit, prefix, k_decay,
                      cycle_warmup)


@register("cycliclr")
def _cycliclr(name, k, T, opt):
    """torch ``CyclicLR`` (``cycle_momentum=False``) with ``max_lr`` = optimizer.lr: up from
    ``base_lr`` (absolute) or ``base_factor`` (of optimizer.lr; set one) over ``step_size_up``
    steps (or ``step_up_ratio`` of the run), down over ``step_size_down`` (null = up), in mode
    ``triangular`` | ``triangular2`` | ``exp_range`` (``gamma``)."""
    _no_warmup(k, name, "its rising half-cycles are its warmup (step_size_up)")
    up = k.steps_or_ratio("step_size_up", "step_up_ratio", T, "total_steps", default_ratio=0.125, lo=1,
                          cap=False)
    down = k.integer("step_size_down", None, lo=1, none_ok=True)
    down = k.keep("step_size_down", up if down is None else down)
    mode = k.choice("mode", "triangular", ("triangular", "triangular2", "exp_range"))
    gamma = k.number("gamma", 1.0, 0.0, 1.0, lo_open=True)
    base_lr = k.number("base_lr", None, 0.0, none_ok=True)
    factor = k.number("base_factor", 0.1, 0.0, 1.0, none_ok=True)
    if (base_lr is None) == (factor is None):
        raise ScheduleError(f"scheduler.base_lr={fmt(base_lr)} and scheduler.base_factor={fmt(factor)}: "
                            f"set exactly one of them (the other to null)")
    if base_lr is not None:
        lr = _optimizer_lr(opt, "base_lr")
        if base_lr > lr:
            k.fail("base_lr", base_lr, f"must be <= optimizer.lr={lr} (the max_lr)")
        factor = k.keep("base_factor", base_lr / lr)
    return Cyclic(name, T, up, down, factor, mode, gamma)


@register("reduceonplateau")
def _reduceonplateau(name, k, T, opt):
    """torch ``ReduceLROnPlateau`` driven by the validation loss (or accuracy) at each evaluation:
    ``factor``, ``patience``, ``threshold``, ``threshold_mode``, ``cooldown``, ``min_lr``
    (absolute), ``eps``, ``mode``; an optional warmup first (evaluations during it are not
    counted). A pure function of the step and the run's validation history (:class:`Plateau`)."""
    w = _warmup(k, T, default_ratio=0.0)
    monitor = k.choice("monitor", "loss", ("loss", "acc"))
    mode = k.choice("mode", "min" if monitor == "loss" else "max", ("min", "max"))
    factor = k.number("factor", 0.1, 0.0, 1.0, lo_open=True, hi_open=True)
    patience = k.integer("patience", 10, lo=0)
    threshold = k.number("threshold", 1e-4, 0.0)
    threshold_mode = k.choice("threshold_mode", "rel", ("rel", "abs"))
    cooldown = k.integer("cooldown", 0, lo=0)
    min_lr = k.number("min_lr", 0.0, 0.0)
    eps = k.number("eps", 1e-8, 0.0)
    lr = (opt or {}).get("lr")
    lr = float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 else 1.0
    if min_lr > lr:
        k.fail("min_lr", min_lr, f"must be <= optimizer.lr={lr}")
    return Plateau(name, T, w, lr, monitor, mode, factor, patience, threshold, threshold_mode, cooldown,
                   min_lr, eps)


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
