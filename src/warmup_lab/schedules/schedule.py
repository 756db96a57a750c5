"""How parts combine into a schedule: ``sched(step) -> multiplier of the base lr``.

Steps count optimizer updates: step 0 is the first update, step ``T - 1`` the last of a run of
``T`` updates. A schedule is pure and accepts any step ``>= 0``, also past ``T`` (it then holds its
end value or keeps its closed form, as documented per part).
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_left
from dataclasses import dataclass, replace
from typing import Any

from warmup_lab.schedules.errors import ScheduleError
from warmup_lab.schedules.parts import Ramp


def check_step(step: int) -> int:
    """The step as an ``int >= 0``, or ``ScheduleError``."""
    try:
        s = operator.index(step)
    except TypeError:
        raise ScheduleError(f"step={step!r} is invalid: must be an int >= 0") from None
    if s < 0:
        raise ScheduleError(f"step={s} is invalid: must be an int >= 0")
    return s


class Schedule:
    """Common interface. Subclasses are frozen dataclasses with ``name``, ``total_steps``,
    ``peak`` (the largest multiplier), ``extra`` (resolved settings for :meth:`info`) and
    ``at(s)``; ``warmup_steps`` is the number of steps before the peak is reached."""

    name: str
    total_steps: int
    peak: float
    extra: tuple[tuple[str, Any], ...]

    #: True for a schedule that follows the run's validation history (:class:`Plateau`).
    needs_val_history = False

    def __call__(self, step: int) -> float:
        """Multiplier of each param group's base lr at optimizer step ``step`` (0 = the first
        update)."""
        return self.at(check_step(step))

    def with_val_history(self, history) -> "Schedule":
        """The schedule after the run's evaluations so far; a function of the step alone ignores
        them."""
        return self

    def at(self, s: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def bounds(self) -> tuple[float, float]:
        """Every multiplier lies in ``[low, high]``."""
        return 0.0, self.peak

    def info(self) -> dict[str, Any]:
        """Flat dict of scalars to log as hparams: resolved warmup, peak and end multipliers,
        then the knobs as resolved (lists as strings)."""
        out = {"name": self.name, "total_steps": self.total_steps,
               "warmup_steps": self.warmup_steps, "peak_multiplier": self.peak,
               "final_multiplier": self(self.total_steps)}
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class WarmupThenDecay(Schedule):
    """``peak * warmup(s)`` for ``s < W``, then ``peak * decay(s - W)``: the decay clock starts
    when the warmup ends, so its horizon excludes the warmup (transformers, keras ``CosineDecay``
    with warmup, ``SequentialLR``, ``GradualWarmupScheduler``)."""

    name: str
    total_steps: int
    warmup: Ramp
    decay: Any
    peak: float = 1.0
    extra: tuple = ()

    @property
    def warmup_steps(self) -> int:
        return self.warmup.steps

    def at(self, s: int) -> float:
        if s < self.warmup.steps:
            return self.peak * self.warmup(s)
        return self.peak * self.decay(s - self.warmup.steps)


@dataclass(frozen=True)
class WarmupTimesDecay(Schedule):
    """``warmup(s) * decay(s)``: the warmup factor dampens a decay whose clock starts at step 0,
    so its horizon includes the warmup (pytorch_warmup's ``dampening``)."""

    name: str
    total_steps: int
    warmup: Any
    decay: Any
    warmup_steps: int
    peak: float = 1.0
    extra: tuple = ()

    def at(self, s: int) -> float:
        return self.warmup(s) * self.decay(s)


@dataclass(frozen=True)
class OneCycle(Schedule):
    """torch ``OneCycleLR`` in multiples of ``max_lr`` (the optimizer lr), peak at step ``W``.

    Phases: ``1/div_factor -> 1`` over steps ``[0, W]``; with ``three_phase`` ``1 -> 1/div_factor``
    over ``[W, 2W]``; then down to ``1/(div_factor*final_div_factor)`` at step ``T-1`` (the last
    update), held past it (torch raises there). ``anneal``: ``cos`` or ``linear`` interpolation.
    torch's ``pct_start`` is ``(W + 1) / T``.
    """

    name: str
    total_steps: int
    warmup_steps: int
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    anneal: str = "cos"
    three_phase: bool = False
    peak: float = 1.0
    extra: tuple = ()

    def _interp(self, start: float, end: float, pct: float) -> float:
        if self.anneal == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def at(self, s: int) -> float:
        low = 1.0 / self.div_factor
        W = self.warmup_steps
        phases = [(W, low, 1.0)]
        if self.three_phase:
            phases.append((2 * W, 1.0, low))
        phases.append((self.total_steps - 1, phases[-1][2], low / self.final_div_factor))
        begin = 0
        for i, (end_step, a, b) in enumerate(phases):
            if s <= end_step or i == len(phases) - 1:
                pct = 1.0 if end_step <= begin else min(1.0, (s - begin) / (end_step - begin))
                return self._interp(a, b, pct)
            begin = end_step
        raise AssertionError("unreachable")

    @property
    def bounds(self) -> tuple[float, float]:
        return 1.0 / (self.div_factor * self.final_div_factor), 1.0


@dataclass(frozen=True)
class PiecewiseConstant(Schedule):
    """``values[i]`` for ``boundaries[i-1] < s <= boundaries[i]`` (keras ``PiecewiseConstantDecay``;
    step 0 takes ``values[0]``, steps after the last boundary ``values[-1]``). No warmup part."""

    name: str
    total_steps: int
    boundaries: tuple[int, ...]
    values: tuple[float, ...]
    extra: tuple = ()
    warmup_steps: int = 0

    @property
    def peak(self) -> float:
        return max(self.values)

    def at(self, s: int) -> float:
        return self.values[bisect_left(self.boundaries, s)]


@dataclass(frozen=True)
class TimmCosine(Schedule):
    """timm ``CosineLRScheduler`` stepped per update (``t_in_epochs=False``,
    ``step_update(num_updates=s)``), in multiples of the optimizer lr.

    For ``s < W``: ``a + s (1 - a) / W`` (``a = warmup_lr_init / lr``). Then ``t = s - W`` with
    ``warmup_prefix`` (the cycles start after the warmup), else ``t = s`` (timm's default: the
    warmup eats into the first cycle, which is then not at its peak when the warmup ends).
    Cycle ``i`` has length ``t_initial * cycle_mul^i`` and peak ``cycle_decay^i``; within it,
    ``floor + (peak - floor)(1 + cos(pi t_cur^k / t_i^k)) / 2`` (``k = k_decay``,
    ``floor = lr_min / lr``); from cycle ``cycle_limit`` on, ``floor``. ``cycle_warmup`` (not in
    timm) multiplies the first ``W`` steps of every later cycle by the warmup ramp ``a -> 1``.
    """

    name: str
    total_steps: int
    warmup_steps: int
    t_initial: int
    start_factor: float = 0.0
    floor: float = 0.0
    cycle_mul: float = 1.0
    cycle_decay: float = 1.0
    cycle_limit: int = 1
    warmup_prefix: bool = False
    k_decay: float = 1.0
    cycle_warmup: bool = False
    peak: float = 1.0
    extra: tuple = ()

    def cycle(self, t: int) -> tuple[int, float, float]:
        """``(i, t_curr, t_i)`` of timm's formula for ``t`` steps into the cycles."""
        if self.cycle_mul != 1:
            i = math.floor(math.log(1 - t / self.t_initial * (1 - self.cycle_mul), self.cycle_mul))
            t_i = self.cycle_mul ** i * self.t_initial
            t_curr = t - (1 - self.cycle_mul ** i) / (1 - self.cycle_mul) * self.t_initial
        else:
            i = t // self.t_initial
            t_i = self.t_initial
            t_curr = t - (self.t_initial * i)
        return i, t_curr, t_i

    def at(self, s: int) -> float:
        W = self.warmup_steps
        if s < W:
            return self.start_factor + s * ((1.0 - self.start_factor) / W)
        t = s - W if self.warmup_prefix else s
        i, t_curr, t_i = self.cycle(t)
        if i >= self.cycle_limit:
            return self.floor
        top = self.cycle_decay ** i
        k = self.k_decay
        m = self.floor + 0.5 * (top - self.floor) * (1 + math.cos(math.pi * t_curr ** k / t_i ** k))
        if self.cycle_warmup and i >= 1 and t_curr < W:
            m *= self.start_factor + t_curr * ((1.0 - self.start_factor) / W)
        return m


@dataclass(frozen=True)
class Cyclic(Schedule):
    """torch ``CyclicLR`` (``cycle_momentum=False``: the lr only) in multiples of ``max_lr``, the
    optimizer lr: from ``base = base_lr / max_lr`` up to 1 over ``up`` steps, down over ``down``
    steps, repeated. ``mode``: ``triangular`` (every cycle the same), ``triangular2`` (the height
    halves each cycle), ``exp_range`` (the height times ``gamma^s``). Step 0 is ``base``."""

    name: str
    total_steps: int
    up: int
    down: int
    base: float
    mode: str = "triangular"
    gamma: float = 1.0
    extra: tuple = ()
    warmup_steps: int = 0
    peak: float = 1.0

    def at(self, s: int) -> float:
        total = float(self.up + self.down)
        ratio = self.up / total
        cycle = math.floor(1 + s / total)
        x = 1.0 + s / total - cycle
        scale = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        if self.mode == "triangular":
            fn = 1.0
        elif self.mode == "triangular2":
            fn = 1 / (2.0 ** (cycle - 1))
        else:
            fn = self.gamma ** s
        return self.base + (1.0 - self.base) * scale * fn

    @property
    def bounds(self) -> tuple[float, float]:
        return min(self.base, 0.0), 1.0


@dataclass(frozen=True)
class Plateau(Schedule):
    """torch ``ReduceLROnPlateau`` as a pure function of the step and the run's validation history.

    ``history`` holds ``(step, value)`` for each evaluation done after ``step`` updates; an
    evaluation at step ``e`` changes the multiplier from step ``e`` on (the next update), as
    ``scheduler.step(val)`` right after evaluating. Evaluations before the warmup ends (``e < W``)
    are not counted; during the warmup the multiplier is the ramp. The plateau rule is torch's,
    in absolute lr units with ``lr`` the optimizer lr: an evaluation is better when
    ``value < best (1 - threshold)`` (``rel``, ``mode=min``) or ``value < best - threshold``
    (``abs``; ``>``/``+`` for ``max``); after more than ``patience`` evaluations that are not,
    the lr becomes ``max(lr * factor, min_lr)`` unless that changes it by ``eps`` or less, and
    ``cooldown`` evaluations follow in which bad ones are not counted. Without a history (a plot,
    the start of a run) it is the warmup then 1. :meth:`with_val_history` gives the schedule that
    knows the evaluations so far.
    """

    name: str
    total_steps: int
    warmup: Ramp
    lr: float = 1.0
    monitor: str = "loss"
    mode: str = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_lr: float = 0.0
    eps: float = 1e-8
    history: tuple = ()
    extra: tuple = ()
    peak: float = 1.0

    needs_val_history = True

    def __post_init__(self):  # the reductions, once per history (at() runs at every step)
        object.__setattr__(self, "_levels", self.levels())

    @property
    def warmup_steps(self) -> int:
        return self.warmup.steps

    def with_val_history(self, history) -> "Plateau":
        """This schedule after the evaluations ``history`` (the run's ``history["val"]``: dicts
        with ``step``, ``loss``, ``acc``; or ``(step, value)`` pairs of the monitored value)."""
        pairs = tuple((int(h["step"]), float(h[self.monitor])) if isinstance(h, dict) else (int(h[0]), float(h[1]))
                      for h in history)
        return replace(self, history=pairs)

    def _better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return a > (best * (1.0 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold)

    def levels(self) -> list[tuple[int, float]]:
        """``(step, lr)`` after each evaluation that reduced the lr, in absolute units."""
        best = math.inf if self.mode == "min" else -math.inf
        bad = cooldown = 0
        lr, out = self.lr, []
        for step, value in self.history:
            if step < self.warmup.steps:
                continue
            if self._better(value, best):
                best, bad = value, 0
            else:
                bad += 1
            if cooldown > 0:
                cooldown -= 1
                bad = 0
            if bad > self.patience:
                new = max(lr * self.factor, self.min_lr)
                if lr - new > self.eps:
                    lr = new
                    out.append((step, lr))
                cooldown, bad = self.cooldown, 0
        return out

    def at(self, s: int) -> float:
        if s < self.warmup.steps:
            return self.warmup(s)
        lr = self.lr
        for step, level in self._levels:
            if step > s:
                break
            lr = level
        return lr / self.lr

    @property
    def bounds(self) -> tuple[float, float]:
        return min(self.min_lr / self.lr, self.warmup.start_factor), 1.0


@dataclass(frozen=True)
class ShiftedCosine(Schedule):
    """transformers ``cosine_warmup_with_min_lr``: ``warmup(s)`` for ``s < W`` (its ramp ends at 1
    on step W-1), then ``floor + (1-floor)(1 + cos(2 pi c p))/2`` with the progress
    ``p = (s - W + 1) / horizon`` one step ahead, so ``p = 1`` (the floor, for ``c = 0.5``) falls
    on step T-1, the last update. Held at ``p = 1`` past it (transformers rises again there)."""

    name: str
    total_steps: int
    warmup: Ramp
    warmup_steps: int
    horizon: int
    num_cycles: float = 0.5
    floor: float = 0.0
    peak: float = 1.0
    extra: tuple = ()

    def at(self, s: int) -> float:
        if s < self.warmup_steps:
            return self.warmup(s)
        p = min(1.0, (s - self.warmup_steps + 1.0) / self.horizon)
        f = 0.5 * (1.0 + math.cos(math.pi * self.num_cycles * 2.0 * p))
        return max(0.0, f * (1 - self.floor) + self.floor)
