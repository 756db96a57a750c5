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


# -- warm restarts, cycles, plateaus and the conventions of other peers (#16) --------------------
def run_timm(make, n, lr=LR):
    """lrs of the first ``n`` updates under a timm scheduler stepped per update, as timm's train
    loop does: ``step_update(num_updates=s + 1)`` after update ``s``."""
    opt = _optimizer(lr)
    sched = make(opt)
    lrs = []
    for s in range(n):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step_update(num_updates=s + 1)
    return lrs


@pytest.mark.parametrize("t_0,t_mult,eta_min", [(1, 1, 0.0), (5, 1, 0.0), (7, 2, 1e-3), (3, 3, 0.01), (10, 1, 0.05)])
@pytest.mark.parametrize("T", [1, 10, 37, 100])
def test_sgdr_matches_torch_cosine_annealing_warm_restarts(t_0, t_mult, eta_min, T):
    ref = run_reference(lambda o: tl.CosineAnnealingWarmRestarts(o, T_0=t_0, T_mult=t_mult, eta_min=eta_min), T)
    ours, _ = run_ours({"name": "sgdr", "t_0": t_0, "t_mult": t_mult, "eta_min": eta_min}, T)
    assert_close(ours, ref, label=f"sgdr T_0={t_0} T_mult={t_mult}")


@pytest.mark.parametrize("W,T", pairs(totals=(10, 37, 100)))
def test_sgdr_after_a_warmup_is_the_warmup_then_torch_from_the_end_of_it(W, T):
    ours, _ = run_ours({"name": "sgdr", "t_0": 7, "t_mult": 2, "warmup_steps": W, "warmup_ratio": None,
                        "start_factor": 0.0}, T)
    ref = run_reference(lambda o: tl.CosineAnnealingWarmRestarts(o, T_0=7, T_mult=2), T)
    assert_close(ours[:W], [LR * s / W for s in range(W)])
    assert_close(ours[W:], ref[: T - W])


TIMM_CASES = [  # our knobs and timm's CosineLRScheduler kwargs (t_initial added per case)
    ({}, {}),
    ({"warmup_lr_init": 1e-3}, {"warmup_lr_init": 1e-3}),
    ({"warmup_prefix": True, "warmup_lr_init": 1e-4}, {"warmup_prefix": True, "warmup_lr_init": 1e-4}),
    ({"lr_min": 1e-3, "cycle_limit": 3, "cycle_decay": 0.5},
     {"lr_min": 1e-3, "cycle_limit": 3, "cycle_decay": 0.5}),
    ({"cycle_mul": 2.0, "cycle_limit": 4, "warmup_prefix": True},
     {"cycle_mul": 2.0, "cycle_limit": 4, "warmup_prefix": True}),
    ({"cycle_mul": 1.5, "cycle_limit": 5, "cycle_decay": 0.8, "lr_min": 1e-4},
     {"cycle_mul": 1.5, "cycle_limit": 5, "cycle_decay": 0.8, "lr_min": 1e-4}),
    ({"k_decay": 2.0}, {"k_decay": 2.0}),
    ({"k_decay": 0.5, "cycle_limit": 2}, {"k_decay": 0.5, "cycle_limit": 2}),
]


@pytest.mark.parametrize("knobs,timm_kwargs", TIMM_CASES, ids=lambda v: ",".join(sorted(v)) or "defaults")
@pytest.mark.parametrize("W,T", pairs(totals=(2, 10, 37, 100), max_back=1))
def test_timmcosine_matches_timm_cosine_lr_scheduler(knobs, timm_kwargs, W, T):
    from timm.scheduler import CosineLRScheduler

    cycles = knobs.get("cycle_limit", 1)
    t_initial = max(1, (T - (W if knobs.get("warmup_prefix") else 0)) // cycles)
    ours, _ = run_ours({"name": "timmcosine", **knobs, "t_initial": t_initial, "warmup_steps": W,
                        "warmup_ratio": None}, T)
    ref = run_timm(lambda o: CosineLRScheduler(o, t_initial=t_initial, warmup_t=W, t_in_epochs=False,
                                               **timm_kwargs), T)
    assert_close(ours, ref, label=f"timm {knobs} W={W}")


def test_timmcosine_default_t_initial_is_timm_create_scheduler_length():
    """timm's ``get_cycle_length()`` (+ the warmup with warmup_prefix) is the run: ours defaults
    t_initial to it, so the schedule ends at lr_min on the last update either way."""
    for prefix in (False, True):
        _, sched = run_ours({"name": "timmcosine", "warmup_steps": 10, "warmup_ratio": None,
                             "warmup_prefix": prefix}, 100)
        assert sched.t_initial == (90 if prefix else 100)
        assert sched(100) == 0.0 and sched(99) > 0


def test_timmcosine_cycle_warmup_ramps_every_later_cycle_formula():
    """Not in timm (documented): each later cycle's first W steps are dampened by the ramp."""
    _, s = run_ours({"name": "timmcosine", "warmup_steps": 4, "warmup_ratio": None, "warmup_prefix": True,
                     "t_initial": 20, "cycle_limit": 3, "cycle_warmup": True}, 64)
    _, plain = run_ours({"name": "timmcosine", "warmup_steps": 4, "warmup_ratio": None, "warmup_prefix": True,
                         "t_initial": 20, "cycle_limit": 3}, 64)
    for step in range(64):
        t = step - 4
        if t >= 20 and t % 20 < 4:  # inside the first 4 steps of cycle 1 or 2
            assert s(step) == pytest.approx(plain(step) * (t % 20) / 4, rel=1e-12, abs=1e-15)
        else:
            assert s(step) == plain(step)


@pytest.mark.parametrize("decay_t", [1.5, 2.5, 3.0, 7.25])
def test_fractional_step_size_matches_timm_step_lr_scheduler(decay_t):
    from timm.scheduler import StepLRScheduler

    T = 40
    ours, _ = run_ours({"name": "stepdecay", "step_size": decay_t, "gamma": 0.5, "warmup_ratio": 0.0}, T)
    ref = run_timm(lambda o: StepLRScheduler(o, decay_t=decay_t, decay_rate=0.5, t_in_epochs=False), T)
    assert_close(ours, ref, label=f"decay_t={decay_t}")


@pytest.mark.parametrize("mode,gamma", [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.99),
                                        ("exp_range", 0.9)])
