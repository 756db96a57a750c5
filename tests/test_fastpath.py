"""The speed knobs (trainer.channels_last / compile / compile_optimizer) change speed, not results."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg, run_keeping_trainer
from warmup_lab.engine import fastpath
from warmup_lab.runs.validate import ConfigError

SMALL = ["model.width=8", "trainer.max_steps=5", "trainer.log_interval=5"]


def test_channels_last_gives_the_same_run(tmp_path, monkeypatch):
    _, base, _ = run_keeping_trainer(compose_cfg(*SMALL), tmp_path / "nchw", monkeypatch)
    _, cl, trainer = run_keeping_trainer(compose_cfg(*SMALL, "trainer.channels_last=true"), tmp_path / "cl", monkeypatch)
    assert trainer.runs[0].model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert [v for _, v in cl["train/loss"]] == pytest.approx([v for _, v in base["train/loss"]], rel=1e-4)


def test_compile_compiles_in_place_and_holds_lrs_in_tensors(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((self, kw)))
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append((fn, kw)) or fn)
    _, base, _ = run_keeping_trainer(compose_cfg(*SMALL), tmp_path / "eager", monkeypatch)
    assert not compiled
    cfg = compose_cfg(*SMALL, "trainer.compile=reduce-overhead", "trainer.compile_optimizer=true")
    _, comp, trainer = run_keeping_trainer(cfg, tmp_path / "compiled", monkeypatch)
    assert compiled[0][0] is trainer.runs[0].model and compiled[0][1] == {"mode": "reduce-overhead"}
    assert len(compiled) == 2  # the model and the optimizer step
    lrs = [g["lr"] for g in trainer.runs[0].optimizer.param_groups]
    assert all(isinstance(lr, torch.Tensor) and lr.dim() == 0 for lr in lrs)
    # the schedule updated the same tensors in place, to the lr of the step after the last
    assert lrs[0].item() == pytest.approx(trainer.runs[0].lr_adapter.get_last_lr()[0], rel=1e-6)
    assert [v for _, v in comp["train/lr"]] == pytest.approx([v for _, v in base["train/lr"]], rel=1e-6)
    assert [v for _, v in comp["train/loss"]] == pytest.approx([v for _, v in base["train/loss"]], rel=1e-5)


def test_compile_and_channels_last_values_are_checked():
    assert fastpath.compile_mode(False) is None and fastpath.compile_mode(True) == "default"
    with pytest.raises(ConfigError, match="trainer.compile=fast"):
        fastpath.compile_mode("fast")
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="channels_last"):
        fastpath.apply(model, opt, {"channels_last": True}, torch.device("cpu"), is_image=False)
