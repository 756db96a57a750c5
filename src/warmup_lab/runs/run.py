"""Runs from composed configs: validate, build, train, record. ``run`` is one run; ``run_group``
trains K runs together (``launcher=fused``) and records each as if it had run alone."""

from __future__ import annotations

import contextlib
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

from warmup_lab.engine import fastpath
from warmup_lab.engine.optim import build_optimizer
from warmup_lab.engine.trainer import RunParts, Trainer
from warmup_lab.runs.checkpoint import FOLDER as CHECKPOINTS, CheckpointError, load_latest
from warmup_lab.runs.checkpoint import save as save_checkpoint
from warmup_lab.runs.identity import digest as identity_digest, identity_diff, run_identity
from warmup_lab.runs.rundir import (GROUP_CHECKPOINTS, DiskFull, DiskReserve, RunDir, RunDirLock, disk_full,
                                    disk_full_text, remove_orphan_temp_files, set_aside_dead_session)
from warmup_lab.runs.runinfo import now, read_json, run_metadata, write_json
from warmup_lab.runs.signals import GracefulStop
from warmup_lab.runs.tb import RunWriter, flat_hparams
from warmup_lab.runs.validate import ConfigError, check_schedule, validate
from warmup_lab.sweeps.grouping import check_fusable
from warmup_lab.sweeps.jobs import FINISHED

log = logging.getLogger(__name__)

