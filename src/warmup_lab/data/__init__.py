"""Real, offline-first data sets held as tensors in memory (see each loader's docstring)."""

from warmup_lab.data.batches import RandomWindows, ShuffledBatches
from warmup_lab.data.cifar import load_cifar10
from warmup_lab.data.dataset import InMemoryData
from warmup_lab.data.digits import load_digits
from warmup_lab.data.mnist1d import load_mnist1d
from warmup_lab.data.text import load_bytes

__all__ = ["InMemoryData", "RandomWindows", "ShuffledBatches", "load_bytes", "load_cifar10",
           "load_digits",
           "load_mnist1d"]
