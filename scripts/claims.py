#!/usr/bin/env python
"""Run every claim preset and its analysis; collect the verdicts (`make claims`).

    python scripts/claims.py                       # all presets, CPU scale, into outputs/claims/
    python scripts/claims.py --only warmup_fraction --only postln_needs_warmup
    python scripts/claims.py --scale gpu           # the *_gpu presets (CIFAR-10, more steps and seeds)
    python scripts/claims.py --analyze-only        # re-judge the existing sweeps
    python scripts/claims.py -- trainer.max_steps=20   # extra overrides for every preset
    python scripts/claims.py --launcher basic      # runs one after another instead of one per core

For each preset: `train.py -m experiment=<name> launcher=joblib hydra.sweep.dir=<out>/<name>` (a
fresh directory unless --resume; one run per core at a time, one torch thread each, so the numbers
are those of any other launcher), then `scripts/analyze.py <out>/<name>`. Each preset carries its
sequential design (`study.max_seeds`, `study.budget_minutes`): rounds of seeds until decided. Each sweep shows its own live progress
line (runs done of planned, elapsed, ETA; the verdict per part between rounds of a sequential
study). Writes <out>/README.md: one row per claim with its setting, verdict, headline effect and
interval, seeds, wall time and report link.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    "warmup_lr_stability", "warmup_stability_threshold", "warmup_lowers_jitter")


def train(name: str, sweep_dir: Path, extra: list[str], resume: bool, launcher: str) -> tuple[int, float]:
    if sweep_dir.exists() and not resume:
        shutil.rmtree(sweep_dir)
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", f"experiment={name}", f"launcher={launcher}",
           f"hydra.sweep.dir={sweep_dir}", *(["trainer.resume=true"] if resume else []), *extra]
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


def parts_text(claim: dict, plans: list[dict] | None) -> str:
    """The verdict of each primary and context part; an undecided one with the seeds it would
    need at the observed spread and estimate (80% power, analysis/power.py)."""
    need = {p.get("id"): (p.get("seeds_at_margin"), p.get("seeds_at_estimate")) for p in plans or []}
    out = []
    for p in claim.get("parts", []):
        if not (p.get("primary") or p.get("context")):
            continue
        text = f"{p['id']}{' (context)' if p.get('context') else ''}: {p['verdict']}"
        if p["verdict"] == "inconclusive":
            at_margin, at_estimate = need.get(p["id"], (None, None))
            n = lambda v: f"about {v}" if v else "over 100000"  # noqa: E731 (power.seeds_needed's cap)
            text += f" (seeds to decide at this spread: {n(at_margin)} at the margin, {n(at_estimate)} at this estimate)"
        out.append(text)
    return "; ".join(out)


def collect(out: Path, names: list[str], scale: str, times: dict) -> Path:
    rows, total = [], 0.0
    for name in names:
        sweep = out / name
        vpath = sweep / "verdicts.json"
        if not vpath.is_file():
            rows.append(f"| {name} | | not run | | | | | | |")
            continue
        v = json.loads(vpath.read_text())
        t = times.get(name) or _read_time(sweep)
        total += t or 0.0
        plans = v.get("plans") or {}
        for c in v["claims"] or [{"title": name, "verdict": "no claim judged", "headline": None, "n_seeds": ""}]:
            eff, ci = fmt_effect(c.get("headline"))
            what = (c.get("headline") or {}).get("name", "")
            rows.append(f"| {c['title']} (`{name}`) | {v['setting']} | **{c['verdict']}** | "
                        f"{parts_text(c, plans.get(c.get('claim')))} | {eff} ({what}) | {ci} | {c['n_seeds']} | "
                        f"{'' if t is None else f'{t / 60:.1f} min'} | [report]({name}/report.md) |")
    md = ["# Warmup claims: verdicts", "",
          f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by `make claims` "
          f"(scripts/claims.py, scale {scale}). Each row is one preset (`conf/experiment/<name>.yaml`) run as a "
          "Hydra multirun and judged by `scripts/analyze.py`; definitions and decision rules in docs/claims.md.", "",
          "Effect: the headline part's loss difference in nats (its formula and the other parts are in the "
          "report): the part that decided a contradiction, else the claim's main comparison. Interval: union of "
          "the t-interval and the paired-seed bootstrap (Bonferroni-widened where one question is asked of k arms). "
          "Time: wall clock of the sweep (all its rounds) on this machine: "
          f"{platform.node()}, {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
          f"torch {_torch_version()}. Parts: the verdict of each primary (and context) part; an inconclusive one "
          "with the seeds it would need at the observed spread (80% power).", "",
          "| claim | setting | verdict | parts | effect (headline part) | interval | seeds | time | report |",
          "|---|---|---|---|---|---|---|---|---|", *rows, "",
          f"Total wall time of these sweeps: {total / 60:.1f} min.", "",
          "A verdict holds for its setting and budget only. At CPU scale several published effects may not "
          "show; the report says so rather than the setting being tuned until they do.", ""]
    path = out / "README.md"
    path.write_text("\n".join(md))
    return path


def _torch_version() -> str:
    import torch

    return torch.__version__


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
    ap.add_argument("--launcher", default="joblib", help="the sweeps' launcher (default joblib: one run per core)")
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
            rc, wall = train(preset, sweep, args.overrides, args.resume, args.launcher)
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
            summary = analyze([sweep], plan=True)
        except ClaimError as err:
            print(f"  {name}: error: {err}", flush=True)
            status |= 2
            continue
        for c in summary["claims"]:
            print(f"  {c['title']}: {c['verdict'].upper()} with {c['n_seeds']} seeds"
                  + (f", {times[name] / 60:.1f} min" if name in times else "")
                  + f" ({parts_text(c, (summary.get('plans') or {}).get(c.get('claim')))})", flush=True)
    path = collect(args.out, list(PRESETS), args.scale, times)  # every preset with a sweep, not only these
    print(f"verdicts: {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
