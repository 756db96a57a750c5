"""Launchers (basic, joblib, submitit), resumable sweeps and failure isolation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF, ROOT, read_scalars, start_until
from warmup_lab.sweeps import launch
from warmup_lab.sweeps.jobs import format_summary, override_key, plan_resume, summarize

SMALL = ["trainer.progress=false", "trainer.max_steps=8", "trainer.eval_interval=4",
         "trainer.log_interval=4", "trainer.batch_size=16", "trainer.device=cpu"]
ONE_THREAD = "trainer.threads=1"  # the joblib and submitit tests leave threads to the preset


def sweep(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def metrics(d: Path) -> dict:
    return json.loads((d / "metrics.json").read_text())


# -- resources per job ----------------------------------------------------------------------------
def test_threads_per_job_keep_jobs_times_threads_within_the_cores():
    assert launch.threads_per_job(-1, n_cores=16) == 1
    assert launch.threads_per_job(4, n_cores=16) == 4
    assert launch.threads_per_job(3, n_cores=16) == 5
    assert launch.threads_per_job(-2, n_cores=16) == 1
    assert launch.threads_per_job(32, n_cores=16) == 1
    for n in (-1, 1, 2, 3, 5, 8):
        assert launch.parallel_jobs(n, 8) * launch.threads_per_job(n, 8) <= 8
    # ${wl_job_threads:} from the launcher config of the running job (none outside Hydra)
    assert launch.job_threads({"n_jobs": 1}) == launch.cores()
    assert launch.job_threads({"cpus_per_task": 3, "gpus_per_node": 1}) == 3
    assert launch.job_threads({"_target_": "BasicLauncher"}) is None
    assert launch.job_threads() is None


def test_one_gpu_is_shared_several_are_spread_over_the_jobs():
    assert launch.gpu_for_job(5, ["0"]) is None  # one GPU: every job uses it
    assert launch.gpu_for_job(5, []) is None
    assert [launch.gpu_for_job(k, ["0", "1", "2"]) for k in range(5)] == ["0", "1", "2", "0", "1"]
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert launch.assign_gpu(3, "joblib", "auto", env) == "3" and env["CUDA_VISIBLE_DEVICES"] == "3"
    env = {"CUDA_VISIBLE_DEVICES": "3"}  # a reused worker already narrowed: left as it is
    assert launch.assign_gpu(4, "joblib", "auto", env) is None and env["CUDA_VISIBLE_DEVICES"] == "3"
    for launcher, device in (("submitit_slurm", "auto"), ("basic", "auto"), ("joblib", "cuda:1")):
        env = {"CUDA_VISIBLE_DEVICES": "0,1"}  # SLURM assigns GPUs; an explicit device is kept
        assert launch.assign_gpu(1, launcher, device, env) is None and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert launch.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def _hydra_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("name,target", [
    ("basic", "basic_launcher.BasicLauncher"), ("joblib", "joblib_launcher.JoblibLauncher"),
    ("submitit_local", "submitit_launcher.LocalLauncher"), ("slurm", "submitit_launcher.SlurmLauncher"),
    ("fused", "fused_launcher.FusedLauncher")])
def test_launcher_group_selects_the_hydra_launcher(name, target):
    cfg = _hydra_cfg(f"launcher={name}")
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.sweeper._target_.endswith("ResumableSweeper")
    assert cfg.hydra.runtime.choices["hydra/launcher"] == ("basic" if name == "basic" else
                                                           "submitit_slurm" if name == "slurm" else name)


def test_slurm_launcher_renders_the_sbatch_script(tmp_path, monkeypatch):
    """The slurm preset as submitit turns it into an sbatch file (a fake `srun` on PATH)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cfg = _hydra_cfg("launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2")
    params = {k: v for k, v in OmegaConf.to_container(cfg.hydra.launcher).items()
              if k not in ("_target_", "submitit_folder", "max_num_timeout")}
    params["name"] = "train"
    executor = submitit.AutoExecutor(folder=tmp_path / "s", cluster="slurm", slurm_max_num_timeout=3)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    text = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in ("--partition=gpu", "--time=240", "--cpus-per-task=2", "--gpus-per-node=2", "--mem=8GB",
                 "--requeue", "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in text
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    try:
        assert cfg.trainer.threads == 2  # = cpus_per_task
    finally:
        HydraConfig.instance().cfg = None


# -- sweep bookkeeping ----------------------------------------------------------------------------
def test_a_run_is_identified_by_its_overrides_not_their_order_or_spelling():
    a = override_key(["seed=0", "optimizer=sgd", "optimizer.lr=1e-1", "trainer.resume=true",
                      "trainer.progress=False", "launcher=joblib"])
    b = override_key(["optimizer.lr=0.1", "+seed=0", "optimizer=sgd"])
    assert a == b == ("optimizer.lr=0.1", "optimizer=sgd", "seed=0")
    assert override_key(["seed=1", "optimizer=sgd"]) != b


def _job(sweep_dir: Path, sub: str, overrides: list[str], status: str | None) -> None:
    d = sweep_dir / sub
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    if status:
        (d / "metrics.json").write_text(json.dumps({"status": status}))


def test_resume_plan_skips_finished_continues_the_rest_and_numbers_new_jobs(tmp_path):
    _job(tmp_path, "0", ["seed=0"], "completed")
    _job(tmp_path, "1", ["seed=1"], "diverged")
    _job(tmp_path, "2", ["seed=2"], "interrupted")
    _job(tmp_path, "3", ["seed=3"], "failed")
    _job(tmp_path, "4", ["seed=4"], None)  # killed before writing metrics.json
    (tmp_path / ".submitit" / "x" / ".hydra").mkdir(parents=True)
    jobs = [[f"seed={s}", "trainer.resume=true"] for s in (5, 4, 3, 2, 1, 0, 6)]
    plan = plan_resume(jobs, tmp_path)
    assert [(p["action"], p["subdir"]) for p in plan] == [
        ("new", "5"), ("continue", "4"), ("continue", "3"), ("continue", "2"), ("skip", "1"),
        ("skip", "0"), ("new", "6")]


def test_summary_counts_statuses_per_arm():
    records = [{"dir": f"d{i}", "overrides": [f"optimizer={o}", f"seed={s}", "trainer.max_steps=8"],
                "status": st} for i, (o, s, st) in enumerate(
        [("sgd", 0, "completed"), ("sgd", 1, "completed"), ("adamw", 0, "diverged"),
         ("adamw", 1, "failed")])]
    summary = summarize(records)
    assert summary["arms"] == {"optimizer=sgd": {"completed": 2},
                               "optimizer=adamw": {"diverged": 1, "failed": 1}}
    assert summary["counts"] == {"completed": 2, "diverged": 1, "failed": 1} and summary["failed"] == ["d3"]
    lines = format_summary(summary)
    assert lines[0] == "sweep: 4 runs: 2 completed, 1 diverged, 1 failed"
    assert "  optimizer=adamw: 1 diverged, 1 failed" in lines and lines[-1].endswith("d3")


def test_an_existing_sweep_dir_is_not_overwritten_without_the_flag(tmp_path):
    from hydra.errors import HydraException
    from hydra_plugins.warmup_lab_sweeper.resumable_sweeper import ResumableSweeper

    _job(tmp_path, "0", ["seed=0"], "completed")
    sweeper = ResumableSweeper()
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}},
                                       "trainer": {"resume": False}})
    sweeper.launcher = object()
    sweeper.hydra_context = type("Ctx", (), {"config_loader": None})()
    with pytest.raises(HydraException, match="add trainer.resume=true"):
        sweeper.sweep(["seed=0,1"])


# -- end to end -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_four_job_sweep_through_joblib(tmp_path):
    proc = sweep("launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2,3",
                 f"hydra.sweep.dir={tmp_path}", *SMALL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: 4 runs: 4 completed" in proc.stdout
    for job in range(4):
        d = tmp_path / str(job)
        assert metrics(d)["status"] == "completed"
        assert [s for s, _ in read_scalars(d)["train/loss"]] == list(range(8))
        assert (d / "checkpoints" / "step_000000008.pt").exists()
        meta = json.loads((d / "run_meta.json").read_text())
        assert meta["launcher"] == "joblib" and f"seed={job}" in meta["overrides"]
        assert meta["threads"] == launch.threads_per_job(2)  # 2 jobs x threads <= cores
        saved = OmegaConf.load(d / ".hydra" / "config.yaml")  # readable offline (the analysis)
        assert OmegaConf.to_container(saved, resolve=True)["trainer"]["threads"] is None
    assert json.loads((tmp_path / "sweep_status.json").read_text())["counts"] == {"completed": 4}


@pytest.mark.slow
def test_two_job_sweep_through_submitit_local_with_a_preemption(tmp_path):
    """Both jobs run under submitit, each in its own process. Job 1 gets submitit's preemption
    signal (USR2, what SLURM sends before a preemption or the time limit) mid-run: it finishes the
    step, checkpoints, submitit requeues it and the new process continues in the same directory."""
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "launcher=submitit_local", "seed=0,1",
           f"hydra.sweep.dir={tmp_path}", "trainer.progress=false", "trainer.batch_size=16",
           "trainer.device=cpu", "model=transformer", "model.n_layers=1", "model.d_model=32",
           "model.n_heads=2", "trainer.max_steps=400", "trainer.checkpoint_interval=25",
           "trainer.eval_interval=200", "trainer.log_interval=10"]
    proc = start_until(cmd, tmp_path, tmp_path, "1/checkpoints/step_*.pt")
    os.kill(json.loads((tmp_path / "1" / "run_meta.json").read_text())["pid"], signal.SIGUSR2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "sweep: 2 runs: 2 completed" in out
    sessions = {}
    for job in range(2):
        d = tmp_path / str(job)
        assert metrics(d)["status"] == "completed"
        meta = json.loads((d / "run_meta.json").read_text())
        assert meta["submitit_executor"] == "local" and meta["threads"] == 1  # cpus_per_task
        sessions[job] = meta["sessions"]
        assert [s for s, _ in read_scalars(d)["train/loss"]] == list(range(400))
    assert [s["status"] for s in sessions[0]] == ["completed"]
    first, second = sessions[1]
    assert first["status"] == "interrupted" and 25 <= first["to_step"] == second["from_step"] < 400
    logs = "".join(p.read_text() for p in tmp_path.glob(".submitit/*/*_log.err"))
    assert "Caught signal SIGUSR2" in logs and "this job is preempted" in logs


@pytest.mark.slow
def test_failing_job_is_isolated_and_a_partly_finished_sweep_resumes(tmp_path):
    """Sweep 1: 4 jobs, the two with an impossible batch size fail on purpose; the others finish
    and the command exits 0 with a summary. Then one finished job is made to look killed after
    its step-6 checkpoint. Sweep 2 lists its values in another order, drops the failing arm and
    adds a seed: the finished run is skipped, the killed one continues in its own directory
    (same losses as before, no duplicated steps) and the new one gets a new directory."""
    args = [a for a in SMALL if not a.startswith("trainer.batch_size=")]
    args += [ONE_THREAD, "trainer.checkpoint_interval=3", f"hydra.sweep.dir={tmp_path}"]
    proc = sweep("seed=0,1", "trainer.batch_size=16,5000", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: 4 runs: 2 completed, 2 failed" in proc.stdout
    assert "  trainer.batch_size=5000: 2 failed" in proc.stdout
    for job, status in (("0", "completed"), ("1", "failed"), ("2", "completed"), ("3", "failed")):
        assert metrics(tmp_path / job)["status"] == status
    error = (tmp_path / "1" / "error.txt").read_text()
    assert "Traceback" in error and "ConfigError: trainer.batch_size=5000 is invalid" in error
    status = json.loads((tmp_path / "sweep_status.json").read_text())
    assert status["arms"]["trainer.batch_size=5000"] == {"failed": 2}

    killed = tmp_path / "2"  # seed=1, batch 16
    losses = read_scalars(killed)["train/loss"]
    (killed / "metrics.json").unlink()
    (killed / "checkpoints" / "step_000000008.pt").unlink()
    done_mtime = (tmp_path / "0" / "metrics.json").stat().st_mtime_ns

    proc = sweep("seed=2,1,0", "trainer.batch_size=16", "trainer.resume=true", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 finished (skipped), 1 to continue, 1 new" in proc.stdout
    assert "sweep: 3 runs: 3 completed (1 finished earlier, skipped)" in proc.stdout
    assert (tmp_path / "0" / "metrics.json").stat().st_mtime_ns == done_mtime
    resumed = metrics(killed)
    assert resumed["status"] == "completed" and resumed["resumed_from_step"] == 6
    assert read_scalars(killed)["train/loss"] == losses  # no step duplicated or missing
    assert len(list(killed.glob("events.out.tfevents.*"))) == 2
    new = tmp_path / "4"
    assert metrics(new)["status"] == "completed" and "seed=2" in (new / ".hydra" / "overrides.yaml").read_text()
    assert metrics(tmp_path / "1")["status"] == "failed"  # not part of the second sweep: untouched
