"""The schedule library: configs, validation, the optimizer adapter, resume, and properties.

Exactness against transformers / torch / formulas is in ``test_schedules_reference.py``.
"""

from __future__ import annotations

import math
import pickle
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from warmup_lab.schedules import SCHEDULES, ScheduleError, ScheduleLR, build_schedule
from warmup_lab.schedules.parts import WARMUP_TYPES
from warmup_lab.schedules.schedule import (Cyclic, PiecewiseConstant, ShiftedCosine, TimmCosine, WarmupThenDecay,
                                           WarmupTimesDecay)

CONF = Path(__file__).resolve().parents[1] / "conf" / "scheduler"
ADAMW = {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.99]}
SGD = {"name": "sgd", "lr": 0.1, "momentum": 0.9}


def yaml_cfg(name: str):
    return OmegaConf.load(CONF / f"{name}.yaml")


# -- configs ------------------------------------------------------------------------------------
def test_one_yaml_per_registered_schedule():
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(SCHEDULES)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_yaml_builds_and_matches_code_defaults(name):
    cfg = yaml_cfg(name)
    assert cfg.name == name
    assert "total_steps" not in cfg  # the trainer passes it
    assert "warmup_steps" in cfg and "warmup_ratio" in cfg  # sweeps override them for any scheduler
    from_yaml = build_schedule(cfg, total_steps=1000, optimizer_cfg=ADAMW)
    from_name = build_schedule({"name": name}, total_steps=1000, optimizer_cfg=ADAMW)
    assert from_yaml == from_name and from_yaml.info() == from_name.info()
    info = from_yaml.info()
    assert all(isinstance(v, (int, float, str, bool)) for v in info.values()), info
    assert info["warmup_steps"] == from_yaml.warmup_steps and info["peak_lr"] == pytest.approx(
        1e-3 * info["peak_multiplier"])


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_yaml_knobs_are_commented(name):
    for line in (CONF / f"{name}.yaml").read_text().splitlines():
        if line and not line.startswith(("#", "name:")) and not line.endswith(":"):
            assert "#" in line, f"{name}.yaml: knob without a comment: {line}"


def test_hydra_composition_reads_d_model_from_the_model():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        cfg = compose("train", overrides=["scheduler=noam", "model=transformer", "model.d_model=64",
                                          "optimizer=adamw", "scheduler.warmup_ratio=null",
                                          "scheduler.warmup_steps=10"])
    s = build_schedule(cfg.scheduler, total_steps=100, optimizer_cfg=cfg.optimizer)
    assert s.info()["d_model"] == 64 and s.peak == pytest.approx((64 * 10) ** -0.5)
    assert yaml_cfg("noam").d_model == 512  # standalone (no model): the default


def test_warmup_steps_overrides_warmup_ratio():
    """As in transformers' TrainingArguments: a step count, when given, wins over the ratio."""
    both = build_schedule({"name": "warmupcosine", "warmup_steps": 5, "warmup_ratio": 0.5}, total_steps=100)
    only = build_schedule({"name": "warmupcosine", "warmup_steps": 5, "warmup_ratio": None}, total_steps=100)
    assert both.warmup_steps == only.warmup_steps == 5
    assert [both(s) for s in range(100)] == [only(s) for s in range(100)]


