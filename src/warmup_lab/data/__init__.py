"""Real, offline-first data sets held as tensors in memory (see each loader's docstring)."""

from .batches import RandomWindows, ShuffledBatches
from .cifar import load_cifar10
from .dataset import InMemoryData
from .digits import load_digits
from .mnist1d import load_mnist1d
from .text import load_bytes

__all__ = ["InMemoryData", "RandomWindows", "ShuffledBatches", "load_bytes", "load_cifar10",
           "load_digits",
           "load_mnist1d"]
