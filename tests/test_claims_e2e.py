"""A tiny version of a claim preset, end to end: `train.py -m experiment=...`, then analyze.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir

from conftest import CONF, ROOT, run_cli

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes_and_carries_a_valid_claim(name):
    from warmup_lab.analysis import load_claim

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"], return_hydra_config=True)
    spec = load_claim(cfg.study.claim)
    assert spec.name == name.removesuffix("_gpu")
    assert cfg.hydra.sweeper.params, "a preset carries its sweep grid"
    assert "seed" in cfg.hydra.sweeper.params
    float(cfg.optimizer.lr)  # interpolated lrs resolve


@pytest.mark.slow
def test_tiny_preset_through_multirun_and_analyze(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "experiment=warmup_adam_vs_sgd", f"hydra.sweep.dir={sweep}",
                   # 4 arms x 2 seeds, a few steps
                   "+arm=sgd,adamw_beta2_098", "scheduler.warmup_ratio=0.0,0.5", "study.lr_mult=1", "seed=0,1",
                   "study.max_seeds=null", "study.budget_minutes=null",
                   "trainer.max_steps=12", "trainer.log_interval=4", "trainer.eval_interval=12",
                   "data=digits", "model=resnet20", "model.depth=8", "model.width=4",  # trains in 12 steps
                   "trainer.checkpoint_interval=null")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: 8/8 runs" in proc.stderr and "ETA" in proc.stderr  # the live line, in a log
    assert "completed: 12 steps" not in proc.stdout  # no per-run block in a sweep
    assert len(list(sweep.glob("*/metrics.json"))) == 8
    analyze = [sys.executable, str(ROOT / "scripts" / "analyze.py"), str(sweep), "--bootstrap", "200"]
    out = subprocess.run(analyze, cwd=ROOT, capture_output=True, text=True, timeout=300)
    # the preset's claim names 10% and 25% warmup; this sweep ran 50%: the arm matches no run
    assert out.returncode == 2, out.stderr[-3000:]
    [line] = out.stderr.strip().splitlines()
    assert "arm adamw_warmup" in line and "matches no run" in line and "0.5" in line
    claim = tmp_path / "claim.yaml"
    claim.write_text(yaml.safe_dump({
        "name": "half_warmup", "statement": "50% warmup helps AdamW more than SGD.",
        "arms": {"a0": {"optimizer.name": "adamw", "scheduler.warmup_ratio": 0.0},
                 "a1": {"optimizer.name": "adamw", "scheduler.warmup_ratio": 0.5},
                 "s0": {"optimizer.name": "sgd", "scheduler.warmup_ratio": 0.0},
                 "s1": {"optimizer.name": "sgd", "scheduler.warmup_ratio": 0.5}},
        "parts": [{"name": "interaction", "effect": "(a0 - a1) - (s0 - s1)", "rule": "greater"}]}))
    out = subprocess.run(analyze + ["--claim-file", str(claim), "--plan"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "half_warmup: INCONCLUSIVE" in out.stdout  # 2 seeds, 12 steps
    assert "seeds to decide at the margin 0.02" in out.stdout
    for name in ("report.md", "runs.csv", "arms.csv", "verdicts.json", "loss_curves.png", "early_jitter.png",
                 "lr_sensitivity.png", "lr_schedules.png"):
        assert (sweep / name).stat().st_size > 0, name
    report = (sweep / "report.md").read_text()
    assert "| adamw warmup=50% |" in report  # arms named by what varies, in the units the sweep set
    assert "Seeds this needs" in report and "seeds to decide at the margin" in report
    v = json.loads((sweep / "verdicts.json").read_text())
    assert v["n_runs"] == 8 and v["n_arms"] == 4 and v["seeds"] == [0, 1]
    assert v["claims"][0]["parts"][0]["effect_formula"] == "(a0 - a1) - (s0 - s1)"
    assert list(sweep.glob("events.out.tfevents.*.layout"))