# -- bad values fail before training, with one line naming the key ------------------------------
BAD = [
    ({"name": "nope"}, "scheduler.name=nope is unknown: allowed constantlr"),
    ({"name": "warmupcosine", "warmup_ratio": 1.5},
     "scheduler.warmup_ratio=1.5 is invalid: must be a number in [0.0, 1.0)"),
    ({"name": "warmupcosine", "warmup_ratio": None, "warmup_steps": -3},
     "scheduler.warmup_steps=-3 is invalid: must be an int >= 0"),
    ({"name": "warmupcosine", "warmup_ratio": None, "warmup_steps": 1.5},
     "for a fraction use scheduler.warmup_ratio, or a float below 1"),
    ({"name": "warmupcosine", "warmup_ratio": None, "warmup_steps": 101},
     "scheduler.warmup_steps=101 is invalid: must be <= total_steps=100"),
    ({"name": "warmupcosine", "start_factor": 1.5}, "scheduler.start_factor=1.5 is invalid"),
    ({"name": "warmupcosine", "warmup_type": "quadratic"},
     "allowed linear, cosine, exponential, 1-sqrt, constant"),
    ({"name": "warmupconstant", "warmup_type": "exponential", "start_factor": 0},
     "must be > 0 with warmup_type=exponential"),
    ({"name": "warmupcosine", "num_cycle": 2},
     "scheduler.num_cycle is not a knob of scheduler.name=warmupcosine"),
    ({"name": "gradualwarmup", "multiplier": 0.5},
     "scheduler.multiplier=0.5 is invalid: must be a number >= 1.0"),
    ({"name": "gradualwarmup", "after_scheduler": {"name": "plateau"}},
     "scheduler.after_scheduler.name=plateau"),
    ({"name": "multistepdecay", "milestones": [5, 3], "milestone_ratios": None},
     "scheduler.milestones=[5, 3] is invalid: must be strictly increasing"),
    ({"name": "multistepdecay", "milestones": [5, 8]}, "set exactly one of them"),
    ({"name": "piecewiseconstant", "boundaries": [10, 10], "boundary_ratios": None,
      "values": [1, 2, 3]},
     "strictly increasing"),
    ({"name": "piecewiseconstant", "values": [1.0, 0.5]},
     "scheduler.values=[1.0, 0.5] is invalid: must have len(boundaries) + 1 = 4"),
    ({"name": "piecewiseconstant", "warmup_steps": 10},
     "scheduler.warmup_steps=10 is invalid: must be null or 0"),
    ({"name": "constantlr", "warmup_steps": 10}, "use scheduler=warmupconstant"),
    ({"name": "stepdecay", "gamma": 0},
     "scheduler.gamma=0 is invalid: must be a number in (0.0, 1.0]"),
    ({"name": "stepdecay", "step_ratio": None, "step_size": 0},
     "scheduler.step_size=0 is invalid: must be an int >= 1"),
    ({"name": "noam", "warmup_ratio": 0.0},
     "scheduler.warmup_steps=0 is invalid: must be >= 1 for noam"),
    ({"name": "warmupstabledecay", "decay_ratio": 0.95},
     "scheduler.num_decay_steps=95 is invalid: must be <= total_steps - warmup_steps = 90"),
    ({"name": "onecycle", "three_phase": True, "warmup_ratio": 0.6}, "with three_phase"),
    ({"name": "warmupcosinewithminlr", "min_lr": 1e-4}, "set exactly one of them"),
    ({"name": "exponentialdecay", "staircase": "yes"},
     "scheduler.staircase=yes is invalid: must be true or false"),
    ({"name": "untunedlinearwarmup", "warmup_steps": 10}, "its warmup is 2/(1-beta2) steps"),
]


@pytest.mark.parametrize("cfg,message", BAD,
                         ids=[f"{c['name']}-{i}" for i, (c, _) in enumerate(BAD)])
def test_bad_values_fail_with_one_clear_line(cfg, message):
    with pytest.raises(ScheduleError) as err:
        build_schedule(cfg, total_steps=100, optimizer_cfg=ADAMW)
    text = str(err.value)
    assert message in text and "\n" not in text and text.startswith(("scheduler.", "optimizer."))
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("name", ["untunedlinearwarmup", "untunedexponentialwarmup"])
def test_untuned_warmups_need_beta2(name):
    for opt in (SGD, {"name": "rmsprop", "lr": 1e-3}, None):
        with pytest.raises(ScheduleError, match=rf"scheduler.name={name} reads beta2 from "
                                                r"optimizer.betas.*allowed optimizers adam, "
                                                r"adamw, radam"):
            build_schedule({"name": name}, 1000, opt)
    with pytest.raises(ScheduleError, match=r"optimizer.betas=\[0.9, 1.5\] is invalid"):
        build_schedule({"name": name}, 1000, {"name": "adam", "lr": 1e-3, "betas": [0.9, 1.5]})
    with pytest.raises(ScheduleError, match="longer than total_steps=50"):
        build_schedule({"name": name}, 50, ADAMW)  # beta2 = 0.99: 199 or 100 steps
    assert build_schedule({"name": name}, 1000, {"name": "radam", "lr": 1e-3, "betas": [0.9, 0.99]})


def test_other_bad_inputs():
    with pytest.raises(ScheduleError, match=r"total_steps=0 is invalid"):
        build_schedule({"name": "warmupcosine"}, 0)
    with pytest.raises(ScheduleError, match=r"scheduler.lr_end is an absolute lr and needs"):
        build_schedule({"name": "polynomialdecay"}, 100)
    with pytest.raises(ScheduleError, match=r"scheduler.lr_end=0.5 is invalid: must be < opt"):
        build_schedule({"name": "polynomialdecay", "lr_end": 0.5}, 100, SGD)
    s = build_schedule({"name": "warmupcosine"}, 100)
    with pytest.raises(ScheduleError, match=r"step=-1 is invalid: must be an int >= 0"):
        s(-1)
    with pytest.raises(ScheduleError, match=r"step=1.5 is invalid"):
        s(1.5)


