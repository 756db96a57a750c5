"""warmup-lab: test claims about learning-rate warmup with seeds, numbers and intervals."""

import os

from omegaconf import OmegaConf

# ${wl_pid:} in run directory names keeps two runs started in the same microsecond apart.
OmegaConf.register_new_resolver("wl_pid", lambda: str(os.getpid()), use_cache=True, replace=True)
# ${wl_mul:a,b} = a * b rounded to 12 significant digits (experiment presets: per-optimizer lr
# grids as base lr x a swept multiplier, without float noise such as 0.30000000000000004).
OmegaConf.register_new_resolver("wl_mul", lambda a, b: float(f"{float(a) * float(b):.12g}"),
                                replace=True)
# ${wl_job_threads:} (conf/launcher/*.yaml): torch threads of a job from the Hydra launcher config
# (joblib: cores // n_jobs, submitit: cpus_per_task; null outside a Hydra job, e.g. when a saved
# config is read back); ${wl_gpu_count:} (conf/launcher/submitit_local.yaml).
OmegaConf.register_new_resolver("wl_job_threads", lambda: _launch().job_threads(), replace=True)
OmegaConf.register_new_resolver("wl_gpu_count", lambda: _launch().gpu_count(), use_cache=True,
                                replace=True)


def _launch():
    from warmup_lab.sweeps import launch  # noqa: PLC0415 (imported on use: no torch import at package import)

    return launch


__version__ = "0.1.0"
