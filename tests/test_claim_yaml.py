"""Claims as YAML data: the five presets reproduce the Python claims they replaced, every rule
finds planted effects through a YAML claim and stays undecided on noise, and bad claims get one
line naming the field."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import CONF, ROOT
from warmup_lab.analysis import claims as C
from warmup_lab.analysis.claimspec import ClaimError, load_claim, parse_claim
from warmup_lab.analysis.load import Run, failure_reason, flatten
from warmup_lab.analysis.reducers import REDUCERS, reducer

GOLDEN = json.loads((Path(__file__).parent / "data" / "claims_golden.json").read_text())
# the preset claims as they were when the Python functions were rewritten (the presets moved since)
GOLDEN_CLAIMS = yaml.safe_load((Path(__file__).parent / "data" / "claims_golden_presets.yaml").read_text())


def golden_runs(scenario: dict) -> list[Run]:
    runs = []
    for i, r in enumerate(scenario["runs"]):
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in r["config"].items()}
        reason = failure_reason(r["metrics"])
        runs.append(Run(Path(f"mem/{scenario['name']}/{i}"), cfg, [], r["metrics"], failed=reason is not None,
                        failure=reason))
    return runs


def _close(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9,
                                                                                          abs_tol=1e-12))


@pytest.mark.parametrize("scenario", GOLDEN["scenarios"], ids=[s["name"] for s in GOLDEN["scenarios"]])
def test_yaml_presets_reproduce_the_python_claims_they_replaced(scenario):
    """tests/data/claims_golden.json holds synthetic sweeps and what the Python claim functions of
    commit 93ba7a0 made of them: every part's name, rule, estimate, t, bootstrap and union
    interval, level and verdict, the headline and the claim's verdict. The claims are the YAML
    rewrites of those functions (claims_golden_presets.yaml, frozen: the presets have moved since)."""
    res = C.evaluate_claim(GOLDEN_CLAIMS[scenario["claim"]], golden_runs(scenario), n_boot=GOLDEN["n_boot"])
    assert res.verdict == scenario["verdict"]
    assert (res.headline.name if res.headline else None) == scenario["headline"]
    assert res.n_seeds == scenario["n_seeds"]
    assert [p.name for p in res.parts] == [p["name"] for p in scenario["parts"]]
    for part, ref in zip(res.parts, scenario["parts"]):
        e = part.effect
        assert (part.kind, part.primary, part.verdict) == (ref["kind"], ref["primary"], ref["verdict"]), part.name
        assert np.allclose(e.per_seed, ref["per_seed"], equal_nan=True), part.name
        got = [e.ci.estimate, e.t.lo, e.t.hi, e.boot.lo, e.boot.hi, e.ci.lo, e.ci.hi, e.ci.level]
        want = [ref["estimate"], *ref["t"], *ref["boot"], *ref["ci"], ref["level"]]
        assert all(_close(a, b) for a, b in zip(got, want)), (part.name, got, want)
    assert any("moot" in n for n in res.notes) == scenario["moot"]


def test_every_preset_with_a_claim_is_a_valid_yaml_claim():
    names = C.named_claims()
    assert set(names) >= {"warmup_adam_vs_sgd", "postln_needs_warmup", "radam_untuned_replaces_warmup",
                          "warmup_fraction", "warmup_lr_stability"}
    for name in names:
        spec = load_claim(name)
        assert spec.name == name and spec.parts and spec.statement


# -- a two-arm claim of one's own, for each rule ------------------------------------------------------
def own_claim(rule: str, margin: float = 0.02, **part) -> dict:
    return {"name": f"own_{rule}", "statement": "Gradual warmup beats constant warmup.", "margin": margin,
            "arms": {"constant": {"scheduler.name": "constantwarmup"}, "gradual": {"scheduler.name": "warmuplinear"}},
            "best_over": ["optimizer.lr"],
            "parts": [{"name": "gradual beats constant", "effect": "constant - gradual", "rule": rule, **part}]}


def two_arm_runs(rng, effect: float, noise: float, seeds: int = 6, lrs=(0.01, 0.03)) -> list[Run]:
    """Loss = 0.3 + a per-seed offset shared by the arms + an lr penalty + ``effect`` for the
    constant arm + noise; the best lr is 0.01 in both arms."""
    offsets = rng.normal(0, 0.05, seeds)
    runs = []
    for sched, eff in (("constantwarmup", effect), ("warmuplinear", 0.0)):
        for lr in lrs:
            for s in range(seeds):
                loss = 0.3 + offsets[s] + (0.1 if lr > 0.01 else 0) + eff + noise * rng.normal()
                cfg = {"seed": s, "optimizer": {"name": "adamw", "lr": lr}, "scheduler": {"name": sched},
                       "model": {"name": "resnet20"}, "data": {"name": "digits"}}
                m = {"status": "completed", "final_val_loss": loss, "final_train_loss": loss / 2,
                     "initial_train_loss": 2.3, "final_val_acc": 0.9, "chance_acc": 0.1, "warmup_steps": 10,
                     "total_steps": 100, "peak_lr": lr, "early_jitter": 0.1 * math.exp(eff * 5 + 0.01 * rng.normal())}
                runs.append(Run(Path(f"mem/{sched}/{lr}/{s}"), flatten(cfg), [], m, failed=failure_reason(m) is not None))
    return runs


@pytest.mark.parametrize("rule,effect,verdict", [
    ("greater", 0.2, C.SUPPORTED), ("greater", -0.2, C.CONTRADICTED), ("greater", 0.0, C.CONTRADICTED),
    ("not_greater", 0.0, C.SUPPORTED), ("not_greater", 0.2, C.CONTRADICTED),
    ("negligible", 0.0, C.SUPPORTED), ("negligible", 0.2, C.CONTRADICTED),
    ("positive", 0.2, C.SUPPORTED), ("positive", -0.2, C.CONTRADICTED),
])
def test_planted_effects_are_found_by_every_rule(rule, effect, verdict):
    res = C.evaluate_claim(parse_claim(own_claim(rule)), two_arm_runs(np.random.default_rng(1), effect, 0.002),
                           n_boot=400)
    assert res.verdict == verdict, [(p.name, p.verdict, p.effect.ci) for p in res.parts]
    assert res.parts[0].effect.ci.estimate == pytest.approx(effect, abs=0.01)


WRONG_UNDER_NO_EFFECT = {"greater": (C.SUPPORTED,), "positive": (C.SUPPORTED, C.CONTRADICTED),
                         "not_greater": (C.CONTRADICTED,), "negligible": (C.CONTRADICTED,)}


@pytest.mark.parametrize("rule", list(WRONG_UNDER_NO_EFFECT))
def test_pure_noise_is_mostly_undecided_and_never_wrongly_decided(rule):
    """True effect 0 with noise (sd 0.1) far above the margin: no decision that a zero effect
    makes wrong, and mostly inconclusive."""
    verdicts = [C.evaluate_claim(parse_claim(own_claim(rule)), two_arm_runs(np.random.default_rng(50 + i), 0.0, 0.1),
                                 n_boot=200).verdict for i in range(12)]
    assert not set(verdicts) & set(WRONG_UNDER_NO_EFFECT[rule]), verdicts
    assert verdicts.count(C.INCONCLUSIVE) >= 9, verdicts


def test_grid_mean_jitter_metric_and_log10_transform():
    claim = own_claim("positive", metric="early_jitter", transform="log10", reduce="mean")
    res = C.evaluate_claim(parse_claim(claim), two_arm_runs(np.random.default_rng(2), 0.2, 0.002), n_boot=300)
    # early_jitter = 0.1 exp(5 effect): log10 ratio = 5 * 0.2 / ln 10
    assert res.parts[0].effect.ci.estimate == pytest.approx(1.0 / math.log(10), abs=0.01)
    assert res.verdict == C.SUPPORTED


def test_arm_values_any_of_numbers_compare_numerically_and_best_over_per_arm():
    runs = two_arm_runs(np.random.default_rng(3), 0.2, 0.002)
    claim = own_claim("greater")
    claim["arms"] = {"constant": {"scheduler.name": "constantwarmup", "optimizer.lr": [0.01, 0.03]},
                     "gradual": {"scheduler.name": ["warmuplinear"], "optimizer.lr": 0.03}}
    claim["best_over"] = {"constant": ["optimizer.lr"]}  # gradual fixed at its worse lr 0.03
    res = C.evaluate_claim(parse_claim(claim), runs, n_boot=300)
    assert res.parts[0].effect.ci.estimate == pytest.approx(0.2 - 0.1, abs=0.01)
    assert "constant at lr=0.01" in res.parts[0].detail
    # 1e-2 written as a different float spelling still matches
    claim["arms"]["gradual"]["optimizer.lr"] = 3e-2
    assert C.evaluate_claim(parse_claim(claim), runs, n_boot=100).parts[0].effect.ci.estimate == pytest.approx(0.1, abs=0.01)


def test_a_swept_key_outside_the_claim_is_reported_as_a_collision():
    runs = two_arm_runs(np.random.default_rng(4), 0.2, 0.002)
    claim = own_claim("greater")
    claim["best_over"] = []
    res = C.evaluate_claim(parse_claim(claim), runs, n_boot=100)
    assert any("share an (arm" in n for n in res.notes), res.notes


def test_a_reducer_registered_by_name_is_usable_from_yaml():
    @reducer("worst_level_for_test")
    def worst(cube, idx):
        return np.nanmax(cube[:, idx], axis=0), None

    try:
        res = C.evaluate_claim(parse_claim(own_claim("greater", reduce="worst_level_for_test")),
                               two_arm_runs(np.random.default_rng(5), 0.2, 0.002), n_boot=100)
        assert res.parts[0].effect.ci.estimate == pytest.approx(0.2, abs=0.01)
    finally:
        REDUCERS.pop("worst_level_for_test")


def test_context_part_caps_a_supported_verdict():
    claim = own_claim("greater")
    claim["context"] = [{"name": "warmup matters at all", "effect": "gradual - constant", "rule": "greater"}]
    res = C.evaluate_claim(parse_claim(claim), two_arm_runs(np.random.default_rng(6), 0.2, 0.002), n_boot=200)
    assert res.parts[0].verdict == C.SUPPORTED and res.parts[1].context
    assert res.verdict == C.INCONCLUSIVE and any("moot" in n for n in res.notes)


# -- errors: one line naming the field ---------------------------------------------------------------------
def _with(**changes):
    c = own_claim("greater")
    for k, v in changes.items():
        if v is None:
            c.pop(k)
        else:
            c[k] = v
    return c


BAD = [
    (_with(margn=0.1), "unknown field 'margn'", "did you mean 'margin'"),
    (_with(parts=[{"effect": "constant - gradual", "rule": "bigger"}]), "parts[0].rule='bigger'", "allowed greater"),
    (_with(parts=[{"effect": "constant - graduel", "rule": "greater"}]), "unknown arm 'graduel'", "did you mean 'gradual'"),
    (_with(parts=[{"effect": "constant -", "rule": "greater"}]), "parts[0].effect", "arithmetic over arm names"),
    (_with(parts=[{"effect": "__import__('os')", "rule": "greater"}]), "parts[0].effect", "only arm names"),
    (_with(parts=[{"effect": "constant - gradual", "rule": "greater", "primary": False}]), "no primary part", ""),
    (_with(parts=[{"effect": "constant - gradual", "rule": "greater", "reduce": "median"}]), "reduce='median'",
     "allowed best"),
    (_with(arms={"constant": {}}), "arms.constant", "mapping config key"),
    (_with(arms={"a-b": {"x": 1}}), "arms.a-b", "identifier"),
    (_with(arms=None), "arms is required", ""),
    (_with(statement=None), "statement", "non-empty string"),
    (_with(headline="nope"), "headline='nope'", "allowed first, largest"),
    (_with(margin=-1), "margin=-1", "must be a number"),
    (_with(best_over={"gradaul": ["optimizer.lr"]}), "best_over.gradaul names no arm", ""),
]


@pytest.mark.parametrize("claim,field,allowed", BAD, ids=[b[1][:30] for b in BAD])
def test_schema_errors_name_the_field_in_one_line(claim, field, allowed):
    with pytest.raises(ClaimError) as e:
        parse_claim(claim)
    msg = str(e.value)
    assert "\n" not in msg and field in msg and allowed in msg, msg


def test_arms_that_match_no_run_or_overlap_are_errors_naming_them():
    runs = two_arm_runs(np.random.default_rng(7), 0.2, 0.002)
    claim = own_claim("greater")
    claim["arms"]["gradual"] = {"scheduler.name": "warmupcosine"}
    with pytest.raises(ClaimError, match=r"arm gradual \(scheduler.name='warmupcosine'\) matches no run.*"
                                         r"'constantwarmup', 'warmuplinear'"):
        C.evaluate_claim(parse_claim(claim), runs, n_boot=50)
    claim["arms"]["gradual"] = {"optimizer.name": "adamw"}
    with pytest.raises(ClaimError, match="matches arms constant and gradual"):
        C.evaluate_claim(parse_claim(claim), runs, n_boot=50)


def test_claim_files_and_names_load_and_unknown_ones_say_what_exists(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(own_claim("greater")))
    assert load_claim(str(path)).name == "own_greater"
    wrapped = tmp_path / "wrapped.yaml"
    wrapped.write_text(yaml.safe_dump({"claim": own_claim("negligible")}))
    assert load_claim(str(wrapped)).parts[0].rule == "negligible"
    with pytest.raises(ClaimError, match="did you mean 'warmup_fraction'"):
        load_claim("warmup_fractoin")
    with pytest.raises(ClaimError, match="no such file"):
        load_claim(str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ClaimError, match="not valid YAML"):
        load_claim(str(broken))


def test_train_py_rejects_a_bad_claim_before_loading_data(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with(parts=[{"effect": "constant - gradual", "rule": "bigger"}])))
    for mode in ([], ["-m", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]):
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *mode, f"study.claim={bad}",
                               f"hydra.run.dir={tmp_path / 'run'}", "trainer.device=cpu"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert lines[-1].startswith("error: ") and "parts[0].rule='bigger'" in lines[-1], proc.stderr[-2000:]
        assert len([ln for ln in lines if ln.startswith("error")]) == 1
    assert not (tmp_path / "run" / "metrics.json").exists() and not list((tmp_path).glob("sweep/*/metrics.json"))


def test_every_preset_claim_composes_through_hydra():
    from hydra import compose, initialize_config_dir

    for name in C.named_claims():
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={name}"])
        assert load_claim(cfg.study.claim).name == name
