"""Sweep throughput: runs per hour of a small slice of a claim preset through `train.py -m`, one
run after another (`launcher=basic`, 1 and all-core threads) against parallel jobs
(`launcher=joblib`, cores // jobs threads each) and fused runs (`launcher=fused`: the slice's runs
as one model), timed side by side (interleaved repeats, medians).
Wall time of the whole command: process start-up and per-job overhead included.

    .venv/bin/python scripts/bench_sweep.py [--preset warmup_adam_vs_sgd] [--repeats 3]
        [--steps 300] [--sweep "optimizer=sgd" "study.lr_mult=1" "scheduler.warmup_ratio=0.0,0.1" "seed=0,1"]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SWEEP = ["optimizer=sgd", "study.lr_mult=1", "scheduler.warmup_ratio=0.0,0.1", "seed=0,1"]


def cores() -> int:
    return len(os.sched_getaffinity(0))


def modes(n_cores: int) -> dict[str, list[str]]:
    return {
        "basic, 1 thread": ["launcher=basic", "trainer.threads=1"],
        f"basic, {n_cores} threads": ["launcher=basic", f"trainer.threads={n_cores}"],
        f"joblib, {n_cores} jobs x 1 thread": ["launcher=joblib", f"hydra.launcher.n_jobs={n_cores}",
                                               "trainer.threads=1"],
        f"fused, {n_cores} threads": ["launcher=fused", f"trainer.threads={n_cores}"],
    }


def run_sweep(preset: str, sweep: list[str], extra: list[str], steps: int | None) -> tuple[float, int, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, str(ROOT / "train.py"), "-m", f"experiment={preset}",
                f"hydra.sweep.dir={tmp}/sweep", "trainer.progress=false", *sweep, *extra]
        if steps:
            args.append(f"trainer.max_steps={steps}")
        t0 = time.perf_counter()
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode:
            raise SystemExit(f"sweep failed ({' '.join(extra)}):\n{out.stderr[-3000:]}")
        statuses = [json.loads(p.read_text()).get("status") for p in Path(tmp).glob("sweep/*/metrics.json")]
        return wall, len(statuses), statuses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="warmup_adam_vs_sgd")
    ap.add_argument("--sweep", nargs="+", default=DEFAULT_SWEEP, help="sweep overrides (a slice of the preset)")
    ap.add_argument("--steps", type=int, default=None, help="trainer.max_steps (default: the preset's)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    n = cores()
    cases = modes(n)
    walls: dict[str, list[float]] = {k: [] for k in cases}
    runs = None
    load0 = os.getloadavg()[0]
    for _ in range(a.repeats):
        for name, extra in cases.items():
            wall, count, statuses = run_sweep(a.preset, a.sweep, extra, a.steps)
            if any(s != "completed" for s in statuses):
                raise SystemExit(f"{name}: runs ended {statuses}")
            runs = count
            walls[name].append(wall)
    print(f"# sweep throughput: experiment={a.preset} {' '.join(a.sweep)}"
          f"{f' trainer.max_steps={a.steps}' if a.steps else ''} ({runs} runs per sweep), {n} cores, "
          f"{a.repeats} interleaved repeats (medians); load average {load0:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end")
    base = statistics.median(walls["basic, 1 thread"])
    print(f"{'launcher':28s} {'sweep wall s':>12s} {'runs/hour':>10s} {'vs basic 1 thread':>18s}  all walls")
    for name, w in walls.items():
        med = statistics.median(w)
        print(f"{name:28s} {med:12.1f} {runs * 3600 / med:10.0f} {base / med:17.2f}x  "
              f"{' '.join(f'{x:.1f}' for x in w)}")


if __name__ == "__main__":
    main()