# -- the adapter --------------------------------------------------------------------------------
def _optimizer(*lrs, tensor=False):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))],
               "lr": torch.tensor(lr) if tensor else lr} for lr in lrs]
    return torch.optim.AdamW(groups, lr=lrs[0])


def test_adapter_sets_every_group_and_logs_what_it_set():
    sched = build_schedule({"name": "warmuplinear", "warmup_steps": 4, "warmup_ratio": None}, 10)
    opt = _optimizer(1e-3, 5e-4)
    adapter = ScheduleLR(opt, sched)
    for step in range(12):
        assert adapter.last_step == step and adapter.state_dict() == {"step": step}
        want = [1e-3 * sched(step), 5e-4 * sched(step)]
        assert adapter.get_last_lr() == want == [g["lr"] for g in opt.param_groups]
        opt.step()
        adapter.step()
    assert [g["initial_lr"] for g in opt.param_groups] == [1e-3, 5e-4]


def test_adapter_updates_tensor_lrs_in_place():
    sched = build_schedule({"name": "warmupcosine", "warmup_steps": 3, "warmup_ratio": None}, 8)
    opt = _optimizer(1e-3, 2e-3, tensor=True)
    tensors = [g["lr"] for g in opt.param_groups]
    adapter = ScheduleLR(opt, sched)
    for step in range(9):
        for g, t, base in zip(opt.param_groups, tensors, (1e-3, 2e-3)):
            assert g["lr"] is t and isinstance(g["initial_lr"], float)
            assert t.item() == pytest.approx(base * sched(step), rel=1e-6)
        assert adapter.get_last_lr() == pytest.approx([1e-3 * sched(step), 2e-3 * sched(step)])
        opt.step()
        adapter.step()


# -- resume -------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(SCHEDULES)), k=st.integers(0, 130))
def test_rebuilt_at_step_k_equals_stepped_k_times(name, k):
    T, opt = 120, {**ADAMW, "betas": [0.9, 0.95]}  # untuned warmups: 39 and 20 steps
    cfg = yaml_cfg(name)
    stepped_opt, rebuilt_opt = _optimizer(1e-3, 3e-4), _optimizer(1e-3, 3e-4)
    stepped = ScheduleLR(stepped_opt, build_schedule(cfg, T, opt))
    for _ in range(k):
        stepped_opt.step()
        stepped.step()
    # a resumed run: fresh optimizer + its saved state, a freshly built schedule, the saved step
    rebuilt_opt.load_state_dict(stepped_opt.state_dict())
    rebuilt = ScheduleLR(rebuilt_opt, pickle.loads(pickle.dumps(build_schedule(cfg, T, opt))))
    rebuilt.load_state_dict(stepped.state_dict())
    assert rebuilt.get_last_lr() == stepped.get_last_lr()
    lrs = [g["lr"] for g in stepped_opt.param_groups]
    assert [g["lr"] for g in rebuilt_opt.param_groups] == lrs
    # building the adapter before loading the optimizer state gives the same lrs (load order)
    other = _optimizer(1e-3, 3e-4)
    early = ScheduleLR(other, build_schedule(cfg, T, opt))
    other.load_state_dict(stepped_opt.state_dict())
    early.load_state_dict({"step": k})
    assert [g["lr"] for g in other.param_groups] == lrs
    assert ScheduleLR(_optimizer(1e-3, 3e-4), build_schedule(cfg, T, opt), step=k).get_last_lr() \
        == stepped.get_last_lr()


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_are_picklable_and_pure(name):
    s = build_schedule({"name": name}, 300, ADAMW)
    clone = pickle.loads(pickle.dumps(s))
    steps = [0, 1, 5, 299, 300, 301, 10_000, 5, 0]
    assert clone == s and [clone(t) for t in steps] == [s(t) for t in steps]
    assert [s(t) for t in reversed(steps)] == [s(t) for t in steps][::-1]


