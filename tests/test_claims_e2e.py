"""A tiny version of a claim preset, end to end: `train.py -m experiment=...`, then analyze.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF, ROOT, run_cli

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes_and_names_a_known_claim(name):
    from warmup_lab.analysis import CLAIMS

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"], return_hydra_config=True)
    assert cfg.study.claim in CLAIMS
    assert cfg.hydra.sweeper.params, "a preset carries its sweep grid"
    assert "seed" in cfg.hydra.sweeper.params
    float(cfg.optimizer.lr)  # interpolated lrs resolve


@pytest.mark.slow
def test_tiny_preset_through_multirun_and_analyze(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "experiment=warmup_adam_vs_sgd", f"hydra.sweep.dir={sweep}",
                   # 2 arms x 2 seeds, a few steps
                   "optimizer=adamw", "scheduler.warmup_ratio=0.0,0.25", "study.lr_mult=1", "seed=0,1",
                   "trainer.max_steps=12", "trainer.log_interval=4", "trainer.eval_interval=12",
                   "model.width=4", "trainer.checkpoint_interval=null")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(sweep.glob("*/metrics.json"))) == 4
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "analyze.py"), str(sweep), "--bootstrap", "200"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Warmup matters for Adam, not SGD: INCONCLUSIVE" in out.stdout  # no SGD arm: cannot judge
    for name in ("report.md", "runs.csv", "arms.csv", "verdicts.json", "loss_curves.png", "early_jitter.png",
                 "lr_sensitivity.png", "lr_schedules.png"):
        assert (sweep / name).stat().st_size > 0, name
    report = (sweep / "report.md").read_text()
    assert "lacks SGD" in report and "| warmup=3 |" in report  # arms named by what varies
    v = json.loads((sweep / "verdicts.json").read_text())
    assert v["n_runs"] == 4 and v["n_arms"] == 2 and v["seeds"] == [0, 1]
    assert list(sweep.glob("events.out.tfevents.*.layout"))