@pytest.mark.parametrize("up,down", [(1, None), (4, None), (5, 2), (3, 11), (50, 50)])
def test_cycliclr_matches_torch(mode, gamma, up, down):
    T = 100
    ref = run_reference(lambda o: tl.CyclicLR(o, base_lr=0.01, max_lr=LR, step_size_up=up, step_size_down=down,
                                              mode=mode, gamma=gamma, cycle_momentum=False), T)
    ours, _ = run_ours({"name": "cycliclr", "base_lr": 0.01, "base_factor": None, "step_size_up": up,
                        "step_size_down": down, "mode": mode, "gamma": gamma}, T)
    assert_close(ours, ref, label=f"{mode} up={up} down={down}")


def _plateau_losses(seed: int, n: int) -> list[float]:
    """A validation-loss sequence that falls, flattens, bumps and ties: every branch of the rule."""
    g = torch.Generator().manual_seed(seed)
    out, v = [], 2.0
    for i in range(n):
        r = torch.rand((), generator=g).item()
        v = v * (0.9 if r < 0.08 else 1.0 if r < 0.5 else 1.00005 if r < 0.8 else 1.02)
        out.append(round(v, 6) if i % 7 else v)
    return out


PLATEAU_CASES = [
    {},
    {"patience": 0},
    {"patience": 2, "factor": 0.5},
    {"patience": 3, "cooldown": 2, "factor": 0.3},
    {"threshold": 0.05, "threshold_mode": "abs", "patience": 1},
    {"threshold": 0.0, "patience": 1, "min_lr": 0.004},
    {"patience": 1, "eps": 0.02, "factor": 0.5},
    {"mode": "max", "patience": 2, "threshold_mode": "abs", "threshold": 0.01},
]


