"""Whole-process benchmark: ``python train.py`` (what ``make train`` runs: Hydra, validation, the
Trainer with every metric, TensorBoard, checkpoints, run records) against a plain hand-written
script of the same training (the same ResNet-20, digits split, batch order, SGD, linear warmup +
cosine and evaluations, written as a bare loop: no Hydra, no metrics, no files). Each is launched
as a fresh process, in alternating order, and timed from launch to exit; medians and ratios are
printed.

A third side, "plain + gc", is the plain script given what ``train.py`` does with Python's
garbage collector (off during start-up, then the start-up objects frozen; frozen again at exit:
``warmup_lab.runs.process.end_startup``). ``train.py`` against it is the cost of the harness's own
work (Hydra, validation, metrics, TensorBoard, checkpoints, records), with the start-up and exit
savings that any script could copy taken out; ``--no-gc-side`` leaves it out.

    .venv/bin/python scripts/bench_process.py [--repeats 5] [--threads 1] [--no-gc-side] [ARGS...]  # ARGS: train.py overrides

Target (issue #12): train.py / plain script <= 1.03 in wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
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

# the same script with train.py's garbage-collector handling (warmup_lab.runs.process.end_startup)
PLAIN_GC = ("import gc\ngc.disable()\n" + PLAIN).replace(
    "model.train()\nfor step", "import atexit\ngc.freeze()\ngc.enable()\natexit.register(gc.freeze)\nmodel.train()\nfor step")
assert PLAIN_GC.count("gc.freeze()") == 1


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one process from launch to exit; CPU is its user + system time
    (all threads), much less sensitive than wall time to other processes on a shared machine."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{out.stderr[-2000:]}")
    return elapsed, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="the checkout whose train.py (and src/) runs, e.g. a git worktree of an earlier commit")
    ap.add_argument("--no-gc-side", action="store_true", help="leave out the plain script with train.py's gc handling")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    print(f"# python {a.root / 'train.py'} vs a plain script of the same training (ResNet-20, digits, 400 steps), "
          f"{a.threads} thread(s), {a.repeats} alternating repeats; load average at start {os.getloadavg()[0]:.2f}")
    times: dict[str, list[tuple[float, float]]] = {"train.py": [], "plain": []} | ({} if a.no_gc_side else {"plain + gc": []})
    with tempfile.TemporaryDirectory() as tmp:
        scripts = {"plain": Path(tmp) / "plain.py", "plain + gc": Path(tmp) / "plain_gc.py"}
        scripts["plain"].write_text(PLAIN)
        scripts["plain + gc"].write_text(PLAIN_GC)
        env = {**os.environ, "PYTHONPATH": str(a.root / "src")}
        train = [sys.executable, str(a.root / "train.py"), "trainer.progress=false", f"trainer.threads={a.threads}",
                 "trainer.device=cpu", *a.overrides]
        sides = list(times)
        for i in range(a.repeats):
            for side in sides[i % len(sides):] + sides[:i % len(sides)]:  # each side goes first in turn
                if side == "train.py":
                    times[side].append(timed(train + [f"hydra.run.dir={tmp}/run{i}"], a.root, env))
                else:
                    times[side].append(timed([sys.executable, str(scripts[side]), str(a.threads)], ROOT))
    wall = {side: [w for w, _ in t] for side, t in times.items()}
    cpu = {side: [c for _, c in t] for side, t in times.items()}
    med = {side: statistics.median(t) for side, t in wall.items()}
    for side in sides:
        print(f"{side:10s} wall median {med[side]:.2f} s ({' '.join(f'{x:.2f}' for x in wall[side])}); "
              f"CPU median {statistics.median(cpu[side]):.2f} s")
    for side in sides[1:]:
        ratio = med["train.py"] / med[side]
        verdict = (f"target <= {TARGET}: {'met' if ratio <= TARGET else 'MISSED'}" if side == "plain"
                   else "the harness's own work, gc savings taken out")
        print(f"train.py / {side}: wall {ratio:.3f} (pairwise "
              f"{' '.join(f'{h / p:.3f}' for h, p in zip(wall['train.py'], wall[side]))}), "
              f"CPU {statistics.median(cpu['train.py']) / statistics.median(cpu[side]):.3f}; {verdict}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
