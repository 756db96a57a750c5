"""Write a sweep's report: report.md, runs.csv, arms.csv, verdicts.json, plots, TensorBoard layout."""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from warmup_lab.analysis import plots, sequential
from warmup_lab.analysis.arms import Arm, absent_keys, group_arms, initial_loss, run_loss, run_settings
from warmup_lab.analysis.claims import DEFAULT_METRIC, ClaimResult, claims_in, evaluate_claim, with_overrides
from warmup_lab.analysis.claims import __doc__ as CLAIMS_DOC
from warmup_lab.analysis.claimspec import load_claim
from warmup_lab.runs.runinfo import read_json, write_json
from warmup_lab.analysis.load import Run, load_runs
from warmup_lab.analysis.power import plan_part, plan_text
from warmup_lab.analysis.sequential import STUDY_FILE, Design
from warmup_lab.sweeps.jobs import FINISHED
from warmup_lab.analysis.tblayout import ARM_DIR, ARM_PINNED, tensorboard_command, time_series_url, write_tensorboard

RESULT_STATUSES = FINISHED  # a crash, a bad config or an unfinished run is not a result
RUN_FIELDS = ("status", "failed", "failure", "peak_lr", "warmup_steps", "total_steps", "steps",
              "diverged_step", "initial_train_loss", "final_train_loss", "final_val_loss", "best_val_loss",
              "final_val_acc", "train_loss_auc", "early_jitter", "early_mean_abs_change", "early_loss_std",
              "early_max_spike_ratio", "max_spike_ratio", "spike_count", "steps_to_loss_threshold",
              "loss_threshold", "early_max_grad_norm", "early_mean_grad_norm", "early_max_update_ratio",
              "early_mean_update_ratio", "wall_time_s")


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def write_csv(path: Path, rows: list[dict]) -> Path:
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in fields})
    return path


def run_rows(runs: list[Run], arms: list[Arm], out: Path, l0: float, metric: str) -> list[dict]:
    settings_of = {id(r): a.settings for a in arms for r in a.runs}
    rows = []
    for r in runs:
        row = {"run_dir": os.path.relpath(r.path, out), "arm": r.label, "seed": r.seed}
        row.update({k: (("/".join(map(str, v))) if isinstance(v, tuple) else v)
                    for k, v in settings_of.get(id(r), {}).items()})
        row["loss"] = run_loss(r, l0, metric)
        for k in RUN_FIELDS:
            row[k] = r.failed if k == "failed" else r.failure if k == "failure" else r.metrics.get(k)
        rows.append(row)
    return rows


def describe_setting(runs: list[Run]) -> str:
    """One line: model, data, steps, batch, optimizers, seeds, device."""
    def common(key):
        vals = Counter(str(r.config.get(key)) for r in runs if r.config.get(key) is not None)
        return "/".join(v for v, _ in vals.most_common()) if vals else "?"

    model = common("model.name")
    if model.startswith("transformer"):
        model += (f" ({common('model.n_layers')} layers, d_model {common('model.d_model')}, "
                  f"norm_first {common('model.norm_first')})")
    elif runs[0].config.get("model.depth") is not None:  # CIFAR ResNets: the name is only a label
        model = f"ResNet-{common('model.depth')} (width {common('model.width')})"
    steps = Counter(r.metrics.get("total_steps") for r in runs).most_common(1)[0][0]
    devices = Counter(str(r.config.get("trainer.device")) for r in runs).most_common(1)[0][0]
    return (f"{model} on {common('data.name')}, {steps} steps, batch {common('trainer.batch_size')}, "
            f"optimizer {common('optimizer.name')}, schedule {common('scheduler.name')}, "
            f"{len({r.seed for r in runs})} seeds, device {devices}")


def _md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _g(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}g}"


