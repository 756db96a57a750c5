"""Checkpoints and exact resume: SIGTERM mid-run, corrupt checkpoints, config checks, submitit hand-over."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_BYTES, TINY_TRANSFORMER, compose_cfg, read_scalars, start_until
from warmup_lab.runs import checkpoint
from warmup_lab.runs.checkpoint import CheckpointError
from warmup_lab.runs.run import run, run_group
from warmup_lab.runs.signals import GracefulStop
from warmup_lab.engine.trainer import Trainer

# 16 steps, flushes every 4, evaluations at 6 and 12, per-layer stats at 0, 6 and 12, checkpoints
# every 5: an interrupt at step 7 leaves steps 4-6 unflushed and step 6's layer stats queued.
BASE = ["trainer.max_steps=16", "trainer.log_interval=4", "trainer.eval_interval=6",
        "trainer.checkpoint_interval=5", "trainer.metrics.layer_interval=6", "optimizer=adamw"]
CASES = {"resnet20-digits": [],  # batch norm buffers, shuffled epochs
         "transformer-bytes-dropout": ["model=transformer", "data=bytes", "model.dropout=0.1",
                                       *TINY_TRANSFORMER, *TINY_BYTES]}  # global RNG, random windows


def signal_at(monkeypatch, step: int, sig=signal.SIGTERM) -> None:
    """Deliver ``sig`` to this process right after optimizer step ``step`` (a real signal, so the
    handler path is the one a `kill` takes)."""
    original = Trainer.train_step

    def train_step(self):
        original(self)
        if self.step == step:
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(Trainer, "train_step", train_step)


def bits(points: list[tuple[int, float]]) -> list[tuple[int, str]]:
    """Steps and exact float values (NaN equal to NaN)."""
    return [(s, float(v).hex()) for s, v in points]


def same_metrics(a: dict, b: dict) -> None:
    skip = {"wall_time_s", "run_dir", "resumed_from_step"}
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


@pytest.mark.parametrize("case", CASES)
def test_sigterm_then_resume_reproduces_the_uninterrupted_run_bitwise(tmp_path, monkeypatch, case):
    overrides = [*BASE, *CASES[case]]
    ref = run(compose_cfg(*overrides), tmp_path / "ref")
    signal_at(monkeypatch, 7)
    first = run(compose_cfg(*overrides), tmp_path / "run")
    assert first["status"] == "interrupted" and first["steps"] == 7
    assert first["interrupted_by"] == "SIGTERM"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    # the interrupted process flushed its logs up to the last step
    assert [s for s, _ in read_scalars(tmp_path / "run")["train/loss"]] == list(range(7))
    monkeypatch.undo()

    second = run(compose_cfg(*overrides), tmp_path / "run")  # started again in its own directory
    assert second["status"] == "completed" and second["resumed_from_step"] == 7
    a, b = read_scalars(tmp_path / "ref"), read_scalars(tmp_path / "run")
    assert [s for s, _ in b["train/loss"]] == list(range(16))  # no duplicated or missing step
    assert set(a) == set(b)
    for tag in a:
        assert bits(b[tag]) == bits(a[tag]), tag  # every step of every tag, bitwise
    same_metrics(ref, second)
    meta = json.loads((tmp_path / "run" / "run_meta.json").read_text())
    assert [(s["from_step"], s["to_step"], s["status"]) for s in meta["sessions"]] == [
        (0, 7, "interrupted"), (7, 16, "completed")]


def test_reduce_on_plateau_resumes_exactly_from_the_history_in_the_checkpoint(tmp_path, monkeypatch):
    """The plateau schedule is a function of the step and the validation history: a resumed run
    rebuilds it from the history its checkpoint holds. Here every evaluation after the first is
    "no better" (abs threshold 10), so the lr halves at steps 4, 6, 8, ...; the interrupt at 7
    falls between reductions that depend on evaluations before it."""
    overrides = ["trainer.max_steps=12", "trainer.log_interval=4", "trainer.eval_interval=2",
                 "trainer.checkpoint_interval=5", "optimizer=adamw", "scheduler=reduceonplateau",
                 "scheduler.patience=0", "scheduler.threshold=10", "scheduler.threshold_mode=abs",
                 "scheduler.factor=0.5", "scheduler.warmup_steps=0"]
    ref = run(compose_cfg(*overrides), tmp_path / "ref")
    lrs = [v for _, v in read_scalars(tmp_path / "ref")["train/lr"]]
    lr = 1e-3  # conf/optimizer/adamw.yaml
    expect = [lr * 0.5 ** max(0, (s - 2) // 2) for s in range(12)]
    assert lrs == pytest.approx(expect, rel=1e-6)
    signal_at(monkeypatch, 7)
    assert run(compose_cfg(*overrides), tmp_path / "run")["status"] == "interrupted"
    monkeypatch.undo()
    second = run(compose_cfg(*overrides), tmp_path / "run")
    assert second["resumed_from_step"] == 7  # the stop's checkpoint: evaluations at 2, 4 and 6 in it
    a, b = read_scalars(tmp_path / "ref"), read_scalars(tmp_path / "run")
    for tag in ("train/loss", "train/lr", "val/loss"):
        assert bits(b[tag]) == bits(a[tag]), tag
    same_metrics(ref, second)


def test_checkpoints_are_atomic_kept_two_and_load_with_weights_only(tmp_path):
    run(compose_cfg("trainer.max_steps=12", "trainer.checkpoint_interval=4"), tmp_path)
    files = checkpoint.checkpoint_files(tmp_path / "checkpoints")
    assert [f.name for f in files] == ["step_000000012.pt", "step_000000008.pt"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    raw = files[0].read_bytes()
    assert raw.startswith(checkpoint.HEADER)  # the SHA-256 line, then torch.save's payload
    payload = raw[raw.index(b"\n") + 1:]
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    assert checkpoint.load(files[0])["step"] == 12 and state["format"] == checkpoint.FORMAT
    (one,) = state["runs"]  # a run alone is K = 1
    assert state["step"] == 12 and one["result"]["status"] == "completed"
    assert isinstance(state["rng"]["torch"], torch.Tensor) and state["rng"]["torch"].dtype == torch.uint8
    assert one["lr_adapter"] == {"step": 12} and "generator" in one["sampler"]


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, monkeypatch, caplog):
    overrides = ["trainer.max_steps=12", "trainer.checkpoint_interval=4", "trainer.log_interval=4"]
    ref = run(compose_cfg(*overrides), tmp_path / "ref")
    signal_at(monkeypatch, 10)
    run(compose_cfg(*overrides), tmp_path / "run")
    monkeypatch.undo()
    latest = tmp_path / "run" / "checkpoints" / "step_000000010.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated write
    with caplog.at_level("WARNING"):
        second = run(compose_cfg(*overrides), tmp_path / "run")
    assert "step_000000010.pt cannot be read" in caplog.text and "falling back" in caplog.text
    assert second["resumed_from_step"] == 8 and second["status"] == "completed"
    assert (tmp_path / "run" / "checkpoints" / "step_000000010.pt.corrupt").exists()
    assert read_scalars(tmp_path / "run")["train/loss"] == read_scalars(tmp_path / "ref")["train/loss"]
    same_metrics(ref, second)


def test_no_readable_checkpoint_and_unsafe_pickles_give_a_clear_error(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "step_000000004.pt").write_bytes(b"not a checkpoint")
    torch.save({"step": 2, "payload": GracefulStop()}, folder / "step_000000002.pt")  # arbitrary object
    with pytest.raises(CheckpointError, match="no readable checkpoint.*delete .*checkpoints"):
        checkpoint.load_latest(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["step_000000002.pt.corrupt",
                                                        "step_000000004.pt.corrupt"]


def test_a_checkpoint_of_another_config_is_refused(tmp_path, monkeypatch):
    signal_at(monkeypatch, 3)
    run(compose_cfg("optimizer.lr=0.1"), tmp_path)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"different config \(optimizer.lr: 0.1 -> 0.2\)"):
        run(compose_cfg("optimizer.lr=0.2"), tmp_path)
    # keys that do not change what a run computes (progress, checkpoints, the flag) do not count
    assert run(compose_cfg("optimizer.lr=0.1", "trainer.progress=true", "trainer.checkpoint_interval=2",
                           "trainer.resume=true"), tmp_path)["status"] == "completed"


def test_a_finished_run_is_not_trained_again(tmp_path):
    first = run(compose_cfg(), tmp_path)
    events = sorted(tmp_path.glob("events.out.tfevents.*"))
    again = run(compose_cfg(), tmp_path)
    assert again == json.loads((tmp_path / "metrics.json").read_text()) and again["status"] == "completed"
    assert again["final_val_loss"] == first["final_val_loss"]
    assert sorted(tmp_path.glob("events.out.tfevents.*")) == events


@pytest.mark.parametrize("k", [1, 2])
def test_second_ctrl_c_stops_at_once(tmp_path, monkeypatch, k):
    """A run alone and a group of two (the same entry): every run is interrupted, none failed."""
    before = signal.getsignal(signal.SIGINT)
    signal_at(monkeypatch, 2, signal.SIGINT)  # the first Ctrl-C: stop after this step
    # the second one arrives while the run is still saving its checkpoint: stop now
    monkeypatch.setattr(Trainer, "save_checkpoint", lambda self: os.kill(os.getpid(), signal.SIGINT))
    dirs = [tmp_path / str(i) for i in range(k)]
    with pytest.raises(KeyboardInterrupt):
        run_group([compose_cfg(f"seed={i}") for i in range(k)], dirs)
    assert [json.loads((d / "metrics.json").read_text())["status"] for d in dirs] == ["interrupted"] * k
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("k", [1, 2])
def test_submitit_preemption_signal_checkpoints_then_hands_over_to_submitit(tmp_path, monkeypatch, k):
    """Under submitit, USR2 stops the run (checkpoint, status interrupted) and then submitit's own
    handler runs (it requeues and exits); SIGTERM only checkpoints and training goes on. The same
    for a group of two runs (``launcher=fused`` under SLURM)."""
    calls = []

    def submitit_handler(signum, frame):
        calls.append(signum)
        raise SystemExit(-1)

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        original = Trainer.train_step

        def train_step(self):
            original(self)
            if self.step == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # submitit ignores it; we checkpoint
            if self.step == 5:
                os.kill(os.getpid(), signal.SIGUSR2)  # preemption / time limit

        monkeypatch.setattr(Trainer, "train_step", train_step)
        cfgs = [compose_cfg("trainer.max_steps=8", "trainer.checkpoint_interval=null", f"seed={i}") for i in range(k)]
        dirs = [tmp_path / str(i) for i in range(k)]
        with pytest.raises(SystemExit):
            run_group(cfgs, dirs)
        assert calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler
        for d in dirs:
            metrics = json.loads((d / "metrics.json").read_text())
            assert metrics["status"] == "interrupted" and metrics["interrupted_by"] == "SIGUSR2"
        folder = dirs[0] / ("checkpoints" if k == 1 else "fused_checkpoints")
        assert [f.name for f in checkpoint.checkpoint_files(folder)] == ["step_000000005.pt", "step_000000003.pt"]
        monkeypatch.setattr(Trainer, "train_step", original)
        assert [m["status"] for m in run_group(cfgs, dirs)] == ["completed"] * k  # the requeued job continues
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.slow
def test_sigterm_to_the_cli_then_resume_with_the_flag(tmp_path):
    """A real `kill -TERM` to train.py mid-run: exit 143, status interrupted; the same command
    with trainer.resume=true finds the run and finishes it with the uninterrupted losses."""
    args = ["trainer.progress=false", "trainer.max_steps=300", "trainer.checkpoint_interval=20",
            "trainer.eval_interval=100", "trainer.log_interval=10", "trainer.batch_size=16",
            "trainer.device=cpu", "trainer.threads=1", "scheduler.warmup_ratio=null",
            "scheduler.warmup_steps=50", "model=transformer", *TINY_TRANSFORMER]
    cmd = [sys.executable, str(ROOT / "train.py"), f"paths.output_root={tmp_path}", *args]
    proc = start_until(cmd, tmp_path, tmp_path, "runs/*/*/checkpoints/step_*.pt")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    (run_dir,) = [p.parent for p in tmp_path.glob("runs/*/*/metrics.json")]
    first = json.loads((run_dir / "metrics.json").read_text())
    assert first["status"] == "interrupted" and 20 <= first["steps"] < 300
    assert "continue:" in err

    proc = subprocess.run([*cmd, "trainer.resume=true"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"continuing {run_dir}" in proc.stderr
    second = json.loads((run_dir / "metrics.json").read_text())
    assert second["status"] == "completed" and second["resumed_from_step"] == first["steps"]

    ref = run(compose_cfg(*args, fast=False), tmp_path / "ref")
    losses = read_scalars(run_dir)["train/loss"]
    assert [s for s, _ in losses] == list(range(300))
    assert losses == read_scalars(tmp_path / "ref")["train/loss"]
    assert second["final_val_loss"] == ref["final_val_loss"]
