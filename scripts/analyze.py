#!/usr/bin/env python
"""Judge a sweep: `python scripts/analyze.py SWEEP_DIR [SWEEP_DIR ...] [--claim NAME] [--out DIR]`.

Reads every run below the sweep directories (metrics.json, .hydra/config.yaml, event files at
full resolution), groups runs into arms (all settings but the seed), aggregates over seeds and,
for the claim the preset names (`study.claim`) or `--claim`, states a verdict. Writes report.md,
runs.csv, arms.csv, verdicts.json, loss_curves.png, early_jitter.png, lr_sensitivity.png,
lr_schedules.png and a TensorBoard custom-scalars layout into the first sweep directory (or --out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from warmup_lab.analysis import CLAIMS, analyze


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dirs", nargs="+", type=Path, help="multirun directories (outputs/multirun/<stamp>)")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: the first sweep dir)")
    ap.add_argument("--claim", action="append", choices=sorted(CLAIMS),
                    help="judge this claim (repeatable); default: the runs' study.claim")
    ap.add_argument("--no-claim", action="store_true", help="arms, tables and plots only")
    ap.add_argument("--metric", default=None, help="loss metric from metrics.json (default: study.metric "
                                                   "or final_val_loss)")
    ap.add_argument("--margin", type=float, default=None, help="equivalence margin in loss units "
                                                              "(default: study.margin or 0.02)")
    ap.add_argument("--bootstrap", type=int, default=4000, help="bootstrap resamples (default 4000)")
    ap.add_argument("--no-tensorboard", action="store_true", help="skip the TensorBoard arm runs and layout")
    args = ap.parse_args(argv)
    claims = [] if args.no_claim else args.claim
    summary = analyze(args.sweep_dirs, out=args.out, claims=claims, metric=args.metric, margin=args.margin,
                      n_boot=args.bootstrap, tensorboard=not args.no_tensorboard)
    for c in summary["claims"]:
        h = c["headline"]
        g = lambda v: "n/a" if v is None else f"{v:+.4g}"  # noqa: E731
        eff = "" if h is None else (f": {h['name']}: {g(h['effect']['ci']['estimate'])} "
                                    f"[{g(h['effect']['ci']['lo'])}, {g(h['effect']['ci']['hi'])}]")
        print(f"{c['title']}: {c['verdict'].upper()}{eff}, {c['n_seeds']} seeds")
    print(f"{summary['n_runs']} runs, {summary['n_arms']} arms -> {Path(summary['out']) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
