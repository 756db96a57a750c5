"""The in-memory data set bundle every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import torch

from warmup_lab.data.spec import DataSpec
from warmup_lab.data.batches import RandomWindows, ShuffledBatches


@dataclass
class InMemoryData:
    """Train and validation tensors plus how to draw batches from them.

    Classification: ``train_x`` (N, C, H, W) float, ``train_y`` (N,) long.
    Language modelling: ``train_x`` is the 1-D token stream (long) and ``train_y`` is None;
    ``val_x``/``val_y`` are fixed (M, T) windows shifted by one token.
    ``augment(x, generator)`` (optional) transforms a training batch with tensor ops.
    """

    name: str
    spec: DataSpec
    train_x: torch.Tensor
    train_y: torch.Tensor | None
    val_x: torch.Tensor
    val_y: torch.Tensor
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    info: dict = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "InMemoryData":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, train_x=move(self.train_x), train_y=move(self.train_y),
                       val_x=move(self.val_x), val_y=move(self.val_y))

    @property
    def num_train(self) -> int:
        return len(self.train_x)

    def sampler(self, batch_size: int, seed: int):
        if self.spec.is_lm:
            return RandomWindows(len(self.train_x), self.spec.input_shape[0], batch_size, seed)
        return ShuffledBatches(len(self.train_x), batch_size, seed)

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None):
        """The training batch for sampler indices ``idx`` (CPU), on the data's device."""
        idx = idx.to(self.train_x.device, non_blocking=True)
        if self.spec.is_lm:
            window = idx[:, None] + torch.arange(self.spec.input_shape[0] + 1, device=idx.device)
            tokens = self.train_x[window]
            return tokens[:, :-1], tokens[:, 1:]
        x, y = self.train_x[idx], self.train_y[idx]
        if self.augment is not None and generator is not None:
            x = self.augment(x, generator)
        return x, y

    def val_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.val_x), batch_size):
            yield self.val_x[i : i + batch_size], self.val_y[i : i + batch_size]
