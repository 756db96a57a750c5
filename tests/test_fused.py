"""Fused runs (K ResNets as one grouped model) give each run the numbers it gets alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_cfg, run_keeping_trainer, write_tiny_cifar
from warmup_lab.engine.fused import (FusedCifarResNet, FusedTrainer, build_fused, check_fusable,
                              fuse_inputs, train_fused)
from warmup_lab.models.resnet import CifarResNet

COMMON = ["trainer.max_steps=6", "trainer.eval_interval=3", "trainer.log_interval=4", "model.width=8"]


def run_alone(cfg, run_dir, monkeypatch):
    """``run()`` as train.py calls it: metrics, TB scalars and the trained model's state dict."""
    metrics, scalars, trainer = run_keeping_trainer(cfg, run_dir, monkeypatch)
    return metrics, scalars, trainer.model.state_dict()


@pytest.mark.parametrize("optimizer,extra", [
    ("sgd", [["seed=1", "optimizer.lr=0.01", "scheduler=warmuplinear"],
             ["seed=2", "optimizer.lr=0.02", "scheduler=constantlr", "scheduler.warmup_steps=null",
              "optimizer.weight_decay=0"],
             ["seed=3", "optimizer.lr=1e9"]]),        # diverges at step 3, alone and fused
    ("adamw", [["seed=1", "optimizer.lr=3e-3", "scheduler=warmuplinear"]]),
])
def test_fused_runs_equal_runs_alone(tmp_path, monkeypatch, optimizer, extra):
    """Same seeds, same numbers to float rounding. Some configs amplify rounding ~1000x within
    6 steps (batch 16, lr 0.1): there one run alone with 1 vs 2 threads differs by 1e-3, and fused
    runs by as much, no more; the configs here keep 1 vs 2 threads within 1e-6."""
    lr0 = "optimizer.lr=0.02" if optimizer == "sgd" else "optimizer.lr=1e-3"
    cfgs = [compose_cfg(f"optimizer={optimizer}", *COMMON, "seed=0", lr0)]
    cfgs += [compose_cfg(f"optimizer={optimizer}", *COMMON, *e) for e in extra]
    results = [train_fused(cfgs, "cpu", keep_state=True)]
    if optimizer == "adamw":  # conv weights stored NHWC in the flat buffer, NHWC activations
        results.append(train_fused(cfgs, "cpu", keep_state=True, channels_last=True))
    alone = [run_alone(cfg, tmp_path / str(k), monkeypatch) for k, cfg in enumerate(cfgs)]
    for fused, (k, (metrics, scalars, state)) in ((f, a) for f in results for a in enumerate(alone)):
        assert fused.status[k] == metrics["status"] and fused.diverged_step[k] == metrics["diverged_step"]
        loss = [v for _, v in scalars["train/loss"]]
        assert len(fused.loss[k]) == len(loss)
        finite = slice(0, metrics["diverged_step"])  # past divergence only "non-finite" is defined
        assert fused.loss[k][finite] == pytest.approx(loss[finite], rel=1e-5)
        assert fused.grad_norm[k][finite] == pytest.approx([v for _, v in scalars["train/grad_norm"]][finite], rel=1e-4, nan_ok=True)
        assert fused.lr[k] == pytest.approx([v for _, v in scalars["train/lr"]], rel=1e-6)
        if metrics["status"] == "completed":
            assert [v["step"] for v in fused.val[k]] == [v["step"] for v in metrics["val_history"]]
            for a, b in zip(fused.val[k], metrics["val_history"]):
                assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["acc"] == pytest.approx(b["acc"])
            for name, value in state.items():
                torch.testing.assert_close(fused.state_dicts[k][name], value, rtol=1e-3, atol=1e-4)


def test_fused_batches_equal_each_runs_own_batches_with_augmentation(tmp_path):
    root = write_tiny_cifar(tmp_path)
    cfgs = [compose_cfg("data=cifar10", f"data.root={root}", "model.width=4", f"seed={s}") for s in (0, 5, 9)]
    model, optimizer, lrs, data, samplers, device = build_fused(cfgs, "cpu")
    trainer = FusedTrainer(model, optimizer, lrs, data, samplers, device=device, eval_interval=3,
                           log_interval=2)
    alone = [data.sampler(16, s) for s in (0, 5, 9)]
    for _ in range(8):  # past an epoch boundary (100 images, batch 16)
        x, y = trainer.batch()
        xs = [data.batch(s.next(), s.generator) for s in alone]
        assert torch.equal(x, fuse_inputs(torch.stack([a for a, _ in xs])))
        assert torch.equal(y, torch.stack([b for _, b in xs]))


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_forward_and_bn_statistics_equal_each_model(channels_last):
    torch.manual_seed(0)
    models = [CifarResNet(3, 10, n=1, width=4, shortcut=sc) for sc in ("A", "A", "A")]
    proj = [CifarResNet(3, 10, n=1, width=4, shortcut="B") for _ in range(2)]
    for group in (models, proj):
        fused = FusedCifarResNet(group)
        xs = torch.randn(len(group), 5, 3, 8, 8)
        x = fuse_inputs(xs)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = fused(x)
        for k, m in enumerate(group):
            torch.testing.assert_close(out[k], m(xs[k]), rtol=1e-4, atol=1e-5)
            state = fused.run_state_dict(k)
            for name, value in m.state_dict().items():
                torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6)
        # the loss of run k drives only run k's parameters
        F.cross_entropy(out[0], torch.zeros(5, dtype=torch.long)).backward()
        assert fused.fc.weight.grad[1:].abs().sum() == 0 and fused.conv1.weight.grad[1:].abs().sum() == 0


def test_configs_that_differ_outside_the_per_run_keys_are_refused():
    check_fusable([compose_cfg("seed=0"), compose_cfg("seed=1", "optimizer.lr=0.3")])
    with pytest.raises(ValueError, match="model.width"):
        check_fusable([compose_cfg(), compose_cfg("model.width=8")])
    with pytest.raises(ValueError, match="optimizer.name"):
        check_fusable([compose_cfg("optimizer=rmsprop"), compose_cfg("optimizer=rmsprop")])


def test_a_schedule_that_follows_the_validation_loss_runs_alone():
    from warmup_lab.engine.fused import fusable

    assert fusable(compose_cfg("scheduler=sgdr")) is None
    assert "validation loss" in fusable(compose_cfg("scheduler=reduceonplateau"))
