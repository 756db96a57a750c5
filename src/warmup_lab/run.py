"""One training run from a composed config: validate, build, train, record."""

from __future__ import annotations

import logging
import os
import random
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .optim import build_optimizer
from .runinfo import now, run_metadata, write_json
from .tb import RunWriter, flat_hparams
from .trainer import Trainer
from .validate import ConfigError, check_schedule, validate

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def total_steps(cfg: DictConfig, steps_per_epoch: int) -> int:
    """``trainer.max_steps``, or ``trainer.epochs`` times the steps in one epoch."""
    if cfg.trainer.max_steps is not None:
        return int(cfg.trainer.max_steps)
    return int(cfg.trainer.epochs) * steps_per_epoch


def run(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train once and write ``metrics.json``, ``run_meta.json`` and TensorBoard events into
    ``run_dir``. Returns the metrics. A bad config raises ``ConfigError`` before anything is
    built; a NaN/inf loss ends the run with ``status: diverged`` (not an exception)."""
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tr = cfg.trainer
    torch.set_num_threads(tr.threads or os.cpu_count() or 1)
    if tr.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    device = resolve_device(tr.device)
    seed_everything(cfg.seed)
    meta = run_metadata(device, cfg.seed)
    write_json(run_dir / "run_meta.json", meta)
    metrics = {"status": "failed", "diverged_step": None}
    started = time.perf_counter()
    writer = None
    try:
        data = instantiate(cfg.data).to(device)
        sampler_steps = data.sampler(tr.batch_size, cfg.seed).steps_per_epoch
        steps = total_steps(cfg, sampler_steps)
        schedule = check_schedule(cfg, steps)
        model = instantiate(cfg.model, _partial_=True)(spec=data.spec).to(device)
        optimizer = build_optimizer(cfg.optimizer, model)
        writer = RunWriter(run_dir)
        extra = {"resolved.total_steps": steps, "resolved.steps_per_epoch": sampler_steps,
                 "resolved.params": sum(p.numel() for p in model.parameters()),
                 **{f"resolved.{k}": v for k, v in schedule.info().items()}}
        writer.start_hparams(flat_hparams(cfg, extra))
        trainer = Trainer(model, optimizer, schedule, data, writer, total_steps=steps,
                          batch_size=tr.batch_size, seed=cfg.seed, device=device,
                          eval_interval=tr.eval_interval, log_interval=tr.log_interval,
                          grad_clip=tr.grad_clip, precision=tr.precision, progress=tr.progress)
        result = trainer.fit()
        if result.status == "diverged":
            log.warning("diverged: non-finite training loss at step %d", result.diverged_step)
            result.final_val_loss = result.final_val_acc = None
        metrics = {k: v for k, v in vars(result).items() if k != "history"}
        metrics.update(total_steps=steps, warmup_steps=schedule.warmup_steps,
                       peak_lr=float(cfg.optimizer.lr), data=data.info, val_history=result.history["val"])
        writer.end_hparams({**metrics, "diverged": float(result.status == "diverged")}, result.steps)
    except ConfigError:
        raise
    except Exception as err:
        metrics["error"] = f"{type(err).__name__}: {err}"
        (run_dir / "error.txt").write_text(traceback.format_exc())
        raise
    finally:
        metrics["wall_time_s"] = round(time.perf_counter() - started, 3)
        metrics["run_dir"] = str(run_dir)
        write_json(run_dir / "metrics.json", metrics)
        write_json(run_dir / "run_meta.json", {**meta, "end_time": now(), "status": metrics["status"]})
        if writer is not None:
            writer.close()
    return metrics