@pytest.mark.parametrize("knobs", PLATEAU_CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reduceonplateau_matches_torch_on_the_same_loss_sequence(knobs, seed):
    """torch: ``scheduler.step(val)`` after every evaluation (every 5 updates here); ours: the
    same values as the run's validation history. Every update's lr is compared."""
    T, every = 300, 5
    values = _plateau_losses(seed, T // every)
    if knobs.get("mode") == "max":  # an accuracy-like value: higher is better
        values = [-v for v in values]
    torch_kw = {k: v for k, v in knobs.items()}
    opt = _optimizer()
    ref_sched = tl.ReduceLROnPlateau(opt, **torch_kw)
    ref = []
    for s in range(T):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        if (s + 1) % every == 0:
            ref_sched.step(values[(s + 1) // every - 1])
    sched = build_schedule({"name": "reduceonplateau", **knobs}, T, OPT)
    opt2 = _optimizer()
    adapter = ScheduleLR(opt2, sched)
    history, ours = [], []
    for s in range(T):
        ours.append(opt2.param_groups[0]["lr"])
        opt2.step()
        adapter.step()
        if (s + 1) % every == 0:  # what the trainer does after an evaluation
            history.append({"step": s + 1, "loss": values[(s + 1) // every - 1], "acc": 0.0})
            adapter.follow(sched.with_val_history(history))
    assert_close(ours, ref, label=f"plateau {knobs}")
    assert len(set(ref)) > 1  # the sequence made torch reduce


UNTUNED_BETA2 = (0.95, 0.98, 0.99, 0.999)


@pytest.mark.parametrize("beta2", UNTUNED_BETA2)
@pytest.mark.parametrize("kind", ["linear", "exponential"])
def test_untuned_warmups_match_pytorch_warmup_with_truncation(beta2, kind):
    import pytorch_warmup

    T = 2500
    cls = pytorch_warmup.UntunedLinearWarmup if kind == "linear" else pytorch_warmup.UntunedExponentialWarmup
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR, betas=(0.9, beta2))
    warm = cls(opt)
    ref = []
    for _ in range(T):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        with warm.dampening():
            pass  # a constant lr: the warmup factor alone
    cfg = {"name": f"untuned{kind}warmup", "tau_rounding": "truncate"}
    ours, _ = _run_adam(cfg, T, beta2)
    assert_close(ours, ref, label=f"{kind} beta2={beta2}")
    rounded, _ = _run_adam({"name": f"untuned{kind}warmup"}, T, beta2)
    tau_exact = (2.0 if kind == "linear" else 1.0) / (1.0 - beta2)
    if int(tau_exact) != round(tau_exact):  # float noise: our default rounds where pytorch_warmup truncates
        assert max(abs(a - b) for a, b in zip(rounded, ref)) > 1e-4 * LR


def _run_adam(cfg, T, beta2):
    sched = build_schedule(cfg, total_steps=T, optimizer_cfg={**OPT, "betas": [0.9, beta2]})
    return [LR * sched(s) for s in range(T)], sched


@pytest.mark.parametrize("period", [1, 2, 10, 37])
@pytest.mark.parametrize("decay", ["constant", "linear"])
def test_linearwarmup_matches_pytorch_warmup_linear_warmup(period, decay):
    import pytorch_warmup

    T = 60
    opt = _optimizer()
    base = tl.LambdaLR(opt, (lambda s: 1.0) if decay == "constant" else (lambda s: (T - s) / T))
    warm = pytorch_warmup.LinearWarmup(opt, warmup_period=period)
    ref = []
    for _ in range(T):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        with warm.dampening():
            base.step()
    ours, _ = run_ours({"name": "linearwarmup", "warmup_steps": period, "warmup_ratio": None, "decay": decay}, T)
    assert_close(ours, ref, label=f"period={period} {decay}")


@pytest.mark.parametrize("W", [1, 2, 4, 40])
def test_noam_count_from_1_is_the_annotated_transformer_noamopt(W):
    """The Annotated Transformer (Rush 2018, nlp.seas.harvard.edu/2018/04/03/attention.html),
    ``NoamOpt.step``: ``self._step += 1`` then ``rate = factor * model_size^-0.5 *
    min(step^-0.5, step * warmup^-1.5)``: update ``s`` (from 0) uses ``rate(s + 1)``."""
    d_model, factor, T = 64, 2.0, 120

    def rate(step):
        return factor * d_model ** -0.5 * min(step ** -0.5, step * W ** -1.5)

    ours, _ = run_ours({"name": "noam", "count_from": 1, "d_model": d_model, "scale": factor, "warmup_steps": W,
                        "warmup_ratio": None}, T, lr=1.0)
    assert_close(ours, [rate(s + 1) for s in range(T)], label=f"noam W={W}")


@pytest.mark.parametrize("W,T", pairs(totals=(2, 10, 37, 100), min_w=1))
@pytest.mark.parametrize("warmup_lr_rate", [None, 0.0, 0.2])
@pytest.mark.parametrize("min_lr_rate", [0.0, 0.1])
def test_cosinewarmupwithminlr_matches_transformers(W, T, warmup_lr_rate, min_lr_rate):
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup_lr_rate

    ref = run_reference(lambda o: get_cosine_with_min_lr_schedule_with_warmup_lr_rate(
        o, num_warmup_steps=W, num_training_steps=T, min_lr_rate=min_lr_rate, warmup_lr_rate=warmup_lr_rate), T)
    ours, _ = run_ours({"name": "cosinewarmupwithminlr", "warmup_steps": W, "warmup_ratio": None,
                        "warmup_lr_rate": warmup_lr_rate, "min_lr_rate": min_lr_rate}, T)
    assert_close(ours, ref, label=f"W={W} T={T}")
    if W < T:
        assert ours[-1] == pytest.approx(LR * min_lr_rate, abs=1e-15)  # the floor on the last update


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.1, 0.07, 0.5, 0.999])
@pytest.mark.parametrize("T", [1, 10, 100, 1000])
def test_warmup_steps_below_1_is_a_fraction_as_transformers_5_reads_it(fraction, T):
    from transformers import TrainingArguments

    from types import SimpleNamespace

    # its own rule (TrainingArguments.get_warmup_steps reads self.warmup_steps only; building a
    # TrainingArguments needs accelerate, which this project does not install)
    ref = TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=fraction), T)
    ours = build_schedule({"name": "warmupcosine", "warmup_steps": fraction}, T).warmup_steps
    assert ours == ratio_to_steps(fraction, T)
    if ours != ref:  # transformers takes ceil(T * fraction) straight, so float noise can add a step
        # (1000 * 0.07 = 70.00000000000001 -> 71); ours rounds the product first, as for warmup_ratio
        assert ref == ours + 1 and math.ceil(T * fraction) != math.ceil(round(T * fraction, 9))
