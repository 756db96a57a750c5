"""Plot lr against step for any schedules of conf/scheduler/ into one PNG.

    python scripts/plot_schedules.py                     # every schedule, one panel each
    python scripts/plot_schedules.py --schedules warmupcosine noam --total-steps 1000 \\
        --set warmup_ratio=0.1 --overlay --out cmp.png   # overlaid for comparison
    python scripts/plot_schedules.py --overlay --schedules warmupcosine \\
        "warmupcosine:warmup_steps=10" "warmupcosine:warmup_type=cosine,start_factor=0"

A schedule is ``NAME`` or ``NAME:key=value,key=value`` (its own settings, also used as the legend).
``--set key=value`` applies to every chosen schedule that has the key (dots reach nested keys:
``after_scheduler.name=multistep``). Setting one of a steps/ratio pair (``warmup_steps`` /
``warmup_ratio``, ...) nulls the other. Values are parsed as YAML (``null``, ``[1, 2]``, ``0.1``).
The y axis is ``lr * multiplier`` with ``--lr`` (default 1: the multiplier itself).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from warmup_lab.schedules import SCHEDULES, STEP_RATIO_PAIRS, ScheduleError, build_schedule

CONF = ROOT / "conf" / "scheduler"


def parse_assignments(text: str) -> dict:
    """``"a=1,b.c=null,m=[1, 2]"`` -> ``{"a": 1, "b.c": None, "m": [1, 2]}`` (YAML values)."""
    out = {}
    for part in re.split(r",(?=\s*[\w.]+=)", text):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"cannot parse {text!r}: expected key=value[,key=value]")
        out[key.strip()] = yaml.safe_load(value.strip())
    return out


def _has(cfg: dict, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _put(cfg: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    node = cfg
    for part in path:
        node = node[part]
    node[last] = value
    for a, b in STEP_RATIO_PAIRS:  # one of a pair set: the other becomes null
        if last in (a, b):
            node[b if last == a else a] = None


def schedule_config(spec: str, common: dict) -> tuple[str, dict]:
    name, _, own = spec.partition(":")
    path = CONF / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"unknown schedule {name!r}: choose from {', '.join(SCHEDULES)}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    for key, value in common.items():
        if _has(cfg, key):
            _put(cfg, key, value)
    for key, value in (parse_assignments(own) if own else {}).items():
        if not _has(cfg, key):
            raise SystemExit(f"{name} has no knob {key!r}")
        _put(cfg, key, value)
    return spec, cfg


#: Variants shown in the gallery beside every schedule at its defaults: the knobs that change a
#: schedule's shape (cycles, modes, peers' conventions).
GALLERY_VARIANTS = ("timmcosine:warmup_steps=50,warmup_prefix=true,t_initial=300,cycle_limit=3,cycle_decay=0.6",
                    "timmcosine:warmup_steps=50,t_initial=200,cycle_mul=2,cycle_limit=3,cycle_warmup=true",
                    "sgdr:t_0=100,t_mult=2",
                    "cycliclr:mode=triangular2",
                    "cycliclr:mode=exp_range,gamma=0.997",
                    "noam:count_from=1,warmup_steps=10",
                    "stepdecay:step_size=112.5,gamma=0.5")


def synthetic_val_history(total: int, every: int) -> list[dict]:
    """A validation loss for plotting a schedule that follows one: falls linearly from 2.0 to 0.3
    by 57% of the run, then flat; evaluated every ``every`` steps."""
    return [{"step": e, "loss": max(0.3, 2.0 - 3.0 * e / total), "acc": 0.0} for e in range(every, total + 1, every)]


def curve(cfg: dict, total: int, optimizer: dict, extend: float, eval_every: int | None = None):
    sched = build_schedule(cfg, total_steps=total, optimizer_cfg=optimizer)
    if sched.needs_val_history:  # reduceonplateau: on the synthetic loss (the panel says so)
        sched = sched.with_val_history(synthetic_val_history(total, eval_every or max(1, total // 100)))
    steps = list(range(total + 1 + int(extend * total)))
    return sched, steps, [optimizer["lr"] * sched(s) for s in steps]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schedules", nargs="*", default=None,
                   help="NAME or NAME:key=value,... (default: all)")
    p.add_argument("--total-steps", type=int, default=1000, help="T, as the trainer would pass it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="knob for every schedule that has it (repeatable)")
    p.add_argument("--overlay", action="store_true",
                   help="one axes for all curves instead of a panel each")
    p.add_argument("--lr", type=float, default=1.0, help="optimizer.lr; y = lr * multiplier")
    p.add_argument("--optimizer", default="adamw",
                   help="optimizer.name (the untuned warmups need the Adam family)")
    p.add_argument("--beta2", type=float, default=0.99,
                   help="optimizer.betas[1] for the untuned warmups")
    p.add_argument("--extend", type=float, default=0.0,
                   help="also plot this fraction of T past the end")
    p.add_argument("--logy", action="store_true", help="log-scale y axis")
    p.add_argument("--cols", type=int, default=5, help="panels per row")
    p.add_argument("--normalise", choices=("auto", "peak", "none"), default="auto",
                   help="overlay: divide each curve by its own peak (auto: when the peaks differ, e.g. noam's "
                        "d_model^-0.5 scale next to 1.0)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="reduceonplateau: evaluations of the synthetic val loss (falls to 0.3 by 57%% of T, then "
                        "flat) every this many steps (default T/100)")
    p.add_argument("--gallery", action="store_true",
                   help="every schedule at its defaults plus the variants that change a shape (docs/schedules.png)")
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("--out", default=str(ROOT / "outputs" / "schedules.png"),
                   help="where to write (default outputs/schedules.png; `make plot-schedules` writes the gallery "
                        "docs/schedules.png)")
    args = p.parse_args(argv)

    common = {}
    for item in args.set:
        common.update(parse_assignments(item))
    specs = args.schedules or list(SCHEDULES)  # registry order: transformers family, seed, field
    if args.gallery and not args.schedules:
        specs = specs + list(GALLERY_VARIANTS)
    defaults = [OmegaConf.to_container(OmegaConf.load(path)) for path in
                (CONF / f"{spec.partition(':')[0]}.yaml" for spec in specs) if path.is_file()]
    for key in common:
        if not any(_has(cfg, key) for cfg in defaults):
            print(f"warning: no chosen schedule has the knob {key!r}", file=sys.stderr)
    optimizer = {"name": args.optimizer, "lr": args.lr}
    if args.optimizer in ("adam", "adamw", "radam"):
        optimizer["betas"] = [0.9, args.beta2]
    T = args.total_steps

    curves = []
    for spec in specs:
        label, cfg = schedule_config(spec, common)
        try:
            curves.append((label, *curve(cfg, T, optimizer, args.extend, args.eval_every)))
        except ScheduleError as err:
            raise SystemExit(f"{label}: {err}") from None

    if args.overlay:
        peaks = [max(float(max(lrs)), 1e-300) for _, _, _, lrs in curves]
        norm = args.normalise == "peak" or (args.normalise == "auto" and max(peaks) / min(peaks) > 1.01)
        fig, ax = plt.subplots(figsize=(9, 5))
        for (label, sched, steps, lrs), peak in zip(curves, peaks):
            ys = [v / peak for v in lrs] if norm else lrs
            ax.plot(steps, ys, label=f"{label} (W={sched.warmup_steps}" + (f", peak {peak:.3g})" if norm else ")"),
                    lw=1.6)
        ax.legend(fontsize=8)
        axes = [ax]
        ax.set_title(f"T = {T} steps" + (" (each curve divided by its own peak)" if norm else ""), fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("lr / its peak" if norm else ("lr / optimizer.lr" if args.lr == 1.0 else "lr"))
    else:
        cols = min(args.cols, len(curves))
        rows = math.ceil(len(curves) / cols)
        fig, grid = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.2 * rows), squeeze=False)
        axes = [a for row in grid for a in row]
        for ax, (label, sched, steps, lrs) in zip(axes, curves):
            ax.plot(steps, lrs, lw=1.3, color="C0")
            if sched.warmup_steps:
                ax.axvline(sched.warmup_steps, color="0.6", ls=":", lw=1)
            note = " (synthetic val loss)" if sched.needs_val_history else ""
            title = "\n".join(textwrap.wrap(label.replace(",", ", "), 44))
            ax.set_title(f"{title}\nW={sched.warmup_steps}, peak={sched.peak:.3g}{note}", fontsize=8.5 if len(label) < 40 else 7)
            ax.tick_params(labelsize=7)
        for ax in axes[len(curves):]:
            ax.axis("off")
        y = "lr / optimizer.lr" if args.lr == 1.0 else f"lr (optimizer.lr = {args.lr})"
        fig.suptitle(f"{y} against optimizer step, T = {T}, defaults of conf/scheduler/ "
                     f"(beta2 = {args.beta2}); dotted: end of warmup", fontsize=10)
    for ax in axes[:len(curves)]:
        ax.grid(alpha=0.3)
        if args.logy:
            ax.set_yscale("log")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=args.dpi)
    print(f"wrote {out} ({len(curves)} schedule(s))")


if __name__ == "__main__":
    main()
