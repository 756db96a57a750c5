"""Cost of the curvature probe: steps/s of the real ``Trainer`` with
``trainer.metrics.curvature_interval=N`` against the same trainer with it off, side by side.

Two trainers on the same model, data and schedule train in one process, their steps interleaved
(a step of one, a step of the other, flushes where ``fit`` does them), so a shared machine's
drift cancels; the probe's steps (step 0, N, 2N, ...) fall inside the measured window. Ratio =
steps/s on over off, median over repeats. Target: >= 0.90 at N = 50.

    .venv/bin/python scripts/bench_curvature.py [--interval 50] [--steps 200] [--repeats 3]
        [--preset resnet20-digits transformer-bytes] [--threads 1] [--iters 10] [--batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import PRESETS, Setup, make_trainer, prepare, sync  # noqa: E402

TARGET = 0.90


def interleaved(on: Setup, off: Setup, tmp: Path) -> tuple[float, float]:
    a, b = make_trainer(off, tmp), make_trainer(on, tmp)
    ta = tb = 0.0
    for _ in range(on.steps):
        for trainer, slot in ((a, 0), (b, 1)):
            sync(on.device)
            t0 = time.perf_counter()
            trainer.train_step()
            if trainer.buffer.full or trainer.step == on.steps:
                trainer.flush()
            sync(on.device)
            if slot == 0:
                ta += time.perf_counter() - t0
            else:
                tb += time.perf_counter() - t0
    a.runs[0].writer.close()
    b.runs[0].writer.close()
    return ta, tb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=int, default=50)
    ap.add_argument("--iters", type=int, default=None, help="curvature_iters (default: the config's)")
    ap.add_argument("--batch", type=int, default=None, help="curvature_batch (default: the config's)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", nargs="+", default=["resnet20-digits", "transformer-bytes"], choices=list(PRESETS))
    args = ap.parse_args()
    device = prepare(args.device, args.threads, "bench_curvature")
    if device is None:
        return
    knobs = [f"trainer.metrics.curvature_interval={args.interval}"]
    knobs += [f"trainer.metrics.curvature_iters={args.iters}"] if args.iters else []
    knobs += [f"trainer.metrics.curvature_batch={args.batch}"] if args.batch else []
    print(f"curvature probe cost: interval {args.interval}, {args.steps} steps, {args.repeats} repeats, "
          f"{args.threads} thread(s), device {device}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.preset:
            off = Setup(PRESETS[name] + [f"trainer.device={args.device}"], device, args.steps)
            on = Setup(PRESETS[name] + [f"trainer.device={args.device}", *knobs], device, args.steps)
            ratios = []
            for _ in range(args.repeats):
                t_off, t_on = interleaved(on, off, Path(tmp))
                ratios.append(t_off / t_on)
            probe = on.cfg.trainer.metrics
            r = statistics.median(ratios)
            print(f"  {name}: steps/s with the probe / without = {r:.3f} (repeats {', '.join(f'{x:.3f}' for x in ratios)}; "
                  f"iters {probe.curvature_iters}, probe batch {probe.curvature_batch or on.cfg.trainer.batch_size}, "
                  f"train batch {on.cfg.trainer.batch_size}) target >= {TARGET}: {'met' if r >= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
