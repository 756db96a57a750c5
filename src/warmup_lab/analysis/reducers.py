"""Reducers: how an arm's values over its ``best_over`` levels become one value per seed.

A reducer gets ``cube`` of shape ``(levels, seeds)`` (NaN where no run; levels are the
combinations of the arm's ``best_over`` keys, one level when it has none) and ``idx``, the seeds
to use (a bootstrap resample, with repeats), and returns ``(values, level)``: the per-seed values
for ``idx`` and the index of the level it selected (None when it selects none). A selection is
made on the seeds ``idx`` only, so the bootstrap redoes it in every resample.

Register a new statistic by name with :func:`reducer`; claims name it in ``reduce:`` (or as
their ``metric:``). This is the one place where a claim needs Python.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

REDUCERS: dict[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, int | None]]] = {}


def reducer(name: str):
    def register(fn):
        REDUCERS[name] = fn
        return fn
    return register


def nanmean(a: np.ndarray, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def best_index(cube: np.ndarray) -> int:
    """The level (first axis) with the lowest seed-mean; ties and all-NaN levels resolve to
    the first."""
    means = nanmean(cube, axis=-1)
    means = np.where(np.isnan(means), np.inf, means)
    return int(np.argmin(means))


@reducer("best")
def best(cube: np.ndarray, idx: np.ndarray):
    """The arm at its best level (lowest mean over the seeds ``idx``): "each arm at its best lr"."""
    sub = cube[:, idx]
    b = best_index(sub)
    return sub[b], b


@reducer("mean")
def mean(cube: np.ndarray, idx: np.ndarray):
    """Mean over the levels (e.g. averaged over the lr grid), per seed."""
    return nanmean(cube[:, idx], axis=0), None


@reducer("sum")
def total(cube: np.ndarray, idx: np.ndarray):
    """Sum over the levels per seed (with ``metric: trained``: how many grid lrs trained)."""
    return np.nansum(cube[:, idx], axis=0), None


@reducer("lr_sensitivity")
def lr_sensitivity(cube: np.ndarray, idx: np.ndarray):
    """LR sensitivity (Wortsman et al. 2023): per seed, the mean over the levels (a log-spaced
    lr grid) of L(level) - min over levels of L, with failed runs at L0 (``failures: l0``).
    Loss units; lower is more robust to the lr."""
    sub = cube[:, idx]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return nanmean(sub - np.nanmin(sub, axis=0, keepdims=True), axis=0), None
