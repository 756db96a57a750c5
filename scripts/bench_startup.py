"""Start-up benchmark: seconds from launching `python train.py` to the end of the first training
step, next to floors measured the same way: launching Python, `import torch`, and a bare PyTorch
script (a small conv net, `torch.optim.SGD`, one step), which pays what every torch training
script pays, `torch._dynamo` included (torch 2.14's optimizers import it when constructed).

Every time runs from launch to a wall-clock stamp taken where the work ends (the floors print
one; for train.py it is the wall time of the ``train/loss`` event of step 0 in the run's own
TensorBoard file, written at that step's flush with ``trainer.log_interval=1``), so interpreter
shutdown is never counted and nothing in the harness is patched. Runs are interleaved and
medians reported (the machine is shared; see docs/performance.md).

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


BARE_SCRIPT = """
import torch
from torch import nn
model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(128, 1, 8, 8), torch.randint(0, 10, (128,))
nn.functional.cross_entropy(model(x), y).backward()
opt.step()
"""
# the same with the garbage collector off, as train.py starts (warmup_lab.runs.process): the
# harness's own start-up work is train.py against this one
BARE_SCRIPT_GC = "import gc\ngc.disable()\n" + BARE_SCRIPT


def time_cmd(code: str) -> float:
    """Seconds from launch to the end of ``code`` (a stamp it prints; exit not counted)."""
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code + "\nimport time; print(time.time())"],
                         cwd=ROOT, check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1]) - t0


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
    train, torch_only, script, script_gc, bare = [], [], [], [], []
    for _ in range(a.repeats):
        bare.append(time_cmd("pass"))
        torch_only.append(time_cmd("import torch"))
        script.append(time_cmd(BARE_SCRIPT))
        script_gc.append(time_cmd(BARE_SCRIPT_GC))
        train.append(time_train(a.overrides))
    med = statistics.median
    print(f"# start-up: launch -> end of training step 0 ({a.repeats} interleaved repeats; "
          f"load average {os.getloadavg()[0]:.2f}; {platform.processor() or platform.machine()})")
    print(f"python (no imports)           median {med(bare):6.2f} s")
    print(f"python -c 'import torch'      median {med(torch_only):6.2f} s  min {min(torch_only):.2f}")
    print(f"bare torch script, 1 SGD step median {med(script):6.2f} s  min {min(script):.2f}  "
          "(the floor of any torch training script: torch + torch._dynamo via torch.optim)")
    print(f"the same, collector off       median {med(script_gc):6.2f} s  min {min(script_gc):.2f}  "
          "(as train.py starts: gc.disable() before the imports)")
    print(f"train.py to first step        median {med(train):6.2f} s  min {min(train):.2f}  "
          f"all {' '.join(f'{t:.2f}' for t in train)}")
    print(f"harness on top of the bare script: median {med(train) - med(script):+.2f} s "
          f"(ratio {med(train) / med(script):.2f}); on top of the bare script with the collector off: "
          f"{med(train) - med(script_gc):+.2f} s (the harness's own start-up: Hydra, config, data, TensorBoard)")
    print(f"target <= {TARGET_S} s: {'met' if med(train) <= TARGET_S else 'MISSED'} "
          f"(ratio {med(train) / TARGET_S:.2f} of the budget; the bare script alone is "
          f"{med(script) / TARGET_S:.2f})")
    print("heaviest top-level imports of train.py (cumulative s, one run): "
          + ", ".join(f"{n} {s:.2f}" for n, s in import_breakdown()))


if __name__ == "__main__":
    main()