def _claim_md(res: ClaimResult, plans: list[dict] | None = None) -> str:
    h = res.headline
    out = [f"## Claim: {res.title}: **{res.verdict.upper()}**", "", f"> {res.statement}", ""]
    if h is not None:
        ci = h.effect.ci
        out += [f"- **Headline effect** ({h.name}): {_g(ci.estimate, 4)}, interval "
                f"[{_g(ci.lo, 4)}, {_g(ci.hi, 4)}] (union of the t-interval and the paired-seed bootstrap, "
                f"level {ci.level:.2%}), n = {ci.n} seeds."]
    out += [f"- **Metric**: {res.metric}.",
            "- **Effects** are differences of that loss between arms paired by seed; the detail column gives "
            "each part's formula over the arms. Rule `greater`: the claim says the effect is > 0; `not_greater`: "
            "the claim says it is at most the margin (no meaningful effect).", ""]
    d = res.design
    if d:
        out += [f"- **Sequential design**: {d['method']}; seeds {d['first']} first, then {d['round_seeds']} per round, "
                f"at most {d['max_seeds']}" + (f", budget {d['budget_minutes']:g} min" if d.get("budget_minutes") else "")
                + f". State: **{d['state']}**" + (f" ({d['stopped']})" if d.get("stopped") else "") + ".", ""]
        ids = list(d["looks_taken"][0]["parts"]) if d["looks_taken"] else []
        names = {p.id: p.name for p in res.parts}
        rows = [[lk["look"], lk["n_seeds"], " ".join(map(str, lk["seeds"])), f"{lk['alpha']:.4g}",
                 _g(lk.get("wall_s"), 3) if lk.get("wall_s") is not None else "",
                 *[lk["parts"].get(i, "") for i in ids]] for lk in d["looks_taken"]]
        out += ["**Rounds** (each look spends its alpha; a part's first decision is final)", "",
                _md_table(["look", "seeds", "seed list", "alpha spent", "round wall (s)",
                           *[i if i != names.get(i) else i[:60] for i in ids]], rows), ""]
    if res.parts:
        rows = []
        for p in res.parts:
            e = p.effect
            tag = "(context) " if p.context else "" if p.primary else "(supplementary) "
            rows.append([tag + p.name, p.kind, _g(e.ci.estimate, 4),
                         f"[{_g(e.t.lo, 3)}, {_g(e.t.hi, 3)}]", f"[{_g(e.boot.lo, 3)}, {_g(e.boot.hi, 3)}]",
                         f"[{_g(e.ci.lo, 3)}, {_g(e.ci.hi, 3)}]", f"{e.ci.level:.2%}", e.ci.n,
                         f"**{p.verdict}**: {p.rule}", p.detail])
        out += [_md_table(["part", "rule", "effect", "t-interval", "bootstrap", "used", "level", "n", "verdict",
                           "detail"], rows), ""]
        out += ["The claim's verdict combines its primary parts: contradicted if any is contradicted, "
                "supported if all are supported, otherwise inconclusive; a context part that is not supported "
                "caps a supported verdict at inconclusive.", ""]
    for note in res.notes:
        out.append(f"- Note: {note}")
    if res.notes:
        out.append("")
    if plans:
        need = [pl for pl in plans if pl["primary"] and pl["verdict"] == "inconclusive"]
        if need:
            out += ["**Seeds this needs** (paired t-test power 80% at the observed spread; `analyze.py --plan`):", ""]
            out += [f"- {plan_text(pl)}" for pl in need] + [""]
    for title, header, rows in res.tables:
        out += [f"**{title}**", "", _md_table(header, rows), ""]
    return "\n".join(out)


def _arms_md(arms: list[Arm], summaries: list[dict]) -> str:
    rows = []
    for a, s in zip(arms, summaries):
        loss = (f"{_g(s['loss_mean'], 4)} ± {_g(s['loss_std'], 2)} [{_g(s['loss_ci_lo'], 3)}, {_g(s['loss_ci_hi'], 3)}]"
                if s["loss_n"] else "n/a")
        rows.append([a.label, s["n_runs"], f"{s['failed']} / {s['diverged']}", loss, _g(s["final_val_acc_mean"]),
                     _g(s["early_jitter_mean"]), _g(s["early_max_spike_ratio_mean"]),
                     _g(s["steps_to_loss_threshold_mean"]), _g(s["train_loss_auc_mean"])])
    return _md_table(["arm", "runs", "failed / diverged", "loss mean ± std [95% t-CI]", "val acc",
                      "early jitter", "early max spike", "steps to threshold", "train-loss AUC"], rows)


