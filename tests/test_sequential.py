"""Run until decided: alpha spending, the error rate over looks by simulation, fewer seeds for
planted effects, the real judging path, and a sequential sweep end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml
from scipy import stats

from conftest import ROOT, run_cli
from warmup_lab.analysis import claims as C
from warmup_lab.analysis.claimspec import ClaimError, parse_claim
from warmup_lab.analysis.power import seeds_needed
from warmup_lab.analysis.sequential import (Design, design_from_study, judge, null_scenarios, round_seeds,
                                            seeds_through, simulate, spent)

from test_claim_yaml import own_claim, two_arm_runs


def test_spending_functions_match_their_formulas_and_spend_exactly_alpha():
    z = stats.norm.ppf(0.975)
    assert spent(0.5, 0.05, "obrien_fleming") == pytest.approx(2 - 2 * stats.norm.cdf(z / math.sqrt(0.5)))
    assert spent(0.5, 0.05, "pocock") == pytest.approx(0.05 * math.log(1 + (math.e - 1) / 2))
    for kind in ("obrien_fleming", "pocock"):
        assert spent(1.0, 0.05, kind) == pytest.approx(0.05)
        d = Design(3, 3, 12, 0.05, kind)
        assert d.looks == [3, 6, 9, 12]
        assert sum(d.alphas()) == pytest.approx(0.05) and all(a > 0 for a in d.alphas())
    assert Design(5, 5, 5).looks == [5] and Design(5, 5, 5).alphas() == [pytest.approx(0.05)]
    assert Design(4, 3, 9).looks == [4, 7, 9]


def test_round_seeds_are_the_first_list_then_unused_integers():
    d = Design(3, 2, 8)
    first = [0, 1, 2]
    assert [round_seeds(first, d, j) for j in range(len(d.looks))] == [[0, 1, 2], [3, 4], [5, 6], [7]]
    assert seeds_through([10, 20, 30], d, 1) == [10, 20, 30, 31, 32]


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_wrong_decisions_over_all_looks_stay_within_alpha(spending):
    """4000 simulated claims per null scenario (the boundaries of every rule), 6 looks of 2 seeds:
    the rate of wrong decisions over all looks is at most 5% (plus 3 binomial standard errors)."""
    d = Design(2, 2, 12, 0.05, spending)
    for rule, effect, wrong in null_scenarios(0.02):
        r = simulate(d, rule, effect, sd=0.05, margin=0.02, n_sims=4000, seed=7)
        assert r[wrong] <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 4000), (rule, effect, wrong, r)


def test_naive_repeated_looks_would_break_the_error_rate():
    """The check above can fail: judging every look at the full 5% inflates the error."""
    class Naive(Design):
        def alphas(self):  # every look at level 95%
            return [self.alpha] * len(self.looks)

    naive = Naive(2, 2, 16, 0.05)
    r = simulate(naive, "positive", 0.0, sd=0.05, margin=0.02, n_sims=4000, seed=3)
    assert r["supported"] + r["contradicted"] > 0.1


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_planted_effects_are_decided_with_fewer_seeds_than_a_fixed_design(spending):
    d = Design(4, 4, 16, 0.05, spending)
    for effect in (0.1, 0.2):
        seq = simulate(d, "greater", effect, sd=0.05, margin=0.02, n_sims=3000, seed=11)
        fixed = simulate(d, "greater", effect, sd=0.05, margin=0.02, n_sims=3000, seed=11, sequential=False)
        assert fixed["mean_seeds"] == 16 and seq["mean_seeds"] < 0.8 * 16, (effect, seq)
        assert seq["supported"] >= 0.95 and fixed["supported"] >= 0.95


def test_the_real_judging_path_keeps_the_error_rate_under_a_null():
    """The YAML claim, bootstrap and all, through ``sequential.judge`` on simulated runs with no
    effect: wrongly supported at most about alpha/2 over 3 looks (binomial slack for 120 sims)."""
    spec = parse_claim(own_claim("greater"))
    d = Design(3, 3, 9, 0.05, "pocock")
    wrong = 0
    for i in range(120):
        runs = two_arm_runs(np.random.default_rng(900 + i), 0.0, 0.03, seeds=9)
        res = judge(spec, runs, d, [0, 1, 2], n_boot=150)
        wrong += res.parts[0].verdict == C.SUPPORTED
    assert wrong / 120 <= 0.025 + 3 * math.sqrt(0.025 * 0.975 / 120)


def test_a_decision_is_frozen_at_the_look_that_made_it():
    spec = parse_claim(own_claim("greater"))
    runs = two_arm_runs(np.random.default_rng(5), 0.3, 0.01, seeds=9)
    res = judge(spec, runs, Design(3, 3, 9, 0.05, "pocock"), [0, 1, 2], n_boot=200)
    looks = res.design["looks_taken"]
    assert [lk["n_seeds"] for lk in looks] == [3, 6, 9]
    assert looks[0]["parts"]["gradual beats constant"] == C.SUPPORTED
    assert "decided at look 1 (3 seeds" in res.parts[0].detail and res.parts[0].effect.ci.n == 3
    assert res.design["state"] == "decided" and res.verdict == C.SUPPORTED


def test_design_knobs_are_checked():
    assert design_from_study({"max_seeds": None}, 3) is None
    d = design_from_study({"max_seeds": 12, "round_seeds": None, "spending": "pocock"}, 4)
    assert d.looks == [4, 8, 12] and d.spending == "pocock"
    for bad, msg in (({"max_seeds": 1}, "study.max_seeds=1"), ({"max_seeds": 8, "alpha": 0.7}, "study.alpha=0.7"),
                     ({"max_seeds": 8, "spending": "fast"}, "allowed obrien_fleming, pocock"),
                     ({"budget_minutes": 5}, "needs study.max_seeds"), ({"max_seeds": 8, "round_seeds": 0},
                                                                        "study.round_seeds=0")):
        with pytest.raises(ClaimError, match=msg):
            design_from_study(bad, 3)


def test_seeds_needed_gives_80_percent_power_by_simulation():
    rng = np.random.default_rng(0)
    sd, delta = 0.05, 0.04
    n = seeds_needed(sd, delta)
    crit = stats.t.ppf(0.975, n - 1)

    def power(k):
        x = rng.normal(delta, sd, (20000, k))
        return np.mean(x.mean(1) / (x.std(1, ddof=1) / math.sqrt(k)) > stats.t.ppf(0.975, k - 1))

    assert power(n) >= 0.79 and power(n - 1) < 0.8, (n, power(n), power(n - 1), crit)
    assert seeds_needed(0.05, 0.0) is None and seeds_needed(0.1, 0.04) > n


# -- end to end ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib", "fused"])
def test_a_sequential_sweep_stops_early_on_a_planted_effect_and_resumes(tmp_path, launcher):
    """lr 1e-4 barely trains in 30 steps, lr 0.1 does: a large planted effect. The first round
    (3 seeds) decides it, so no second round runs; analyze.py reproduces the rounds. The same
    through every launcher (the rounds live in the sweeper)."""
    claim = tmp_path / "claim.yaml"
    claim.write_text(yaml.safe_dump({
        "name": "tiny_lr_is_worse", "statement": "A 1000x smaller lr ends with a higher loss.", "margin": 0.05,
        "arms": {"tiny": {"optimizer.lr": 0.0001}, "good": {"optimizer.lr": 0.1}},
        "parts": [{"id": "tiny_worse", "effect": "tiny - good", "rule": "greater"}]}))
    sweep = tmp_path / "sweep"
    args = ["-m", "optimizer.lr=0.0001,0.1", "seed=0,1,2", f"study.claim={claim}", "study.max_seeds=9",
            "study.spending=pocock", f"hydra.sweep.dir={sweep}", "trainer.max_steps=30", "trainer.eval_interval=30",
            "trainer.log_interval=10", "trainer.checkpoint_interval=null", "model.width=4", "model.depth=8",
            "trainer.threads=1", f"launcher={launcher}", *(["hydra.launcher.n_jobs=2"] if launcher == "joblib" else [])]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((sweep / "study.json").read_text())
    assert state["stopped"] == "decided after round 1", state
    assert [r["verdicts"] for r in state["rounds"]] == [{"tiny_worse": "supported"}]
    assert len(list(sweep.glob("*/metrics.json"))) == 6  # 2 arms x 3 seeds, no second round
    assert "tiny_lr_is_worse round 1 of at most 3: 6/6 runs" in proc.stderr
    assert "Stopped: decided after round 1" in proc.stderr
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "analyze.py"), str(sweep), "--bootstrap", "300"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tiny_lr_is_worse: SUPPORTED" in out.stdout
    report = (sweep / "report.md").read_text()
    assert "Sequential design" in report and "pocock alpha spending over 3 looks" in report
    v = json.loads((sweep / "verdicts.json").read_text())
    assert v["claims"][0]["design"]["state"] == "decided"
    if launcher != "basic":
        return
    # the same command again, resumed: everything is skipped and the study stops at once
    again = run_cli(*args, "trainer.resume=true")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "6 finished (skipped)" in again.stdout and len(list(sweep.glob("*/metrics.json"))) == 6


@pytest.mark.slow
def test_an_undecided_study_adds_rounds_until_the_budget_says_stop(tmp_path):
    """Two seeds cannot decide anything at the first look of an O'Brien-Fleming design (its
    alpha is 1e-4), so a second round is due; a budget of 0.3 seconds stops the study instead (a
    round of 4 runs takes more than the half of it that would leave room for the next)."""
    claim = tmp_path / "claim.yaml"
    claim.write_text(yaml.safe_dump({
        "name": "half_lr", "statement": "Half the lr ends worse.",
        "arms": {"half": {"optimizer.lr": 0.05}, "full": {"optimizer.lr": 0.1}},
        "parts": [{"effect": "half - full", "rule": "greater"}]}))
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "optimizer.lr=0.05,0.1", "seed=0,1", f"study.claim={claim}", "study.max_seeds=8",
                   "study.budget_minutes=0.005", f"hydra.sweep.dir={sweep}", "trainer.max_steps=8",
                   "trainer.eval_interval=8", "trainer.checkpoint_interval=null", "model.width=4", "model.depth=8",
                   "trainer.threads=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((sweep / "study.json").read_text())
    assert "study.budget_minutes=0.005" in state["stopped"], state
    assert len(state["rounds"]) == 1 and len(list(sweep.glob("*/metrics.json"))) == 4
