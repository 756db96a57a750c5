"""``hydra/sweeper: resumable`` -- Hydra's basic sweeper (same grid syntax, same launchers) plus:

* **resume**: with ``trainer.resume=true`` and ``hydra.sweep.dir=<an earlier sweep>``, jobs are
  matched to that sweep's job directories by their overrides (not their job numbers): finished
  runs (completed, diverged) are skipped, others (interrupted, failed, killed) run again in
  their own directory and continue from their last checkpoint, new ones get new directories.
  Without the flag an existing sweep directory with jobs in it is refused, not overwritten.
* **run until decided** (``study.max_seeds``, :mod:`warmup_lab.sweeps.study`): the sweep's seed list
  is the first round; after each round the claim is judged with a sequential design, and while a
  primary part is undecided a round of unused seeds runs, until every part is decided, the seeds
  reach ``study.max_seeds`` or the next round would pass ``study.budget_minutes``;
* **progress**: one live line (runs done of planned, elapsed, ETA) for any launcher;
* **failure isolation**: a job that fails is recorded (``status: failed`` and ``error.txt`` in
  its directory) and the sweep goes on; the end prints a summary (statuses overall and per arm)
  and writes ``sweep_status.json``. The exit code is 0 unless ``hydra.sweeper.fail_on_error=true``
  and a job failed.

See docs/sweeps.md. The class must live under ``hydra_plugins`` for Hydra to load it.
"""

import logging
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import OmegaConf

from warmup_lab.runs.progress import SweepProgress
from warmup_lab.runs.rundir import RunDir
from warmup_lab.runs.runinfo import write_json
from warmup_lab.runs.tb import view_hint, write_sweep_experiment
from warmup_lab.sweeps.jobs import (IGNORED_OVERRIDES, SweepStop, format_summary, job_dirs, plan_resume, release_slurm_jobs,
                               run_status, summarize)

log = logging.getLogger(__name__)


@dataclass
class ResumableSweeperConf:
    _target_: str = "hydra_plugins.warmup_lab_sweeper.resumable_sweeper.ResumableSweeper"
    max_batch_size: Optional[int] = None   # jobs handed to the launcher at a time; null = all
    params: Optional[Dict[str, str]] = None
    fail_on_error: bool = False            # exit 1 at the end when a job failed (all jobs still run)
    ignore_overrides: List[str] = field(default_factory=lambda: list(IGNORED_OVERRIDES))
    arm_ignore: List[str] = field(default_factory=lambda: ["seed"])  # summary: runs of one arm


ConfigStore.instance().store(group="hydra/sweeper", name="resumable", node=ResumableSweeperConf,
                             provider="warmup_lab")


class ResumableSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 fail_on_error: bool = False, ignore_overrides=IGNORED_OVERRIDES,
                 arm_ignore=("seed",)) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self._job_idx = 0
        self.fail_on_error = bool(fail_on_error)
        self.ignore_overrides = tuple(ignore_overrides)
        self.arm_ignore = tuple(arm_ignore)

    def sweep(self, arguments: List[str]) -> Any:
        # imported here, not at the top: Hydra imports this module to find its plugins in every
        # run, and the claims (warmup_lab.analysis) are a sweep's business (docs/performance.md)
        from warmup_lab.analysis.claimspec import ClaimError
        from warmup_lab.sweeps.study import Study

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = self.split_arguments(parser.parse_overrides(params_conf), None)[0]

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        resume = bool(OmegaConf.select(self.config, "trainer.resume", default=False))
        study = Study.from_config(self.config, jobs)  # a bad claim or design: one line, exit 2
        earlier = job_dirs(sweep_dir)
        if earlier and not resume:
            raise HydraException(
                f"{sweep_dir} already holds {len(earlier)} job directories: add trainer.resume=true "
                f"to continue that sweep (finished runs are skipped, the others continue from their "
                f"checkpoints), or choose another hydra.sweep.dir")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        records: List[dict] = []
        returns: List[List[JobReturn]] = []
        look, error = 0, None
        with SweepStop(sweep_dir) as stopper:
            while True:
                round_jobs = jobs if look == 0 else study.round_jobs(look)
                t0 = time.monotonic()
                self._run_round(round_jobs, sweep_dir, resume or look > 0, records, returns,
                                prefix=study.progress_prefix(look), total=study.max_jobs)
                if not study.sequential or stopper.stopped is not None:
                    break
                try:
                    stop = study.after_round(look, time.monotonic() - t0, sweep_dir)
                except ClaimError as err:
                    error = str(err)
                    break
                if stop:
                    break
                look += 1
            if stopper.stopped is not None:
                stopper.finish()

        summary = summarize(records, self.ignore_overrides, self.arm_ignore)
        summary["sweep_dir"] = str(sweep_dir)
        write_json(sweep_dir / "sweep_status.json", summary)
        try:  # one HParams experiment for the sweep: its swept keys first, typed (tb.py)
            write_sweep_experiment(sweep_dir, job_dirs(sweep_dir))
        except Exception as err:  # noqa: BLE001 - the dashboard's column order is not worth a failed sweep
            log.warning("could not write the sweep's HParams experiment: %s", err)
        skipped = sum(r.get("action") == "skip" for r in records)
        for line in format_summary(summary, skipped):
            print(line, flush=True)
        print(f"sweep directory: {sweep_dir}\n"
              f"judge it: make analyze SWEEP={sweep_dir}   (or .venv/bin/python scripts/analyze.py {sweep_dir})\n"
              + view_hint(sweep_dir), flush=True)
        if stopper.signum is not None:
            name = signal.Signals(stopper.signum).name
            print(f"sweep stopped by {name}; continue it with the same command plus trainer.resume=true "
                  f"(hydra.sweep.dir={sweep_dir})", file=sys.stderr, flush=True)
            sys.exit(128 + stopper.signum)
        if error is not None:
            print(f"error: {error}", file=sys.stderr, flush=True)
            sys.exit(2)
        if records and all(r["status"] == "failed" for r in records):
            print(f"error: every job of the sweep failed ({len(records)}): see error.txt in {sweep_dir}/*/",
                  file=sys.stderr, flush=True)
            sys.exit(1)
        if summary["failed"] and self.fail_on_error:
            raise HydraException(f"{len(summary['failed'])} run(s) failed (hydra.sweeper.fail_on_error=true)")
        return returns

    def _run_round(self, jobs: list, sweep_dir: Path, resume: bool, records: list, returns: list,
                   prefix: str, total: Optional[int]) -> None:
        """Launch one round's jobs (a fixed sweep is one round): finished ones are skipped on
        resume, the rest run through the launcher under one live progress line."""
        if resume and job_dirs(sweep_dir):
            plan = plan_resume(jobs, sweep_dir, self.ignore_overrides)
        else:
            plan = [{"overrides": list(j), "subdir": None, "action": "new", "status": None} for j in jobs]
        done = [{"dir": str(sweep_dir / p["subdir"]), "overrides": p["overrides"],
                 "status": p["status"], "action": "skip"} for p in plan if p["action"] == "skip"]
        records.extend(done)
        todo = [p for p in plan if p["action"] != "skip"]
        if resume and any(p["action"] != "new" for p in plan):
            n_cont = sum(p["action"] == "continue" for p in todo)
            print(f"resuming sweep {sweep_dir}: {len(done)} finished (skipped), {n_cont} to "
                  f"continue, {len(todo) - n_cont} new", flush=True)
        if resume and type(self.launcher).__name__ == "SlurmLauncher":  # jobs of a killed submission
            release_slurm_jobs([sweep_dir / p["subdir"] for p in todo if p["action"] == "continue"])
        batch_jobs = [p["overrides"] + ([f"hydra.sweep.subdir={p['subdir']}"] if p["subdir"] else [])
                      for p in todo]
        with SweepProgress(sweep_dir, len(plan), len(done), prefix, total_planned=total):
            for batch_plan, batch in zip(self._chunks(todo), self._chunks(batch_jobs)):
                self.validate_batch_is_legal(batch)
                results = self.launcher.launch(batch, initial_job_idx=self._job_idx)
                self._job_idx += len(batch)
                returns.append(list(results))
                for p, r in zip(batch_plan, results):
                    records.append(self._record(p, r))

    def _chunks(self, items: list) -> list[list]:
        n = self.max_batch_size or len(items) or 1
        return [items[i : i + n] for i in range(0, len(items), n)]

    @staticmethod
    def _record(plan: dict, r: JobReturn) -> dict:
        """The job's status; an exception that escaped the task (not caught by train.py) is
        written to the job's error.txt / metrics.json here, so it is never lost."""
        run_dir = None
        if r.hydra_cfg is not None:
            run_dir = OmegaConf.select(r.hydra_cfg, "hydra.runtime.output_dir")
        if r.status == JobStatus.COMPLETED and isinstance(r._return_value, dict):
            status = r._return_value.get("status") or (run_status(Path(run_dir)) if run_dir else "unfinished")
        elif r.status == JobStatus.COMPLETED:
            status = run_status(Path(run_dir)) if run_dir else "unfinished"
        else:
            status = "failed"
            err = r._return_value
            text = ("".join(traceback.format_exception(type(err), err, err.__traceback__))
                    if isinstance(err, BaseException) else str(err))
            log.error("job %s failed: %s", r.overrides, text.strip().splitlines()[-1] if text.strip() else "")
            if run_dir and run_status(Path(run_dir)) != "failed":  # train.py's own record, if any, stays
                # atomic, and never over a finished run's record (a crash after it finished)
                status = RunDir(run_dir).record_failure(f"{type(err).__name__}: {err}", text)["status"]
        return {"dir": str(run_dir), "overrides": list(plan["overrides"]), "status": status,
                "action": plan["action"]}
