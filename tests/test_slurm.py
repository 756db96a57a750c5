"""``launcher=slurm`` against a real single-node SLURM cluster (``scripts/slurm_local.sh start``).

Every test submits real jobs with ``sbatch`` through Hydra's submitit launcher and checks what they
wrote against ``launcher=basic`` runs of the same configs, bit for bit. Without a cluster the tests
skip and name the reason; with ``WARMUP_LAB_REQUIRE_SLURM=1`` (``.ci/run`` sets it) a missing
cluster fails them instead, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, read_scalars
from warmup_lab.runs.run import run

pytestmark = pytest.mark.slow


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not installed (sudo scripts/slurm_local.sh install && sudo scripts/slurm_local.sh start)"
    out = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%T"], capture_output=True, text=True)
    if out.returncode != 0 or not {s.strip("*~#") for s in out.stdout.split()} & {"idle", "mixed", "allocated"}:
        return f"no SLURM partition 'debug' with a node up (sudo scripts/slurm_local.sh start): {out.stderr.strip()}"
    if subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True).returncode != 0:
        return "sacct fails: the cluster has no job accounting (scripts/slurm_local.sh starts slurmdbd)"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    problem = _cluster_problem()
    if problem is not None:
        if os.environ.get("WARMUP_LAB_REQUIRE_SLURM") == "1":
            pytest.fail(f"WARMUP_LAB_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)


# jobs of one CPU each (two at a time on a 2-core node), small memory, and a short poll
SLURM = ["launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10", "trainer.progress=false",
         "trainer.device=cpu"]
RESNET = ["model.width=4", "model.depth=8", "trainer.batch_size=16", "trainer.max_steps=8",
          "trainer.eval_interval=4", "trainer.log_interval=2", "trainer.checkpoint_interval=4"]
TRANSFORMER = ["model=transformer", "data=bytes", "model.n_layers=1", "model.d_model=32", "model.n_heads=2",
               "data.max_bytes=20000", "data.context_length=16", "data.eval_sequences=8", "trainer.batch_size=8",
               "trainer.eval_interval=100", "trainer.log_interval=10", "trainer.checkpoint_interval=10"]


def sweep(*args: str, tmp: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *SLURM, *args, f"hydra.sweep.dir={tmp}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def start_sweep(*args: str, tmp: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-m", *SLURM, *args, f"hydra.sweep.dir={tmp}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(cond, what: str, timeout: float = 300, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the sweep ended before {what}: {err[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def job_overrides(run_dir: Path) -> list[str]:
    """The job's own overrides (from Hydra's record), less the launcher's: the config a basic run
    needs to be the same run."""
    import yaml

    task = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    return [o for o in task if not o.startswith(("launcher=", "hydra."))]


def reference(run_dir: Path, tmp: Path) -> dict[str, list]:
    """The same run through launcher=basic in this process (one thread, as cpus_per_task=1)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*job_overrides(run_dir), "trainer.threads=1"])
    out = tmp / f"ref-{run_dir.name}"
    assert run(cfg, out)["status"] == "completed"
    return read_scalars(out)


def bits(points):
    return [(s, float(v).hex()) for s, v in points]


def meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_meta.json").read_text())


def status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def slurm_id(run_dir: Path) -> str:
    m = meta(run_dir)
    return f"{m['slurm_job_id']}_{m['slurm_array_task_id']}"


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step_*.pt"))


