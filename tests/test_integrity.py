"""Nothing a run writes is wrong: restarts from step 0, one writer per directory, a stopped
parallel sweep, a full disk, damaged checkpoints and a thread change at resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY_TRANSFORMER, compose_cfg, read_scalars, start_until
from warmup_lab.runs import checkpoint
from warmup_lab.runs.rundir import RunDirBusy, RunDirLock, disk_full
from warmup_lab.runs.run import run
from test_resume import signal_at

LONG = ["trainer.progress=false", "trainer.max_steps=400", "trainer.eval_interval=100", "trainer.log_interval=10",
        "trainer.batch_size=16", "trainer.device=cpu", "trainer.threads=1", "scheduler.warmup_ratio=null",
        "scheduler.warmup_steps=20", "model=transformer", *TINY_TRANSFORMER]


def cli(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *args]


def steps_of(run_dir: Path, tag: str = "train/loss") -> list[int]:
    return [s for s, _ in read_scalars(run_dir).get(tag, [])]


def _flushed_points(run_dir: Path) -> bool:
    try:
        return bool(steps_of(run_dir))
    except Exception:  # a record half-written at this moment
        return False


@pytest.mark.slow
def test_sigkill_before_the_first_checkpoint_then_restart_leaves_one_point_per_step(tmp_path):
    run_dir = tmp_path / "run"
    total = 1500
    args = cli(f"hydra.run.dir={run_dir}", *LONG, f"trainer.max_steps={total}", "trainer.checkpoint_interval=null")
    proc = start_until(args, ROOT, run_dir, "events.out.tfevents.*")
    deadline = time.monotonic() + 120
    while not _flushed_points(run_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # until the writer has put some steps on disk; no checkpoint before the end
    proc.kill()
    proc.communicate(timeout=60)
    dead = steps_of(run_dir)
    assert dead and not list(run_dir.glob("checkpoints/step_*.pt"))  # the dead session's points
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"restarting {run_dir} from step 0" in again.stderr and "no checkpoint to continue from" in again.stderr
    assert steps_of(run_dir) == list(range(total))  # exactly one point per step, all from the new session
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    (stale,) = (run_dir / "stale").iterdir()
    assert list(stale.glob("events.out.dead-session.*"))  # kept, under a name no reader loads
    meta = json.loads((run_dir / "run_meta.json").read_text())
    assert meta["restarts"][0]["moved_to"].startswith("stale/") and meta["status"] == "completed"


@pytest.mark.slow
def test_two_writers_on_one_run_directory_the_second_is_refused_naming_the_first(tmp_path):
    run_dir = tmp_path / "run"
    args = cli(f"hydra.run.dir={run_dir}", *LONG, "trainer.max_steps=20000")  # still training when the second comes
    first = start_until(args, ROOT, run_dir, "events.out.tfevents.*")
    try:
        second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert second.returncode == 2, second.stderr[-2000:]
        assert lines[-1].startswith("error: ") and f"is in use by pid {first.pid}" in lines[-1]
        assert len([ln for ln in lines if "Traceback" in ln]) == 0
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # the refused one wrote nothing
    steps = steps_of(run_dir)
    assert steps == sorted(set(steps))  # no step twice


def test_the_lock_is_released_with_its_process_and_names_its_holder(tmp_path):
    with RunDirLock(tmp_path):
        with pytest.raises(RunDirBusy, match=f"pid {os.getpid()}"):
            RunDirLock(tmp_path).acquire()
    RunDirLock(tmp_path).acquire().release()  # free again
    holder = subprocess.Popen([sys.executable, "-c", f"from warmup_lab.runs.rundir import RunDirLock; import time; "
                               f"RunDirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunDirBusy, match=f"pid {holder.pid}"):
        RunDirLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    RunDirLock(tmp_path).acquire().release()  # SIGKILL released it


def _pids_alive(pids) -> list[int]:
    alive = []
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(p)
    return alive


@pytest.mark.slow
def test_sigterm_to_a_joblib_sweep_stops_its_workers_and_leaves_no_process(tmp_path):
    from warmup_lab.sweeps.jobs import _descendants

    sweep = tmp_path / "sweep"
    cmd = cli("-m", "launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2,3", f"hydra.sweep.dir={sweep}",
              *LONG, "trainer.checkpoint_interval=20")
    parent = start_until(cmd, ROOT, sweep, "*/checkpoints/step_*.pt", timeout=180)
    workers = _descendants(parent.pid)
    parent.send_signal(signal.SIGTERM)
    out, err = parent.communicate(timeout=180)
    assert parent.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "sweep stopped by SIGTERM" in err
    time.sleep(0.5)
    assert _pids_alive(workers) == [], [Path(f"/proc/{p}/cmdline").read_bytes() for p in _pids_alive(workers)]
    status = json.loads((sweep / "sweep_status.json").read_text())
    started = [d for d in sweep.iterdir() if (d / "metrics.json").exists()]
    assert {json.loads((d / "metrics.json").read_text())["status"] for d in started} == {"interrupted"}
    assert len(started) == 2 and status["counts"].get("interrupted") == 4  # 2 ran, 2 never started
    assert not (sweep / ".stop-requested").exists()
    # the same command resumed finishes every run, each step logged once
    again = subprocess.run([*cmd, "trainer.resume=true"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    for d in sorted(p for p in sweep.iterdir() if p.is_dir()):
        assert json.loads((d / "metrics.json").read_text())["status"] == "completed"
        assert steps_of(d) == list(range(400))


def test_a_zeroed_block_inside_checkpoint_tensors_is_caught_and_the_previous_one_used(tmp_path, caplog):
    overrides = ["trainer.max_steps=12", "trainer.checkpoint_interval=4", "trainer.log_interval=4"]
    ref = run(compose_cfg(*overrides), tmp_path / "ref")
    (tmp_path / "run").mkdir()
    run(compose_cfg(*overrides), tmp_path / "run")
    newest, previous = checkpoint.checkpoint_files(tmp_path / "run" / "checkpoints")
    data = bytearray(newest.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)  # silent corruption inside the tensor data: torch.load would accept it
    newest.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        state, path = checkpoint.load_latest(tmp_path / "run" / "checkpoints")
    assert path == previous and "fails its checksum" in caplog.text
    assert (newest.parent / (newest.name + ".corrupt")).exists()
    assert state["step"] == 8 and ref["status"] == "completed"


def test_a_checkpoint_of_an_earlier_format_is_refused_in_one_line_and_kept(tmp_path, monkeypatch):
    """Format 2 (one run, before K runs shared the trainer): whole, so never moved aside as
    corrupt; the run stops before training with a line that says what to do."""
    import torch

    cfg = compose_cfg("trainer.max_steps=4", "trainer.checkpoint_interval=2")
    signal_at(monkeypatch, 2)
    run(cfg, tmp_path)
    monkeypatch.undo()
    (path,) = checkpoint.checkpoint_files(tmp_path / "checkpoints")
    torch.save({**checkpoint.load(path), "format": 2}, path)  # as the previous version wrote it (no checksum line)
    with pytest.raises(checkpoint.CheckpointFormatError, match="has format 2 .* delete"):
        run(cfg, tmp_path)
    assert checkpoint.checkpoint_files(tmp_path / "checkpoints") == [path] and not list(path.parent.glob("*.corrupt"))


def test_resume_with_another_thread_count_says_it_is_no_longer_bitwise(tmp_path, monkeypatch, capfd):
    from test_resume import signal_at

    signal_at(monkeypatch, 5)
    run(compose_cfg("trainer.max_steps=10", "trainer.threads=1"), tmp_path)
    monkeypatch.undo()
    capfd.readouterr()
    run(compose_cfg("trainer.max_steps=10", "trainer.threads=2"), tmp_path)
    err = capfd.readouterr().err
    assert "with trainer.threads=2 where its checkpoint was written with 1" in err and "not bitwise" in err
    assert len([ln for ln in err.splitlines() if ln.startswith("warning: resuming")]) == 1


def test_orphaned_temp_files_are_removed_at_the_next_start(tmp_path):
    (tmp_path / "checkpoints").mkdir(parents=True)
    orphan = tmp_path / "checkpoints" / ".tmp-abc.pt"
    orphan.write_bytes(b"")
    half = tmp_path / ".metrics.json.xyz.tmp"
    half.write_text("")
    assert run(compose_cfg(), tmp_path)["status"] == "completed"
    assert not orphan.exists() and not half.exists()


def test_disk_full_is_recognised_however_deep_it_is_wrapped():
    import errno

    inner = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise inner
        except OSError as e:
            raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file "
                               "data/3: file write failed") from e
    except RuntimeError as outer:
        assert disk_full(outer)
    assert disk_full(RuntimeError("file write failed")) and not disk_full(ValueError("bad value"))


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}): the full-disk test "
                    f"needs root and mount permission")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_gives_one_line_a_valid_failed_record_and_no_temp_files(small_tmpfs):
    run_dir = small_tmpfs / "run"
    # ResNet-20 checkpoints (~2 MB with momentum) cannot fit in 1.2 MB: the first one fills the disk
    proc = subprocess.run(cli(f"hydra.run.dir={run_dir}", "trainer.progress=false", "trainer.max_steps=40",
                              "trainer.checkpoint_interval=5", "trainer.device=cpu", "trainer.threads=1",
                              "trainer.batch_size=16"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert lines[-1].startswith("error: disk full") and str(run_dir) in lines[-1], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"].startswith("disk full")
    assert not list(run_dir.glob("checkpoints/.tmp-*")) and not list(run_dir.glob(".*.tmp"))
    assert not (run_dir / ".disk-reserve").exists()
    assert (run_dir / "error.txt").read_text().startswith("disk full")


@pytest.mark.slow
def test_a_job_that_raises_at_run_time_is_recorded_failed_and_the_sweep_goes_on(tmp_path):
    """A CIFAR folder whose first batch is a truncated pickle passes every check (its files
    exist) and fails while loading: that job gets status failed with the traceback in
    error.txt, the other one completes, and the sweep exits 0."""
    from conftest import write_tiny_cifar

    good, bad = write_tiny_cifar(tmp_path / "good"), write_tiny_cifar(tmp_path / "bad")
    batch = bad / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:100])
    sweep = tmp_path / "sweep"
    proc = subprocess.run(cli("-m", "data=cifar10", f"data.root={good},{bad}", "data.augment=false",
                              "trainer.max_steps=2", "trainer.eval_interval=2", "trainer.batch_size=8",
                              "model.width=4", "model.depth=8", f"hydra.sweep.dir={sweep}", "trainer.device=cpu",
                              "trainer.checkpoint_interval=null"), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: 2 runs: 1 completed, 1 failed" in proc.stdout
    failed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "UnpicklingError" in failed["error"]
    assert "Traceback" in (sweep / "1" / "error.txt").read_text()
