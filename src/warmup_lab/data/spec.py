"""What a model needs to know about its data, decided by the data module."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataSpec:
    """Shape of one example and of the target.

    task: ``"classification"`` (input float ``(B, *input_shape)``, target class ids ``(B,)``,
    model returns logits ``(B, num_classes)``) or ``"lm"`` (input token ids ``(B, T)`` of dtype
    long, target ids ``(B, T)``, model returns logits ``(B, T, num_classes)``).
    input_shape: ``(C, H, W)`` for images, ``(T,)`` (context length in tokens) for ``lm``.
    num_classes: number of classes, or the vocabulary size for ``lm``.
    """

    task: str
    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def is_lm(self) -> bool:
        return self.task == "lm"