def judge_claims(runs: list[Run], refs: list, design_state: dict | None, metric: str | None,
                 margin: float | None, n_boot: int) -> list[ClaimResult]:
    """Each claim judged on the runs: sequentially when the sweep ran a sequential design
    (``study.json``), else once at the claim's level."""
    results = []
    for ref in refs:
        spec = with_overrides(load_claim(ref, "claim"), margin, metric)
        if design_state and design_state.get("design") and design_state.get("claim") == spec.name:
            design = Design.from_dict(design_state["design"])
            res = sequential.judge(spec, runs, design, design_state["first_seeds"], n_boot=n_boot)
            walls = {r["look"]: r.get("wall_s") for r in design_state.get("rounds", [])}
            for lk in res.design["looks_taken"]:
                lk["wall_s"] = walls.get(lk["look"])
            res.design["stopped"] = design_state.get("stopped")
            extra = sorted({r.seed for r in runs} - {s for lk in res.design["looks_taken"] for s in lk["seeds"]})
            if extra:
                res.notes.append(f"seeds {' '.join(map(str, extra))} are outside the sequential design and not used")
            results.append(res)
        else:
            results.append(evaluate_claim(spec, runs, n_boot=n_boot))
    return results


def read_study_state(sweep_dir: Path) -> dict | None:
    return read_json(Path(sweep_dir) / STUDY_FILE)


