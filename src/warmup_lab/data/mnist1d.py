"""MNIST-1D (Greydanus 2020, "Scaling Down Deep Learning"), generated here, never downloaded.

Ten classes of 1-D signals of length 40, made from ten hand-drawn templates by padding, random
scaling and translation, shear, correlated and iid noise. Built to separate architectures and
training choices at a scale a CPU trains in seconds: a logistic regression reaches about 32% test
accuracy, an MLP about 68%, a CNN about 94% (on MNIST all of them pass 94%).

The signals come from the PyPI package's own ``mnist1d.data.make_dataset`` with its templates
(``get_templates``) and its default transform arguments (``get_dataset_args``), with ``num_samples``
and the generator ``seed`` as knobs. Its ``get_dataset`` tries a download first, so it is never
called. The generated arrays are cached (``.npz``, keyed by every generation argument and the
package version) under ``cache_dir``, by default ``$XDG_CACHE_HOME/warmup-lab`` or
``~/.cache/warmup-lab``; ``cache=false`` switches the cache off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from warmup_lab.data.spec import DataSpec
from warmup_lab.data.dataset import InMemoryData
from warmup_lab.runs.runinfo import write_json

log = logging.getLogger(__name__)
SEQ_LENGTH = 40  # the package's final_seq_length: every signal has 40 samples
NUM_CLASSES = 10
# the keys of get_dataset_args() that shape the signals (its 'url' only serves get_dataset)
GENERATION_KEYS = ("num_samples", "train_split", "template_len", "padding", "scale_coeff", "max_translation",
                   "corr_noise_scale", "iid_noise_scale", "shear_scale", "shuffle_seq", "final_seq_length", "seed")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "warmup-lab"


def generation_args(num_samples: int, seed: int, train_split: float) -> dict:
    """The package's default arguments with ours put in (a plain dict, no 'url')."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.update(num_samples=int(num_samples), seed=int(seed), train_split=float(train_split))
    return {k: args[k] for k in GENERATION_KEYS}


def cache_key(args: dict) -> str:
    """Hex digest of the generation arguments and the mnist1d version: equal keys, equal arrays."""
    payload = json.dumps({"args": args, "mnist1d": metadata.version("mnist1d")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def generate(args: dict) -> dict[str, np.ndarray]:
    """``mnist1d.data.make_dataset`` on ``args``, with the global ``random``/``numpy`` RNG
    states (which the package reseeds) put back afterwards. Arrays: x (N, 40) float32, y (N,) int64,
    x_test, y_test."""
    from mnist1d.data import get_templates, make_dataset
    from mnist1d.utils import ObjectView

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(ObjectView(dict(args)), template=get_templates())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"x": d["x"].astype(np.float32), "y": d["y"].astype(np.int64),
            "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int64)}


def load_arrays(args: dict, cache_dir: str | Path | None, key: str | None = None) -> tuple[dict[str, np.ndarray], str]:
    """The arrays for ``args``, from the cache when a file for their key (:func:`cache_key`) is
    there (else generated and written atomically: a temporary file, then a rename). Returns
    (arrays, where they came from)."""
    if cache_dir is None:
        return generate(args), "generated (no cache)"
    path = Path(cache_dir).expanduser() / "mnist1d" / f"{key or cache_key(args)}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
            return arrays, f"cache {path}"
        except (OSError, KeyError, ValueError):  # a damaged file: make it again
            pass
    arrays = generate(args)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        write_json(path.parent / f"{path.stem}.json", args)
    except OSError:  # a read-only cache directory only costs the regeneration next time
        return arrays, "generated (cache not writable)"
    return arrays, f"generated, cached at {path}"


def load_mnist1d(num_samples: int = 10000, seed: int = 42, train_split: float = 0.8, cache: bool = True,
                 cache_dir: str | None = None, name: str = "mnist1d") -> InMemoryData:
    """MNIST-1D as ``(N, 1, 40)`` float signals and class ids.

    ``num_samples``: signals in all, ``num_samples // 10`` per class (the package's rule), of which
    the first ``train_split`` (after its shuffle) train and the rest validate. ``seed``: the
    generator's seed (42 is the paper's data set), independent of the run seed. The package
    standardises the whole set to mean 0, std 1. ``cache``: keep the generated arrays in
    ``cache_dir`` (None: the user cache dir, :func:`default_cache_dir`) for the next run.
    """
    args = generation_args(num_samples, seed, train_split)
    key = cache_key(args)
    where = None if not cache else (default_cache_dir() if cache_dir is None else cache_dir)
    arrays, source = load_arrays(args, where, key)
    log.info("data mnist1d (%d samples, seed %d): %s", num_samples, seed, source)
    x, xv = (torch.from_numpy(arrays[k]).unsqueeze(1) for k in ("x", "x_test"))
    y, yv = torch.from_numpy(arrays["y"]), torch.from_numpy(arrays["y_test"])
    return InMemoryData(name=name, spec=DataSpec("classification", (1, SEQ_LENGTH), NUM_CLASSES),
                        train_x=x, train_y=y, val_x=xv, val_y=yv,
                        info={"num_train": len(y), "num_val": len(yv), "generator_key": key})


def split_sizes(num_samples: int, train_split: float) -> tuple[int, int]:
    """(train, val) sizes that :func:`load_mnist1d` gives, without generating anything."""
    n = (int(num_samples) // NUM_CLASSES) * NUM_CLASSES
    split = int(n * float(train_split))
    return split, n - split
