"""Start-up benchmark: seconds from launching `python train.py` to the end of the first training
step, against the floors of `python -c "import torch"` and of `import torch, torch._dynamo` (every
torch optimizer imports torch._dynamo on first use in torch 2.14).

The end of step 0 is read from the run's own TensorBoard file (the wall time of the event of
``train/loss`` at step 0, written when that step is flushed with ``trainer.log_interval=1``), so
nothing in the harness is patched or instrumented. Runs are interleaved and the median is
reported (the machine is shared; see docs/performance.md).

    .venv/bin/python scripts/bench_startup.py [--repeats 5] [ARGS...]   # ARGS: extra overrides
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 3.0


def first_step_time(run_dir: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return min(e.wall_time for e in acc.Scalars("train/loss") if e.step == 0)


def time_train(extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp}/run",
                "trainer.max_steps=2", "trainer.log_interval=1", "trainer.eval_interval=2",
                "trainer.progress=false", *extra]
        t0 = time.time()
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"train.py failed:\n{out.stderr[-3000:]}")
        return first_step_time(Path(tmp) / "run") - t0


def time_cmd(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return time.perf_counter() - t0


def import_breakdown() -> list[tuple[str, float]]:
    """Cumulative import seconds of the heaviest top-level modules of train.py (-X importtime)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c",
                          "import runpy, sys; sys.argv=['train.py','--help']; "
                          "import importlib.util; spec=importlib.util.spec_from_file_location('t', 'train.py'); "
                          "m=importlib.util.module_from_spec(spec); spec.loader.exec_module(m)"],
                         cwd=ROOT, capture_output=True, text=True)
    rows = {}
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = line.split("|")
        if name.startswith(" ") and not name.startswith("   "):  # top level (1-2 spaces of indent)
            try:
                rows[name.strip()] = int(cum) / 1e6
            except ValueError:
                pass
    heavy = sorted(rows.items(), key=lambda kv: -kv[1])[:6]
    return heavy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for train.py")
    a = ap.parse_args()
    time_train(a.overrides)  # warm the file cache
    train, torch_only, dynamo, bare = [], [], [], []
    for _ in range(a.repeats):
        bare.append(time_cmd("pass"))
        torch_only.append(time_cmd("import torch"))
        dynamo.append(time_cmd("import torch, torch._dynamo"))
        train.append(time_train(a.overrides))
    med = statistics.median
    print(f"# start-up: `python train.py` -> end of training step 0 ({a.repeats} interleaved repeats; "
          f"load average {os.getloadavg()[0]:.2f}; {platform.processor() or platform.machine()})")
    print(f"python (no imports)        median {med(bare):6.2f} s")
    print(f"python -c 'import torch'   median {med(torch_only):6.2f} s  min {min(torch_only):.2f}")
    print(f"... + import torch._dynamo median {med(dynamo):6.2f} s  (torch.optim imports it on first use: "
          f"the floor of any loop with a torch optimizer)")
    print(f"train.py to first step     median {med(train):6.2f} s  min {min(train):.2f}  "
          f"all {' '.join(f'{t:.2f}' for t in train)}")
    print(f"harness on top of torch    median {med(train) - med(torch_only):6.2f} s; "
          f"on top of torch + dynamo {med(train) - med(dynamo):6.2f} s")
    print(f"target <= {TARGET_S} s: {'met' if med(train) <= TARGET_S else 'MISSED'} "
          f"(ratio {med(train) / TARGET_S:.2f} of the budget)")
    print("heaviest top-level imports of train.py (cumulative s, one run): "
          + ", ".join(f"{n} {s:.2f}" for n, s in import_breakdown()))


if __name__ == "__main__":
    main()
