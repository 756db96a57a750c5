"""CIFAR-10 from the standard python-pickle files; torchvision downloads them when asked."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from warmup_lab.data.spec import DataSpec
from warmup_lab.data.dataset import InMemoryData

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def read_batches(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def crop_flip_params(b: int, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The random draws of :func:`random_crop_flip` for ``b`` images, on the CPU: a long tensor
    ``(3, b)`` of row shifts, column shifts and flip flags (drawn in that order)."""
    shifts = torch.randint(0, 2 * pad + 1, (2, b), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5
    return torch.cat([shifts, flips[None].long()])


def apply_crop_flip(x: torch.Tensor, params: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Crop and flip ``x`` with ``params`` from :func:`crop_flip_params` (may be on the CPU:
    one non-blocking copy, so a GPU step does not wait for the host)."""
    b, _, h, w = x.shape
    params = params.to(x.device, non_blocking=True)
    shifts, flips = params[:2], params[2].bool()
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (shifts[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (shifts[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    cols = torch.where(flips[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Batched random crop (zero padding ``pad``) and horizontal flip, as tensor ops."""
    return apply_crop_flip(x, crop_flip_params(x.shape[0], generator, pad), pad)


def load_cifar10(root: str = "data", download: bool = False, augment: bool = True,
                 train_subset: int | None = None, name: str = "cifar10") -> InMemoryData:
    """50000/10000 train/test images, normalised per channel; the test split is validation."""
    folder = Path(root).expanduser() / FOLDER
    if download:
        import torchvision  # imported only here: it is slow to import

        torchvision.datasets.CIFAR10(root=str(Path(root).expanduser()), train=True, download=True)
    missing = [n for n in TRAIN_FILES + [TEST_FILE] if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"data=cifar10: missing {', '.join(missing)} in {folder.resolve()} "
            f"(set data.root=DIR or run once with data.download=true on a machine with a network)")
    xtr, ytr = read_batches(folder, TRAIN_FILES)
    xva, yva = read_batches(folder, [TEST_FILE])
    if train_subset:
        xtr, ytr = xtr[:train_subset], ytr[:train_subset]
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    norm = lambda a: (torch.from_numpy(a).float() / 255 - mean) / std  # noqa: E731
    return InMemoryData(name=name, spec=DataSpec("classification", (3, 32, 32), 10),
                        train_x=norm(xtr), train_y=torch.from_numpy(ytr),
                        val_x=norm(xva), val_y=torch.from_numpy(yva),
                        augment=random_crop_flip if augment else None,
                        info={"num_train": len(xtr), "num_val": len(xva)})
