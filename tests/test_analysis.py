"""The sweep analysis on synthetic runs: planted effects are found, noise is inconclusive,
intervals cover, and every output file is written."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from warmup_lab.analysis import claims as C
from warmup_lab.analysis.arms import group_arms, initial_loss
from warmup_lab.analysis.load import Run, failure_reason, flatten, load_runs, read_scalars
from warmup_lab.analysis.report import analyze
from warmup_lab.analysis.stats import bootstrap_mean, effect_interval, t_interval, wilson

L0 = 2.3
# the preset claims these synthetic designs were written for, as they were before the presets moved
# to the regimes of their pilots (#11): the tests are about the claim machinery, not today's presets
FROZEN = yaml.safe_load((Path(__file__).parent / "data" / "claims_golden_presets.yaml").read_text())


# -- synthetic runs -------------------------------------------------------------------------------
def metrics_for(loss: float | None, *, warmup_steps: int, lr: float, total: int = 300, status: str = "completed",
                jitter: float = 0.1) -> dict:
    return {"status": status, "final_val_loss": loss, "final_train_loss": None if loss is None else loss / 2,
            "initial_train_loss": L0, "final_val_acc": 0.9, "chance_acc": 0.1, "warmup_steps": warmup_steps,
            "total_steps": total, "steps": total, "peak_lr": lr, "early_jitter": jitter,
            "early_max_spike_ratio": 1.2, "diverged_step": 17 if status == "diverged" else None,
            "train_loss_auc": None if loss is None else loss * 1.5, "wall_time_s": 1.0}


def config_for(seed: int, optimizer: str, lr: float, warmup_ratio: float, claim: str, **extra) -> dict:
    cfg = {"seed": seed, "model": {"name": "resnet20", "depth": 8, "norm_first": extra.pop("norm_first", None)},
           "data": {"name": "digits"}, "optimizer": {"name": optimizer, "lr": lr},
           "scheduler": {"name": extra.pop("scheduler", "warmupcosine"), "warmup_ratio": warmup_ratio},
           "trainer": {"max_steps": 300, "batch_size": 64, "device": "cpu"}, "study": {"claim": claim, "margin": 0.02}}
    cfg["model"] = {k: v for k, v in cfg["model"].items() if v is not None}
    return cfg


def mem_run(cfg: dict, metrics: dict) -> Run:
    reason = failure_reason(metrics)
    return Run(Path(f"mem/{len(str(cfg))}"), flatten(cfg), [], metrics, failed=reason is not None, failure=reason)


def factor_runs(rng, *, claim="warmup_adam_vs_sgd", effect_a=0.0, effect_b=0.0, noise=0.005, seeds=5,
                factor="optimizer", levels=("adamw", "sgd")) -> list[Run]:
    """Claim 1/2 design: factor x {no warmup, warmup} x 3 lrs x seeds. Loss = a U-shape in log lr
    (best at the middle lr) + a per-seed offset shared by all arms (pairing) + noise; no warmup
    adds ``effect_a`` for the first factor level and ``effect_b`` for the second."""
    offsets = rng.normal(0, 0.05, seeds)
    runs = []
    for level, eff in zip(levels, (effect_a, effect_b)):
        for ratio in (0.0, 0.1):
            for mult in (0.25, 1.0, 4.0):
                lr = 0.01 * mult
                for s in range(seeds):
                    loss = 0.3 + 0.05 * abs(math.log2(mult)) + offsets[s] + (eff if ratio == 0 else 0) \
                        + noise * rng.normal()
                    kw = {"norm_first": level == "Pre-LN"} if factor == "norm" else {}
                    opt = level if factor == "optimizer" else "adamw"
                    runs.append(mem_run(config_for(s, opt, lr, ratio, claim, **kw),
                                        metrics_for(loss, warmup_steps=int(300 * ratio), lr=lr)))
    return runs


# -- claims on planted effects and on noise --------------------------------------------------------------
def test_planted_adam_only_warmup_effect_is_supported():
    runs = factor_runs(np.random.default_rng(0), effect_a=0.2, effect_b=0.0)
    res = C.evaluate_claim(FROZEN["warmup_adam_vs_sgd"], runs, n_boot=500)
    assert res.verdict == C.SUPPORTED, [(p.name, p.verdict, p.effect.ci) for p in res.parts]
    assert res.headline.name.startswith("interaction")
    assert res.headline.effect.ci.estimate == pytest.approx(0.2, abs=0.02)
    assert res.n_seeds == 5


def test_warmup_helping_sgd_as_much_contradicts_the_claim():
    runs = factor_runs(np.random.default_rng(1), effect_a=0.2, effect_b=0.2)
    res = C.evaluate_claim(FROZEN["warmup_adam_vs_sgd"], runs, n_boot=500)
    assert res.verdict == C.CONTRADICTED
    sgd = next(p for p in res.parts if p.name.startswith("SGD") and p.primary)
    assert sgd.verdict == C.CONTRADICTED


def test_pure_noise_is_inconclusive():
    res = C.evaluate_claim(FROZEN["warmup_adam_vs_sgd"], factor_runs(np.random.default_rng(2), noise=0.05), n_boot=500)
    assert res.verdict == C.INCONCLUSIVE
    # and over many noise draws: never supported, rarely anything but inconclusive
    verdicts = [C.evaluate_claim(FROZEN["warmup_adam_vs_sgd"], factor_runs(np.random.default_rng(100 + i), noise=0.05),
                                 n_boot=100).verdict for i in range(20)]
    assert C.SUPPORTED not in verdicts
    assert verdicts.count(C.INCONCLUSIVE) >= 16


def test_postln_claim_uses_norm_placement():
    runs = factor_runs(np.random.default_rng(3), claim="postln_needs_warmup", factor="norm",
                       levels=("Post-LN", "Pre-LN"), effect_a=0.3)
    res = C.evaluate_claim(FROZEN["postln_needs_warmup"], runs, n_boot=500)
    assert res.verdict == C.SUPPORTED


def test_fewer_than_two_seeds_is_inconclusive():
    runs = factor_runs(np.random.default_rng(4), effect_a=0.5, seeds=1)
    res = C.evaluate_claim(FROZEN["warmup_adam_vs_sgd"], runs, n_boot=200)
    assert res.verdict == C.INCONCLUSIVE and all(p.verdict == C.INCONCLUSIVE for p in res.parts)


def method_runs(rng, losses: dict[str, float], seeds=5, noise=0.005) -> list[Run]:
    """Claim 3 design; ``losses`` per arm name: none, tuned5, tuned10, tuned25, lin, exp, radam."""
    spec = {"none": ("adamw", "warmupcosine", 0.0, 0), "tuned5": ("adamw", "warmupcosine", 0.05, 15),
            "tuned10": ("adamw", "warmupcosine", 0.1, 30), "tuned25": ("adamw", "warmupcosine", 0.25, 75),
            "lin": ("adamw", "untunedlinearwarmup", None, 99), "exp": ("adamw", "untunedexponentialwarmup", None, 50),
            "radam": ("radam", "warmupcosine", 0.0, 0)}
    offsets = rng.normal(0, 0.05, seeds)
    runs = []
    for arm, loss in losses.items():
        opt, sched, ratio, w = spec[arm]
        for s in range(seeds):
            runs.append(mem_run(config_for(s, opt, 0.01, ratio, "radam_untuned_replaces_warmup", scheduler=sched),
                                metrics_for(loss + offsets[s] + noise * rng.normal(), warmup_steps=w, lr=0.01)))
    return runs


def test_replacements_equal_to_tuned_warmup_are_supported():
    losses = {"none": 0.6, "tuned5": 0.32, "tuned10": 0.3, "tuned25": 0.31, "lin": 0.3, "exp": 0.305, "radam": 0.3}
    res = C.evaluate_claim(FROZEN["radam_untuned_replaces_warmup"], method_runs(np.random.default_rng(5), losses), n_boot=500)
    assert res.verdict == C.SUPPORTED, [(p.name, p.verdict, p.effect.ci) for p in res.parts]
    assert {p.name.split(" is ")[0] for p in res.parts if p.primary} == {
        "RAdam, no warmup", "untuned linear warmup", "untuned exponential warmup"}


def test_a_replacement_much_worse_than_tuned_warmup_contradicts():
    losses = {"none": 0.6, "tuned10": 0.3, "lin": 0.3, "exp": 0.3, "radam": 0.5}
    res = C.evaluate_claim(FROZEN["radam_untuned_replaces_warmup"], method_runs(np.random.default_rng(6), losses), n_boot=500)
    assert res.verdict == C.CONTRADICTED
    assert res.headline.name.startswith("RAdam")


def test_replacement_question_is_moot_when_warmup_does_not_matter():
    losses = {"none": 0.3, "tuned10": 0.3, "lin": 0.3, "exp": 0.3, "radam": 0.3}
    res = C.evaluate_claim(FROZEN["radam_untuned_replaces_warmup"], method_runs(np.random.default_rng(7), losses), n_boot=500)
    assert res.verdict == C.INCONCLUSIVE and any("moot" in n for n in res.notes)


def fraction_runs(rng, losses: dict[float, float], seeds=5, noise=0.005) -> list[Run]:
    offsets = rng.normal(0, 0.05, seeds)
    return [mem_run(config_for(s, "adamw", 0.003, f, "warmup_fraction"),
                    metrics_for(loss + offsets[s] + noise * rng.normal(), warmup_steps=int(round(300 * f)), lr=0.003))
            for f, loss in losses.items() for s in range(seeds)]


def test_ten_percent_best_is_supported_and_a_better_fraction_contradicts():
    good = {0.0: 0.5, 0.02: 0.4, 0.05: 0.33, 0.1: 0.3, 0.2: 0.305, 0.4: 0.35}
    res = C.evaluate_claim(FROZEN["warmup_fraction"], fraction_runs(np.random.default_rng(8), good), n_boot=500)
    assert res.verdict == C.SUPPORTED
    bad = {**good, 0.4: 0.1}
    res = C.evaluate_claim(FROZEN["warmup_fraction"], fraction_runs(np.random.default_rng(9), bad), n_boot=500)
    assert res.verdict == C.CONTRADICTED
    assert "40" in res.headline.name


def stability_runs(rng, seeds=3, diverge_without_warmup=True) -> list[Run]:
    runs = []
    for opt, base in (("sgd", 0.05), ("adamw", 0.0025)):
        for ratio in (0.0, 0.1):
            for mult in (0.25, 1, 4, 16, 64):
                lr = base * mult
                for s in range(seeds):
                    loss = 0.3 + 0.05 * abs(math.log(mult / 4, 4)) + 0.003 * rng.normal()
                    fails = mult >= 16 and ratio == 0 and diverge_without_warmup
                    m = metrics_for(None if fails else loss, warmup_steps=int(300 * ratio), lr=lr,
                                    status="diverged" if fails else "completed")
                    runs.append(mem_run(config_for(s, opt, lr, ratio, "warmup_lr_stability"), m))
    return runs


def test_lr_stability_detects_a_wider_stable_range():
    res = C.evaluate_claim(FROZEN["warmup_lr_stability"], stability_runs(np.random.default_rng(10)), n_boot=500)
    assert res.verdict == C.SUPPORTED
    width = next(p for p in res.parts if "trains at more grid lrs" in p.name)
    assert width.effect.ci.estimate == pytest.approx(2.0)
    res = C.evaluate_claim(FROZEN["warmup_lr_stability"], stability_runs(np.random.default_rng(11), diverge_without_warmup=False),
                           n_boot=500)
    assert res.verdict == C.CONTRADICTED  # same stability with and without warmup: no widening beyond the margin
    assert res.parts[0].rule.startswith("interval within")


def test_missing_arms_are_an_error_not_a_guess():
    runs = [r for r in factor_runs(np.random.default_rng(12), effect_a=0.2) if r.config["optimizer.name"] == "adamw"]
    with pytest.raises(C.ClaimError, match=r"arm sgd_none .* matches no run .*optimizer.name in this sweep: 'adamw'"):
        C.evaluate_claim(FROZEN["warmup_adam_vs_sgd"], runs, n_boot=200)


@pytest.mark.parametrize("kind,lo,hi,est,verdict", [
    ("greater", 0.05, 0.2, 0.1, C.SUPPORTED), ("greater", -0.01, 0.2, 0.1, C.INCONCLUSIVE),
    ("greater", 0.001, 0.04, 0.015, C.INCONCLUSIVE), ("greater", -0.01, 0.015, 0.0, C.CONTRADICTED),
    ("greater", -0.3, -0.1, -0.2, C.CONTRADICTED), ("greater", -0.1, 0.015, -0.04, C.INCONCLUSIVE),
    ("not_greater", -0.05, 0.015, 0.0, C.SUPPORTED), ("not_greater", 0.01, 0.3, 0.1, C.CONTRADICTED),
    ("not_greater", -0.05, 0.05, 0.0, C.INCONCLUSIVE), ("not_greater", 0.001, 0.05, 0.01, C.INCONCLUSIVE),
    ("negligible", -0.01, 0.015, 0.0, C.SUPPORTED), ("negligible", -0.3, -0.1, -0.2, C.CONTRADICTED),
    ("negligible", -0.05, 0.01, -0.02, C.INCONCLUSIVE),
    ("positive", 0.001, 0.002, 0.0015, C.SUPPORTED), ("positive", -0.1, 0.1, 0.0, C.INCONCLUSIVE),
])
def test_decision_rules(kind, lo, hi, est, verdict):
    from warmup_lab.analysis.stats import Effect, Interval

    iv = Interval(est, lo, hi, 5)
    assert C.decide(kind, Effect([], iv, iv, iv), margin=0.02)[0] == verdict
    one = Interval(est, None, None, 1)
    assert C.decide(kind, Effect([], one, one, one), margin=0.02)[0] == C.INCONCLUSIVE


# -- intervals ------------------------------------------------------------------------------------------
def test_t_interval_coverage_is_nominal():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(600):
        x = rng.normal(1.0, 2.0, 5)
        ti = t_interval(x)
        hits += ti.lo <= 1.0 <= ti.hi
    assert 0.92 <= hits / 600 <= 0.98


def test_paired_intervals_cover_the_true_difference():
    """Union interval of paired differences (shared seed offsets cancel): coverage >= nominal-ish,
    and at least that of each of its parts."""
    rng = np.random.default_rng(1)
    cover = {"t": 0, "boot": 0, "ci": 0}
    n_rep = 300
    for _ in range(n_rep):
        seed_effect = rng.normal(0, 1.0, 6)
        a = 0.5 + seed_effect + rng.normal(0, 0.2, 6)
        b = seed_effect + rng.normal(0, 0.2, 6)
        e = effect_interval(a - b, n_boot=300, seed=int(rng.integers(1 << 30)))
        for k, iv in (("t", e.t), ("boot", e.boot), ("ci", e.ci)):
            cover[k] += iv.lo <= 0.5 <= iv.hi
    assert cover["ci"] >= max(cover["t"], cover["boot"])
    assert cover["ci"] / n_rep >= 0.92 and cover["boot"] / n_rep >= 0.8


def test_bootstrap_is_too_narrow_with_three_seeds_which_is_why_the_union_is_used():
    rng = np.random.default_rng(2)
    boot = sum((lambda iv: iv.lo <= 0 <= iv.hi)(bootstrap_mean(rng.normal(0, 1, 3), n_boot=300)) for _ in range(300))
    assert boot / 300 < 0.9


def test_wilson_interval():
    iv = wilson(0, 5)
    assert iv.estimate == 0 and iv.lo == 0 and 0.4 < iv.hi < 0.47
    iv = wilson(5, 5)
    assert iv.hi == 1 and 0.53 < iv.lo < 0.6


def test_failure_rule():
    ok = metrics_for(0.3, warmup_steps=0, lr=0.1)
    assert failure_reason(ok) is None
    assert "diverged" in failure_reason(metrics_for(None, warmup_steps=0, lr=0.1, status="diverged"))
    assert "initial" in failure_reason(dict(ok, final_train_loss=2.5))
    assert "chance" in failure_reason(dict(ok, final_val_acc=0.12))
    lm = dict(ok, final_val_acc=None, chance_acc=None, data={"unigram_entropy": 3.16})
    assert failure_reason(dict(lm, final_val_loss=3.0)) is None
    assert "unigram entropy 3.16" in failure_reason(dict(lm, final_val_loss=3.16))


# -- files ------------------------------------------------------------------------------------------------
def write_run(run_dir: Path, cfg: dict, metrics: dict, steps: int = 60, rng=None) -> None:
    from torch.utils.tensorboard import SummaryWriter

    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create([f"seed={cfg['seed']}"]), run_dir / ".hydra" / "overrides.yaml")
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    w = SummaryWriter(str(run_dir))
    rng = rng or np.random.default_rng(0)
    lr, warm = metrics["peak_lr"], metrics["warmup_steps"] * steps // max(1, metrics["total_steps"])
    for t in range(steps):
        w.add_scalar("train/loss", 2.3 * math.exp(-t / 20) + 0.1 + 0.05 * rng.random(), t)
        w.add_scalar("train/lr", lr * min(1.0, (t + 1) / (warm + 1)), t)
        w.add_scalar("jitter/loss_std", 0.05 * rng.random(), t)
    w.close()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A claim-1 sweep on disk (2 optimizers x 2 warmups x 2 lrs x 3 seeds) with a planted AdamW
    effect, one diverged run, and one crashed run."""
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    job = 0
    for opt in ("sgd", "adamw"):
        for ratio in (0.0, 0.1):
            for lr in (0.01, 0.04):
                for s in range(3):
                    loss = 0.3 + (0.2 if opt == "adamw" and ratio == 0 else 0) + 0.002 * rng.normal()
                    status = "diverged" if (opt, ratio, lr, s) == ("sgd", 0.0, 0.04, 2) else "completed"
                    m = metrics_for(None if status == "diverged" else loss, warmup_steps=int(30 * ratio * 10), lr=lr,
                                    status=status)
                    write_run(root / str(job), config_for(s, opt, lr, ratio, "warmup_adam_vs_sgd"), m, rng=rng)
                    job += 1
    crashed = root / str(job)
    (crashed / ".hydra").mkdir(parents=True)
    (crashed / "metrics.json").write_text(json.dumps({"status": "failed", "error": "ConfigError: bad"}))
    summary = analyze([root], n_boot=300)
    return root, summary


