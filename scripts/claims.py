#!/usr/bin/env python
"""Run every claim preset and its analysis; collect the verdicts (`make claims`).

    python scripts/claims.py                       # all presets, CPU scale, into outputs/claims/
    python scripts/claims.py --only warmup_fraction --only postln_needs_warmup
    python scripts/claims.py --scale gpu           # the *_gpu presets (CIFAR-10, more steps and seeds)
    python scripts/claims.py --analyze-only        # re-judge the existing sweeps
    python scripts/claims.py -- trainer.max_steps=20   # extra overrides for every preset
    python scripts/claims.py -- study.max_seeds=12     # each preset runs until decided (docs/claims.md)

For each preset: `train.py -m experiment=<name> hydra.sweep.dir=<out>/<name>` (a fresh directory
unless --resume), then `scripts/analyze.py <out>/<name>`. Each sweep shows its own live progress
line (runs done of planned, elapsed, ETA; the verdict per part between rounds of a sequential
study). Writes <out>/README.md: one row per claim with its setting, verdict, headline effect and
interval, seeds, wall time and report link.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from warmup_lab.analysis.claimspec import ClaimError, preset_names  # noqa: E402

# every experiment preset that carries a claim, at CPU scale (the *_gpu variants via --scale gpu)
PRESETS = tuple(n for n in preset_names() if not n.endswith("_gpu")) or (
    "warmup_adam_vs_sgd", "postln_needs_warmup", "radam_untuned_replaces_warmup", "warmup_fraction",
    "warmup_lr_stability")


def train(name: str, sweep_dir: Path, extra: list[str], resume: bool) -> tuple[int, float]:
    if sweep_dir.exists() and not resume:
        shutil.rmtree(sweep_dir)
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", f"experiment={name}", f"hydra.sweep.dir={sweep_dir}",
           *(["trainer.resume=true"] if resume else []), *extra]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    return proc.returncode, time.perf_counter() - t0


def fmt_effect(h: dict | None) -> tuple[str, str]:
    if not h:
        return "n/a", "n/a"
    ci = h["effect"]["ci"]
    g = lambda v: "n/a" if v is None else f"{v:+.4f}"  # noqa: E731
    return g(ci["estimate"]), f"[{g(ci['lo'])}, {g(ci['hi'])}] ({ci['level']:.1%})"


def collect(out: Path, names: list[str], scale: str, times: dict) -> Path:
    rows = []
    for name in names:
        sweep = out / name
        vpath = sweep / "verdicts.json"
        if not vpath.is_file():
            rows.append(f"| {name} | | not run | | | | | |")
            continue
        v = json.loads(vpath.read_text())
        t = times.get(name) or _read_time(sweep)
        for c in v["claims"] or [{"title": name, "verdict": "no claim judged", "headline": None, "n_seeds": ""}]:
            eff, ci = fmt_effect(c.get("headline"))
            what = (c.get("headline") or {}).get("name", "")
            rows.append(f"| {c['title']} | {v['setting']} | **{c['verdict']}** | {eff} ({what}) | {ci} | "
                        f"{c['n_seeds']} | {'' if t is None else f'{t / 60:.1f} min'} | [report]({name}/report.md) |")
    md = ["# Warmup claims: verdicts", "",
          f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by `make claims` "
          f"(scripts/claims.py, scale {scale}). Each row is one preset (`conf/experiment/<name>.yaml`) run as a "
          "Hydra multirun and judged by `scripts/analyze.py`; definitions and decision rules in docs/claims.md.", "",
          "Effect: the headline part's loss difference in nats (its formula and the other parts are in the "
          "report): the part that decided a contradiction, else the claim's main comparison. Interval: union of "
          "the t-interval and the paired-seed bootstrap (Bonferroni-widened where one question is asked of k arms). "
          "Time: wall clock of the sweep on this machine (shared with other work, so approximate).", "",
          "| claim | setting | verdict | effect (headline part) | interval | seeds | time | report |",
          "|---|---|---|---|---|---|---|---|", *rows, "",
          "A verdict holds for its setting and budget only. At CPU scale several published effects may not "
          "show; the report says so rather than the setting being tuned until they do.", ""]
    path = out / "README.md"
    path.write_text("\n".join(md))
    return path


def _read_time(sweep: Path) -> float | None:
    p = sweep / "preset_time.json"
    return json.loads(p.read_text()).get("wall_s") if p.is_file() else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=PRESETS, help="run only this preset (repeatable)")
    ap.add_argument("--scale", choices=("cpu", "gpu"), default="cpu", help="gpu: the *_gpu presets")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "claims")
    ap.add_argument("--analyze-only", action="store_true", help="do not train; re-judge existing sweeps")
    ap.add_argument("--resume", action="store_true", help="continue existing sweep dirs instead of starting fresh")
    ap.add_argument("overrides", nargs="*", help="extra overrides for every preset (after --)")
    args = ap.parse_args(argv)
    names = args.only or list(PRESETS)
    args.out.mkdir(parents=True, exist_ok=True)
    from warmup_lab.analysis import analyze

    times, status = {}, 0
    for i, name in enumerate(names):
        sweep = args.out / name
        print(f"[{i + 1}/{len(names)}] {name}", flush=True)
        if not args.analyze_only:
            preset = name + ("_gpu" if args.scale == "gpu" else "")
            rc, wall = train(preset, sweep, args.overrides, args.resume)
            times[name] = wall
            sweep.mkdir(parents=True, exist_ok=True)
            (sweep / "preset_time.json").write_text(json.dumps(
                {"preset": preset, "wall_s": round(wall, 1), "returncode": rc, "overrides": args.overrides}) + "\n")
            print(f"{preset}: {wall / 60:.1f} min, exit code {rc}", flush=True)
            status |= rc
        if not sweep.is_dir():
            print(f"{name}: no sweep directory {sweep}; skipped", flush=True)
            continue
        try:
            summary = analyze([sweep])
        except ClaimError as err:
            print(f"  {name}: error: {err}", flush=True)
            status |= 2
            continue
        for c in summary["claims"]:
            print(f"  {c['title']}: {c['verdict'].upper()}", flush=True)
    path = collect(args.out, list(PRESETS), args.scale, times)  # every preset with a sweep, not only these
    print(f"verdicts: {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
