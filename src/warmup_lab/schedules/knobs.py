"""Reading scheduler knobs: typed, range-checked, one-line errors that name the key.

The ratio rounding rule lives here (:func:`ratio_to_steps`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import pairwise
from typing import Any, NoReturn

from warmup_lab.schedules.errors import ScheduleError


def ratio_to_steps(ratio: float, total: int) -> int:
    """Steps for a fraction of ``total`` steps: ``ceil(total * ratio)``, as transformers'
    ``warmup_ratio``, so any ratio > 0 gives at least one step. The product is first rounded to
    9 decimals so float noise does not add a step (``100 * 0.07 = 7.000000000000001`` gives 7,
    where transformers gives 8)."""
    return math.ceil(round(total * ratio, 9))


def fmt(value: Any) -> str:
    """A value as it is written in a Hydra override (``null``, ``true``, ``[1, 2]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _interval(lo, hi, lo_open, hi_open) -> str:
    if hi is None:
        return f"> {lo}" if lo_open else f">= {lo}"
    if lo is None:
        return f"< {hi}" if hi_open else f"<= {hi}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


class Knobs:
    """A scheduler config being read. Each getter marks its key as known, checks the value and
    records it for ``info()``; :meth:`finish` rejects keys no getter asked for (typos)."""

    def __init__(self, data: Mapping, prefix: str = "scheduler"):
        self.data, self.prefix = dict(data), prefix
        self.known: set[str] = {"name"}
        self.resolved: dict[str, Any] = {}

    # -- errors ------------------------------------------------------------------------------
    def key(self, key: str) -> str:
        return f"{self.prefix}.{key}"

    def fail(self, key: str, value: Any, why: str) -> NoReturn:
        raise ScheduleError(f"{self.key(key)}={fmt(value)} is invalid: {why}")

    # -- getters -------------------------------------------------------------------------------
    def raw(self, key: str, default: Any) -> Any:
        self.known.add(key)
        return self.data.get(key, default)

    def integer(self, key: str, default: Any, lo: int = 0, none_ok: bool = False,
                hint: str = "") -> int | None:
        v = self.raw(key, default)
        if v is None and none_ok:
            return None
        if not _is_int(v) or v < lo:
            self.fail(key, v, f"must be an int >= {lo}" + (" or null" if none_ok else "") + hint)
        return self.keep(key, v)

    def number(self, key: str, default: Any, lo: float | None = None, hi: float | None = None,
               lo_open: bool = False, hi_open: bool = False, none_ok: bool = False) -> float | None:
        v = self.raw(key, default)
        if v is None and none_ok:
            return None
        bad = not _is_number(v) or not math.isfinite(v)
        bad = bad or (lo is not None and (v <= lo if lo_open else v < lo))
        bad = bad or (hi is not None and (v >= hi if hi_open else v > hi))
        if bad:
            self.fail(key, v, f"must be a number {_interval(lo, hi, lo_open, hi_open)}"
                      + (" or null" if none_ok else ""))
        return self.keep(key, float(v))

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        v = self.raw(key, default)
        if v not in choices:
            self.fail(key, v, f"allowed {', '.join(choices)}")
        return self.keep(key, v)

    def flag(self, key: str, default: bool) -> bool:
        v = self.raw(key, default)
        if not isinstance(v, bool):
            self.fail(key, v, "must be true or false")
        return self.keep(key, v)

    def numbers(self, key: str, default: Any, lo: float = 0.0, hi: float | None = None,
                hi_open: bool = False, increasing: bool = False, none_ok: bool = False,
                ints: bool = False) -> tuple | None:
        """A list of numbers in range; strictly increasing if asked."""
        v = self.raw(key, default)
        if v is None and none_ok:
            return None
        kind = "ints" if ints else "numbers"
        ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(
            (_is_int(x) if ints else _is_number(x) and math.isfinite(x)) for x in v)
        if not ok:
            self.fail(key, v, f"must be a non-empty list of {kind} "
                              f"{_interval(lo, hi, False, hi_open)}")
        if any(x < lo or (hi is not None and (x >= hi if hi_open else x > hi)) for x in v):
            self.fail(key, v, f"every entry must be {_interval(lo, hi, False, hi_open)}")
        if increasing and any(b <= a for a, b in pairwise(v)):
            self.fail(key, v, "must be strictly increasing")
        return self.keep(key, tuple(v))

    def ignore(self, *keys: str) -> None:
        """Keys that are allowed here but not used (e.g. knobs of another variant)."""
        self.known.update(keys)

    def keep(self, key: str, value: Any) -> Any:
        self.resolved[key] = value
        return value

    # -- step counts given as steps or as a fraction ---------------------------------------------
    def steps_or_ratio(self, steps_key: str, ratio_key: str, horizon: int, horizon_name: str,
                       default_steps=None, default_ratio=None, lo: int = 0,
                       cap: bool = True) -> int:
        """An int number of steps from ``steps_key`` or ``ceil(horizon * ratio)`` from ``ratio_key``
        (at least ``lo``); both null gives 0. When both are set the step count wins (so
        ``warmup_steps=500`` needs no ``warmup_ratio=null``). A ``warmup_steps`` float in [0, 1) is
        a fraction, as transformers 5 reads it (``ceil(horizon * value)``, its rounding too).
        With ``cap`` it must not exceed ``horizon``."""
        v = self.raw(steps_key, default_steps)
        if steps_key == "warmup_steps" and isinstance(v, float) and 0 <= v < 1:
            # transformers 5's form: a warmup_steps below 1 is a fraction of the run
            self.number(ratio_key, default_ratio, 0.0, 1.0, hi_open=True, none_ok=True)
            return self.keep(steps_key, max(lo, ratio_to_steps(v, horizon)))
        n = self.integer(steps_key, default_steps, lo=lo, none_ok=True,
                         hint=f" (for a fraction use {self.key(ratio_key)}"
                              + (", or a float below 1" if steps_key == "warmup_steps" else "") + ")")
        r = self.number(ratio_key, default_ratio, 0.0, 1.0, hi_open=True, none_ok=True)
        if n is None:
            n = max(lo, ratio_to_steps(r, horizon)) if r is not None else 0
        if cap and n > horizon:
            self.fail(steps_key, n, f"must be <= {horizon_name}={horizon}")
        return self.keep(steps_key, n)

    def steps_list_or_ratios(self, steps_key: str, ratios_key: str, horizon: int,
                             default_steps=None, default_ratios=None) -> tuple[int, ...]:
        """Strictly increasing step counts from ``steps_key``, or from fractions of ``horizon`` in
        ``ratios_key`` (each rounded by :func:`ratio_to_steps`); exactly one must be set."""
        steps = self.numbers(steps_key, default_steps, lo=1, increasing=True, none_ok=True,
                             ints=True)
        ratios = self.numbers(ratios_key, default_ratios, lo=0.0, hi=1.0, hi_open=True,
                              increasing=True, none_ok=True)
        if (steps is None) == (ratios is None):
            raise ScheduleError(
                f"{self.key(steps_key)}={fmt(steps)} and {self.key(ratios_key)}={fmt(ratios)}: "
                f"set exactly one of them (the other to null)")
        if ratios is not None:
            steps = tuple(max(1, ratio_to_steps(r, horizon)) for r in ratios)
        return self.keep(steps_key, steps)

    def finish(self, name: str) -> None:
        unknown = sorted(set(self.data) - self.known)
        if unknown:
            raise ScheduleError(
                f"{self.key(unknown[0])} is not a knob of {self.prefix}.name={name}: "
                f"known knobs are {', '.join(sorted(self.known))}")
