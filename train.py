"""Train one model from Hydra config: `python train.py [group=option ...] [key=value ...]`."""

import gc

if __name__ == "__main__":
    gc.disable()  # no collections while torch and Hydra start (warmup_lab.runs.process)

import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

import warmup_lab  # noqa: F401  (registers config resolvers)
from warmup_lab.runs.checkpoint import CheckpointError
from warmup_lab.runs.cli import check_command_line
from warmup_lab.runs.process import compose_once
from warmup_lab.sweeps.launch import assign_gpu
from warmup_lab.runs.run import record_failure, run
from warmup_lab.runs.rundir import DiskFull, RunDirBusy
from warmup_lab.sweeps.jobs import latest_run, request_stop, stop_requested
from warmup_lab.runs.tb import view_hint
from warmup_lab.runs.validate import ConfigError


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> dict:
    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun and stop_requested(hc.sweep.dir):  # the sweep was stopped: do not start (resume runs it)
        return {"status": "interrupted", "not_started": True, "run_dir": str(run_dir)}
    if multirun:  # parallel jobs on one machine with several GPUs: one GPU each (launch.py)
        assign_gpu(hc.job.num, hc.runtime.choices.get("hydra/launcher"), cfg.trainer.device)
        with open_dict(cfg):  # the sweep shows one progress line; no bar per run
            cfg.trainer.progress = False
    elif cfg.trainer.resume:
        run_dir = resume_dir(cfg, hc, run_dir)
    try:
        metrics = run(cfg, run_dir, in_sweep=multirun)
    except RunDirBusy as err:  # another writer owns the directory: write nothing into it
        print(f"error: {err}", file=sys.stderr)
        if multirun:
            return {"status": "failed", "error": str(err), "run_dir": str(run_dir)}
        sys.exit(2)
    except DiskFull as err:  # run() recorded status failed with the reason in metrics.json
        print(f"error: {err.strerror}", file=sys.stderr)
        if multirun:
            return {"status": "failed", "error": err.strerror, "run_dir": str(run_dir)}
        sys.exit(1)
    except (ConfigError, CheckpointError) as err:
        if multirun:  # one bad job does not stop the sweep (docs/sweeps.md)
            print(f"error: {err}", file=sys.stderr)
            return record_failure(run_dir, err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        if multirun:  # run() wrote error.txt (traceback) and metrics.json (status: failed)
            print(f"error: job failed ({type(err).__name__}: {err}); traceback in {run_dir}/error.txt",
                  file=sys.stderr)
            return {"status": "failed", "error": f"{type(err).__name__}: {err}", "run_dir": str(run_dir)}
        raise
    if metrics["status"] == "interrupted":
        name = metrics.get("interrupted_by") or "SIGTERM"
        print(f"interrupted by {name} at step {metrics['steps']}; checkpoint in {run_dir}/checkpoints\n"
              f"continue: the same command with hydra.run.dir={run_dir} (or trainer.resume=true; a "
              f"sweep: -m ... hydra.sweep.dir=<its dir> trainer.resume=true)", file=sys.stderr)
        if not multirun:
            sys.exit(128 + signal.Signals[name].value)
        if hc.runtime.choices.get("hydra/launcher") in ("basic", "fused"):  # the signal was for the sweep:
            request_stop(hc.sweep.dir, name)  # the next jobs do not start; the sweeper exits 128 + signal
        return metrics  # a worker of a parallel launcher: recorded, the launcher decides
    acc, loss = metrics.get("final_val_acc"), metrics.get("final_val_loss")
    if multirun:  # the sweep prints one progress line and a summary, not one block per run
        return metrics
    print(f"{metrics['status']}: {metrics['steps']} steps"
          + (f", val loss {loss:.4f}" if loss is not None else "") + (f", val acc {acc:.4f}" if acc is not None else "")
          + f", {metrics.get('wall_time_s', 0):.1f} s\nrun directory: {run_dir} (train.log, metrics.json, events)"
          + "\n" + view_hint(run_dir))
    return metrics


def resume_dir(cfg: DictConfig, hc, fresh_dir: str) -> str:
    """``trainer.resume=true`` in a single run: the latest earlier run under
    ``<output_root>/runs`` with the same overrides (ignoring the flag itself), or ``fresh_dir``
    when there is none. A directory given with ``hydra.run.dir`` continues on its own."""
    if (Path(fresh_dir) / "checkpoints").is_dir() or (Path(fresh_dir) / "metrics.json").exists():
        return fresh_dir
    runs = Path(cfg.paths.output_root) / "runs"
    dirs = [p.parent.parent for p in runs.glob("*/*/.hydra/overrides.yaml")
            if not (p.parent.parent / "resumed_in.txt").exists()]
    found = latest_run(dirs, list(hc.overrides.task), exclude=Path(fresh_dir))
    if found is None:
        print(f"trainer.resume=true: no earlier run with these overrides under {runs}; starting one",
              file=sys.stderr)
        return fresh_dir
    print(f"trainer.resume=true: continuing {found} (this session's Hydra log: {fresh_dir})",
          file=sys.stderr)
    (Path(fresh_dir) / "resumed_in.txt").write_text(f"{found}\n")
    return str(found)


if __name__ == "__main__":
    try:  # a typo in an override: one line and exit 2, before Hydra composes anything
        check_command_line(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    compose_once(sys.argv[1:])  # Hydra reads hydra.mode without composing the config a second time
    main()
