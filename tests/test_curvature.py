"""The curvature probe: exact on known Hessians, invisible to the training trajectory, exact
across a resume, free of host reads, and its numbers in TensorBoard and metrics.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import TINY_BYTES, TINY_TRANSFORMER, compose_cfg, read_scalars
from warmup_lab.metrics.curvature import power_iteration, summary, top_eigenvalue
from warmup_lab.runs.run import run


def quadratic_hvp(a: torch.Tensor):
    theta = torch.randn(a.shape[0], dtype=a.dtype, requires_grad=True)
    loss = 0.5 * theta @ a @ theta
    (g,) = torch.autograd.grad(loss, [theta], create_graph=True)
    return lambda v: list(torch.autograd.grad(g, [theta], grad_outputs=v, retain_graph=True))


def spd(eigs, seed=0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def test_the_top_eigenvalue_of_a_known_hessian_to_1e_4():
    a = spd([12.0, 5.0, 3.0, 1.0, 0.5, -0.2])
    v0 = [torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))]
    lam, v = top_eigenvalue(quadratic_hvp(a), v0, iters=400)
    assert float(lam) == pytest.approx(12.0, abs=1e-4)
    assert abs(float(v[0] @ torch.linalg.eigh(a).eigenvectors[:, -1])) == pytest.approx(1.0, abs=1e-4)


def test_a_dominant_negative_eigenvalue_does_not_hide_the_top_one():
    """Power iteration alone finds -10 (largest magnitude); the shifted second half finds 3."""
    a = spd([-10.0, 3.0, 1.0, 0.5], seed=2)
    v0 = [torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))]
    mu, _ = power_iteration(quadratic_hvp(a), v0, iters=300)
    assert float(mu) == pytest.approx(-10.0, abs=1e-4)
    lam, _ = top_eigenvalue(quadratic_hvp(a), v0, iters=600)
    assert float(lam) == pytest.approx(3.0, abs=1e-4)


def test_the_preconditioned_sharpness_is_the_top_eigenvalue_of_p_inverse_h():
    a = spd([8.0, 4.0, 2.0, 1.0, 0.5], seed=4)
    p = torch.tensor([0.5, 2.0, 1.0, 4.0, 0.25], dtype=torch.float64)  # Adam's sqrt(v_hat) + eps
    truth = max(np.linalg.eigvals(np.diag(1 / p.numpy()) @ a.numpy()).real)
    v0 = [torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))]
    lam, _ = top_eigenvalue(quadratic_hvp(a), v0, iters=400, scale=[p.rsqrt()])
    assert float(lam) == pytest.approx(truth, abs=1e-4)


def test_a_small_mlp_matches_eigvalsh_of_its_full_hessian():
    torch.manual_seed(0)
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 3, (32,))
    shapes = [(4, 5), (4,), (3, 4), (3,)]
    sizes = [math.prod(s) for s in shapes]
    flat0 = torch.randn(sum(sizes), dtype=torch.float64) * 0.8

    def loss_of(flat):
        w1, b1, w2, b2 = (t.reshape(s) for t, s in zip(torch.split(flat, sizes), shapes))
        return torch.nn.functional.cross_entropy(torch.tanh(x @ w1.T + b1) @ w2.T + b2, y)

    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat0))
    flat = flat0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of(flat), [flat], create_graph=True)
    hvp = lambda v: list(torch.autograd.grad(g, [flat], grad_outputs=v, retain_graph=True))  # noqa: E731
    lam, _ = top_eigenvalue(hvp, [torch.randn(sum(sizes), dtype=torch.float64)], iters=3000)
    assert float(lam) == pytest.approx(float(eig[-1]), rel=1e-4)


def same(a, b) -> bool:
    """Equal point for point, NaN equal to NaN (bitwise float equality otherwise)."""
    return len(a) == len(b) and all(s == t and (v == w or (math.isnan(v) and math.isnan(w)))
                                    for (s, v), (t, w) in zip(a, b))


CURV = ["trainer.metrics.curvature_interval=3", "trainer.metrics.curvature_iters=4",
        "trainer.metrics.curvature_batch=8", "trainer.max_steps=12", "trainer.log_interval=4", "trainer.eval_interval=6"]
CASES = {"resnet_bn_sgd": ["model.width=4", "model.depth=8"],
         "transformer_dropout_adamw": ["model=transformer", "data=bytes", *TINY_TRANSFORMER, *TINY_BYTES,
                                       "optimizer=adamw", "model.dropout=0.1"]}


@pytest.mark.parametrize("case", list(CASES))
def test_the_probe_leaves_the_training_trajectory_bitwise_unchanged(tmp_path, case):
    """BatchNorm (batch statistics on copies of the running ones) and dropout (off in the probe,
    RNG untouched): every logged training value and the final weights are identical."""
    base = ["trainer.max_steps=12", "trainer.log_interval=4", "trainer.eval_interval=6", *CASES[case]]
    off = run(compose_cfg(*base), tmp_path / "off")
    on = run(compose_cfg(*base, *CURV[:3]), tmp_path / "on")
    a, b = read_scalars(tmp_path / "off"), read_scalars(tmp_path / "on")
    for tag in a:
        assert same(a[tag], b[tag]), tag
    assert off["final_val_loss"] == on["final_val_loss"]
    from warmup_lab.runs import checkpoint

    wa, wb = (checkpoint.load(checkpoint.checkpoint_files(tmp_path / d / "checkpoints")[0])["model"]
              for d in ("off", "on"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # weights and BatchNorm running statistics
    steps = [s for s, _ in b["curvature/sharpness"]]
    assert steps == [0, 3, 6, 9]
    if case.startswith("transformer"):
        assert "curvature/precond_sharpness" in b and math.isnan(b["curvature/precond_sharpness"][0][1])  # no state at 0
        assert all(math.isfinite(v) for _, v in b["curvature/precond_sharpness"][1:])


def test_resume_is_exact_with_the_probe_on(tmp_path, monkeypatch):
    from test_resume import signal_at

    cfg = ["optimizer=adamw", "model.width=4", "model.depth=8", *CURV]
    ref = run(compose_cfg(*cfg), tmp_path / "ref")
    signal_at(monkeypatch, 5)
    run(compose_cfg(*cfg), tmp_path / "run")
    monkeypatch.undo()
    again = run(compose_cfg(*cfg), tmp_path / "run")
    assert again["resumed_from_step"] == 5
    a, b = read_scalars(tmp_path / "ref"), read_scalars(tmp_path / "run")
    for tag in [t for t in a if t.startswith(("curvature/", "train/loss"))]:
        assert same(a[tag], b[tag]), tag
    for key in ("max_threshold_ratio", "threshold_crossings", "sharpness_at_warmup_end",
                "max_precond_threshold_ratio"):
        assert ref[key] == again[key], key


def test_tags_and_metrics_json_numbers(tmp_path):
    m = run(compose_cfg("optimizer=adamw", "model.width=4", "model.depth=8", *CURV,
                        "scheduler.warmup_steps=4"), tmp_path)
    tags = read_scalars(tmp_path)
    for tag in ("curvature/sharpness", "curvature/lr_sharpness", "curvature/threshold_ratio",
                "curvature/stability_threshold", "curvature/precond_sharpness",
                "curvature/precond_threshold_ratio", "curvature/precond_stability_threshold"):
        assert [s for s, _ in tags[tag]] == [0, 3, 6, 9], tag
    lr = dict(tags["train/lr"])
    sharp = dict(tags["curvature/sharpness"])
    for s, r in tags["curvature/threshold_ratio"]:
        assert r == pytest.approx(lr[s] * sharp[s] / (2 + 2 * 0.9), rel=1e-5)
    for s, r in tags["curvature/precond_threshold_ratio"][1:]:
        p = dict(tags["curvature/precond_sharpness"])[s]
        assert r == pytest.approx(lr[s] * p / ((2 + 2 * 0.9) / 0.1), rel=1e-5)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["sharpness_at_warmup_end"] == pytest.approx(sharp[6], rel=1e-6)  # first estimate at >= 4
    assert on_disk["threshold_crossings"] == sum(r > 1 for _, r in tags["curvature/threshold_ratio"])
    assert {"early_max_precond_threshold_ratio", "precond_threshold_crossings", "first_precond_crossing_step"} <= set(m)


def test_summary_counts_crossings_and_the_first_one():
    rows = [(0, {"curvature/threshold_ratio": 0.5, "curvature/sharpness": 1.0}),
            (5, {"curvature/threshold_ratio": 1.5, "curvature/sharpness": 3.0}),
            (10, {"curvature/threshold_ratio": 2.0, "curvature/sharpness": 4.0}),
            (15, {"curvature/threshold_ratio": 0.9, "curvature/sharpness": 2.0})]
    s = summary(rows, early_steps=8, warmup_steps=10)
    assert s["early_max_threshold_ratio"] == 1.5 and s["max_threshold_ratio"] == 2.0
    assert s["threshold_crossings"] == 2 and s["first_crossing_step"] == 5 and s["sharpness_at_warmup_end"] == 4.0


def test_the_probe_is_checked_and_not_fused():
    from warmup_lab.sweeps.grouping import fusable
    from warmup_lab.runs.validate import ConfigError, validate

    with pytest.raises(ConfigError, match="curvature_interval=0"):
        validate(compose_cfg("trainer.metrics.curvature_interval=0"))
    with pytest.raises(ConfigError, match="needs trainer.compile=false"):
        validate(compose_cfg("trainer.metrics.curvature_interval=5", "trainer.compile=true"))
    assert "curvature" in fusable(compose_cfg("model.depth=8", "trainer.metrics.curvature_interval=5"))


def test_the_analysis_draws_sharpness_per_arm_and_the_layout_has_curvature_charts(tmp_path):
    from warmup_lab.analysis import analyze
    from warmup_lab.analysis.tblayout import layout

    for i, ratio in enumerate((0.0, 0.25)):
        run(compose_cfg("model.width=4", "model.depth=8", *CURV, "scheduler.warmup_steps=null",
                        f"scheduler.warmup_ratio={ratio}"), tmp_path / str(i))
    summary = analyze([tmp_path], claims=[], n_boot=50, tensorboard=False)
    assert "curvature.png" in summary["files"] and (tmp_path / "curvature.png").read_bytes()[:4] == b"\x89PNG"
    assert "stability threshold 2(1+beta)/lr" in (tmp_path / "report.md").read_text()
    charts = layout()["runs: curvature"]
    assert any("^curvature/stability_threshold$" in c[1] for c in charts.values())
