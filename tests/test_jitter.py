"""Jitter and stability metrics: definitions against brute force, streaming = one-shot, the trainer's logs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import compose_cfg, read_scalars
from warmup_lab.metrics import loss_windows as J
from warmup_lab.metrics import optimizer_telemetry as T
from warmup_lab.runs.run import run


def brute(x: np.ndarray, w: int):
    std, change, ratio = [], [], []
    for t in range(len(x)):
        seg = x[max(0, t - w + 1): t + 1]
        std.append(seg.std(ddof=1) if len(seg) > 1 else 0.0)
        d = np.abs(np.diff(seg))
        change.append(d.mean() if len(d) else 0.0)
        ratio.append(1.0 if t == 0 else x[t] / x[:t].min())
    return np.array(std), np.array(change), np.array(ratio)


@pytest.mark.parametrize("w", [2, 3, 7, 50])
def test_window_metrics_match_brute_force(w):
    x = np.random.default_rng(w).uniform(0.2, 3.0, 41)
    std, change, ratio = brute(x, w)
    t = torch.tensor(x)
    assert np.allclose(J.rolling_std(t, w).numpy(), std, atol=1e-5)
    assert np.allclose(J.rolling_mean_abs_change(t, w).numpy(), change, atol=1e-5)
    assert np.allclose(J.spike_ratio(t).numpy(), ratio, rtol=1e-5)
    count = J.spike_count(J.spike_ratio(t), 1.5).numpy()
    assert np.array_equal(count, np.cumsum(ratio > 1.5))


@pytest.mark.parametrize("chunks", [[41], [1, 1, 39], [5, 10, 3, 23], [20, 21]])
def test_tracker_blocks_equal_the_whole_series(chunks):
    """The flush computes each block from the previous tail: cutting the stream anywhere
    gives the values of the whole series."""
    x = torch.tensor(np.random.default_rng(0).uniform(0.5, 2.0, 41), dtype=torch.float32)
    cfg = J.MetricsConfig(jitter_window=6, spike_threshold=1.3)
    tracker = J.LossWindows(cfg, 41, torch.device("cpu"))
    blocks = [tracker.block(c) for c in torch.split(x, chunks)]
    got = {k: torch.cat([b[k] for b in blocks]) for k in blocks[0]}
    ratio = J.spike_ratio(x)
    assert torch.allclose(got["loss_std"], J.rolling_std(x, 6), atol=1e-6)
    assert torch.allclose(got["loss_abs_change"], J.rolling_mean_abs_change(x, 6), atol=1e-6)
    assert torch.allclose(got["spike_ratio"], ratio)
    assert torch.equal(got["spike_count"], J.spike_count(ratio, 1.3))


def test_nan_loss_does_not_poison_the_running_min():
    x = torch.tensor([2.0, 1.0, float("nan"), 3.0])
    before = J.running_min_before(x)
    assert before[0] == math.inf and before[3] == 1.0
    assert J.spike_ratio(x)[3] == pytest.approx(3.0)


def test_window_must_be_at_least_two():
    with pytest.raises(ValueError, match="window"):
        J.rolling_std(torch.ones(3), 1)


def test_update_ratio_and_layer_stats_match_a_manual_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    named = list(model.named_parameters())
    tracker = T.OptimizerTelemetry(named, opt, J.MetricsConfig(layer_interval=1))
    model(torch.randn(5, 4)).pow(2).sum().backward()
    before = [p.detach().clone() for _, p in named]
    grads = [p.grad.norm().item() for _, p in named]
    tracker.before_step(0)
    opt.step()
    ratio = tracker.after_step(0)
    delta = torch.cat([(p.detach() - b).flatten() for (_, p), b in zip(named, before)])
    expected = delta.norm() / torch.cat([b.flatten() for b in before]).norm()
    assert ratio.item() == pytest.approx(expected.item(), rel=1e-5)
    [(step, stats)] = tracker.pending_layer_stats()
    assert step == 0
    assert stats["layer/grad_norm/0.weight"] == pytest.approx(grads[0], rel=1e-5)
    w = named[2][1]
    upd = (w.detach() - before[2]).norm() / before[2].norm()
    assert stats["layer/update_ratio/1.weight"] == pytest.approx(upd.item(), rel=1e-5)
    assert "layer/grad_norm/0.bias" not in stats  # per layer = tensors with >= 2 dims
    # Adam: after one step v_hat = g^2, so the effective step is lr / (|g| + eps)
    g = torch.cat([p.grad.flatten() for _, p in named]).abs()
    eff = 0.1 / (g + 1e-8)
    assert stats["train/adam/eff_lr_p50"] == pytest.approx(10 ** torch.quantile(eff.log10(), 0.5).item(), rel=1e-4)
    assert stats["train/adam/eff_lr_p10"] <= stats["train/adam/eff_lr_p50"] <= stats["train/adam/eff_lr_p90"]


def _tracked_steps(model, steps: int, layer_interval: int = 2):
    """Update ratios and per-layer update ratios of a few SGD steps on a small conv net."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    tracker = T.OptimizerTelemetry(list(model.named_parameters()), opt, J.MetricsConfig(layer_interval=layer_interval))
    x = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    ratios, expected = [], []
    for step in range(steps):
        opt.zero_grad()
        model(x).square().mean().backward()
        before = [p.detach().clone() for p in model.parameters()]
        tracker.before_step(step)
        opt.step()
        ratios.append(tracker.after_step(step).item())
        delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
        expected.append((delta.norm() / torch.cat([b.flatten() for b in before]).norm()).item())
    return tracker, ratios, expected


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed_dtypes"])
def test_update_ratio_snapshot_paths_agree_with_the_definition(layout):
    """The flat one-buffer snapshot (contiguous and channels-last weights) and the per-tensor
    fallback (parameters of two dtypes) give ||theta' - theta|| / ||theta|| at every step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(), torch.nn.Linear(27, 2))
    if layout == "channels_last":
        model.to(memory_format=torch.channels_last)
        assert not model[0].weight.is_contiguous()
    if layout == "mixed_dtypes":
        model[2].double()
        model.insert(2, _ToDouble())
    tracker, ratios, expected = _tracked_steps(model, 4)
    assert (tracker._views is None) == (layout == "mixed_dtypes")
    assert ratios == pytest.approx(expected, rel=1e-5)
    layer = dict(tracker.pending_layer_stats())
    assert layer[2]["layer/update_ratio/0.weight"] > 0  # per layer on layer steps (0, 2)


class _ToDouble(torch.nn.Module):
    def forward(self, x):
        return x.double()


def test_update_ratio_follows_replaced_parameter_storage():
    """A parameter whose storage is replaced between steps (``p.data = ...``) is snapshotted
    from its new storage at the next step, not from the stale view."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(), torch.nn.Linear(27, 2))
    tracker, _, _ = _tracked_steps(model, 1)
    model[2].weight.data = model[2].weight.data.clone() * 2
    opt = tracker.optimizer
    x = torch.randn(4, 2, 5, 5)
    opt.zero_grad()
    model(x).square().mean().backward()
    before = [p.detach().clone() for p in model.parameters()]
    tracker.before_step(1)
    opt.step()
    ratio = tracker.after_step(1).item()
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert ratio == pytest.approx((delta.norm() / torch.cat([b.flatten() for b in before]).norm()).item(),
                                  rel=1e-5)


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_sorted_quantiles_equal_torch_quantile(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    qs = (0.0, 0.1, 0.5, 0.9, 0.37, 1.0)
    got = torch.stack(T.sorted_quantiles(x, qs))
    assert torch.allclose(got, torch.quantile(x, torch.tensor(qs)), rtol=1e-6, atol=1e-7)


def test_no_adam_state_no_adam_stats():
    p = torch.nn.Parameter(torch.ones(3, 3))
    opt = torch.optim.SGD([p], lr=0.1)
    p.grad = torch.ones(3, 3)
    opt.step()
    assert T.effective_step_stats(opt) == {}


def test_stability_summary_on_a_known_series():
    losses = [4.0, 3.0, 3.5, 2.0, 1.0, 1.5, 0.5, 0.4, 0.3, 0.2]
    cfg = J.MetricsConfig(jitter_window=2, spike_threshold=1.2, loss_threshold=1.0, early_fraction=0.5)
    s = J.stability_summary(losses, cfg, total_steps=10)
    early = np.array(losses[:5])
    assert s["early_steps"] == 5 and s["initial_train_loss"] == 4.0
    assert s["early_jitter"] == pytest.approx(np.diff(early).std(ddof=1), rel=1e-5)
    assert s["early_mean_abs_change"] == pytest.approx(np.abs(np.diff(early)).mean(), rel=1e-5)
    assert s["max_spike_ratio"] == pytest.approx(1.5) and s["max_spike_step"] == 5
    assert s["spike_count"] == 1                      # 1.5 / 1.0 at step 5 (3.5 / 3.0 = 1.17 is below)
    assert s["steps_to_loss_threshold"] == 6          # first 2-step mean <= 1.0: (1.5 + 0.5) / 2
    assert s["train_loss_auc"] == pytest.approx(np.mean(losses), rel=1e-5)


def test_stability_summary_of_a_diverged_run():
    s = J.stability_summary([2.0, 1.0, float("nan")], J.MetricsConfig(), total_steps=10)
    assert s["train_loss_auc"] is None          # the run did not finish its steps
    assert s["initial_train_loss"] == 2.0 and s["max_spike_ratio"] == 1.0
    assert J.stability_summary([float("nan")], J.MetricsConfig(), 10)["initial_train_loss"] is None


def test_trainer_logs_jitter_at_every_step_and_layers_at_the_interval(tmp_path):
    cfg = compose_cfg("optimizer=adamw", "trainer.max_steps=12", "trainer.log_interval=5",
                      "trainer.metrics.jitter_window=4", "trainer.metrics.layer_interval=4")
    metrics = run(cfg, tmp_path)
    sc = read_scalars(tmp_path)
    for tag in ("jitter/loss_std", "jitter/loss_abs_change", "jitter/spike_ratio", "jitter/spike_count",
                "train/update_ratio", "train/grad_norm"):
        assert [s for s, _ in sc[tag]] == list(range(12)), tag
    loss = torch.tensor([v for _, v in sc["train/loss"]])
    assert np.allclose([v for _, v in sc["jitter/loss_std"]], J.rolling_std(loss, 4).numpy(), atol=1e-5)
    assert np.allclose([v for _, v in sc["jitter/spike_ratio"]], J.spike_ratio(loss).numpy(), rtol=1e-5)
    assert all(v > 0 for _, v in sc["train/update_ratio"])
    layer = [t for t in sc if t.startswith("layer/update_ratio/")]
    assert layer and all([s for s, _ in sc[t]] == [0, 4, 8] for t in layer)
    assert [s for s, _ in sc["train/adam/eff_lr_p50"]] == [0, 4, 8]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("early_jitter", "max_spike_ratio", "steps_to_loss_threshold", "train_loss_auc",
                "initial_train_loss", "early_max_update_ratio", "chance_acc"):
        assert key in saved, key
    assert saved["train_loss_auc"] == pytest.approx(float(loss.mean()), rel=1e-4)
    assert metrics["chance_acc"] == pytest.approx(0.1)


def test_metrics_can_be_switched_off(tmp_path):
    cfg = compose_cfg("trainer.metrics.update_ratio=false", "trainer.metrics.layers=false")
    run(cfg, tmp_path)
    sc = read_scalars(tmp_path)
    assert "train/update_ratio" not in sc and not [t for t in sc if t.startswith("layer/")]
    assert "jitter/loss_std" in sc


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_in_the_step_on_cuda(tmp_path):
    """Between flushes the step (with every metric on) must not synchronise with the host."""
    from hydra.utils import instantiate

    from warmup_lab.engine.optim import build_optimizer
    from warmup_lab.schedules import build_schedule
    from warmup_lab.runs.tb import RunWriter
    from warmup_lab.engine.trainer import RunParts, Trainer

    cfg = compose_cfg("optimizer=adamw", "trainer.device=cuda")
    dev = torch.device("cuda")
    data = instantiate(cfg.data).to(dev)
    model = instantiate(cfg.model, _partial_=True)(spec=data.spec).to(dev)
    opt = build_optimizer(cfg.optimizer, model)
    sched = build_schedule(cfg.scheduler, total_steps=20, optimizer_cfg=cfg.optimizer)
    writer = RunWriter(tmp_path)
    tr = Trainer([RunParts(model, opt, sched, writer, 0)], data, total_steps=20, batch_size=16, device=dev,
                 eval_interval=20, log_interval=10, progress=False, metrics={"layer_interval": 3})
    tr.train_step()  # the first step allocates the parameter copy and optimizer state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(8):
            tr.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    tr.flush()
    writer.close()
    assert len(read_scalars(tmp_path)["jitter/loss_std"]) == 9


@pytest.mark.parametrize("override,key", [("trainer.metrics.jitter_window=1", "jitter_window"),
                                          ("trainer.metrics.spike_threshold=0", "spike_threshold"),
                                          ("trainer.metrics.early_fraction=1.5", "early_fraction"),
                                          ("trainer.metrics.layer_interval=0", "layer_interval")])
def test_bad_metrics_settings_are_config_errors(override, key):
    from warmup_lab.runs.validate import ConfigError, validate

    with pytest.raises(ConfigError, match=f"trainer.metrics.{key}="):
        validate(compose_cfg(override))
