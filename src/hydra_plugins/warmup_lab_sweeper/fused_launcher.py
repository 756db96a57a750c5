"""``hydra/launcher: fused`` (``launcher=fused``) -- many runs per device: the jobs of a sweep that
differ only in their seed, optimizer and schedule (:mod:`warmup_lab.sweeps.grouping`) train
together, up to ``max_runs`` at a time, through one Trainer
(:func:`warmup_lab.runs.run.run_group`, the entry a run alone goes through with K = 1), and
each job's directory is written as if it had run alone, so the sweep's analysis reads them like
any other runs.

Every job gets Hydra's own job set-up (its directory, ``.hydra/``, the job log). Jobs that cannot
share a group (an invalid config, the curvature probe, a directory that holds a checkpoint of a
run alone to continue) and groups of one run one after another through the task function, as
with ``launcher=basic``. A fused group that raises is recorded as failed for each of
its jobs and the sweep goes on. SIGTERM/SIGINT end the current group after its current step with
a checkpoint (running runs ``interrupted``, logs flushed) and stop the sweep, as the basic
launcher does; resumed (``trainer.resume=true``), the same group continues from it.
See docs/sweeps.md.
"""

import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.warmup_lab_sweeper.fused_launcher.FusedLauncher"
    max_runs: int = 8   # runs trained together at most (K)


ConfigStore.instance().store(group="hydra/launcher", name="fused", node=FusedLauncherConf,
                             provider="warmup_lab")


def _collect(task_cfg: DictConfig) -> dict:
    """A task function that trains nothing: the job's config and directory, after Hydra's job
    set-up (the fused group trains once all its jobs are set up)."""
    return {"cfg": task_cfg, "run_dir": HydraConfig.get().runtime.output_dir}


def _alone_reason(cfg: DictConfig, run_dir: Path) -> Optional[str]:
    from warmup_lab.runs.checkpoint import FOLDER
    from warmup_lab.sweeps.grouping import fusable
    from warmup_lab.runs.validate import ConfigError, validate

    try:
        validate(cfg)
    except ConfigError as err:
        return str(err)
    if any((run_dir / FOLDER).glob("*")):
        return "its directory holds a checkpoint to continue from"
    return fusable(cfg)


class FusedLauncher(Launcher):
    def __init__(self, max_runs: int = 8) -> None:
        super().__init__()
        if int(max_runs) < 1:
            raise ValueError(f"hydra.launcher.max_runs={max_runs} is invalid: must be >= 1")
        self.max_runs = int(max_runs)
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _sweep_config(self, overrides: Sequence[str], idx: int) -> DictConfig:
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        return cfg

    def _run_job(self, sweep_config: DictConfig, task_function: TaskFunction) -> JobReturn:
        ret = run_job(hydra_context=self.hydra_context, task_function=task_function, config=sweep_config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from warmup_lab.sweeps.grouping import fused_groups

        setup_globals()
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs, fused up to {self.max_runs} at a time")
        sweep_cfgs, setups, alone = [], [], {}
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_cfgs.append(self._sweep_config(overrides, idx))
            ret = self._run_job(sweep_cfgs[-1], _collect)  # directory, .hydra/, job log
            setups.append(ret)
            if ret.status != JobStatus.COMPLETED:
                alone[i] = "its set-up failed"
                continue
            reason = _alone_reason(ret.return_value["cfg"], Path(ret.return_value["run_dir"]))
            if reason is not None:
                alone[i] = reason
        fusable_idx = [i for i in range(len(setups)) if i not in alone]
        groups = [[fusable_idx[j] for j in g]
                  for g in fused_groups([setups[i].return_value["cfg"] for i in fusable_idx], self.max_runs)]
        groups += [[i] for i in alone]
        results: List[Any] = [None] * len(setups)
        for group in sorted(groups):
            if len(group) == 1:
                i = group[0]
                if i in alone:
                    log.info(f"#{initial_job_idx + i} runs alone: {alone[i]}")
                results[i] = self._run_job(sweep_cfgs[i], self.task_function)
                continue
            self._run_group(group, setups, initial_job_idx)
            for i in group:
                results[i] = setups[i]
        return results

    def _run_group(self, group: List[int], setups: List[JobReturn], initial_job_idx: int) -> None:
        """Train ``group`` fused; fills each job's JobReturn (metrics, or the error)."""
        from warmup_lab.runs.run import run_group

        cfgs = [setups[i].return_value["cfg"] for i in group]
        dirs = [setups[i].return_value["run_dir"] for i in group]
        log.info(f"jobs {', '.join(f'#{initial_job_idx + i}' for i in group)}: {len(group)} runs fused")
        try:
            metrics = run_group(cfgs, dirs, in_sweep=True)
        except Exception as err:  # recorded per job by the sweeper (error.txt, status failed)
            log.error(f"fused group failed: {type(err).__name__}: {err}")
            for i in group:
                setups[i].status, setups[i].return_value = JobStatus.FAILED, err
            return
        for i, m in zip(group, metrics):
            setups[i].status, setups[i].return_value = JobStatus.COMPLETED, m
        stopped = [m for m in metrics if m.get("status") == "interrupted"]
        if stopped:
            name = stopped[0].get("interrupted_by") or "SIGTERM"
            print(f"interrupted by {name}: {len(stopped)} fused run(s) stopped at step "
                  f"{stopped[0].get('steps')} with a checkpoint; continue: the same command with "
                  f"hydra.sweep.dir={self.config.hydra.sweep.dir} trainer.resume=true", file=sys.stderr)
            sys.exit(128 + signal.Signals[name].value)
