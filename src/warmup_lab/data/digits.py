"""scikit-learn's bundled 8x8 digits, read from the csv it ships (no sklearn import needed)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from warmup_lab.data.spec import DataSpec
from warmup_lab.data.dataset import InMemoryData


def digits_csv_path() -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("data=digits needs scikit-learn installed (it ships the data)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``round(val_fraction * n_c)`` of each class go to validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(val_fraction * len(idx)))
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def load_digits(val_fraction: float = 0.2, split_seed: int = 0, name: str = "digits") -> InMemoryData:
    """1797 grey 8x8 images (pixel values 0..16), standardised with the training split's
    mean and std; a fixed stratified split that does not depend on the run seed."""
    with gzip.open(digits_csv_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images, labels = table[:, :-1].reshape(-1, 1, 8, 8), table[:, -1].astype(np.int64)
    tr, va = stratified_split(labels, val_fraction, split_seed)
    mean, std = images[tr].mean(), images[tr].std()
    x = torch.from_numpy((images - mean) / std)
    y = torch.from_numpy(labels)
    return InMemoryData(name=name, spec=DataSpec("classification", (1, 8, 8), 10),
                        train_x=x[tr], train_y=y[tr], val_x=x[va], val_y=y[va],
                        info={"num_train": len(tr), "num_val": len(va)})