def test_a_sweep_on_the_cluster_writes_what_basic_writes(tmp_path):
    """4 real jobs; each directory holds a basic run's files with the same numbers, bit for bit."""
    proc = sweep("seed=0,1", "optimizer.lr=0.05,0.1", *RESNET, tmp=tmp_path / "sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: 4 runs: 4 completed" in proc.stdout
    assert "Bypassing sacct error" not in proc.stderr  # job states come from the cluster's accounting
    ids = set()
    for job in range(4):
        d = tmp_path / "sweep" / str(job)
        for name in ("metrics.json", "run_meta.json", "train.log", ".hydra/config.yaml"):
            assert (d / name).is_file(), name
        assert list(d.glob("events.out.tfevents.*")) and checkpoints(d)
        m = meta(d)
        assert m["submitit_executor"] == "slurm" and m["threads"] == 1 and m["slurm_job_id"]
        ids.add(slurm_id(d))
        ref, got = reference(d, tmp_path), read_scalars(d)
        assert set(got) == set(ref)
        for tag in ("train/loss", "train/lr", "val/loss", "val/acc"):
            assert bits(got[tag]) == bits(ref[tag]), (job, tag)
    assert len(ids) == 4  # four array tasks of one submission
    logs = list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    assert len(logs) >= 4  # where the docs say the job logs go


def test_a_job_that_raises_is_recorded_failed_and_the_sweep_goes_on(tmp_path):
    proc = sweep("seed=0", "trainer.batch_size=16,5000", *[a for a in RESNET if "batch_size" not in a],
                 tmp=tmp_path / "sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]  # not every job failed
    assert "sweep: 2 runs: 1 completed, 1 failed" in proc.stdout
    assert status(tmp_path / "sweep" / "0") == "completed" and status(tmp_path / "sweep" / "1") == "failed"
    assert "trainer.batch_size=5000 is invalid" in (tmp_path / "sweep" / "1" / "error.txt").read_text()


def test_requeue_and_the_pre_timeout_signal_resume_bit_for_bit(tmp_path):
    """Job 0 is requeued by the cluster (``scontrol requeue``); job 1 gets USR2 the way SLURM
    signals before a time limit (``scancel --signal=USR2``). Each checkpoints, is requeued, resumes
    and ends with the train/loss of an uninterrupted run, every step once."""
    sweep_dir = tmp_path / "sweep"
    # job 0 trains longer than the cluster's KillWait (10 s) after its requeue's SIGTERM, so
    # SLURM kills it and the requeued job continues from the checkpoint that SIGTERM asked for.
    # Both must still be training when the signals come: at 260-520 steps/s on one core (seen on
    # this machine), 20000 and 5000 steps last 40-80 s and 10-20 s.
    steps = {0: 20000, 1: 5000}
    proc = start_sweep("seed=0", "trainer.max_steps=20000,5000", *TRANSFORMER, "trainer.checkpoint_interval=100",
                       tmp=sweep_dir)
    d0, d1 = sweep_dir / "0", sweep_dir / "1"
    wait_for(lambda: len(checkpoints(d0)) >= 2 and len(checkpoints(d1)) >= 2, "both jobs' checkpoints", proc=proc)
    assert status(d0) is None and status(d1) is None, "a job finished before its signal: make the jobs longer"
    subprocess.run(["scontrol", "requeue", slurm_id(d0)], check=True)
    subprocess.run(["scancel", "--signal=USR2", slurm_id(d1)], check=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "sweep: 2 runs: 2 completed" in out
    for d in (d0, d1):
        sessions = meta(d)["sessions"]
        assert len(sessions) >= 2 and sessions[-1]["status"] == "completed", sessions
        n = steps[int(d.name)]
        assert sessions[1]["from_step"] < n
        got, ref = read_scalars(d), reference(d, tmp_path)
        assert [s for s, _ in got["train/loss"]] == list(range(n))  # no duplicated or missing step
        assert bits(got["train/loss"]) == bits(ref["train/loss"])
    assert meta(d0)["sessions"][0]["status"] == "killed"  # SIGTERM: a checkpoint; SLURM's SIGKILL ended it
    assert meta(d1)["sessions"][0]["status"] == "interrupted"  # USR2: checkpoint, then submitit requeued it
    logs = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.err"))
    assert "Caught signal SIGUSR2" in logs and "DUE TO JOB REQUEUE" in logs


def test_a_time_limit_shorter_than_the_training_is_crossed_by_requeues(tmp_path):
    """``--time=2`` with the warning 45 s before it: SLURM sends USR2 during the second minute
    (its checks run every 30 s, so up to 30 s early), the run checkpoints, submitit requeues it (a
    timeout, counted against max_num_timeout), and the requeued job carries it to the end; every
    step once. Bitwise resume is the test above; this one is about the time limit itself."""
    sweep_dir = tmp_path / "sweep"
    steps = 90000  # 170-350 s of training on one core (260-520 steps/s seen here): longer than a job's 2 min
    proc = sweep("seed=0", *TRANSFORMER, f"trainer.max_steps={steps}", "trainer.checkpoint_interval=1000",
                 "trainer.log_interval=100", "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=45",
                 "hydra.launcher.max_num_timeout=6", tmp=sweep_dir, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = sweep_dir / "0"
    assert status(d) == "completed"
    sessions = meta(d)["sessions"]
    assert len(sessions) >= 2 and all(s["status"] == "interrupted" for s in sessions[:-1]), sessions
    assert [s for s, _ in read_scalars(d)["train/loss"]] == list(range(steps))
    logs = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.err"))
    assert "this job is timed-out" in logs


def test_a_killed_submission_resumes_finished_jobs_skipped_others_continued(tmp_path):
    """The submitting process is killed (SIGKILL) while job 1 runs; its SLURM job outlives it. The
    same command with trainer.resume=true skips job 0 (finished), cancels the orphan job (which
    checkpoints on SIGTERM) and continues job 1 from its checkpoint in a new job."""
    sweep_dir = tmp_path / "sweep"
    # job 0: 20000 steps (~40 s at the ~500 steps/s this machine trains it: it must outlive the kill and
    # the resumed sweep's start-up until its cancellation; at 6000 steps it once finished first), job 1: 40
    args = ["trainer.max_steps=20000,40", *TRANSFORMER]
    proc = start_sweep("seed=0", *args, tmp=sweep_dir)
    d_long, d_short = sweep_dir / "0", sweep_dir / "1"
    wait_for(lambda: status(d_short) == "completed" and len(checkpoints(d_long)) >= 2, "a finished job and a "
             "checkpoint of the other", proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    orphan = slurm_id(d_long)
    assert subprocess.run(["squeue", "-h", "-j", orphan], capture_output=True, text=True).stdout.strip()
    again = sweep("seed=0", *args, "trainer.resume=true", tmp=sweep_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 finished (skipped), 1 to continue, 0 new" in again.stdout
    assert f"cancelling SLURM job(s) {orphan}" in again.stdout
    assert status(d_long) == "completed"
    assert slurm_id(d_long) != orphan, "the orphan job finished its run before it was cancelled: lengthen job 0"
    got, ref = read_scalars(d_long), reference(d_long, tmp_path)
    assert [s for s, _ in got["train/loss"]] == list(range(20000))
    assert bits(got["train/loss"]) == bits(ref["train/loss"])
    assert len(meta(d_short)["sessions"]) == 1  # the finished job was not run again
