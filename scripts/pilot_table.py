#!/usr/bin/env python
"""Summarise a pilot sweep: one row per setting, its seeds' final val loss, accuracy and status.

    python scripts/pilot_table.py outputs/pilots/mnist1d_adamw_nowarmup [more sweeps] [--by optimizer.lr]

A pilot runs a claim's no-warmup arm over a grid (lr, depth, ...) before the preset is written, to
place the preset where the published effect lives: the largest lr at which the arm still trains, or
where it starts to fail (docs/claims.md, "How the presets were placed"). This prints the Markdown
table docs/claims.md shows. Columns: the swept keys (or --by), per seed "val loss / acc", the runs
that failed to train by the analysis' rule (a NaN, no progress, accuracy < 1.5 x chance, or an LM at
the unigram plateau) and the mean early-phase jitter.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

from warmup_lab.analysis.load import failure_reason, load_runs
from warmup_lab.runs.rundir import FINISHED
from warmup_lab.runs.tb import swept_keys


def fmt(v, spec=".3f") -> str:
    return "nan" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", nargs="+", type=Path)
    ap.add_argument("--by", nargs="*", help="config keys of a row (default: the keys the sweeps vary, but seed)")
    args = ap.parse_args(argv)
    runs = []
    for r in load_runs(args.sweeps, curves=False):
        if r.status in FINISHED:
            runs.append(r)
        else:
            print(f"left out {r.path}: {r.status} (see its error.txt)", file=sys.stderr)
    if not runs:
        print("no finished runs under " + ", ".join(map(str, args.sweeps)), file=sys.stderr)
        return 1
    rows = [r.config for r in runs]
    by = args.by or [k for k in swept_keys(rows) if k not in ("seed", "trainer.seed")]
    groups: dict[tuple, list] = defaultdict(list)
    for run in runs:
        groups[tuple(run.config.get(k) for k in by)].append(run)
    print("| " + " | ".join(by) + " | seeds: val loss / acc | failed | early jitter |")
    print("|" + "---|" * (len(by) + 3))
    for key in sorted(groups, key=lambda t: tuple((str(type(v)), v) for v in t)):
        members = sorted(groups[key], key=lambda r: r.config.get("seed", 0))
        cells = [f"{fmt(r.metrics.get('final_val_loss'))} / {fmt(r.metrics.get('final_val_acc'), '.3f')}"
                 if r.metrics.get("status") != "diverged" else f"diverged at {r.metrics.get('diverged_step')}"
                 for r in members]
        failed = sum(failure_reason(r.metrics) is not None for r in members)
        jit = [r.metrics.get("early_jitter") for r in members if r.metrics.get("early_jitter") is not None]
        print("| " + " | ".join(str(v) for v in key) + f" | {'; '.join(cells)} | {failed}/{len(members)} | "
              f"{fmt(sum(jit) / len(jit), '.3f') if jit else 'n/a'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
