"""Resources of one job in a parallel sweep: CPU threads and which GPU.

* Threads: joblib runs ``n_jobs`` jobs at once on this machine, so each gets
  ``cores // n_jobs`` torch threads (at least 1): jobs x threads <= cores. ``n_jobs`` follows
  joblib (-1 = one job per core, -2 = all cores but one, ...).
* GPUs: parallel jobs on one machine (joblib, submitit_local) with one GPU share it on purpose
  (a small model does not fill it); with several GPUs, job ``k`` gets GPU ``k mod n`` through
  ``CUDA_VISIBLE_DEVICES``. On SLURM the scheduler assigns GPUs (``gpus_per_node``), so jobs
  are left alone there, as are jobs whose ``trainer.device`` names a device.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

LOCAL_PARALLEL_LAUNCHERS = ("joblib", "submitit_local")


def cores() -> int:
    """CPUs this process may run on (the affinity mask: SLURM and cgroups restrict it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parallel_jobs(n_jobs, n_cores: int | None = None) -> int:
    """How many jobs joblib runs at once for ``n_jobs`` (its convention for negative values)."""
    n_cores = cores() if n_cores is None else n_cores
    if n_jobs is None or int(n_jobs) == 0:
        return 1
    n = int(n_jobs)
    return max(1, n_cores + 1 + n if n < 0 else n)


def threads_per_job(n_jobs, n_cores: int | None = None) -> int:
    n_cores = cores() if n_cores is None else n_cores
    return max(1, n_cores // parallel_jobs(n_jobs, n_cores))


def job_threads(launcher_cfg=None) -> int | None:
    """Torch threads for a job of the current Hydra launcher: joblib ``cores // n_jobs``,
    submitit ``cpus_per_task``; None (all cores) when there is no Hydra job or neither is set."""
    if launcher_cfg is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            if not HydraConfig.initialized():
                return None
            launcher_cfg = HydraConfig.get().launcher
        except Exception:  # noqa: BLE001
            return None
    if "n_jobs" in launcher_cfg:
        return threads_per_job(launcher_cfg["n_jobs"])
    cpus = launcher_cfg.get("cpus_per_task") if hasattr(launcher_cfg, "get") else None
    return int(cpus) if cpus else None


def gpu_count() -> int:
    """GPUs visible here, counted without initialising CUDA (so CUDA_VISIBLE_DEVICES can still
    be narrowed afterwards in this process)."""
    try:
        import torch

        return torch.cuda.device_count()  # NVML-based before CUDA is initialised
    except Exception:  # noqa: BLE001
        return 0


def visible_gpus(env: dict | None = None, count: int | None = None) -> list[str]:
    """The GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else 0..count-1."""
    env = os.environ if env is None else env
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        return [v.strip() for v in value.split(",") if v.strip() and v.strip() != "-1"]
    return [str(i) for i in range(gpu_count() if count is None else count)]


def gpu_for_job(job_num: int, visible: list[str]) -> str | None:
    """The GPU of job ``job_num``, or None when there is at most one (then jobs share it)."""
    if len(visible) <= 1:
        return None
    return visible[int(job_num) % len(visible)]


def assign_gpu(job_num: int, launcher: str | None, device: str, env: dict | None = None) -> str | None:
    """Narrow ``CUDA_VISIBLE_DEVICES`` to this job's GPU for local parallel launchers; returns
    the GPU id set, or None when nothing was changed."""
    env = os.environ if env is None else env
    if launcher not in LOCAL_PARALLEL_LAUNCHERS or str(device) not in ("auto", "cuda"):
        return None
    gpu = gpu_for_job(job_num, visible_gpus(env))
    if gpu is None:
        return None
    try:
        import torch

        if torch.cuda.is_initialized():  # a reused joblib worker keeps the GPU it started with
            log.info("job %s: CUDA already initialised in this worker; keeping its GPU", job_num)
            return None
    except Exception:  # noqa: BLE001
        pass
    env["CUDA_VISIBLE_DEVICES"] = gpu
    log.info("job %s: CUDA_VISIBLE_DEVICES=%s", job_num, gpu)
    return gpu
