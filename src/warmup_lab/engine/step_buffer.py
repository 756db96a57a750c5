"""Per-step scalars of K runs kept on the training device and read back in one transfer every N steps.

Reading a CUDA value on the host (``.item()``, ``float(t)``, ``.tolist()``) waits for the GPU,
so the step loop only writes device tensors into a preallocated ``(steps, columns, K)`` buffer;
the flush copies the filled rows, and whatever else it needs (:func:`read_back`), to the host at
the log interval.
"""

from __future__ import annotations

import torch


def read_back(tensors: list[torch.Tensor]) -> list[list[float]]:
    """Every tensor's values (flattened, as float) on the host, in one device-to-host copy."""
    if not tensors:
        return []
    flat = torch.cat([t.detach().float().reshape(-1) for t in tensors]).cpu().tolist()
    out, pos = [], 0
    for t in tensors:
        out.append(flat[pos:pos + t.numel()])
        pos += t.numel()
    return out


class StepBuffer:
    """``size`` rows of ``columns`` for ``k`` runs; a run's column of a row is NaN until written."""

    def __init__(self, columns: tuple[str, ...], size: int, device: torch.device, k: int = 1):
        self.columns, self.k = columns, k
        self.index = {name: j for j, name in enumerate(columns)}
        self.values = torch.full((size, len(columns), k), float("nan"), device=device)
        self.steps: list[int] = []

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def full(self) -> bool:
        return len(self.steps) == self.values.shape[0]

    def put(self, step: int, runs: torch.Tensor | None = None, **columns) -> None:
        """Store this step's values (no host synchronisation): per column a ``(K,)`` tensor of all
        runs, or a list of 0-dim tensors of the runs ``runs`` (indices; None = all K in order)."""
        row = self.values[len(self.steps)]
        for name, value in columns.items():
            if not isinstance(value, list):  # all K runs
                row[self.index[name]] = value
            elif runs is None:
                row[self.index[name]] = value[0] if self.k == 1 else torch.stack(value)
            else:
                row[self.index[name], runs] = torch.stack(value)
        self.steps.append(step)

    def column(self, name: str, k: int = 0) -> torch.Tensor:
        """The filled rows of run ``k``'s column (a device view; no host synchronisation)."""
        return self.values[: len(self.steps), self.index[name], k]

    def block(self) -> torch.Tensor:
        """The filled rows ``(n, columns, K)`` (a device view)."""
        return self.values[: len(self.steps)]

    def clear(self) -> list[int]:
        """Empty the buffer; returns the steps it held."""
        n = len(self.steps)
        steps, self.steps = self.steps, []
        self.values[:n] = float("nan")
        return steps

    def state_dict(self) -> dict:
        """The filled rows (a CPU copy) and their steps, for checkpoints."""
        n = len(self.steps)
        return {"columns": list(self.columns), "steps": list(self.steps),
                "values": self.values[:n].detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if list(state["columns"]) != list(self.columns) or tuple(state["values"].shape[1:]) != tuple(self.values.shape[1:]):
            raise ValueError(f"step buffer columns {state['columns']} x {tuple(state['values'].shape[2:])} runs in the "
                             f"checkpoint differ from {list(self.columns)} x {self.k}")
        n = len(state["steps"])
        self.values.fill_(float("nan"))
        self.values[:n] = state["values"].to(self.values.device, self.values.dtype)
        self.steps = list(state["steps"])
