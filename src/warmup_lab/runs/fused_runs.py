"""Fused runs recorded as runs: K configs trained together (:mod:`warmup_lab.engine.fused`), each run's
directory filled as :func:`warmup_lab.runs.run.run` fills it alone, so a sweep's analysis reads them
like any other runs (``launcher=fused``, docs/performance.md).

Per run: TensorBoard events (``train/loss``, ``train/lr``, ``train/grad_norm``,
``train/update_ratio``, ``jitter/*``, ``val/loss``, ``val/acc``, ``train/diverged_at``), hparams
with the same key set, per-layer ``layer/*`` and Adam ``train/adam/*`` every
``layer_interval`` steps, ``metrics.json`` (the same keys, stability summary included, plus
``fused``: the group) and ``run_meta.json``. A run stops being logged at its first non-finite loss (``status:
diverged``) while the others go on.

Checkpoints: the group's state is saved every ``trainer.checkpoint_interval`` steps and on
SIGTERM/SIGINT (after the current step and the evaluation due at it; running runs end
``interrupted``) into ``<first run dir>/fused_checkpoints`` (atomic, the last two kept, as
:mod:`warmup_lab.runs.checkpoint`), and every run dir names its group in ``fused_group.json``. The
same group (same run dirs, same configs) continues from the newest checkpoint, bit for bit on
the CPU; TensorBoard readers drop the events logged after it. Any other group of those dirs
starts again from step 0 (all earlier events purged).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from warmup_lab.runs.checkpoint import CheckpointError, load_latest
from warmup_lab.runs.identity import digest as identity_digest, run_identity
from warmup_lab.runs.checkpoint import save as save_checkpoint
from warmup_lab.engine.fused import FusedTrainer, build_fused
from warmup_lab.metrics.jitter import JitterTracker, MetricsConfig
from warmup_lab.runs.run import seed_everything, setup_process
from warmup_lab.runs.rundir import RunDir, RunDirLock, remove_orphan_temp_files, set_aside_dead_session
from warmup_lab.runs.runinfo import read_json, run_metadata, write_json
from warmup_lab.runs.signals import GracefulStop
from warmup_lab.runs.tb import RunWriter, flat_hparams
from warmup_lab.engine.trainer import TrainResult
from warmup_lab.runs.validate import check_schedule, validate

JITTER_COLS = ("loss_std", "loss_abs_change", "spike_ratio", "spike_count")
GROUP_FILE = "fused_group.json"      # in every run dir: the group and where its checkpoints are
CHECKPOINTS = "fused_checkpoints"    # in the group's first run dir

log = logging.getLogger(__name__)


class LoggedFusedTrainer(FusedTrainer):
    """:class:`FusedTrainer` that also writes each run's TensorBoard events, jitter metrics and
    :class:`TrainResult` as :class:`warmup_lab.engine.trainer.Trainer` does for a run alone."""

    def __init__(self, *args, writers: list[RunWriter], trackers: list[JitterTracker], **kwargs):
        super().__init__(*args, **kwargs)
        self.writers, self.trackers = writers, trackers
        self.results = [TrainResult() for _ in writers]

    def flush(self) -> list[list[int]]:
        n = len(self.filled)
        if not n:
            return super().flush()
        running = [k for k in range(self.k) if self.status[k] == "running"]
        # jitter windows for the whole block on the device, read back with the block
        jit = [self.trackers[k].block(self.buffer[:n, 0, k]) for k in running]
        extra = torch.stack([torch.stack([j[c] for c in JITTER_COLS]) for j in jit]) if jit else None
        kept = super().flush(extra)
        c, flat = len(JITTER_COLS), self.extra  # (running, cols, n), flattened
        jit_host = [[flat[(r * c + j) * n:(r * c + j + 1) * n] for j in range(c)] for r in range(len(running))]
        layer = self.block_layer_stats
        steps, rows = self.block_steps, self.rows
        for r, k in enumerate(running):
            idx = kept[k]
            cols = {"loss": [rows[i][0][k] for i in idx], "grad_norm": [rows[i][1][k] for i in idx]}
            if self.track_update:
                cols["update_ratio"] = [rows[i][2][k] for i in idx]
            cols.update({c: [jit_host[r][j][i] for i in idx] for j, c in enumerate(JITTER_COLS)})
            for pos, i in enumerate(idx):
                step = steps[i]
                values = {"train/loss": cols["loss"][pos], "train/grad_norm": cols["grad_norm"][pos],
                          "train/lr": self.lrs_host[step][k]}
                if self.track_update:
                    values["train/update_ratio"] = cols["update_ratio"][pos]
                values.update({f"jitter/{c}": cols[c][pos] for c in JITTER_COLS})
                values.update({tag: v[k] for tag, v in layer.get(step, {}).items()})
                self.writers[k].scalars(values, step)
            self.trackers[k].record(cols)
            result = self.results[k]
            finite_logged = [v for v in cols["loss"] if math.isfinite(v)]
            if finite_logged:
                result.last_train_loss = finite_logged[-1]
            block = [rows[i][0][k] for i in range(n) if math.isfinite(rows[i][0][k])]
            if block:
                result.final_train_loss = sum(block) / len(block)
            if self.status[k] == "diverged":  # a run alone stops at the end of this block
                result.status, result.diverged_step = "diverged", self.diverged_step[k]
                result.steps = steps[-1] + 1
        return kept

    def state_dict(self) -> dict:
        for writer in self.writers:  # every step before the checkpoint is on disk
            writer.flush()
        state = super().state_dict()
        state["result"]["runs"] = [dataclasses.asdict(r) for r in self.results]
        state["tracker"] = [t.state_dict() for t in self.trackers]
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.results = [TrainResult(**r) for r in state["result"]["runs"]]
        for tracker, t in zip(self.trackers, state["tracker"]):
            tracker.load_state_dict(t)

    def relog_val(self, from_step: int) -> None:
        """Log again the evaluations at ``from_step`` or later: the resumed writers purge them."""
        for k, writer in enumerate(self.writers):
            for v in self.val[k]:
                if v["step"] >= from_step:
                    writer.scalar("val/loss", v["loss"], v["step"])
                    writer.scalar("val/acc", v["acc"], v["step"])

    def evaluate(self) -> list[int]:
        running = super().evaluate()
        for k in running:
            v, result = self.val[k][-1], self.results[k]
            self.writers[k].scalar("val/loss", v["loss"], v["step"])
            self.writers[k].scalar("val/acc", v["acc"], v["step"])
            result.final_val_loss, result.final_val_acc = v["loss"], v["acc"]
            if math.isfinite(v["loss"]) and (result.best_val_loss is None or v["loss"] < result.best_val_loss):
                result.best_val_loss = v["loss"]
            if result.best_val_acc is None or v["acc"] > result.best_val_acc:
                result.best_val_acc = v["acc"]
            result.history["val"].append(dict(v))
        return running


def _group_checkpoint(dirs: list[Path], identities: list[str]) -> dict | None:
    """The newest checkpoint of this exact group (same run dirs in the same order, same
    configs), or None: then the group starts from step 0."""
    runs = [str(d) for d in dirs]
    for d in dirs:
        info = read_json(d / GROUP_FILE)
        if not info or info.get("runs") != runs:
            return None
    try:
        loaded = load_latest(dirs[0] / CHECKPOINTS)
    except CheckpointError as err:
        log.warning("fused group checkpoint unusable (%s): starting the group again", err)
        return None
    if loaded is None or loaded[0].get("config") != identities:
        return None
    return loaded[0]


def run_fused(cfgs: list[DictConfig], run_dirs: list[str | Path]) -> list[dict]:
    """Train the runs of ``cfgs`` (composed configs that differ only in
    :data:`warmup_lab.engine.fused.PER_RUN_KEYS`) fused on one device and record run ``k`` in
    ``run_dirs[k]`` as :func:`warmup_lab.runs.run.run` would alone; returns their metrics. A bad
    config raises ``ConfigError`` (or ``ValueError`` for configs that cannot be fused) before
    anything is built."""
    for cfg in cfgs:
        validate(cfg)
    dirs = [Path(d) for d in run_dirs]
    k = len(cfgs)
    tr = cfgs[0].trainer
    device = setup_process(tr)
    seed_everything(int(cfgs[0].seed))
    identities = [run_identity(cfg) for cfg in cfgs]
    digests = [identity_digest(i) for i in identities]
    group = {"k": k, "runs": [str(d) for d in dirs]}
    with contextlib.ExitStack() as locks:  # one writer per run directory, as for a run alone
        for d in dirs:
            locks.enter_context(RunDirLock(d))
            remove_orphan_temp_files(d)
        return _run_fused_locked(cfgs, dirs, k, tr, device, identities, digests, group)


def _run_fused_locked(cfgs, dirs, k, tr, device, identities, digests, group) -> list[dict]:
    state = _group_checkpoint(dirs, identities)
    if state is None:  # from step 0: earlier sessions' curves leave the directories
        for d in dirs:
            stale = set_aside_dead_session(d)
            if stale is not None:
                print(f"warning: restarting {d} from step 0 (no checkpoint of this group to continue from); "
                      f"its earlier events are in {stale.relative_to(d)}/", file=sys.stderr, flush=True)
    resumed_from = int(state["step"]) if state is not None else None
    prior_wall = float(state.get("wall_time_s", 0.0)) if state is not None else 0.0
    ckpt_dir = dirs[0] / CHECKPOINTS
    metas, sessions = [], []
    for j, (cfg, d) in enumerate(zip(cfgs, dirs)):
        meta, past = RunDir(d).start_session(
            {**run_metadata(device, int(cfg.seed)), "config_digest": digests[j], "status": "running",
             "resumed_from_step": resumed_from, "fused": {**group, "index": j}}, continuing=state is not None)
        write_json(d / GROUP_FILE, {**group, "index": j, "checkpoints": str(ckpt_dir)})
        metas.append(meta)
        sessions.append(past)
    metrics = [{"status": "failed", "diverged_step": None} for _ in cfgs]
    started = time.perf_counter()

    def checkpoint_fn(s: dict):
        s.update(config=identities, wall_time_s=prior_wall + time.perf_counter() - started,
                 threads=torch.get_num_threads())
        return save_checkpoint(ckpt_dir, s)

    writers: list[RunWriter] = []
    trainer = None
    stop = GracefulStop().__enter__()
    try:
        channels_last = bool(tr.get("channels_last", False))
        model, optimizer, lrs, data, samplers, device = build_fused(cfgs, device, channels_last=channels_last)
        steps = len(lrs)
        schedules = [check_schedule(cfg, steps) for cfg in cfgs]
        mcfg = MetricsConfig.from_dict(
            OmegaConf.to_container(tr.metrics, resolve=True) if tr.get("metrics") else None, tr.log_interval)
        trackers = [JitterTracker([], None, mcfg, steps, device=device) for _ in cfgs]
        # a resumed group: readers drop the events from the checkpoint's step on; a group started
        # again from step 0 in directories that hold events: all of them
        purge = int(state["purge_step"]) if state is not None else 0
        writers = [RunWriter(d, purge_step=purge if state is not None else None) for d in dirs]
        per_run_params = sum(p[0].numel() for p in model.parameters())
        for cfg, schedule, writer in zip(cfgs, schedules, writers):
            extra = {"resolved.total_steps": steps, "resolved.steps_per_epoch": samplers[0].steps_per_epoch,
                     "resolved.params": per_run_params,
                     **{f"resolved.{key}": v for key, v in schedule.info().items()}}
            writer.start_hparams(flat_hparams(cfg, extra), experiment=False)  # a sweep's
        step_fn = torch.compile(model) if tr.get("compile") else None
        trainer = LoggedFusedTrainer(model, optimizer, lrs, data, samplers, device=device,
                                     eval_interval=tr.eval_interval, log_interval=tr.log_interval,
                                     grad_clip=tr.grad_clip, precision=tr.precision,
                                     channels_last=channels_last, step_fn=step_fn,
                                     update_ratio=mcfg.update_ratio,
                                     layer_interval=mcfg.layer_interval if mcfg.layers else None,
                                     checkpoint_interval=tr.get("checkpoint_interval"),
                                     checkpoint_fn=checkpoint_fn, writers=writers, trackers=trackers)
        stop.attach(trainer)
        if state is not None:
            trainer.load_state_dict(state)
            trainer.relog_val(purge)
            log.info("fused group resumed from step %d (%s)", resumed_from, ckpt_dir)
            state = None
        trainer.fit()
        chance = 1.0 / data.spec.num_classes
        for j, (cfg, schedule, result) in enumerate(zip(cfgs, schedules, trainer.results)):
            result.status = trainer.status[j]
            if result.status != "diverged":
                result.steps = trainer.step
            if result.status == "diverged":
                writers[j].scalar("train/diverged_at", float(result.diverged_step), result.diverged_step)
                result.final_val_loss = result.final_val_acc = None
            m = {key: v for key, v in vars(result).items() if key != "history"}
            m.update(trackers[j].summary(chance_acc=chance))
            m.update(total_steps=steps, warmup_steps=schedule.warmup_steps, peak_lr=float(cfg.optimizer.lr),
                     data=data.info, val_history=result.history["val"], config_digest=digests[j],
                     resumed_from_step=resumed_from, fused={**group, "index": j})
            if result.status == "interrupted":
                m["interrupted_by"] = stop.signal_name
            else:
                writers[j].end_hparams({**m, "diverged": float(result.status == "diverged")}, result.steps)
            metrics[j] = m
    except Exception as err:
        text = traceback.format_exc()
        for m, d in zip(metrics, dirs):
            m["error"] = f"{type(err).__name__}: {err}"
            RunDir(d).write_error(text)
        raise
    finally:
        stop.restore()
        wall = prior_wall + time.perf_counter() - started
        for j, (m, d, meta) in enumerate(zip(metrics, dirs, metas)):
            # the group's device time, shared evenly: what one run cost (the group's in fused)
            m["wall_time_s"] = round(wall / k, 3)
            m.setdefault("fused", {**group, "index": j})
            m["fused"]["group_wall_time_s"] = round(wall, 3)
            m["run_dir"] = str(d)
            RunDir(d).write_metrics(m)
            RunDir(d).end_session(meta, sessions[j], m["status"], resumed_from or 0,
                                  trainer.step if trainer else resumed_from)
        for writer in writers:
            writer.close()
    return metrics
