"""Batch samplers over tensors held in memory (on the training device).

No DataLoader and no worker processes: every data set here fits in memory, so a batch is an
index into resident tensors. Sampling uses its own CPU ``torch.Generator`` so the data order
depends only on the seed, and its state is saved in checkpoints for exact resume.
"""

from __future__ import annotations

import torch


class ShuffledBatches:
    """Epochs of a fresh random permutation, cut into full batches (the last partial one is
    dropped, so every step sees ``batch_size`` examples and shapes stay static)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size > n:
            raise ValueError(f"trainer.batch_size={batch_size} is larger than the training split ({n})")
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.pos = 0, 0
        self.perm = torch.randperm(n, generator=self.generator)

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def next(self) -> torch.Tensor:
        """Indices (CPU, long) of the next batch."""
        if self.pos + self.batch_size > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self.perm = torch.randperm(self.n, generator=self.generator)
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "epoch": self.epoch, "pos": self.pos,
                "perm": self.perm.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch, self.pos, self.perm = state["epoch"], state["pos"], state["perm"].clone()


class RandomWindows:
    """Uniformly random start offsets of ``context_length + 1`` token windows (nanoGPT style).
    One "epoch" is ``len(tokens) // (batch_size * context_length)`` steps."""

    def __init__(self, n_tokens: int, context_length: int, batch_size: int, seed: int):
        if n_tokens <= context_length + 1:
            raise ValueError(f"data.context_length={context_length} needs a corpus longer than "
                             f"{context_length + 1} tokens (training split has {n_tokens})")
        self.n_tokens, self.context_length, self.batch_size = n_tokens, context_length, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.n_tokens // (self.batch_size * self.context_length))

    def next(self) -> torch.Tensor:
        """Start offsets (CPU, long) of the next batch's windows."""
        high = self.n_tokens - self.context_length - 1
        return torch.randint(0, high + 1, (self.batch_size,), generator=self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
