"""The parts schedules are made of: warmup ramps and decay curves.

All are small frozen dataclasses (picklable, hashable) called with an integer step.

* A **ramp** ``r(s)`` is a fraction of the peak for ``s`` counted from step 0; it reaches 1.
* A **decay** ``d(t)`` is a fraction of the peak for ``t`` steps since the decay clock started;
  ``d(0) = 1`` unless stated. ``horizon`` is the decay length in steps; past it a decay holds
  its end value (it never rises again).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

WARMUP_TYPES = ("linear", "cosine", "exponential", "1-sqrt", "constant")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


# -- warmup ramps -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Ramp:
    """Warmup over ``steps`` steps: ``start_factor`` at step 0, 1 from step ``steps`` on.

    With ``p = s / steps`` and ``a = start_factor``, for ``s < steps``:
    linear ``a + (1-a) p``; cosine ``a + (1-a)(1 - cos(pi p))/2``;
    1-sqrt ``a + (1-a)(1 - sqrt(1-p))``; exponential ``a^(1-p)`` (geometric: the lr grows by the
    same factor every step, needs a > 0); constant ``a`` (then a jump to 1, as torch
    ``ConstantLR`` and the ResNet paper).
    ``steps = 0`` means no warmup. ``a = 0`` gives transformers' ``s / steps``.
    """

    steps: int
    start_factor: float = 0.0
    type: str = "linear"

    def __call__(self, s: int) -> float:
        if s >= self.steps:
            return 1.0
        a, p = self.start_factor, s / self.steps
        if self.type == "linear":
            return a + (1.0 - a) * p
        if self.type == "cosine":
            return a + (1.0 - a) * (0.5 * (1.0 - math.cos(math.pi * p)))
        if self.type == "1-sqrt":
            return a + (1.0 - a) * (1.0 - math.sqrt(1.0 - p))
        if self.type == "exponential":
            return a ** (1.0 - p)
        if self.type == "constant":
            return a
        raise ValueError(f"unknown warmup type {self.type!r}")


@dataclass(frozen=True)
class ExpRamp:
    """Exponential warmup of pytorch_warmup / Ma & Yarats: ``1 - (1-a) exp(-s / tau)``.

    ``a = start_factor``: ``0`` gives ``1 - exp(-s/tau)`` (0 at step 0); ``1 - exp(-1/tau)`` gives
    pytorch_warmup's ``1 - exp(-(s+1)/tau)``. Never reaches 1 exactly (0.63 of the way at ``tau``).
    """

    tau: float
    start_factor: float = 0.0

    def __call__(self, s: int) -> float:
        return 1.0 - (1.0 - self.start_factor) * math.exp(-s / self.tau)


# -- decay curves ---------------------------------------------------------------------------
def _progress(t: int, horizon: int) -> float:
    """``t / horizon`` clipped to 1; 1 for a zero horizon (nothing left to decay)."""
    return 1.0 if t >= horizon else t / horizon


def _shape(kind: str, q: float, num_cycles: float = 0.5) -> float:
    """Fraction left after progress ``q`` in [0, 1] for a decay shape in ``DECAY_SHAPES``."""
    if kind == "linear":
        return 1.0 - q
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * q))
    if kind == "1-sqrt":
        return 1.0 - math.sqrt(q)
    raise ValueError(f"unknown decay shape {kind!r}")


@dataclass(frozen=True)
class Constant:
    """1 forever."""

    def __call__(self, t: int) -> float:
        return 1.0


@dataclass(frozen=True)
class Linear:
    """``(horizon - t) / horizon``, 0 from ``t = horizon`` on (transformers ``linear``)."""

    horizon: int

    def __call__(self, t: int) -> float:
        return max(0.0, float(self.horizon - t) / float(max(1, self.horizon)))


@dataclass(frozen=True)
class Cosine:
    """``floor + (1-floor)(1 + cos(2 pi c p))/2`` with ``p = min(t, horizon)/horizon``.

    ``c = num_cycles`` (0.5: one half wave down to ``floor``). Held at its ``p = 1`` value past the
    horizon (transformers' version rises again there). transformers ``cosine`` /
    ``cosine_with_min_lr``, keras ``CosineDecay`` (``floor = alpha``), torch ``CosineAnnealingLR``
    (``floor = eta_min / lr``).
    """

    horizon: int
    num_cycles: float = 0.5
    floor: float = 0.0

    def __call__(self, t: int) -> float:
        f = _shape("cosine", _progress(t, self.horizon), self.num_cycles)
        return max(0.0, f * (1.0 - self.floor) + self.floor)


@dataclass(frozen=True)
class CosineRestarts:
    """``num_cycles`` equal half-cosine waves from 1 to 0 with hard restarts; 0 from the horizon on
    (transformers ``cosine_with_restarts``)."""

    horizon: int
    num_cycles: float = 1.0

    def __call__(self, t: int) -> float:
        if t >= self.horizon:
            return 0.0
        p = float(t) / float(self.horizon)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(self.num_cycles) * p) % 1.0))))


@dataclass(frozen=True)
class Polynomial:
    """``end + (1-end)(1 - t/horizon)^power``, ``end`` from the horizon on (transformers
    ``polynomial`` with ``end = lr_end / lr``; torch ``PolynomialLR`` with ``end = 0``)."""

    horizon: int
    power: float = 1.0
    end: float = 0.0

    def __call__(self, t: int) -> float:
        if t >= self.horizon:
            return self.end
        return (1.0 - self.end) * (1.0 - t / self.horizon) ** self.power + self.end


@dataclass(frozen=True)
class InverseSqrt:
    """``1 / sqrt((t + timescale) / timescale)`` (transformers ``inverse_sqrt``; Noam when
    ``timescale`` is the warmup length). Never reaches 0."""

    timescale: int

    def __call__(self, t: int) -> float:
        return 1.0 / math.sqrt((t + self.timescale) / self.timescale)


@dataclass(frozen=True)
class InverseTime:
    """``1 / (1 + rate * t / decay_steps)`` (keras ``InverseTimeDecay``; ``W / s`` of the TF
    tutorial when ``rate = 1`` and ``decay_steps`` is the warmup length)."""

    decay_steps: int
    rate: float = 1.0

    def __call__(self, t: int) -> float:
        return 1.0 / (1.0 + self.rate * t / self.decay_steps)


@dataclass(frozen=True)
class Exponential:
    """``rate^(t / decay_steps)``, ``t // decay_steps`` if ``staircase`` (keras
    ``ExponentialDecay``; torch ``ExponentialLR(gamma=rate)`` when ``decay_steps = 1``). Keeps
    decaying past the horizon."""

    decay_steps: int
    rate: float
    staircase: bool = False

    def __call__(self, t: int) -> float:
        e = t // self.decay_steps if self.staircase else t / self.decay_steps
        return self.rate ** e


@dataclass(frozen=True)
class Step:
    """``gamma^(t // step_size)`` (torch ``StepLR``)."""

    step_size: int
    gamma: float = 0.1

    def __call__(self, t: int) -> float:
        return self.gamma ** (t // self.step_size)


@dataclass(frozen=True)
class MultiStep:
    """``gamma^k``, k = number of milestones ``<= t`` (torch ``MultiStepLR``)."""

    milestones: tuple[int, ...]
    gamma: float = 0.1

    def __call__(self, t: int) -> float:
        return self.gamma ** bisect_right(self.milestones, t)


@dataclass(frozen=True)
class StableDecay:
    """1 for ``stable`` steps, then ``floor + (1-floor) shape(q)`` over ``decay_steps`` steps
    (``q`` from 0 to 1), then ``floor`` (transformers ``warmup_stable_decay``)."""

    stable: int
    decay_steps: int
    shape: str = "cosine"
    floor: float = 0.0
    num_cycles: float = 0.5

    def __call__(self, t: int) -> float:
        if t < self.stable:
            return 1.0
        if t < self.stable + self.decay_steps:
            q = float(t - self.stable) / float(max(1, self.decay_steps))
            f = _shape(self.shape, q, self.num_cycles)
            return max(0.0, f * (1.0 - self.floor) + self.floor)
        return self.floor


@dataclass(frozen=True)
class WarmRestarts:
    """SGDR (Loshchilov & Hutter): cosine from 1 down to ``floor`` over a period, then a restart at
    1; the first period is ``t_0`` steps, each next one ``t_mult`` times longer (torch
    ``CosineAnnealingWarmRestarts`` stepped once per update, ``floor = eta_min / lr``). Periods
    repeat forever, past any horizon. At the first step of a period it is 1; it never reaches
    ``floor`` exactly (the last step of a period is one step short of it)."""

    t_0: int
    t_mult: int = 1
    floor: float = 0.0

    def position(self, t: int) -> tuple[int, int]:
        """``(t_cur, t_i)``: steps into the current period and that period's length (torch's
        integer bookkeeping: ``t_cur += 1``, a restart when ``t_cur >= t_i``)."""
        if self.t_mult == 1:
            return t % self.t_0, self.t_0
        t_i = self.t_0
        while t >= t_i:
            t -= t_i
            t_i *= self.t_mult
        return t, t_i

    def __call__(self, t: int) -> float:
        t_cur, t_i = self.position(t)
        return self.floor + (1.0 - self.floor) * (1.0 + math.cos(math.pi * t_cur / t_i)) / 2.0
