"""How parts combine into a schedule: ``sched(step) -> multiplier of the base lr``.

Steps count optimizer updates: step 0 is the first update, step ``T - 1`` the last of a run of
``T`` updates. A schedule is pure and accepts any step ``>= 0``, also past ``T`` (it then holds its
end value or keeps its closed form, as documented per part).
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from .errors import ScheduleError
from .parts import Ramp


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

    def __call__(self, step: int) -> float:
        """Multiplier of each param group's base lr at optimizer step ``step`` (0 = the first
        update)."""
        return self.at(check_step(step))

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
