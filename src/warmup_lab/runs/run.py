"""One training run from a composed config: validate, build, train, record."""

from __future__ import annotations

import errno
import logging
import os
import random
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from warmup_lab.runs.checkpoint import FOLDER as CHECKPOINTS, CheckpointError, load_latest
from warmup_lab.runs.identity import digest as identity_digest, identity_diff, run_identity
from warmup_lab.runs.checkpoint import save as save_checkpoint
from warmup_lab.engine import fastpath
from warmup_lab.engine.optim import build_optimizer
from warmup_lab.runs.rundir import (DiskFull, DiskReserve, RunDir, RunDirLock, disk_full, disk_full_text, remove_orphan_temp_files,
                     set_aside_dead_session)
from warmup_lab.runs.runinfo import now, run_metadata
from warmup_lab.runs.signals import GracefulStop
from warmup_lab.sweeps.jobs import FINISHED
from warmup_lab.runs.tb import RunWriter, flat_hparams
from warmup_lab.engine.trainer import Trainer
from warmup_lab.runs.validate import ConfigError, check_schedule, validate

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def setup_process(tr: DictConfig) -> torch.device:
    """``trainer.threads`` (null: all cores), ``trainer.deterministic`` and ``trainer.device``
    applied to this process; returns the device."""
    torch.set_num_threads(tr.threads or os.cpu_count() or 1)
    if tr.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    return resolve_device(tr.device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def total_steps(cfg: DictConfig, steps_per_epoch: int) -> int:
    """``trainer.max_steps``, or ``trainer.epochs`` times the steps in one epoch."""
    if cfg.trainer.max_steps is not None:
        return int(cfg.trainer.max_steps)
    return int(cfg.trainer.epochs) * steps_per_epoch


def run(cfg: DictConfig, run_dir: str | Path, in_sweep: bool = False) -> dict:
    """Train once and write ``metrics.json``, ``run_meta.json`` and TensorBoard events into
    ``run_dir``. Returns the metrics. A bad config raises ``ConfigError`` before anything is
    built; a NaN/inf loss ends the run with ``status: diverged`` (not an exception).

    Checkpoints go to ``run_dir/checkpoints`` (docs/sweeps.md). A ``run_dir`` that holds one
    continues from it (the config must match); one that holds a finished run returns its
    metrics without training. SIGTERM/SIGINT end the run after the current step with a
    checkpoint and ``status: interrupted`` (``interrupted_by`` names the signal). ``in_sweep``:
    a job of a sweep, whose HParams experiment the sweep writes once at its root."""
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunDirLock(run_dir):  # one writer per run directory (RunDirBusy names the other one)
        return _run_locked(cfg, run_dir, in_sweep)


def _run_locked(cfg: DictConfig, run_dir: Path, in_sweep: bool) -> dict:
    remove_orphan_temp_files(run_dir)  # left by a writer that was killed mid-write
    identity = run_identity(cfg)
    digest = identity_digest(identity)
    records = RunDir(run_dir)
    done = records.metrics()
    if done and done.get("status") in FINISHED:
        if done.get("config_digest") not in (None, digest):
            raise CheckpointError(f"{run_dir} holds a finished run of a different config: start "
                                  f"this one in a new directory")
        log.info("%s already finished (%s): nothing to do; delete it to run again", run_dir, done["status"])
        return done
    ckpt_dir = run_dir / CHECKPOINTS
    loaded = load_latest(ckpt_dir)  # CheckpointError when checkpoints exist but none is readable
    state = loaded[0] if loaded else None
    if state is not None and state["config"] != identity:
        raise CheckpointError(
            f"{loaded[1]} was written by a different config ({'; '.join(identity_diff(state['config'], identity))}): "
            f"continue it with its own overrides, or start this config in a new directory")
    resumed_from = int(state["step"]) if state is not None else None
    prior_wall = float(state.get("wall_time_s", 0.0)) if state is not None else 0.0
    earlier_meta = records.meta() or {}
    restart = None
    if state is None:  # from step 0: an earlier session's curves must not stay in the directory
        stale = set_aside_dead_session(run_dir)
        if stale is not None:
            ended = earlier_meta.get("status") or "unknown"
            restart = {"time": now(), "moved_to": str(stale.relative_to(run_dir)),
                       "reason": f"no checkpoint to continue from: the earlier session (status {ended}) ended "
                                 f"before its first checkpoint, or its checkpoints were removed"}
            print(f"warning: restarting {run_dir} from step 0: {restart['reason']}; its events and error.txt "
                  f"are in {restart['moved_to']}/", file=sys.stderr, flush=True)
    tr = cfg.trainer
    device = setup_process(tr)
    if state is not None and state.get("threads") not in (None, torch.get_num_threads()):
        print(f"warning: resuming {run_dir} with trainer.threads={torch.get_num_threads()} where its checkpoint "
              f"was written with {state['threads']}: CPU results from step {resumed_from} on are not bitwise "
              f"identical to an uninterrupted run", file=sys.stderr, flush=True)
    seed_everything(cfg.seed)
    meta, sessions = records.start_session(
        {**run_metadata(device, cfg.seed), "config_digest": digest, "status": "running",
         "resumed_from_step": resumed_from}, continuing=state is not None, restart=restart)
    metrics = {"status": "failed", "diverged_step": None}
    started = time.perf_counter()
    writer = trainer = None
    stop = GracefulStop().__enter__()  # SIGTERM/SIGINT: stop after the step (signals.py)

    def checkpoint_fn(state: dict):
        state.update(config=identity, wall_time_s=prior_wall + time.perf_counter() - started,
                     threads=torch.get_num_threads())
        return save_checkpoint(ckpt_dir, state)

    reserve = DiskReserve(run_dir).__enter__()  # room to record a failure on a full disk

    try:
        data = instantiate(cfg.data).to(device)
        sampler_steps = data.sampler(tr.batch_size, cfg.seed).steps_per_epoch
        steps = total_steps(cfg, sampler_steps)
        schedule = check_schedule(cfg, steps)
        model = instantiate(cfg.model, _partial_=True)(spec=data.spec).to(device)
        optimizer = build_optimizer(cfg.optimizer, model)
        fastpath.apply(model, optimizer, tr, device, is_image=len(data.spec.input_shape) == 3)
        writer = RunWriter(run_dir, purge_step=state["purge_step"] if state is not None else None)
        extra = {"trainer.device": str(device),  # the device the run used, not "auto"
                 "resolved.total_steps": steps, "resolved.steps_per_epoch": sampler_steps,
                 "resolved.params": sum(p.numel() for p in model.parameters()),
                 **{f"resolved.{k}": v for k, v in schedule.info().items()}}
        writer.start_hparams(flat_hparams(cfg, extra), experiment=not in_sweep)
        log.info("run %s: model %s (%d parameters), data %s, optimizer %s (peak lr %g), scheduler %s "
                 "(warmup %d of %d steps), batch %d, seed %d, device %s, %d thread(s)%s", run_dir,
                 cfg.model.get("name"), extra["resolved.params"], cfg.data.get("name"), cfg.optimizer.get("name"),
                 float(cfg.optimizer.lr), cfg.scheduler.get("name"), schedule.warmup_steps, steps, tr.batch_size,
                 cfg.seed, device, torch.get_num_threads(),
                 f", resuming from step {resumed_from}" if resumed_from is not None else "")
        trainer = Trainer(model, optimizer, schedule, data, writer, total_steps=steps,
                          batch_size=tr.batch_size, seed=cfg.seed, device=device,
                          eval_interval=tr.eval_interval, log_interval=tr.log_interval,
                          grad_clip=tr.grad_clip, precision=tr.precision, progress=tr.progress,
                          metrics=OmegaConf.to_container(tr.metrics, resolve=True) if tr.get("metrics") else None,
                          checkpoint_interval=tr.get("checkpoint_interval"), checkpoint_fn=checkpoint_fn)
        stop.attach(trainer)
        if state is not None:
            trainer.load_state_dict(state)
            trainer.relog_val(int(state["purge_step"]))
            log.info("resumed from step %d (%s)", resumed_from, loaded[1].name)
            state = loaded = None  # free the checkpoint's tensors
        result = trainer.fit()
        if result.status == "diverged":
            log.warning("diverged: non-finite training loss at step %d", result.diverged_step)
            result.final_val_loss = result.final_val_acc = None
        metrics = {k: v for k, v in vars(result).items() if k != "history"}
        metrics.update(trainer.stability_summary())  # jitter/stability numbers (docs/metrics.md)
        metrics.update(total_steps=steps, warmup_steps=schedule.warmup_steps,
                       peak_lr=float(cfg.optimizer.lr), data=data.info, val_history=result.history["val"])
        metrics.update(config_digest=digest, resumed_from_step=resumed_from)
        log.info("%s after %d steps: final train loss %s, val loss %s, val acc %s", result.status, result.steps,
                 _g(result.final_train_loss), _g(result.final_val_loss), _g(result.final_val_acc))
        if result.status == "interrupted":  # no final hparam values yet: the run goes on later
            metrics["interrupted_by"] = stop.signal_name
            log.warning("interrupted at step %d by %s; checkpoint in %s", result.steps,
                        stop.signal_name, ckpt_dir)
        else:
            writer.end_hparams({**metrics, "diverged": float(result.status == "diverged")}, result.steps)
    except ConfigError:
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: the last checkpoint stays the one to resume from
        metrics.update(status="interrupted", interrupted_by="SIGINT")
        raise
    except Exception as err:
        full = disk_full(err)
        if full:
            reserve.free()
            if writer is not None:
                writer.abandon()  # its buffered events cannot be written either
                writer = None
        metrics["error"] = disk_full_text(run_dir) if full else f"{type(err).__name__}: {err}"
        records.write_error((metrics["error"] + "\n\n" if full else "") + traceback.format_exc())
        if full:
            raise DiskFull(errno.ENOSPC, metrics["error"]) from None
        raise
    finally:
        stop.restore()
        reserve.free()
        metrics["wall_time_s"] = round(prior_wall + time.perf_counter() - started, 3)
        metrics["run_dir"] = str(run_dir)
        records.write_metrics(metrics)
        records.end_session(meta, sessions, metrics["status"], resumed_from or 0,
                            trainer.step if trainer else resumed_from)
        if writer is not None:
            writer.close()
    if metrics["status"] == "interrupted":
        stop.hand_over()  # under submitit: its handler requeues the job and exits the process
    return metrics


def _g(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def record_failure(run_dir: str | Path, err: BaseException) -> dict:
    """For a job of a sweep that failed before ``run`` could record it (a ``ConfigError``):
    ``error.txt`` with the traceback and ``metrics.json`` with ``status: failed``."""
    return RunDir(run_dir).record_failure(f"{type(err).__name__}: {err}",
                                          "".join(traceback.format_exception(type(err), err, err.__traceback__)))
