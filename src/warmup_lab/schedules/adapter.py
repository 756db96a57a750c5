"""The optimizer side: a ``LambdaLR``-like adapter whose only state is the step."""

from __future__ import annotations

from collections.abc import Callable

import torch

from warmup_lab.schedules.schedule import check_step


class ScheduleLR:
    """Sets ``group["lr"] = group["initial_lr"] * schedule(step)`` for every param group.

    ``initial_lr`` is taken from ``group["lr"]`` the first time an adapter sees the optimizer (an
    existing ``initial_lr``, e.g. from a loaded optimizer state, is kept), so building the adapter
    before or after ``optimizer.load_state_dict`` gives the same lrs. The lrs of ``step`` are set
    at once. A 0-dim tensor lr (for ``torch.compile``) is updated in place, never replaced.

    Call :meth:`step` once after each ``optimizer.step()``. ``last_step`` is the step whose lrs are
    set, i.e. the number of updates done; ``state_dict()`` is ``{"step": last_step}``, and
    rebuilding with ``step=k`` or loading ``{"step": k}`` resumes exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Callable[[int], float],
                 step: int = 0):
        self.optimizer, self.schedule = optimizer, schedule
        for group in optimizer.param_groups:
            if "initial_lr" not in group:
                group["initial_lr"] = float(group["lr"])
        self.last_step = check_step(step)
        self._last_lr: list[float] = []
        self._apply()

    def _apply(self) -> None:
        m = self.schedule(self.last_step)
        self._last_lr = []
        for group in self.optimizer.param_groups:
            lr = group["initial_lr"] * m
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
            self._last_lr.append(lr)

    def step(self) -> None:
        """Advance one optimizer step and set the lrs the next update uses."""
        self.last_step += 1
        self._apply()

    def follow(self, schedule: Callable[[int], float]) -> None:
        """Use ``schedule`` from now on and set the lrs of the current step from it (a schedule
        that follows the validation history, given the evaluation just done)."""
        self.schedule = schedule
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The lr of each param group for the next update, as Python floats (no device sync; a
        tensor lr holds the same value rounded to its dtype)."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, int]:
        return {"step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = check_step(state["step"])
        self._apply()
