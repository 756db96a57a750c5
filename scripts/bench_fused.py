"""Many runs per device: K ResNet runs trained fused (``warmup_lab.engine.fused``: grouped convs, one BN
over K*C channels, batched matmul head, one flat optimizer update with per-run lrs) against the
same K runs one after another through the harness's ``Trainer`` (all metrics on) and through a
bare loop. Prints training steps/s and the runs-per-hour ratio, measured side by side
(interleaved repeats, medians). Target (issue): >= 4x for ResNet-20 at K = 8 on an H100/H200.

Data: CIFAR-10-format files with random pixels (written to a temp dir; throughput does not depend
on the pixels), read by the real loader with the real augmentation; or ``--data digits``.

    .venv/bin/python scripts/bench_fused.py [--device cpu|cuda] [--k 8] [--steps 5] [--repeats 3]
        [--data cifar|digits] [--batch 128] [--threads N] [--channels-last]
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import Setup, bare_loop, compose, harness_loop, prepare, sync  # noqa: E402


def write_random_cifar(root: Path, per_batch: int) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = per_batch if name != "test_batch" else 256
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, f)
    return root


def fused_steps(cfgs, device, steps: int, channels_last: bool) -> tuple[float, float]:
    """Seconds (wall, process CPU) for ``steps`` fused steps of all runs (after 2 warm-up steps)."""
    from warmup_lab.engine.fused import FusedTrainer, build_fused

    model, opt, lrs, data, samplers, device = build_fused(cfgs, device, channels_last=channels_last)
    tr = cfgs[0].trainer
    t = FusedTrainer(model, opt, lrs, data, samplers, device=device, eval_interval=10**9,
                     log_interval=tr.log_interval, precision=tr.precision, channels_last=channels_last,
                     update_ratio=True, layer_interval=10 * tr.log_interval)  # the Trainer side's metrics
    for _ in range(2):
        t.train_step()
    t.flush()
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        t.train_step()
        if len(t.filled) == t.log_interval:
            t.flush()
    t.flush()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--k", type=int, nargs="+", default=[8], help="runs fused (several: one row each)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", choices=("cifar", "digits"), default="cifar")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    a = ap.parse_args()
    device = prepare(a.device, a.threads, "bench_fused")
    if device is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        if a.data == "cifar":
            root = write_random_cifar(Path(tmp) / "data", per_batch=max(a.batch * 2, 256))
            data_args = ["data=cifar10", f"data.root={root}"]
        else:
            data_args = ["data=digits"]
        common = ["model=resnet20", f"trainer.batch_size={a.batch}", f"trainer.device={a.device}",
                  f"trainer.precision={a.precision}", f"trainer.channels_last={str(a.channels_last).lower()}",
                  "trainer.progress=false", *data_args]
        print(f"# fused vs one-after-another: ResNet-20, {a.data} {'32x32' if a.data == 'cifar' else '8x8'}, "
              f"batch {a.batch} per run, {a.precision}{', channels_last' if a.channels_last else ''}, "
              f"device {device}, threads {torch.get_num_threads()}, {a.steps} steps x {a.repeats} "
              f"interleaved repeats (medians); load average at start {os.getloadavg()[0]:.2f}")
        print(f"{'K':>3s} {'fused run-steps/s':>17s} {'seq Trainer':>11s} {'seq bare':>9s} "
              f"{'runs/h vs Trainer':>17s} {'vs bare':>8s} {'(cpu-time ratios)':>18s}")
        for k in a.k:
            cfgs = [compose(common + [f"seed={j}", f"optimizer.lr={0.1 * (1 + j / 10):.3f}",
                                      f"trainer.max_steps={a.steps + 4}"]) for j in range(k)]
            setups = [Setup(common + [f"seed={j}", f"optimizer.lr={0.1 * (1 + j / 10):.3f}"], device, a.steps)
                      for j in range(k)]
            bare_loop(setups[0]), harness_loop(setups[0], Path(tmp))  # warm-up
            fused, seq_h, seq_b = [], [], []
            for _ in range(a.repeats):
                fused.append(fused_steps(cfgs, device, a.steps, a.channels_last))
                hs = [harness_loop(s, Path(tmp), final_eval=False) for s in setups]
                seq_h.append((sum(h[0] for h in hs), sum(h[1] for h in hs)))
                bs = [bare_loop(s, final_eval=False) for s in setups]
                seq_b.append((sum(b[0] for b in bs), sum(b[1] for b in bs)))
            med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
            rate = lambda xs: k * a.steps / med(xs, 0)  # noqa: E731  (run-steps per second)
            print(f"{k:3d} {rate(fused):17.2f} {rate(seq_h):11.2f} {rate(seq_b):9.2f} "
                  f"{med(seq_h, 0) / med(fused, 0):16.2f}x {med(seq_b, 0) / med(fused, 0):7.2f}x "
                  f"{med(seq_h, 1) / med(fused, 1):8.2f}x {med(seq_b, 1) / med(fused, 1):7.2f}x", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}. Training steps only (no evaluation) on all "
          f"sides. Target >= 4x is for ResNet-20 at K=8 on an H100/H200.")


if __name__ == "__main__":
    main()
