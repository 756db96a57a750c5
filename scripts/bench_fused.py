"""Many runs per device: K runs through one ``Trainer`` (``launcher=fused``; the grouped ResNet or the
vmapped Transformer, engine/stacking.py) against the same K runs one after another, each through the
same ``Trainer`` with K = 1. Both sides are the real trainer with every metric on and a real
TensorBoard writer per run; training steps only. Repeats are interleaved (group, then the K runs
alone, ...) and medians reported: the ratio is measured side by side in one process.

Presets are the claim presets' models on this CPU (docs/claims.md) and ResNet-20 (the default experiment, and the GPU target's model):

    .venv/bin/python scripts/bench_fused.py [--preset resnet1d-mnist1d transformer-bytes ...] [--k 8]
        [--steps 30] [--repeats 3] [--threads 1] [--device cpu|cuda]

Target (issue #12): K = 8 at >= 1.5x the runs/hour of one after another for the claim presets'
models on the CPU (>= 4x for ResNet-20 on an H100/H200).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import compose, prepare, sync  # noqa: E402

PRESETS = {  # the settings of the claim presets that use these models (conf/experiment/*.yaml)
    "resnet1d-mnist1d": ["model=resnet1d", "data=mnist1d", "trainer.batch_size=64", "optimizer=adamw",
                         "optimizer.lr=0.01"],
    "resnet8-digits": ["model=resnet20", "model.depth=8", "model.width=8", "data=digits", "trainer.batch_size=64",
                       "optimizer=sgd", "optimizer.lr=0.4"],
    "transformer-bytes": ["model=transformer", "data=bytes", "model.n_layers=6", "model.d_model=64",
                          "model.n_heads=4", "model.context_length=64", "data.context_length=64",
                          "trainer.batch_size=32", "optimizer=adamw", "optimizer.lr=3e-3", "optimizer.betas=[0.9,0.98]"],
    "resnet20-digits": ["model=resnet20", "data=digits", "trainer.batch_size=128", "optimizer=sgd", "optimizer.lr=0.1"],
}


def build(cfgs, device: torch.device, tmp: Path):
    """One ``Trainer`` of ``len(cfgs)`` runs, built as ``run_group`` builds it (no evaluation)."""
    from warmup_lab.runs.run import build_trainer
    from warmup_lab.runs.tb import RunWriter

    writers = [RunWriter(Path(tempfile.mkdtemp(dir=tmp))) for _ in cfgs]
    return build_trainer(cfgs, writers, device, eval_interval=10**9, progress=False)


def timed_steps(cfgs, device: torch.device, steps: int, tmp: Path) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``steps`` training steps of one Trainer of ``cfgs``, after
    2 warm-up steps and a flush (allocations, oneDNN primitives, optimizer state)."""
    t = build(cfgs, device, tmp)
    for _ in range(2):
        t.train_step()
    t.flush()
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        t.train_step()
        if t.buffer.full:
            t.flush()
    t.flush()
    sync(device)
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    for r in t.runs:
        r.writer.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", nargs="+", default=["resnet1d-mnist1d", "resnet8-digits", "transformer-bytes"],
                    choices=sorted(PRESETS))
    ap.add_argument("--k", type=int, nargs="+", default=[8], help="runs per group (several: one row each)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (trainer.precision=bf16, ...)")
    a = ap.parse_args()
    device = prepare(a.device, a.threads, "bench_fused")
    if device is None:
        return
    print(f"# K runs in one Trainer vs the same K runs one after another (Trainer, K = 1); device {device}, "
          f"threads {torch.get_num_threads()}, {a.steps} steps x {a.repeats} interleaved repeats (medians); "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'preset':18s} {'K':>3s} {'group run-steps/s':>17s} {'one after another':>17s} {'runs/h ratio':>12s} "
          f"{'cpu-time ratio':>14s}  pairwise")
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.preset:
            for k in a.k:
                common = [*PRESETS[name], f"trainer.device={a.device}", "trainer.progress=false",
                          f"trainer.max_steps={a.steps + 2}", *a.overrides]
                lr = float(compose(common).optimizer.lr)
                cfgs = [compose(common + [f"seed={j}", f"optimizer.lr={lr * (1 + j / 10)}"]) for j in range(k)]
                timed_steps(cfgs[:1], device, 2, Path(tmp))  # warm-up
                group, alone = [], []
                for _ in range(a.repeats):
                    group.append(timed_steps(cfgs, device, a.steps, Path(tmp)))
                    runs = [timed_steps([c], device, a.steps, Path(tmp)) for c in cfgs]
                    alone.append((sum(r[0] for r in runs), sum(r[1] for r in runs)))
                med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
                pair = sorted(b[0] / g[0] for g, b in zip(group, alone))
                print(f"{name:18s} {k:3d} {k * a.steps / med(group, 0):17.1f} {k * a.steps / med(alone, 0):17.1f} "
                      f"{med(alone, 0) / med(group, 0):11.2f}x {med(alone, 1) / med(group, 1):13.2f}x  "
                      f"{' '.join(f'{p:.2f}' for p in pair)}", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}. Target: >= 1.5x at K = 8 for the claim presets' "
          f"models on the CPU.")


if __name__ == "__main__":
    main()
