"""Per-step scalars kept on the training device and read back in one transfer every N steps.

Reading a CUDA value on the host (``.item()``, ``float(t)``, ``.tolist()``) waits for the GPU,
so the step loop only writes 0-dim tensors into a preallocated buffer; ``drain`` copies the
filled rows to the host at the log interval.
"""

from __future__ import annotations

import torch


class StepBuffer:
    def __init__(self, columns: tuple[str, ...], size: int, device: torch.device):
        self.columns = columns
        self.index = {name: j for j, name in enumerate(columns)}
        self.values = torch.full((size, len(columns)), float("nan"), device=device)
        self.steps: list[int] = []

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def full(self) -> bool:
        return len(self.steps) == self.values.shape[0]

    def put(self, step: int, **scalars: torch.Tensor) -> None:
        """Store this step's 0-dim tensors (no host synchronisation)."""
        row = self.values[len(self.steps)]
        for name, value in scalars.items():
            row[self.index[name]] = value
        self.steps.append(step)

    def column(self, name: str) -> torch.Tensor:
        """The filled rows of one column (a device view; no host synchronisation)."""
        return self.values[: len(self.steps), self.index[name]]

    def set_columns(self, **columns: torch.Tensor) -> None:
        """Overwrite the filled rows of columns with device tensors of that length (metrics
        computed for a whole block at the flush)."""
        n = len(self.steps)
        for name, value in columns.items():
            self.values[:n, self.index[name]] = value

    def drain(self) -> tuple[list[int], dict[str, list[float]]]:
        """The buffered steps and, per column, their values on the host; empties the buffer."""
        n = len(self.steps)
        rows = self.values[:n].float().cpu().tolist()
        steps, self.steps = self.steps, []
        self.values[:n] = float("nan")
        return steps, {name: [r[j] for r in rows] for name, j in self.index.items()}

    def state_dict(self) -> dict:
        """The filled rows (a CPU copy) and their steps, for checkpoints."""
        n = len(self.steps)
        return {"columns": list(self.columns), "steps": list(self.steps),
                "values": self.values[:n].detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if list(state["columns"]) != list(self.columns):
            raise ValueError(f"step buffer columns {state['columns']} in the checkpoint differ from "
                             f"{list(self.columns)}")
        n = len(state["steps"])
        self.values.fill_(float("nan"))
        self.values[:n] = state["values"].to(self.values.device, self.values.dtype)
        self.steps = list(state["steps"])
