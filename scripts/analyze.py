#!/usr/bin/env python
"""Judge a sweep: `python scripts/analyze.py SWEEP_DIR [SWEEP_DIR ...] [--claim NAME] [--claim-file PATH] [--plan]`.

Reads every run below the sweep directories (metrics.json, .hydra/config.yaml, event files at
full resolution), groups runs into arms (all settings but the seed), aggregates over seeds and,
for the claim the runs name (`study.claim`), a preset's claim (`--claim NAME`) or a claim of your
own (`--claim-file PATH`, docs/claims.md), states a verdict. A sweep run with `study.max_seeds`
is judged with its sequential design (study.json). `--plan` prints, per part, the spread of the
paired differences and the seeds needed to decide at the margin with 80% power. Writes
report.md, runs.csv, arms.csv, verdicts.json, loss_curves.png, early_jitter.png,
lr_sensitivity.png, lr_schedules.png, the arms as TensorBoard runs in <out>/tensorboard/ (with
their custom-scalars layout) and a per-run layout into the first sweep directory (or --out). A claim that does not fit the runs gets one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from warmup_lab.analysis import ClaimError, analyze, named_claims
from warmup_lab.analysis.power import plan_text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dirs", nargs="+", type=Path, help="multirun directories (outputs/multirun/<stamp>)")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: the first sweep dir)")
    ap.add_argument("--claim", action="append", default=[],
                    help=f"judge a preset's claim (repeatable): {', '.join(named_claims())}")
    ap.add_argument("--claim-file", action="append", default=[], type=Path,
                    help="judge the claim in this YAML file (repeatable; docs/claims.md)")
    ap.add_argument("--no-claim", action="store_true", help="arms, tables and plots only")
    ap.add_argument("--plan", action="store_true", help="print the seeds each part needs (80%% power)")
    ap.add_argument("--metric", default=None, help="loss metric from metrics.json (default: the claim's)")
    ap.add_argument("--margin", type=float, default=None, help="equivalence margin in loss units "
                                                              "(default: the claim's)")
    ap.add_argument("--bootstrap", type=int, default=4000, help="bootstrap resamples (default 4000)")
    ap.add_argument("--no-tensorboard", action="store_true", help="skip the TensorBoard arm runs and layout")
    args = ap.parse_args(argv)
    refs = [*args.claim, *map(str, args.claim_file)]
    claims = [] if args.no_claim else (refs or None)
    try:
        summary = analyze(args.sweep_dirs, out=args.out, claims=claims, metric=args.metric, margin=args.margin,
                          n_boot=args.bootstrap, tensorboard=not args.no_tensorboard, plan=args.plan)
    except (ClaimError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for c in summary["claims"]:
        h = c["headline"]
        g = lambda v: "n/a" if v is None else f"{v:+.4g}"  # noqa: E731
        eff = "" if h is None else (f": {h['name']}: {g(h['effect']['ci']['estimate'])} "
                                    f"[{g(h['effect']['ci']['lo'])}, {g(h['effect']['ci']['hi'])}]")
        print(f"{c['title']}: {c['verdict'].upper()}{eff}, {c['n_seeds']} seeds")
        if args.plan:
            for pl in summary["plans"][c["claim"]]:
                print(("  " if pl["primary"] else "  (supplementary) ") + plan_text(pl))
    print(f"{summary['n_runs']} runs, {summary['n_arms']} arms -> {Path(summary['out']) / 'report.md'}")
    if summary.get("tensorboard"):
        print(f"arms in TensorBoard: {summary['tensorboard']}   then open {summary['tensorboard_url']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