def analyze(sweep_dirs, out: Path | None = None, claims: list | None = None, metric: str | None = None,
            margin: float | None = None, n_boot: int = 4000, tensorboard: bool = True,
            plan: bool = False) -> dict:
    """Load, group, judge and write everything into ``out`` (default: the first sweep dir).
    ``claims``: claim mappings, YAML paths or preset names (default: the runs' ``study.claim``).
    Returns a summary dict (also written as ``verdicts.json``). A claim that does not fit the
    runs raises ``ClaimError`` (one line)."""
    sweep_dirs = [Path(d) for d in sweep_dirs]
    missing = [d for d in sweep_dirs if not d.is_dir()]
    if missing:  # before anything is created: a typo must not leave a directory behind
        raise FileNotFoundError(f"{missing[0]}: no such sweep directory")
    out = Path(out) if out is not None else sweep_dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_runs(sweep_dirs)
    # a crash, a bad config or an unfinished run is not a result: left out, and listed
    runs = [r for r in loaded if r.status in RESULT_STATUSES]
    excluded = [r for r in loaded if r.status not in RESULT_STATUSES]
    if not runs:
        raise SystemExit(f"no finished runs (metrics.json with status completed or diverged) under "
                         f"{', '.join(map(str, sweep_dirs))}" + (f"; {len(excluded)} runs excluded" if excluded else ""))
    arms = group_arms(runs)
    metric_used = metric or DEFAULT_METRIC
    l0 = initial_loss(runs)
    summaries = [a.summary(l0, metric_used) for a in arms]
    refs = claims if claims is not None else claims_in(runs)
    results = judge_claims(runs, refs, read_study_state(sweep_dirs[0]), metric, margin, n_boot)
    plans = {res.name: [plan_part(p) for p in res.parts] for res in results}

    write_csv(out / "runs.csv", run_rows(runs, arms, out, l0, metric_used))
    write_csv(out / "arms.csv", summaries)
    figs = plots.all_plots(arms, out, l0, metric_used)
    if tensorboard:
        write_tensorboard(arms, out)
    setting = describe_setting(runs)
    status = Counter(r.status for r in runs)
    n_failed = sum(r.failed for r in runs)
    wall = sum(r.metrics.get("wall_time_s") or 0 for r in runs)
    md = [f"# Sweep report: {', '.join(str(d) for d in sweep_dirs)}", "",
          f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by `scripts/analyze.py`. "
          f"{len(runs)} runs in {len(arms)} arms ({', '.join(f'{v} {k}' for k, v in status.items())}; "
          f"{n_failed} failed to train, see the failure rule below); seeds "
          f"{' '.join(map(str, sorted({r.seed for r in runs})))}, paired across arms; summed run time "
          f"{wall / 60:.1f} min.", "",
          f"**Setting**: {setting}. A verdict is about this setting and budget only; a published effect that "
          f"does not show here may need the scale this setting lacks (see docs/claims.md for the GPU scale-up).",
          ""]
    drift = [k for k in absent_keys([run_settings(r) for r in runs])
             if not k.startswith(("optimizer.", "scheduler.", "model.", "data.", "study."))]
    if drift:
        md += [f"**Note**: {', '.join(f'`{k}`' for k in drift)} missing from some runs' configs (code changed "
               f"between runs?) and single-valued elsewhere: treated as the same setting.", ""]
    if excluded:
        md += [f"**Excluded**: {len(excluded)} runs that did not finish (crash, bad config or interrupted; see their "
               f"error.txt): " + ", ".join(f"`{os.path.relpath(r.path, out)}` ({r.status}: "
                                            f"{str(r.metrics.get('error', ''))[:80]})" for r in excluded[:10])
               + (" ..." if len(excluded) > 10 else ""), ""]
    if not results:
        md += ["No claim named (`study.claim` in the preset, `--claim NAME` or `--claim-file PATH`): arms and "
               "plots only.", ""]
    for res in results:
        md += [_claim_md(res, plans[res.name]), ""]
    md += ["## Arms", "",
           f"Loss = `{metric_used}`, failed runs counted at L0 = {l0:.4g}; other columns over runs that trained. "
           "Jitter columns: docs/metrics.md. Full numbers: [arms.csv](arms.csv), per run: [runs.csv](runs.csv).", "",
           _arms_md(arms, summaries), ""]
    md += ["## Plots", ""]
    captions = {"loss_curves": "Training loss per arm (mean over seeds, band min-max; dotted lines: divergence)",
                "early_jitter": "Early-phase jitter per arm (std of the step-to-step loss change, first 10% of steps)",
                "lr_sensitivity": "Final loss against peak lr, with (solid) and without (dashed) warmup; x on the top "
                                  "edge = failed runs",
                "lr_schedules": "The learning-rate schedules of the arms",
                "curvature": "Sharpness per arm against the stability threshold 2(1+beta)/lr (dashed), and the "
                             "threshold ratios (above 1: past the edge of stability); docs/metrics.md"}
    for k, p in figs.items():
        md += [f"**{captions[k]}**", "", f"![{k}]({p.name})", ""]
    unigram = sorted({round(u, 4) for r in runs if (u := (r.metrics.get("data") or {}).get("unigram_entropy"))})
    md += ["## How to read this", "",
           "- **Intervals**: for each effect, a t-interval over the per-seed paired differences and a paired-seed "
           "percentile bootstrap (seeds resampled with replacement; any best-lr selection redone in every "
           "resample). With 3-5 seeds the bootstrap is too narrow, so verdicts use the union of the two.",
           "- **Failure rule**: a run failed to train if it diverged (non-finite loss; the trainer stops), or its "
           "final training loss is >= its first-step loss, or (classification) its final validation accuracy "
           "is below 1.5x chance, or (language models) its final validation loss is at or above the unigram "
           "entropy of its training data (it learned byte frequencies only"
           + (f"; here {', '.join(f'{u:.4g}' for u in unigram)} nats" if unigram else "") + "). Failed runs count "
           "at L0 in the loss; divergence is also reported separately.",
           "- **Decision rules**:", ""]
    rules = CLAIMS_DOC.split("Decision rules")[1].split("A claim's verdict")[0].replace("``", "`")
    md += ["  " + line.strip() for line in rules.strip().splitlines()[1:] if line.strip()]
    md += ["", f"- **Browse in TensorBoard**: the arms, as mean curves with min-max bands over seeds: "
           f"`{tensorboard_command(out / ARM_DIR)}`, then open <{time_series_url(ARM_PINNED)}> (Time Series "
           f"with the arms' train loss, lr and jitter pinned on top; tab *Custom Scalars* for the bands); "
           f"every run: `{tensorboard_command(out)}`, then <{time_series_url()}> (TensorBoard selects no "
           f"run by default above 40 runs: pick them in the run list).", ""]
    (out / "report.md").write_text("\n".join(md))
    summary = {"sweep_dirs": [str(d) for d in sweep_dirs], "out": str(out), "setting": setting,
               "n_runs": len(runs), "n_excluded": len(excluded), "n_arms": len(arms), "seeds": sorted({r.seed for r in runs}),
               "run_time_s": wall, "claims": [r.as_dict() for r in results],
               "plans": plans if plan else None,
               "files": ["report.md", "runs.csv", "arms.csv"] + [p.name for p in figs.values()],
               "tensorboard": tensorboard_command(out / ARM_DIR) if tensorboard else None,
               "tensorboard_url": time_series_url(ARM_PINNED) if tensorboard else None}
    write_json(out / "verdicts.json", summary, default=_json_default)
    return summary


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    return str(o)
