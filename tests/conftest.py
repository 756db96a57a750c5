"""Shared fixtures: compose configs from conf/ with fast settings, read TensorBoard events."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import warmup_lab  # noqa: F401  (registers resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FAST = ["trainer.progress=false", "trainer.max_steps=6", "trainer.eval_interval=3",
        "trainer.log_interval=2", "trainer.batch_size=16", "trainer.device=cpu",
        "trainer.threads=1", "scheduler.warmup_ratio=null", "scheduler.warmup_steps=2"]
TINY_TRANSFORMER = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2"]
TINY_BYTES = ["data.max_bytes=20000", "data.context_length=16", "data.eval_sequences=8"]


@pytest.fixture(autouse=True, scope="session")
def _own_data_cache(tmp_path_factory):
    """MNIST-1D's generated arrays are cached in the user cache dir (data/mnist1d.py): the tests,
    and the runs they start as subprocesses, use a cache of their own."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(*overrides: str, fast: bool = True):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*(FAST if fast else []), *overrides])


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every point of every scalar tag in a run directory (size_guidance 0 = keep all)."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def start_until(cmd: list[str], cwd: Path, root: Path, pattern: str,
                timeout: float = 120) -> subprocess.Popen:
    """Start ``cmd`` and return it, still running, once a file matches ``root.glob(pattern)``
    (a checkpoint, say: the moment to send it a signal); fails if it ends or times out first."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not list(root.glob(pattern)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    return proc


def run_group_keeping_trainer(cfgs, run_dirs, monkeypatch):
    """``run_group`` (``run`` for one config) keeping the Trainer it built: (metrics, trainer)."""
    import warmup_lab.runs.run as run_module

    kept = []

    class Keep(run_module.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            kept.append(self)

    with monkeypatch.context() as m:
        m.setattr(run_module, "Trainer", Keep)
        metrics = run_module.run_group(cfgs, run_dirs)
    return metrics, kept[-1]


def run_keeping_trainer(cfg, run_dir, monkeypatch):
    """``run()`` as train.py calls it, keeping the Trainer it built: (metrics, TB scalars, trainer)."""
    [metrics], trainer = run_group_keeping_trainer([cfg], [run_dir], monkeypatch)
    return metrics, read_scalars(run_dir), trainer


def build_trainer(cfg, run_dir, device: str = "cpu"):
    """The Trainer exactly as ``run()`` builds it (``warmup_lab.runs.run.build_trainer``), on
    ``device``, for tests that drive single steps; a list of configs gives one Trainer of K runs
    (run ``k`` writing to ``run_dir/k``)."""
    from warmup_lab.runs.run import build_trainer as build
    from warmup_lab.runs.tb import RunWriter

    cfgs = cfg if isinstance(cfg, list) else [cfg]
    writers = [RunWriter(Path(run_dir) / str(k) if len(cfgs) > 1 else run_dir) for k in range(len(cfgs))]
    return build(cfgs, writers, torch.device(device), progress=False)


def write_tiny_cifar(root: Path, n_train_per_batch: int = 20, n_test: int = 20) -> Path:
    """A CIFAR-10 folder in the real python-pickle format, with few random images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "labels": rng.integers(0, 10, n).tolist(), "batch_label": "tiny"}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train_per_batch), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield
