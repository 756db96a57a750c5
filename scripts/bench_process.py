"""Whole-process benchmark: ``python train.py`` (what ``make train`` runs: Hydra, validation, the
Trainer with every metric, TensorBoard, checkpoints, run records) against a plain hand-written
script of the same training (the same ResNet-20, digits split, batch order, SGD, linear warmup +
cosine and evaluations, written as a bare loop: no Hydra, no metrics, no files). Both are launched
as fresh processes, alternately, and timed from launch to exit; medians and the ratio are printed.

    .venv/bin/python scripts/bench_process.py [--repeats 5] [--threads 1] [ARGS...]  # ARGS: train.py overrides

Target (issue #12): train.py / plain script <= 1.03 in wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.03

PLAIN = r'''
import math, sys
import torch
import torch.nn.functional as F
from warmup_lab.data import load_digits
from warmup_lab.models import cifar_resnet

threads, steps, batch, lr, warmup_ratio, eval_interval = int(sys.argv[1]), 400, 128, 0.1, 0.1, 100
torch.set_num_threads(threads)
torch.manual_seed(0)
data = load_digits()
model = cifar_resnet(spec=data.spec)
decay = [p for p in model.parameters() if p.ndim >= 2]
rest = [p for p in model.parameters() if p.ndim < 2]
opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}],
                      lr=lr, momentum=0.9)
warm = math.ceil(steps * warmup_ratio)
def mult(s):
    if s < warm:
        return (s + 1) / (warm + 1)
    return 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
sampler = data.sampler(batch, 0)
def evaluate():
    model.eval()
    with torch.no_grad():
        total = sum(F.cross_entropy(model(x), y, reduction="sum") for x, y in data.val_batches(512))
    model.train()
    return (total / len(data.val_x)).item()
model.train()
for step in range(steps):
    for g in opt.param_groups:
        g["lr"] = lr * mult(step)
    x, y = data.batch(sampler.next(), sampler.generator)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if (step + 1) % eval_interval == 0:
        val = evaluate()
print(f"final train loss {loss.item():.4f} val loss {val:.4f}")
'''


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{out.stderr[-2000:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="the checkout whose train.py (and src/) runs, e.g. a git worktree of an earlier commit")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    print(f"# python {a.root / 'train.py'} vs a plain script of the same training (ResNet-20, digits, 400 steps), "
          f"{a.threads} thread(s), {a.repeats} alternating repeats; load average at start {os.getloadavg()[0]:.2f}")
    harness, plain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "plain.py"
        script.write_text(PLAIN)
        env = {**os.environ, "PYTHONPATH": str(a.root / "src")}
        train = [sys.executable, str(a.root / "train.py"), "trainer.progress=false", f"trainer.threads={a.threads}",
                 "trainer.device=cpu", *a.overrides]
        for i in range(a.repeats):
            for side in ((harness, plain) if i % 2 == 0 else (plain, harness)):
                if side is harness:
                    side.append(timed(train + [f"hydra.run.dir={tmp}/run{i}"], a.root, env))
                else:
                    side.append(timed([sys.executable, str(script), str(a.threads)], ROOT))
    ratio = statistics.median(harness) / statistics.median(plain)
    print(f"train.py  median {statistics.median(harness):.2f} s  ({' '.join(f'{t:.2f}' for t in harness)})")
    print(f"plain     median {statistics.median(plain):.2f} s  ({' '.join(f'{t:.2f}' for t in plain)})")
    print(f"ratio {ratio:.3f} (pairwise {' '.join(f'{h / p:.3f}' for h, p in zip(harness, plain))}); "
          f"target <= {TARGET}: {'met' if ratio <= TARGET else 'MISSED'}; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
