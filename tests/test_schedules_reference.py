"""Exactness: our schedules against transformers, torch and the published formulas.

Whole runs are compared through real optimizers: the reference scheduler and our ``ScheduleLR`` are
stepped side by side and the lr each update uses is read from the param group. Where a reference
has a known bug (see docs/schedules.md) the test uses the formula and says so.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch.optim import lr_scheduler as tl
from transformers import get_scheduler

from warmup_lab.schedules import ScheduleLR, build_schedule, ratio_to_steps

LR = 0.1
OPT = {"name": "adamw", "lr": LR, "betas": [0.9, 0.999]}
TOTALS = (1, 2, 10, 37, 100)


def pairs(totals=TOTALS, min_w=0, max_back=0):
    """(W, T) pairs: W in {0, 1, T//3, T-1, T} (within [min_w, T - max_back])."""
    out = []
    for T in totals:
        for W in sorted({0, 1, T // 3, T - 1, T}):
            if min_w <= W <= T - max_back:
                out.append((W, T))
    return out


def _optimizer(lr=LR):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def run_reference(make, n, lr=LR):
    """lrs of the first ``n`` updates under a torch-style scheduler built by ``make(optimizer)``."""
    opt = _optimizer(lr)
    sched = make(opt)
    lrs = []
    for i in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        if i < n - 1:  # no step after the last update (some references fail there)
            opt.step()
            sched.step()
    return lrs


def run_ours(cfg, T, n=None, lr=LR):
    sched = build_schedule(cfg, total_steps=T, optimizer_cfg={**OPT, "lr": lr})
    opt = _optimizer(lr)
    adapter = ScheduleLR(opt, sched)
    lrs = []
    for _ in range(n or T):
        lrs.append(opt.param_groups[0]["lr"])
        assert adapter.get_last_lr() == [opt.param_groups[0]["lr"]]
        opt.step()
        adapter.step()
    return lrs, sched


def assert_close(ours, ref, rel=1e-12, abs_=1e-15, label=""):
    assert len(ours) == len(ref)
    for s, (a, b) in enumerate(zip(ours, ref)):
        assert math.isclose(a, b, rel_tol=rel, abs_tol=abs_), f"{label} step {s}: {a!r} vs {b!r}"


# -- transformers ---------------------------------------------------------------------------
# (our name, our knobs, transformers name, its kwargs); start_factor=0 is transformers' warmup.
HF_CASES = [
    ("constantlr", {}, "constant", {}),
    ("warmupconstant", {}, "constant_with_warmup", {}),
    ("warmuplinear", {}, "linear", {}),
    ("warmupcosine", {}, "cosine", {}),
    ("warmupcosine", {"num_cycles": 1.5}, "cosine", {"num_cycles": 1.5}),
    ("warmupcosinewithhardrestarts", {}, "cosine_with_restarts", {}),
    ("warmupcosinewithhardrestarts", {"num_cycles": 3}, "cosine_with_restarts", {"num_cycles": 3}),
    ("warmupcosinewithminlr", {"min_lr_rate": 0.1}, "cosine_with_min_lr", {"min_lr_rate": 0.1}),
    ("warmupcosinewithminlr", {"min_lr_rate": None, "min_lr": 0.003}, "cosine_with_min_lr",
     {"min_lr": 0.003}),
    ("polynomialdecay", {"lr_end": 1e-4}, "polynomial", {"lr_end": 1e-4}),
    ("polynomialdecay", {"lr_end": 1e-3, "power": 2.0}, "polynomial",
     {"lr_end": 1e-3, "power": 2.0}),
    ("inversesqrt", {}, "inverse_sqrt", {}),
    ("inversesqrt", {"timescale": 7}, "inverse_sqrt", {"timescale": 7}),
] + [
    ("warmupstabledecay", {"warmup_type": wt, "decay_type": dt, "min_lr_ratio": r,
                           "start_factor": r, "decay_ratio": None, "num_decay_steps": 0},
     "warmup_stable_decay", {"warmup_type": wt, "decay_type": dt, "min_lr_ratio": r})
    for wt in ("linear", "cosine", "1-sqrt") for dt in ("linear", "cosine", "1-sqrt")
    for r in (0.0, 0.1)
]


def _hf_kwargs(name, kwargs, W, T):
    if name == "warmup_stable_decay":
        return {**kwargs, "num_decay_steps": max(0, (T - W) // 2)}
    return kwargs


@pytest.mark.parametrize("ours,knobs,hf,hf_kwargs", HF_CASES,
                         ids=lambda v: v if isinstance(v, str) else "")
def test_matches_transformers_every_step(ours, knobs, hf, hf_kwargs):
    for W, T in pairs():
        if ours == "constantlr" and W:
            continue
        kw = _hf_kwargs(hf, hf_kwargs, W, T)
        cfg = {"name": ours, **knobs}
        if ours != "constantlr":
            cfg.update(warmup_steps=W, warmup_ratio=None,
                       start_factor=knobs.get("start_factor", 0.0))
        if hf == "warmup_stable_decay":
            cfg["num_decay_steps"] = kw["num_decay_steps"]
        make = partial(get_scheduler, hf, num_warmup_steps=W, num_training_steps=T,
                       scheduler_specific_kwargs=dict(kw))
        ref = run_reference(make, T)
        ours_lrs, sched = run_ours(cfg, T)
        assert_close(ours_lrs, ref, label=f"{ours} W={W} T={T}")
        # step T (after the last update): equal too, except where transformers divides by zero
        # (polynomial, W = T) or restarts its cosine at progress 0 (cosine kinds, W = T).
        if W < T:
            opt = _optimizer()
            lam = get_scheduler(hf, opt, num_warmup_steps=W, num_training_steps=T,
                                scheduler_specific_kwargs=dict(kw)).lr_lambdas[0]
            assert math.isclose(sched(T), lam(T), rel_tol=1e-12, abs_tol=1e-15)


@pytest.mark.parametrize("ratio", [0.01, 0.05, 0.1, 0.25, 0.5])
def test_ratio_rounding_is_transformers_ceil(ratio):
    for T in (*TOTALS, 1000, 12345):
        W = math.ceil(T * ratio)
        assert ratio_to_steps(ratio, T) == W
        assert build_schedule({"name": "warmuplinear", "warmup_ratio": ratio}, T).warmup_steps == W
    T = 37  # and the whole run equals transformers given the same W
    W = math.ceil(T * ratio)
    make = partial(get_scheduler, "linear", num_warmup_steps=W, num_training_steps=T)
    ref = run_reference(make, T)
    ours, _ = run_ours({"name": "warmuplinear", "warmup_ratio": ratio, "start_factor": 0.0}, T)
    assert_close(ours, ref)


def test_ratio_rounding_ignores_float_noise():
    # transformers: ceil(100 * 0.07) = ceil(7.000000000000001) = 8; we give the intended 7.
    assert 100 * 0.07 > 7 and ratio_to_steps(0.07, 100) == 7
    assert ratio_to_steps(0.0, 100) == 0 and ratio_to_steps(1e-6, 100) == 1


@pytest.mark.parametrize("name", ["warmupcosine", "warmupcosinewithminlr", "cosinedecay",
                                  "warmupcosinewithhardrestarts", "warmupstabledecay"])
def test_cosine_never_rises_after_total(name):
    for cycles in (0.5, 1.0, 1.7):
        cfg = {"name": name}
        if name in ("warmupcosine", "warmupcosinewithminlr", "warmupstabledecay"):
            cfg["num_cycles"] = cycles
        for W, T in pairs(totals=(10, 37, 100)):
            if name == "warmupstabledecay":
                cfg.update(num_decay_steps=(T - W) // 2, decay_ratio=None)
            s = build_schedule({**cfg, "warmup_steps": W, "warmup_ratio": None}, T)
            end = s(T)
            assert all(s(t) == end for t in range(T, 3 * T + 7)), (name, W, T)
            if cycles == 0.5 and W < T:
                assert s(T - 1) >= end


# -- torch.optim.lr_scheduler -------------------------------------------------------------------
def _seq(opt, *, W, sf, after):
    """torch's warmup-then-decay: SequentialLR(LinearLR, after) with the switch at W."""
    if W == 0:
        return after(opt)
    return tl.SequentialLR(opt, [tl.LinearLR(opt, start_factor=sf, total_iters=W), after(opt)], [W])


TORCH_CASES = {
    # name: (our knobs, after-warmup torch scheduler given (optimizer, W, T) or None)
    "warmupconstant": ({}, None),
    "stepdecay": ({"step_size": 3, "step_ratio": None, "gamma": 0.5},
                  lambda o, W, T: tl.StepLR(o, 3, 0.5)),
    "multistepdecay": ({"milestones": [2, 5, 20], "milestone_ratios": None, "gamma": 0.3},
                       lambda o, W, T: tl.MultiStepLR(o, [2, 5, 20], 0.3)),
    "exponentialdecay": ({"decay_rate": 0.9, "decay_steps": 1},
                         lambda o, W, T: tl.ExponentialLR(o, 0.9)),
    "polynomialdecay": ({"lr_end": 0.0, "power": 2.0},
                        lambda o, W, T: tl.PolynomialLR(o, T - W, 2.0)),
    "warmupcosine": ({}, lambda o, W, T: tl.CosineAnnealingLR(o, T - W)),
    "warmupcosinewithminlr": ({"min_lr_rate": 0.2},
                              lambda o, W, T: tl.CosineAnnealingLR(o, T - W, 0.2 * LR)),
    "cosinedecay": ({"alpha": 0.2}, lambda o, W, T: tl.CosineAnnealingLR(o, T - W, 0.2 * LR)),
    "warmuplinear": ({}, lambda o, W, T: tl.LinearLR(o, 1.0, 0.0, total_iters=T - W)),
}


@pytest.mark.parametrize("name", list(TORCH_CASES))
@pytest.mark.parametrize("sf", [0.1, None])
def test_matches_torch_every_step(name, sf):
    knobs, after = TORCH_CASES[name]
    for W, T in pairs(max_back=1):  # torch's decays need T - W >= 1
        cfg = {"name": name, **knobs, "warmup_steps": W, "warmup_ratio": None, "start_factor": sf}
        ours, sched = run_ours(cfg, T)
        a = sched.warmup.start_factor
        if after is None:  # LinearLR alone: the warmup of warmupconstant
            if W == 0:
                continue
            ref = run_reference(partial(tl.LinearLR, start_factor=a, total_iters=W), T)
        else:
            ref = run_reference(partial(_seq, W=W, sf=a, after=partial(after, W=W, T=T)), T)
        assert_close(ours, ref, rel=1e-9, abs_=1e-13, label=f"{name} W={W} T={T}")


def test_constantwarmup_matches_torch_constantlr():
    for factor in (0.1, 0.5):
        for W, T in pairs(min_w=1):  # torch applies the factor at step 0 even with total_iters=0
            ours, _ = run_ours({"name": "constantwarmup", "factor": factor, "warmup_steps": W,
                                "warmup_ratio": None}, T)
            ref = run_reference(partial(tl.ConstantLR, factor=factor, total_iters=W), T)
            assert_close(ours, ref, label=f"W={W} T={T}")


@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True])
def test_onecycle_matches_torch(anneal, three_phase):
    # torch divides 0 by 0 at step 0 when its peak step pct_start*T - 1 is 0 (W = 0): from W = 1.
    for W, T in pairs(min_w=1, max_back=1):
        if three_phase and 2 * W > T - 1:
            continue
        knobs = {"name": "onecycle", "warmup_steps": W, "warmup_ratio": None,
                 "anneal_strategy": anneal, "three_phase": three_phase, "div_factor": 10.0,
                 "final_div_factor": 100.0}
        ours, sched = run_ours(knobs, T)
        ref = run_reference(partial(
            tl.OneCycleLR, max_lr=LR, total_steps=T, pct_start=(W + 1) / T, anneal_strategy=anneal,
            three_phase=three_phase, div_factor=10.0, final_div_factor=100.0,
            cycle_momentum=False), T)
        assert_close(ours, ref, rel=1e-9, abs_=1e-13, label=f"W={W} T={T}")
        assert sched(T) == sched(10 * T) == pytest.approx(1 / 1000)  # torch raises past T


# -- formulas (schedules no installed library implements, or implements with a known bug) ----------
def key_steps(W, T):
    return sorted({s for s in (0, W - 1, W, W + 1, T - 1, T, T + 1, 2 * T + 3, 10 * T) if s >= 0})


def check_formula(cfg, T, formula, W, opt=OPT, rel=1e-12):
    s = build_schedule(cfg, T, opt)
    assert s.warmup_steps == W
    for t in key_steps(W, T):
        assert math.isclose(s(t), formula(t), rel_tol=rel, abs_tol=1e-15), (cfg, T, t)


@pytest.mark.parametrize("d_model,scale", [(512, 1.0), (128, 2.0)])
def test_noam_formula(d_model, scale):
    for W, T in pairs(min_w=1):
        def noam(s, W=W):  # Vaswani et al.; the TF tutorial's rsqrt(0) = inf makes step 0 give 0
            return 0.0 if s == 0 else scale * d_model ** -0.5 * min(s ** -0.5, s * W ** -1.5)
        check_formula({"name": "noam", "warmup_steps": W, "warmup_ratio": None, "start_factor": 0.0,
                       "d_model": d_model, "scale": scale}, T, noam, W)
        info = build_schedule({"name": "noam", "warmup_steps": W, "warmup_ratio": None,
                               "d_model": d_model, "scale": scale}, T, OPT).info()
        assert info["peak_multiplier"] == pytest.approx(scale * (d_model * W) ** -0.5)
        assert info["peak_lr"] == pytest.approx(LR * scale * (d_model * W) ** -0.5)


def test_tf_tutorial_inverse_time_formula():
    for W, T in pairs(min_w=1):
        check_formula({"name": "warmupinversetime", "warmup_steps": W, "warmup_ratio": None,
                       "start_factor": 0.0}, T, lambda s, W=W: s / W if s <= W else W / s, W)


@pytest.mark.parametrize("alpha,a", [(0.0, 0.0), (0.1, 0.3)])
def test_keras_cosine_decay_formula(alpha, a):
    # keras 3 CosineDecay(initial_learning_rate=a, warmup_target=1, warmup_steps=W, decay_steps=D,
    # alpha)
    for W, T in pairs():
        for D in (None, max(1, (T - W) // 2)):
            DD = D or T - W
            def keras(s, W=W, DD=DD):
                if s < W:
                    return a + (1 - a) * s / W
                p = min(s - W, DD) / DD if DD else 1.0
                return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * p)) + alpha
            check_formula({"name": "cosinedecay", "warmup_steps": W, "warmup_ratio": None,
                           "start_factor": a, "alpha": alpha, "decay_steps": D}, T, keras, W)


@pytest.mark.parametrize("staircase", [False, True])
def test_keras_exponential_decay_formula(staircase):
    for W, T in pairs():
        D = 3
        def keras(s, W=W, D=D):  # keras ExponentialDecay, started after the warmup (start_factor 0)
            if s < W:
                return s / W
            e = (s - W) / D
            return 0.5 ** (math.floor(e) if staircase else e)
        check_formula({"name": "exponentialdecay", "warmup_steps": W, "warmup_ratio": None,
                       "start_factor": 0.0, "decay_rate": 0.5, "decay_steps": D,
                       "staircase": staircase}, T, keras, W)


def test_keras_piecewise_constant_formula():
    bounds, values = [3, 7, 20], [1.0, 0.5, 0.2, 0.05]
    def keras(s):  # values[i] for bounds[i-1] < s <= bounds[i]
        for b, v in zip(bounds, values):
            if s <= b:
                return v
        return values[-1]
    cfg = {"name": "piecewiseconstant", "boundaries": bounds, "boundary_ratios": None,
           "values": values}
    for T in TOTALS:
        check_formula(cfg, T, keras, 0)
        assert [build_schedule(cfg, T)(s) for s in range(30)] == [keras(s) for s in range(30)]


@pytest.mark.parametrize("multiplier", [1.0, 4.0])
@pytest.mark.parametrize("after", ["step", "multistep", "constant", "cosine", "linear"])
def test_gradual_warmup_formula(multiplier, after):
    # GradualWarmupScheduler v0.3.2 with its hand-over bugs fixed (gradual #7, #11, #26, PR #24):
    # lr(e) = b*e/W (multiplier 1) or b*((m-1)*e/W + 1) for e <= W, then b*m*after(e - W), the
    # after-scheduler starting from its own step 0 at b*m. The package is not a dependency.
    for W, T in pairs(max_back=1):  # W = T: the reference's peak at step T vs our end value
        H = T - W
        def after_fn(t, H=H):
            if after == "step":
                return 0.5 ** (t // 4)
            if after == "multistep":
                return 0.5 ** sum(t >= m for m in (2, 6))
            if after == "constant":
                return 1.0
            if after == "cosine":
                return 0.5 * (1 + math.cos(math.pi * min(t, H) / H)) if H else 0.0
            return max(0.0, (H - t) / max(1, H))
        def gradual(e, W=W, after_fn=after_fn):
            if e <= W and W > 0:
                return e / W if multiplier == 1 else (multiplier - 1) * e / W + 1
            return multiplier * after_fn(e - W)
        node = {"name": after, "step_size": 4, "step_ratio": None, "milestones": [2, 6],
                "milestone_ratios": None, "gamma": 0.5}
        check_formula({"name": "gradualwarmup", "warmup_steps": W, "warmup_ratio": None,
                       "multiplier": multiplier, "after_scheduler": node}, T, gradual, W)


@pytest.mark.parametrize("beta2", [0.9, 0.99, 0.999])
def test_untuned_warmups_formula(beta2):
    # Ma & Yarats / pytorch_warmup: linear min(1, (s+1)/tau), tau = 2/(1-beta2); exponential
    # 1 - exp(-(s+1)/tau), tau = 1/(1-beta2). pytorch_warmup takes int() of a float just under
    # the integer for beta2 = 0.999 (1999, 999); we round (2000, 1000), the papers' values.
    opt = {**OPT, "betas": [0.9, beta2]}
    tau_lin, tau_exp = round(2 / (1 - beta2)), round(1 / (1 - beta2))
    if beta2 == 0.999:
        assert (int(2 / (1 - beta2)), int(1 / (1 - beta2))) == (1999, 999)
        assert (tau_lin, tau_exp) == (2000, 1000)
    T = 3 * tau_lin
    check_formula({"name": "untunedlinearwarmup"}, T, lambda s: min(1.0, (s + 1) / tau_lin),
                  tau_lin - 1, opt)
    check_formula({"name": "untunedexponentialwarmup"}, T,
                  lambda s: 1 - math.exp(-(s + 1) / tau_exp), tau_exp, opt)
    # dampening a decay that starts at step 0 (pytorch_warmup with a LambdaLR underneath)
    check_formula({"name": "untunedlinearwarmup", "decay": "linear"}, T,
                  lambda s: min(1.0, (s + 1) / tau_lin) * max(0.0, (T - s) / T), tau_lin - 1, opt)


def test_exponential_warmup_formula():
    for tau, T in ((1, 10), (5, 37), (20, 100)):
        check_formula({"name": "exponentialwarmup", "warmup_steps": tau, "warmup_ratio": None}, T,
                      lambda s, tau=tau: 1 - math.exp(-(s + 1) / tau), tau)  # pytorch_warmup
        check_formula({"name": "exponentialwarmup", "warmup_steps": tau, "warmup_ratio": None,
                       "start_factor": 0.0, "decay": "cosine"}, T,
                      lambda s, tau=tau, T=T:
                      (1 - math.exp(-s / tau)) * (1 + math.cos(math.pi * min(s, T) / T)) / 2, tau)


@pytest.mark.parametrize("wtype", ["linear", "cosine", "exponential", "1-sqrt", "constant"])
def test_warmup_shapes_formula(wtype):
    a = 0.05
    shape = {"linear": lambda p: a + (1 - a) * p,
             "cosine": lambda p: a + (1 - a) * (1 - math.cos(math.pi * p)) / 2,
             "exponential": lambda p: a ** (1 - p),
             "1-sqrt": lambda p: a + (1 - a) * (1 - math.sqrt(1 - p)),
             "constant": lambda p: a}[wtype]
    for W, T in pairs():
        check_formula({"name": "warmupconstant", "warmup_steps": W, "warmup_ratio": None,
                       "start_factor": a, "warmup_type": wtype}, T,
                      lambda s, W=W: shape(s / W) if s < W else 1.0, W)


def test_default_start_factor_is_nanogpt_linear():
    # start_factor null = 1/(W+1): (s+1)/(W+1), nanoGPT's warmup; step 0 is not wasted.
    for W, T in pairs(min_w=1):
        check_formula({"name": "warmupconstant", "warmup_steps": W, "warmup_ratio": None}, T,
                      lambda s, W=W: min(1.0, (s + 1) / (W + 1)), W)


def test_wsd_exponential_warmup_and_transformers_start():
    # a shape transformers lacks; and its warmup starts at min_lr_ratio, ours at start_factor
    s = build_schedule({"name": "warmupstabledecay", "warmup_steps": 10, "warmup_ratio": None,
                        "warmup_type": "exponential", "start_factor": 0.01, "decay_type": "1-sqrt",
                        "num_decay_steps": 20, "decay_ratio": None, "min_lr_ratio": 0.1}, 100)
    assert s(0) == pytest.approx(0.01) and s(5) == pytest.approx(0.1) and s(10) == 1.0
    assert s(79) == 1.0 and s(80) == 1.0
    assert s(90) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.5)))
    assert s(100) == s(1000) == pytest.approx(0.1)