GROUP_FILE = "fused_group.json"  # in every run dir of a group of K > 1: the group and its checkpoints


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
    ``run_dir``; returns the metrics. :func:`run_group` with K = 1 (see there)."""
    return run_group([cfg], [run_dir], in_sweep)[0]


def run_group(cfgs: list[DictConfig], run_dirs: list[str | Path], in_sweep: bool = False) -> list[dict]:
    """Train the runs of ``cfgs`` together (one Trainer, K = len(cfgs)) and record run ``k`` in
    ``run_dirs[k]`` exactly as a run alone is recorded; returns their metrics.

    A bad config raises ``ConfigError`` (configs that may not share a group ``ValueError``) before
    anything is built; a NaN/inf loss ends that run with ``status: diverged`` (not an exception).
    A directory holding a finished run returns its metrics without training (a different config
    there raises ``CheckpointError``). Checkpoints go to ``run_dir/checkpoints`` (K = 1) or the
    first run dir's ``fused_checkpoints`` (K > 1); the same runs continue from the newest, a K = 1
    run refuses one of another config, and another group of those directories starts again from
    step 0. SIGTERM/SIGINT end the runs after the current step with a checkpoint and ``status:
    interrupted`` (``interrupted_by`` names the signal). ``in_sweep``: jobs of a sweep, whose
    HParams experiment the sweep writes once at its root."""
    for cfg in cfgs:
        validate(cfg)
    if len(cfgs) > 1:
        check_fusable(cfgs)
    dirs = [Path(d) for d in run_dirs]
    with contextlib.ExitStack() as locks:  # one writer per run directory (RunDirBusy names the other one)
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            locks.enter_context(RunDirLock(d))
            remove_orphan_temp_files(d)  # left by a writer that was killed mid-write
        done = _finished(cfgs, dirs)
        todo = [i for i in range(len(cfgs)) if i not in done]
        if todo and done:  # a group whose checkpoint holds its finished runs too continues whole
            whole = GroupSession(cfgs, dirs, in_sweep, finished=done)
            whole.loaded = whole.checkpoint_to_continue()
            if whole.loaded is not None:
                return whole.run()
        if todo:
            trained = GroupSession([cfgs[i] for i in todo], [dirs[i] for i in todo], in_sweep).run()
            done.update(zip(todo, trained))
        return [done[i] for i in range(len(cfgs))]


def build_trainer(cfgs: list[DictConfig], writers: list, device: torch.device, **overrides) -> Trainer:
    """The Trainer of ``cfgs`` (K runs) as ``run_group`` builds it: the data once; per run its model
    (initialised from its seed), optimizer and schedule, writing to ``writers[k]``; the trainer
    knobs of the first config. ``overrides``: Trainer keywords in place of the config's (the
    checkpoint function; tests and benchmarks: ``progress``, ``eval_interval``)."""
    tr, base, k = cfgs[0].trainer, cfgs[0], len(cfgs)
    data = instantiate(base.data).to(device)
    steps = total_steps(base, data.sampler(tr.batch_size, int(base.seed)).steps_per_epoch)
    is_image = len(data.spec.input_shape) == 3
    parts = []
    for cfg, writer in zip(cfgs, writers):
        schedule = check_schedule(cfg, steps)
        torch.manual_seed(int(cfg.seed))
        model = instantiate(cfg.model, _partial_=True)(spec=data.spec).to(device)
        optimizer = build_optimizer(cfg.optimizer, model)
        if k == 1:
            fastpath.apply(model, optimizer, tr, device, is_image=is_image)
        elif tr.get("channels_last") and not is_image:
            raise ConfigError("trainer.channels_last=true needs image data (NCHW inputs)")
        parts.append(RunParts(model, optimizer, schedule, writer, int(cfg.seed)))
    knobs = dict(eval_interval=tr.eval_interval, log_interval=tr.log_interval, grad_clip=tr.grad_clip,
                 precision=tr.precision, progress=tr.progress,
                 metrics=OmegaConf.to_container(tr.metrics, resolve=True) if tr.get("metrics") else None,
                 checkpoint_interval=tr.get("checkpoint_interval"), channels_last=bool(tr.get("channels_last")),
                 compile=bool(fastpath.compile_mode(tr.get("compile"))), stack=tr.get("stack", "auto"))
    return Trainer(parts, data, total_steps=steps, batch_size=tr.batch_size, device=device, **{**knobs, **overrides})


def _finished(cfgs: list[DictConfig], dirs: list[Path]) -> dict[int, dict]:
    """The runs whose directories already hold a finished record of their config."""
    out = {}
    for i, (cfg, d) in enumerate(zip(cfgs, dirs)):
        record = RunDir(d).metrics()
        if record and record.get("status") in FINISHED:
            if record.get("config_digest") not in (None, identity_digest(run_identity(cfg))):
                raise CheckpointError(f"{d} holds a finished run of a different config: start this one in a new directory")
            log.info("%s already finished (%s): nothing to do; delete it to run again", d, record["status"])
            out[i] = record
    return out


class GroupSession:
    """One session of K runs (K = 1: a run alone), from composed configs to their records.

    ``finished``: runs of the group that ended before this session (diverged, say) and whose
    records stay as they are; their checkpointed state keeps them masked in the Trainer."""

    def __init__(self, cfgs: list[DictConfig], dirs: list[Path], in_sweep: bool,
                 finished: dict[int, dict] | None = None):
        self.cfgs, self.dirs, self.k, self.in_sweep = cfgs, dirs, len(cfgs), in_sweep
        self.finished = finished or {}
        self.live = [i for i in range(self.k) if i not in self.finished]
        self.tr = cfgs[0].trainer
        self.identities = [run_identity(cfg) for cfg in cfgs]
        self.digests = [identity_digest(i) for i in self.identities]
        self.records = [RunDir(d) for d in dirs]
        self.group = {"k": self.k, "runs": [str(d) for d in dirs]} if self.k > 1 else None
        self.ckpt_dir = dirs[0] / (CHECKPOINTS if self.k == 1 else GROUP_CHECKPOINTS)
        self.loaded: dict | None = None  # the checkpoint to continue from, when already read (run_group)
        self.trainer: Trainer | None = None
        self.writers: list[RunWriter] = []

    def run(self) -> list[dict]:
        state, self.loaded = self.loaded, None  # dropped once the trainer holds it (below)
        if state is None:
            state = self.checkpoint_to_continue()
        self.resumed_from = int(state["step"]) if state is not None else None
        self.prior_wall = float(state.get("wall_time_s", 0.0)) if state is not None else 0.0
        restarts = [None] * self.k if state is not None else [self.set_aside(i) for i in range(self.k)]
        device = setup_process(self.tr)
        if state is not None and state.get("threads") not in (None, torch.get_num_threads()):
            print(f"warning: resuming {self.dirs[0]} with trainer.threads={torch.get_num_threads()} where its "
                  f"checkpoint was written with {state['threads']}: CPU results from step {self.resumed_from} on "
                  f"are not bitwise identical to an uninterrupted run", file=sys.stderr, flush=True)
        seed_everything(int(self.cfgs[0].seed))
        sessions = {i: self.records[i].start_session(self.meta(device, i), continuing=state is not None,
                                                     restart=restarts[i]) for i in self.live}
        metrics = [self.finished.get(i) or {"status": "failed", "diverged_step": None} for i in range(self.k)]
        self.started = time.perf_counter()
        stop = GracefulStop().__enter__()  # SIGTERM/SIGINT: stop after the step (signals.py)
        reserve = DiskReserve(self.dirs[0]).__enter__()  # room to record a failure on a full disk
        try:
            self.build(device, state, stop)
            state = None  # free the checkpoint's tensors
            self.trainer.fit()
            metrics = [self.finished.get(r.index) or self.metrics_of(r, stop) for r in self.trainer.runs]
        except ConfigError:
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: the last checkpoint stays the one to resume from
            for i in self.live:
                metrics[i].update(status="interrupted", interrupted_by="SIGINT")
            raise
        except Exception as err:
            self.record_error(err, metrics, reserve)
        finally:
            stop.restore()
            reserve.free()
            self.record(metrics, sessions)
        if any(metrics[i]["status"] == "interrupted" for i in self.live):
            stop.hand_over()  # under submitit: its handler requeues the job and exits the process
        return metrics

    # -- continuing ------------------------------------------------------------------------------
    def checkpoint_to_continue(self) -> dict | None:
        """The newest checkpoint of exactly these runs, or None (start from step 0)."""
        if self.k == 1:
            loaded = load_latest(self.ckpt_dir)  # CheckpointError when checkpoints exist but none is readable
            if loaded is not None and loaded[0]["config"] != self.identities:
                old = loaded[0]["config"][0]  # format 3: the identities of the runs it holds
                raise CheckpointError(
                    f"{loaded[1]} was written by a different config ({'; '.join(identity_diff(old, self.identities[0]))}): "
                    f"continue it with its own overrides, or start this config in a new directory")
            return loaded[0] if loaded else None
        if any((read_json(d / GROUP_FILE) or {}).get("runs") != self.group["runs"] for d in self.dirs):
            return None
        try:
            loaded = load_latest(self.ckpt_dir)
        except CheckpointError as err:
            log.warning("group checkpoint unusable (%s): starting the group again", err)
            return None
        return loaded[0] if loaded is not None and loaded[0].get("config") == self.identities else None

    def set_aside(self, i: int) -> dict | None:
        """From step 0: an earlier session's curves leave run ``i``'s directory; the restart record."""
        d = self.dirs[i]
        stale = set_aside_dead_session(d)
        if stale is None:
            return None
        ended = (self.records[i].meta() or {}).get("status") or "unknown"
        restart = {"time": now(), "moved_to": str(stale.relative_to(d)),
                   "reason": f"no checkpoint to continue from: the earlier session (status {ended}) ended "
                             f"before its first checkpoint, or its checkpoints were removed"}
        print(f"warning: restarting {d} from step 0: {restart['reason']}; its events and error.txt "
              f"are in {restart['moved_to']}/", file=sys.stderr, flush=True)
        return restart

    def meta(self, device: torch.device, i: int) -> dict:
        meta = {**run_metadata(device, int(self.cfgs[i].seed)), "config_digest": self.digests[i],
                "status": "running", "resumed_from_step": self.resumed_from}
        if self.group is not None:
            meta["fused"] = self.fused(i)
            write_json(self.dirs[i] / GROUP_FILE, {**self.fused(i), "checkpoints": str(self.ckpt_dir)})
        return meta

    def fused(self, i: int) -> dict:
        """Run ``i``'s place in its group (K > 1), as its records keep it."""
        return {**self.group, "index": i}

    def checkpoint_fn(self, state: dict):
        state.update(config=self.identities, threads=torch.get_num_threads(),
                     wall_time_s=self.prior_wall + time.perf_counter() - self.started)
        return save_checkpoint(self.ckpt_dir, state)

    # -- building ----------------------------------------------------------------------------------
    def build(self, device: torch.device, state: dict | None, stop: GracefulStop) -> None:
        """The writers (a finished run's writes nothing), the Trainer, each run's hparams; the state."""
        purge = int(state["purge_step"]) if state is not None else None
        writers = [_Silent() if i in self.finished else RunWriter(d, purge_step=purge) for i, d in enumerate(self.dirs)]
        self.writers = [w for w in writers if isinstance(w, RunWriter)]
        self.trainer = build_trainer(self.cfgs, writers, device, checkpoint_fn=self.checkpoint_fn)
        self.data, self.steps = self.trainer.data, self.trainer.total_steps
        for i in self.live:
            self.start_run(self.trainer.runs[i], device)
        stop.attach(self.trainer)
        if state is not None:
            self.trainer.load_state_dict(state)
            self.trainer.relog_val(purge)
            log.info("resumed from step %d (%s)", self.resumed_from, self.ckpt_dir)

    def start_run(self, r, device: torch.device) -> None:
        """Run ``r``'s HParams session (what it trains, resolved) and its line in the log."""
        cfg, d = self.cfgs[r.index], self.dirs[r.index]
        params = sum(p.numel() for p in r.model.parameters())
        extra = {"trainer.device": str(device),  # the device the run used, not "auto"
                 "resolved.total_steps": self.steps, "resolved.steps_per_epoch": r.sampler.steps_per_epoch,
                 "resolved.params": params, **{f"resolved.{k}": v for k, v in r.schedule.info().items()}}
        r.writer.start_hparams(flat_hparams(cfg, extra), experiment=not self.in_sweep)
        log.info("run %s: model %s (%d parameters), data %s, optimizer %s (peak lr %g), scheduler %s "
                 "(warmup %d of %d steps), batch %d, seed %d, device %s, %d thread(s)%s%s", d,
                 cfg.model.get("name"), params, cfg.data.get("name"), cfg.optimizer.get("name"),
                 float(cfg.optimizer.lr), cfg.scheduler.get("name"), r.schedule.warmup_steps, self.steps,
                 cfg.trainer.batch_size, cfg.seed, device, torch.get_num_threads(),
                 f", one of {self.k} runs trained together" if self.k > 1 else "",
                 f", resuming from step {self.resumed_from}" if self.resumed_from is not None else "")

    # -- recording ---------------------------------------------------------------------------------
    def metrics_of(self, r, stop: GracefulStop) -> dict:
        """Run ``r``'s ``metrics.json`` (the result, its stability summary, what it trained)."""
        result, cfg = r.result, self.cfgs[r.index]
        if result.status == "diverged":
            log.warning("%s diverged: non-finite training loss at step %d", self.dirs[r.index], result.diverged_step)
            result.final_val_loss = result.final_val_acc = None
        m = {k: v for k, v in vars(result).items() if k != "history"}
        m.update(self.trainer.stability_summary(r))  # jitter/stability numbers (docs/metrics.md)
        m.update(total_steps=self.steps, warmup_steps=r.schedule.warmup_steps, peak_lr=float(cfg.optimizer.lr),
                 data=self.data.info, val_history=result.history["val"], config_digest=self.digests[r.index],
                 resumed_from_step=self.resumed_from)
        log.info("%s after %d steps: final train loss %s, val loss %s, val acc %s", result.status, result.steps,
                 _g(result.final_train_loss), _g(result.final_val_loss), _g(result.final_val_acc))
        if result.status == "interrupted":  # no final hparam values yet: the run goes on later
            m["interrupted_by"] = stop.signal_name
            log.warning("interrupted at step %d by %s; checkpoint in %s", result.steps, stop.signal_name, self.ckpt_dir)
        else:
            r.writer.end_hparams({**m, "diverged": float(result.status == "diverged")}, result.steps)
        return m

    def record_error(self, err: Exception, metrics: list[dict], reserve: DiskReserve) -> None:
        """``error.txt`` and the error in every run's metrics; re-raises (a full disk as ``DiskFull``)."""
        full = disk_full(err)
        if full:
            reserve.free()
            for writer in self.writers:
                writer.abandon()  # its buffered events cannot be written either
            self.writers = []
        text = disk_full_text(self.dirs[0]) if full else f"{type(err).__name__}: {err}"
        for i in self.live:
            metrics[i]["error"] = text
            self.records[i].write_error((text + "\n\n" if full else "") + traceback.format_exc())
        if full:
            raise DiskFull(errno.ENOSPC, text) from None
        raise err

    def record(self, metrics: list[dict], sessions: dict[int, tuple[dict, list]]) -> None:
        """Every run's ``metrics.json`` and session, whatever happened (one run's failed write does
        not cost the others theirs); the writers closed. A group's wall time is shared evenly:
        what one run cost."""
        wall = self.prior_wall + time.perf_counter() - self.started
        errors = []
        for i in self.live:
            m, rec, (meta, past) = metrics[i], self.records[i], sessions[i]
            m["wall_time_s"] = round(wall / self.k, 3)
            if self.group is not None:
                m["fused"] = {**self.fused(i), "group_wall_time_s": round(wall, 3)}
            m["run_dir"] = str(rec.path)
            to_step = (self.trainer.runs[i].result.steps or self.trainer.step) if self.trainer else self.resumed_from
            try:
                rec.write_metrics(m)
                rec.end_session(meta, past, m["status"], self.resumed_from or 0, to_step)
            except OSError as err:
                errors.append(err)
        for writer in self.writers:
            try:
                writer.close()
            except OSError as err:
                errors.append(err)
        if errors:
            raise errors[0]


class _Silent:
    """The writer of a run that finished before this session: it writes nothing."""

    def scalar(self, *args) -> None: ...
    def scalars(self, *args) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def _g(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def record_failure(run_dir: str | Path, err: BaseException) -> dict:
    """For a job of a sweep that failed before ``run`` could record it (a ``ConfigError``):
    ``error.txt`` with the traceback and ``metrics.json`` with ``status: failed``."""
    return RunDir(run_dir).record_failure(f"{type(err).__name__}: {err}",
                                          "".join(traceback.format_exception(type(err), err, err.__traceback__)))
