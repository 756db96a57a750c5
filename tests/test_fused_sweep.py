"""``launcher=fused``: a sweep's fusable jobs train together, yet every job directory reads like a
run alone, so the analysis cannot tell a fused sweep from a basic one."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys

import pytest

from conftest import FAST, ROOT, TINY_BYTES, TINY_TRANSFORMER, compose_cfg, read_scalars, run_cli, start_until
from warmup_lab.analysis.arms import group_arms
from warmup_lab.analysis.load import CURVE_TAGS, load_runs
from warmup_lab.engine.trainer import Trainer
from warmup_lab.runs.run import run_group as run_fused
from warmup_lab.sweeps.grouping import fused_groups

SWEEP = [*FAST, "model.width=8", "trainer.eval_interval=3", "trainer.log_interval=4",
         "optimizer=sgd,radam", "seed=0,1", "optimizer.lr=0.02,1e9",   # 1e9: diverges
         "trainer.metrics.curvature_interval=null,3"]  # the curvature probe: runs alone
COMPARED = ("status", "diverged_step", "steps", "final_val_loss", "final_val_acc", "best_val_loss",
            "final_train_loss", "last_train_loss", "early_jitter", "early_max_grad_norm",
            "early_max_update_ratio", "train_loss_auc", "max_spike_ratio", "spike_count",
            "total_steps", "warmup_steps", "peak_lr")


def stop_after(monkeypatch, step: int) -> None:
    """Every Trainer asks to stop after optimizer step ``step``, as the SIGTERM handler does
    (``monkeypatch.undo()`` ends it)."""
    original = Trainer.train_step

    def train_step(self):
        original(self)
        if self.step == step:
            self.stop_requested = True

    monkeypatch.setattr(Trainer, "train_step", train_step)


def _key(run) -> tuple:
    return tuple(sorted(o for o in run.overrides if not o.startswith(("launcher", "hydra."))))


TRANSFORMER_SWEEP = [*FAST, "model=transformer", "data=bytes", "model.n_layers=1", "model.d_model=32",
                     "model.n_heads=2", "data.max_bytes=20000", "data.context_length=16", "data.eval_sequences=8",
                     "trainer.eval_interval=3", "trainer.log_interval=4", "optimizer=sgd,radam", "seed=0,1",
                     "optimizer.lr=0.02,1e9", "trainer.metrics.curvature_interval=null,3"]
SWEEPS = {"resnet": SWEEP, "transformer": TRANSFORMER_SWEEP}


@pytest.mark.slow
@pytest.mark.parametrize("model", list(SWEEPS))
def test_a_fused_sweep_reads_like_a_basic_one(tmp_path, model):
    for launcher in ("basic", "fused"):
        out = run_cli("-m", f"launcher={launcher}", *SWEEPS[model], f"hydra.sweep.dir={tmp_path / launcher}")
        assert out.returncode == 0, out.stderr[-3000:]
    basic = {_key(r): r for r in load_runs([tmp_path / "basic"])}
    fused = {_key(r): r for r in load_runs([tmp_path / "fused"])}
    assert len(basic) == 16 and basic.keys() == fused.keys()
    for key, b in basic.items():
        f = fused[key]
        alone = "trainer.metrics.curvature_interval=3" in key
        # the jobs without the probe trained as one group (optimizers x seeds x lrs, K = 8), the others alone
        assert f.metrics.get("fused", {}).get("k") == (None if alone else 8), key
        for name in COMPARED:
            bv, fv = b.metrics.get(name), f.metrics.get(name)
            if isinstance(bv, float) and math.isfinite(bv):
                assert fv == pytest.approx(bv, rel=1e-4, abs=1e-6), (key, name)
            else:
                assert fv == bv, (key, name)
        assert set(b.curves) == set(f.curves) <= set(CURVE_TAGS)
        for tag, (steps, values) in b.curves.items():
            fsteps, fvalues = f.curves[tag]
            assert list(fsteps) == list(steps), (key, tag)
            finite = [i for i, v in enumerate(values) if math.isfinite(v)]
            assert [fvalues[i] for i in finite] == pytest.approx([values[i] for i in finite],
                                                                 rel=1e-4, abs=1e-6), (key, tag)
    assert {1e9} == {r.get("optimizer.lr") for r in fused.values() if r.status == "diverged"}
    arms_b = sorted((a.label, len(a.runs)) for a in group_arms(list(basic.values())))
    arms_f = sorted((a.label, len(a.runs)) for a in group_arms(list(fused.values())))
    assert arms_b == arms_f
    status = json.loads((tmp_path / "fused" / "sweep_status.json").read_text())
    assert status["counts"] == json.loads((tmp_path / "basic" / "sweep_status.json").read_text())["counts"]


@pytest.mark.parametrize("extra", [["optimizer=sgd", "trainer.grad_clip=1.0"],
                                   ["optimizer=adamw", "trainer.channels_last=true"]], ids=["sgd_clip", "adamw_cl"])
def test_fused_run_dirs_hold_every_tag_of_a_run_alone(tmp_path, extra):
    """Every TensorBoard tag (per-layer and Adam ones included) at the same steps with the same
    values, and metrics.json with the same keys."""
    from warmup_lab.runs.run import run

    lrs = (0.02, 0.01) if "optimizer=sgd" in extra else (1e-3, 3e-3)
    cfgs = [compose_cfg("model.width=8", "trainer.metrics.layer_interval=2", *extra, f"seed={s}",
                        f"optimizer.lr={lr}") for s, lr in zip((0, 1), lrs)]
    fused = run_fused(cfgs, [tmp_path / "f0", tmp_path / "f1"])
    for k, cfg in enumerate(cfgs):
        alone = run(cfg, tmp_path / f"a{k}")
        assert set(fused[k]) - set(alone) == {"fused"} and set(alone) <= set(fused[k])
        sa, sf = read_scalars(tmp_path / f"a{k}"), read_scalars(tmp_path / f"f{k}")
        assert set(sa) == set(sf) and any(t.startswith("layer/update_ratio/") for t in sf)
        assert any(t.startswith("train/adam/") for t in sf) == ("optimizer=adamw" in extra)
        for tag, points in sa.items():
            assert [s for s, _ in sf[tag]] == [s for s, _ in points], tag
            assert [v for _, v in sf[tag]] == pytest.approx([v for _, v in points], rel=1e-3, abs=1e-7,
                                                            nan_ok=True), tag


def test_groups_follow_the_per_run_keys_and_max_runs():
    base = ["model.width=8"]
    cfgs = [compose_cfg(*base, f"seed={s}") for s in range(5)]                     # 0-4 fuse
    cfgs.append(compose_cfg(*base, "trainer.batch_size=32"))                        # 5: other batch
    cfgs.append(compose_cfg(*base, "optimizer.lr=0.3", "scheduler=warmuplinear"))  # 6: per-run keys
    cfgs.append(compose_cfg("model=transformer", "data=bytes"))                     # 7: another model
    cfgs.append(compose_cfg(*base, "optimizer=rmsprop"))                            # 8: per-run optimizer
    cfgs.append(compose_cfg(*base, "trainer.metrics.curvature_interval=5"))         # 9: runs alone
    assert fused_groups(cfgs, 3) == [[0, 1, 2], [3, 4, 6], [5], [7], [8], [9]]
    assert fused_groups(cfgs, 8) == [[0, 1, 2, 3, 4, 6, 8], [5], [7], [9]]


GROUP_MODELS = {"resnet": ["model.width=8"],
                "transformer_loop": ["model=transformer", "data=bytes", *TINY_TRANSFORMER, *TINY_BYTES],
                "transformer_vmap": ["model=transformer", "data=bytes", *TINY_TRANSFORMER, *TINY_BYTES,
                                     "trainer.stack=vmap", "model.dropout=0.1"]}  # the global RNG resumes too


@pytest.mark.parametrize("model", list(GROUP_MODELS))
def test_an_interrupted_fused_group_continues_exactly_and_logs_each_step_once(tmp_path, monkeypatch, model):
    """SIGTERM's flag at step 3: checkpoint, runs interrupted; run again, the same group continues
    from its checkpoint to the numbers of an uninterrupted group, bit for bit (CPU): the grouped
    ResNet (BN statistics), the looped and the vmapped Transformer (dropout)."""
    cfgs = [compose_cfg(*GROUP_MODELS[model], f"seed={s}", f"optimizer.lr={lr}")
            for s, lr in ((0, 0.02), (1, 0.01))]
    whole = run_fused(cfgs, [tmp_path / "w0", tmp_path / "w1"])
    dirs = [tmp_path / "0", tmp_path / "1"]
    stop_after(monkeypatch, 3)
    stopped = run_fused(cfgs, dirs)
    assert [m["status"] for m in stopped] == ["interrupted", "interrupted"]
    assert [p.name for p in (dirs[0] / "fused_checkpoints").glob("*.pt")] == ["step_000000003.pt"]
    for d in dirs:
        on_disk = json.loads((d / "metrics.json").read_text())
        assert on_disk["status"] == "interrupted" and on_disk["steps"] == 3
        assert [s for s, _ in read_scalars(d)["train/loss"]] == [0, 1, 2]  # flushed before stopping
    monkeypatch.undo()
    done = run_fused(cfgs, dirs)
    for k, d in enumerate(dirs):
        assert done[k]["status"] == "completed" and done[k]["resumed_from_step"] == 3
        assert done[k]["val_history"] == whole[k]["val_history"]
        assert done[k]["final_val_loss"] == whole[k]["final_val_loss"]
        resumed, uninterrupted = read_scalars(d), read_scalars(tmp_path / f"w{k}")
        assert set(resumed) == set(uninterrupted)
        for tag in ("train/loss", "train/update_ratio", "jitter/loss_std", "val/loss"):
            assert resumed[tag] == uninterrupted[tag], tag  # each step once, the same values
        meta = json.loads((d / "run_meta.json").read_text())
        assert [(s["from_step"], s["to_step"]) for s in meta["sessions"]] == [(0, 3), (3, 6)]
        assert meta["fused"] == {"k": 2, "runs": [str(p) for p in dirs], "index": k}


def test_a_group_with_a_diverged_run_continues_whole(tmp_path, monkeypatch):
    """A run that diverged before the interruption is finished: the group still continues from its
    checkpoint (that run masked, its record left as it was), not from step 0."""
    cfgs = [compose_cfg("model.width=8", f"seed={s}", f"optimizer.lr={lr}")
            for s, lr in ((0, 0.02), (1, 0.01), (2, 1e9))]  # run 2 diverges at step 3
    whole = run_fused(cfgs, [tmp_path / f"w{k}" for k in range(3)])
    dirs = [tmp_path / str(k) for k in range(3)]
    stop_after(monkeypatch, 5)
    stopped = run_fused(cfgs, dirs)
    monkeypatch.undo()
    assert [m["status"] for m in stopped] == ["interrupted", "interrupted", "diverged"]
    diverged = (dirs[2] / "metrics.json").read_text(), (dirs[2] / "run_meta.json").read_text()
    assert [(x["from_step"], x["to_step"]) for x in json.loads(diverged[1])["sessions"]] == [(0, 4)]  # its own end
    done = run_fused(cfgs, dirs)
    assert [m["resumed_from_step"] for m in done[:2]] == [5, 5]
    assert ((dirs[2] / "metrics.json").read_text(), (dirs[2] / "run_meta.json").read_text()) == diverged
    for k in range(3):
        assert done[k]["status"] == whole[k]["status"] and done[k]["final_val_loss"] == whole[k]["final_val_loss"]
        bits = [[(s, repr(v)) for s, v in read_scalars(d)["train/loss"]] for d in (dirs[k], tmp_path / f"w{k}")]
        assert bits[0] == bits[1]  # each step once, the same values (NaN from step 3 for run 2)


def test_another_group_of_the_same_dirs_starts_again(tmp_path, monkeypatch):
    """A checkpoint is only continued by its own group: the same dirs fused with another run
    (a new job joined the sweep) start from step 0, earlier events purged, and the old group's
    checkpoints are set aside, so the new group's own (at a lower step) are the ones it resumes
    from."""
    cfgs = [compose_cfg("model.width=8", f"seed={s}") for s in (0, 1, 2)]
    dirs = [tmp_path / str(i) for i in range(3)]
    stop_after(monkeypatch, 5)
    run_fused(cfgs[:2], dirs[:2])   # the old group: its checkpoint at step 5
    monkeypatch.undo()
    stop_after(monkeypatch, 3)
    started = run_fused(cfgs, dirs)  # the new group starts again and stops at step 3
    assert [m["resumed_from_step"] for m in started] == [None, None, None]
    assert [p.name for p in (dirs[0] / "fused_checkpoints").glob("*.pt")] == ["step_000000003.pt"]
    assert list(dirs[0].glob("stale/*/fused_checkpoints/step_000000005.pt"))
    monkeypatch.undo()
    done = run_fused(cfgs, dirs)
    assert [m["resumed_from_step"] for m in done] == [3, 3, 3]
    assert [s for s, _ in read_scalars(dirs[0])["train/loss"]] == list(range(6))


def test_a_group_resumes_under_another_stack(tmp_path, monkeypatch):
    """``trainer.stack`` is a speed knob: a checkpoint holds each run's own state dict, so a
    Transformer group stopped under vmap continues under the loop (another device would too)."""
    base = ["model=transformer", "data=bytes", *TINY_TRANSFORMER, *TINY_BYTES]
    cfgs = {how: [compose_cfg(*base, f"trainer.stack={how}", f"seed={s}") for s in (0, 1)] for how in ("vmap", "loop")}
    whole = run_fused(cfgs["loop"], [tmp_path / "w0", tmp_path / "w1"])
    dirs = [tmp_path / "0", tmp_path / "1"]
    stop_after(monkeypatch, 3)
    run_fused(cfgs["vmap"], dirs)
    monkeypatch.undo()
    done = run_fused(cfgs["loop"], dirs)
    for k in range(2):
        assert done[k]["status"] == "completed" and done[k]["resumed_from_step"] == 3
        assert done[k]["final_val_loss"] == pytest.approx(whole[k]["final_val_loss"], rel=1e-4)


@pytest.mark.slow
def test_sigterm_to_a_fused_sweep_then_resume(tmp_path):
    """A real `kill -TERM` while a fused group trains: exit 143, both runs interrupted with a
    checkpoint; the same sweep with trainer.resume=true continues the group to the numbers of an
    uninterrupted one."""
    args = ["trainer.progress=false", "trainer.max_steps=300", "trainer.checkpoint_interval=20",
            "trainer.eval_interval=100", "trainer.log_interval=10", "trainer.batch_size=16",
            "trainer.device=cpu", "trainer.threads=1", "scheduler.warmup_ratio=null",
            "scheduler.warmup_steps=50", "model.width=8"]
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "launcher=fused", "seed=0,1", *args,
           f"hydra.sweep.dir={sweep}"]
    proc = start_until(cmd, tmp_path, sweep, "0/fused_checkpoints/step_*.pt")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    first = [json.loads((sweep / j / "metrics.json").read_text()) for j in ("0", "1")]
    assert [m["status"] for m in first] == ["interrupted"] * 2 and 20 <= first[0]["steps"] < 300
    assert "trainer.resume=true" in err

    proc = subprocess.run([*cmd, "trainer.resume=true"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = [json.loads((sweep / j / "metrics.json").read_text()) for j in ("0", "1")]
    assert [m["status"] for m in second] == ["completed"] * 2
    assert [m["resumed_from_step"] for m in second] == [first[0]["steps"]] * 2
    ref = run_fused([compose_cfg(*args, f"seed={s}", fast=False) for s in (0, 1)],
                    [tmp_path / "ref0", tmp_path / "ref1"])
    for j in (0, 1):
        losses = read_scalars(sweep / str(j))["train/loss"]
        assert [s for s, _ in losses] == list(range(300))
        assert losses == read_scalars(tmp_path / f"ref{j}")["train/loss"]
        assert second[j]["final_val_loss"] == ref[j]["final_val_loss"]