def test_analyze_writes_every_file_non_empty(sweep):
    root, summary = sweep
    for name in ("report.md", "runs.csv", "arms.csv", "verdicts.json", "loss_curves.png", "early_jitter.png",
                 "lr_sensitivity.png", "lr_schedules.png"):
        path = root / name
        assert path.is_file() and path.stat().st_size > 0, name
    assert (root / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    layouts = list(root.glob("events.out.tfevents.*.layout"))
    assert len(layouts) == 1 and layouts[0].stat().st_size > 0
    assert len([d for d in (root / "tensorboard").iterdir() if d.is_dir()]) == 8  # the arms, in a log dir of their own
    assert len(list((root / "tensorboard").glob("events.out.tfevents.*.layout"))) == 1
    assert summary["tensorboard"] == f".venv/bin/tensorboard --logdir {root / 'tensorboard'} --samples_per_plugin scalars=100000"
    assert summary["n_runs"] == 24 and summary["n_excluded"] == 1 and summary["n_arms"] == 8


def test_report_states_the_verdict_effect_interval_and_seeds(sweep):
    root, summary = sweep
    text = (root / "report.md").read_text()
    [claim] = summary["claims"]
    assert claim["verdict"] == C.SUPPORTED
    assert "Warmup matters for Adam, not SGD: **SUPPORTED**" in text
    assert "n = 3 seeds" in text and "Excluded" in text and "ConfigError" in text
    for png in ("loss_curves.png", "early_jitter.png", "lr_sensitivity.png", "lr_schedules.png"):
        assert f"({png})" in text


def test_csvs_hold_one_row_per_run_and_per_arm(sweep):
    root, _ = sweep
    runs = list(csv.DictReader(open(root / "runs.csv")))
    arms = list(csv.DictReader(open(root / "arms.csv")))
    assert len(runs) == 24 and len(arms) == 8
    div = [r for r in runs if r["status"] == "diverged"]
    assert len(div) == 1 and div[0]["failed"] == "True" and float(div[0]["loss"]) == pytest.approx(L0)
    arm = next(a for a in arms if a["diverged"] == "1")
    assert float(arm["diverged_rate"]) == pytest.approx(1 / 3) and float(arm["diverged_ci_hi"]) > 0.5
    assert {"loss_mean", "loss_ci_lo", "loss_ci_hi", "early_jitter_mean"} <= set(arms[0])


def test_cli_reruns_in_place_and_replaces_the_layout(sweep, capsys):
    import importlib.util

    root, _ = sweep
    spec = importlib.util.spec_from_file_location("analyze_cli", Path(__file__).parents[1] / "scripts" / "analyze.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main([str(root), "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "Warmup matters for Adam, not SGD: SUPPORTED" in out and "24 runs, 8 arms" in out
    assert len(list(root.glob("events.out.tfevents.*.layout"))) == 1
    assert len([d for d in (root / "tensorboard").iterdir() if d.is_dir()]) == 8
    assert f"arms in TensorBoard: .venv/bin/tensorboard --logdir {root / 'tensorboard'}" in out


def test_a_mistyped_sweep_path_is_one_line_and_creates_nothing(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("analyze_cli", Path(__file__).parents[1] / "scripts" / "analyze.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    typo = tmp_path / "outputs" / "multirn" / "x"
    assert cli.main([str(typo)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {typo}: no such sweep directory" and not typo.exists()


def test_the_arm_log_dir_stays_under_tensorboards_40_run_limit_for_a_72_job_sweep(tmp_path):
    """TensorBoard's frontend selects no run once a log dir has more than 40: a 72-job preset
    (6 lrs x 2 optimizers x 2 warmups x 3 seeds) writes its 24 arms to a log dir of their own."""
    from warmup_lab.analysis.tblayout import MAX_FRONTEND_RUNS

    rng = np.random.default_rng(0)
    job = 0
    for opt in ("sgd", "adamw"):
        for ratio in (0.0, 0.1):
            for lr in (0.01, 0.02, 0.04, 0.08, 0.16, 0.32):
                for seed in range(3):
                    m = metrics_for(0.3 + 0.01 * rng.normal(), warmup_steps=int(300 * ratio), lr=lr)
                    write_run(tmp_path / str(job), config_for(seed, opt, lr, ratio, "none"), m, steps=5, rng=rng)
                    job += 1
    summary = analyze([tmp_path], claims=[], n_boot=20)
    arm_runs = [d for d in (tmp_path / "tensorboard").iterdir() if d.is_dir()]
    assert summary["n_runs"] == 72 and len(arm_runs) == 24 <= MAX_FRONTEND_RUNS


def test_arms_merge_across_sweep_dirs_and_label_what_varies(sweep, tmp_path):
    root, _ = sweep
    runs = [r for r in load_runs([root, root]) if r.status in ("completed", "diverged")]
    arms = group_arms(runs)
    assert len(arms) == 8 and all(len(a.runs) == 6 for a in arms)
    assert {a.label for a in arms} >= {"sgd lr=0.01 warmup=0%", "adamw lr=0.04 warmup=10%"}  # in the sweep's units
    assert initial_loss(runs) == pytest.approx(L0)


def test_every_scalar_point_is_read(tmp_path):
    """TensorBoard's reader keeps a 10000-point reservoir per tag by default; the analysis
    asks for all points."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    for t in range(10500):
        w.add_scalar("train/loss", float(t), t)
    w.close()
    steps, values = read_scalars(tmp_path)["train/loss"]
    assert len(steps) == 10500 and values[-1] == 10499


def test_no_lr_plot_without_an_lr_grid_and_distinct_markers_with_one(tmp_path):
    from warmup_lab.analysis import plots

    one_lr = group_arms(fraction_runs(np.random.default_rng(20), {0.0: 0.5, 0.1: 0.3}))
    assert plots.lr_sensitivity(one_lr, tmp_path / "a.png", L0) is None and not (tmp_path / "a.png").exists()
    grid = group_arms(factor_runs(np.random.default_rng(21), effect_a=0.2))
    fig_path = plots.lr_sensitivity(grid, tmp_path / "b.png", L0)
    assert fig_path.read_bytes()[:4] == b"\x89PNG"
    import matplotlib.pyplot as plt

    captured = {}
    original = plt.Axes.plot

    def record(self, *args, **kwargs):
        line = original(self, *args, **kwargs)
        if kwargs.get("label"):
            captured[kwargs["label"]] = (line[0].get_color(), line[0].get_marker())
        return line

    plt.Axes.plot = record
    try:
        plots.lr_sensitivity(grid, tmp_path / "c.png", L0)
    finally:
        plt.Axes.plot = original
    assert len(captured) == 4 and len(set(captured.values())) == 4  # every arm line: own colour and marker
    assert len({c for c, _ in captured.values()}) == 4 and len({m for _, m in captured.values()}) == 4


def test_plot_schedules_normalises_an_overlay_and_writes_outputs_by_default(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("plot_schedules", Path(__file__).parents[1] / "scripts" / "plot_schedules.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import matplotlib.pyplot as plt

    drawn = []
    original = plt.Axes.plot
    plt.Axes.plot = lambda self, x, y, *a, **k: (drawn.append(max(y)), original(self, x, y, *a, **k))[1]
    try:
        mod.main(["--schedules", "warmupcosine", "noam", "--overlay", "--out", str(tmp_path / "s.png")])
    finally:
        plt.Axes.plot = original
    assert drawn == [pytest.approx(1.0), pytest.approx(1.0)]  # noam's 0.007 peak no longer a flat line at 0
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size[0] >= 800
    source = Path(mod.__file__).read_text()
    assert 'default=str(ROOT / "outputs" / "schedules.png")' in source  # the tracked gallery only when asked


def test_the_percentile_bootstrap_agrees_with_scipys_where_they_overlap():
    """On a plain mean (no selection) our paired-seed percentile bootstrap and
    scipy.stats.bootstrap(method='percentile') estimate the same quantiles."""
    from scipy import stats as st

    x = np.random.default_rng(3).normal(1.0, 2.0, 40)
    ours = bootstrap_mean(x, n_boot=20000, seed=1)
    ref = st.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                       random_state=np.random.default_rng(2)).confidence_interval
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert abs(ours.lo - ref.low) < 0.1 * se and abs(ours.hi - ref.high) < 0.1 * se


def test_t_and_wilson_intervals_are_scipys():
    from scipy import stats as st

    x = [0.1, 0.4, 0.35, 0.2, 0.5]
    lo, hi = st.t.interval(0.95, 4, loc=np.mean(x), scale=st.sem(x))
    ti = t_interval(x)
    assert (ti.lo, ti.hi) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    ci = st.binomtest(2, 7).proportion_ci(method="wilson")
    w = wilson(2, 7)
    assert (w.lo, w.hi) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))


def test_pilot_table_has_one_row_per_setting_with_every_seed(sweep, capsys):
    import importlib.util

    root, _ = sweep
    spec = importlib.util.spec_from_file_location("pilot_table", Path(__file__).parents[1] / "scripts" / "pilot_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(root), "--by", "optimizer.name", "scheduler.warmup_ratio", "optimizer.lr"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| optimizer.name | scheduler.warmup_ratio | optimizer.lr | seeds")
    rows = lines[2:]
    assert len(rows) == 8 and all(r.count(";") == 2 for r in rows)  # 2 x 2 x 2 settings, 3 seeds each
    [sgd] = [r for r in rows if r.startswith("| sgd | 0.0 | 0.04 |")]
    assert "diverged at 17" in sgd and "| 1/3 |" in sgd  # the planted divergence, counted as failed