# -- properties ---------------------------------------------------------------------------------
@st.composite
def configs(draw):
    """A valid-looking config for any schedule, with its shared and specific knobs varied."""
    name = draw(st.sampled_from(sorted(SCHEDULES)))
    T = draw(st.integers(1, 400))
    cfg = OmegaConf.to_container(yaml_cfg(name), resolve=True)
    if name not in ("constantlr", "piecewiseconstant", "untunedlinearwarmup",
                    "untunedexponentialwarmup", "cycliclr"):
        if draw(st.booleans()):
            cfg.update(warmup_steps=draw(st.integers(0, T)), warmup_ratio=None)
        else:
            cfg["warmup_ratio"] = draw(st.floats(0.0, 0.99))
    if "start_factor" in cfg:
        cfg["start_factor"] = draw(st.none() | st.floats(0.0, 1.0))
    if "warmup_type" in cfg:
        cfg["warmup_type"] = draw(st.sampled_from(WARMUP_TYPES))
    if "num_cycles" in cfg:
        cfg["num_cycles"] = draw(st.floats(0.1, 3.0))
    if "decay" in cfg:
        cfg["decay"] = draw(st.sampled_from(["constant", "linear", "cosine"]))
    if "multiplier" in cfg:
        cfg["multiplier"] = draw(st.floats(1.0, 10.0))
        cfg["after_scheduler"]["name"] = draw(
            st.sampled_from(["constant", "step", "multistep", "cosine", "linear"]))
    if "gamma" in cfg:
        cfg["gamma"] = draw(st.floats(0.01, 1.0))
    if "decay_type" in cfg:
        cfg["decay_type"] = draw(st.sampled_from(["linear", "cosine", "1-sqrt"]))
        cfg["decay_ratio"] = draw(st.floats(0.0, 0.5))
    if "three_phase" in cfg:
        cfg["three_phase"] = draw(st.booleans())
        cfg["anneal_strategy"] = draw(st.sampled_from(["cos", "linear"]))
    if name == "timmcosine":
        cfg.update(warmup_prefix=draw(st.booleans()), cycle_mul=draw(st.sampled_from([1.0, 1.5, 2.0])),
                   cycle_decay=draw(st.floats(0.3, 1.0)), cycle_limit=draw(st.integers(1, 4)),
                   k_decay=draw(st.floats(0.5, 2.0)), t_initial=draw(st.none() | st.integers(1, 200)),
                   cycle_warmup=draw(st.booleans()), lr_min=draw(st.sampled_from([0.0, 1e-5])),
                   warmup_lr_init=draw(st.sampled_from([0.0, 1e-4])))
    if name == "sgdr":
        cfg.update(t_0=draw(st.none() | st.integers(1, 100)), t_mult=draw(st.integers(1, 3)))
    if name == "cycliclr":
        cfg.update(mode=draw(st.sampled_from(["triangular", "triangular2", "exp_range"])),
                   step_size_down=draw(st.none() | st.integers(1, 50)), base_factor=draw(st.floats(0.0, 1.0)))
    if "tau_rounding" in cfg:
        cfg["tau_rounding"] = draw(st.sampled_from(["round", "truncate"]))
    beta2 = draw(st.sampled_from([0.9, 0.95, 0.98, 0.99]))
    return cfg, T, {**ADAMW, "betas": [0.9, beta2]}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_properties(case):
    cfg, T, opt = case
    try:
        s = build_schedule(cfg, T, opt)
    except ScheduleError as err:  # only the documented refusals
        refusals = ("longer than total_steps", "must be >= 1 for", "three_phase", "num_decay_steps",
                    "must be > 0 with warmup_type=exponential", "must be set when the warmup is 0",
                    "with cycle_warmup")
        assert any(w in str(err) for w in refusals), str(err)
        return
    W = s.warmup_steps
    steps = list(range(min(T, 400) + 2)) + [2 * T, 10 * T + 3]
    values = [s(t) for t in steps]
    lo, hi = s.bounds
    for t, v in zip(steps, values):
        assert math.isfinite(v) and v >= 0 and lo - 1e-12 <= v <= hi * (1 + 1e-12), (t, v, s.bounds)
    assert hi == pytest.approx(s.peak) and s.peak > 0
    # warmup is monotone (for a dampened decay only when the decay is constant)
    if not isinstance(s, WarmupTimesDecay) or cfg.get("decay") == "constant":
        # up to step W, where the warmup hands over (timm's without warmup_prefix and
        # transformers' cosine_warmup_with_min_lr, one step ahead, already decay there: up to W - 1)
        ahead = isinstance(s, ShiftedCosine) or (isinstance(s, TimmCosine) and not s.warmup_prefix)
        end = W - 1 if ahead else W
        ramp = [s(t) for t in range(min(end, T - 1, 400) + 1)]  # step T is after training
        assert all(b >= a - 1e-12 for a, b in pairwise(ramp)), ramp
    # no jump at the end of warmup: the ramp ends where the decay starts, at the peak, unless the
    # schedule defines a jump (constant warmup) or the warmup covers the whole run (T is after it)
    if isinstance(s, WarmupThenDecay) and 1 <= W < T and s.warmup.type != "constant":
        assert s(W) == pytest.approx(s.peak, rel=1e-12)
        assert s(W - 1) <= s(W)
    no_ramp = not isinstance(s, (PiecewiseConstant, WarmupTimesDecay, Cyclic, ShiftedCosine)) and cfg["name"] != "onecycle"
    if W == 0 and no_ramp:
        assert values[0] == pytest.approx(s.peak)
