"""TensorBoard logging: one run = one directory, hparams linked to the run's own scalars."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

# Final metrics shown in the HParams dashboard; the same names in every run.
# metrics that mean something on a healthy run too: not max_spike_ratio, which divides by the
# lowest loss so far and reads 100+ once a run's loss falls to 1e-4 (the early-phase one is kept)
HPARAM_METRICS = ("hparam/final_val_loss", "hparam/best_val_loss", "hparam/final_val_acc",
                  "hparam/final_train_loss", "hparam/diverged", "hparam/steps",
                  "hparam/early_jitter", "hparam/early_max_spike_ratio", "hparam/train_loss_auc")
HPARAM_GROUPS = ("model", "data", "optimizer", "scheduler", "trainer")
_SKIP = ("_target_", "progress", "resume", "checkpoint_interval")  # no effect on what a run computes


def _flatten(node, prefix: str, out: dict) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k not in _SKIP:
                _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = node


def _as_hparam(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else str(value)


def conf_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "conf"


def group_keys(group: str) -> set[str]:
    """Every knob of every option of a config group, read from ``conf/<group>/*.yaml``, so that
    every run logs the same hparam key set (the dashboard takes its columns from one run). Only
    keys matter, so plain YAML (libyaml when present) reads them: 4 ms for all groups against
    50 ms through OmegaConf, paid at every start-up."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    keys: set[str] = set()
    folder = conf_dir() / group
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        flat: dict = {}
        node = yaml.load(path.read_text(), Loader=loader) or {}
        _flatten({k: v for k, v in node.items() if k != "defaults"}, group, flat)
        keys.update(flat)
    return keys


def flat_hparams(cfg: DictConfig, extra: dict | None = None) -> dict:
    """The run's config as flat ``group.key`` scalars plus ``extra`` (resolved values such as
    warmup steps), padded with ``"n/a"`` for knobs that other options of a group have."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    flat: dict = {"seed": resolved.get("seed")}
    for group in HPARAM_GROUPS:
        _flatten(resolved.get(group, {}), group, flat)
        for key in group_keys(group):
            flat.setdefault(key, "n/a")
    flat.update(extra or {})
    return {k: _as_hparam(v) for k, v in sorted(flat.items())}


def _after_existing_files(run_dir: Path) -> None:
    """Wait (at most a second) until a new event file's name sorts after every existing one.
    Readers load event files in name order, ``events.out.tfevents.<seconds>.<host>.<pid>.<n>``,
    and a purge only drops the events of files read before it: within the same second and
    process the counter ``n`` compares as text (``.10`` before ``.9``)."""
    stamps = []
    for f in run_dir.glob("events.out.tfevents.*"):
        try:
            stamps.append(int(f.name.split(".")[3]))
        except (IndexError, ValueError):
            continue
    if stamps:
        wait = max(stamps) + 1 - time.time()
        if 0 < wait <= 1:
            time.sleep(wait)


class RunWriter:
    """``SummaryWriter`` on the run directory plus the hparams summary written on that same
    writer (``add_hparams`` would make a separate sub-run)."""

    def __init__(self, run_dir: Path, flush_secs: int = 30, purge_step: int | None = None):
        # purge_step (a resumed run): readers discard this directory's earlier events at steps
        # >= purge_step, i.e. those logged after the checkpoint by the interrupted process
        if purge_step is not None:
            _after_existing_files(Path(run_dir))
        self.writer = SummaryWriter(log_dir=str(run_dir), flush_secs=flush_secs, purge_step=purge_step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Several tags of one step in one event (the same ``simple_value`` records as
        ``add_scalar``, at a fraction of the cost per tag)."""
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v))
                                 for tag, v in values.items()])
        self.writer.file_writer.add_summary(summary, step)

    def start_hparams(self, hparams: dict) -> None:
        exp, ssi, self._session_end = hparams_summary(hparams, {m: 0.0 for m in HPARAM_METRICS})
        self.writer.file_writer.add_summary(exp)
        self.writer.file_writer.add_summary(ssi)

    def end_hparams(self, final: dict, step: int) -> None:
        """Write the final metric values under the hparam metric tags, and the session end."""
        for tag in HPARAM_METRICS:
            value = final.get(tag.split("/", 1)[1])
            self.writer.add_scalar(tag, float("nan") if value is None else float(value), step)
        self.writer.file_writer.add_summary(self._session_end)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def abandon(self) -> None:
        """Stop the writer without flushing (the disk is full): its thread ends, nothing raises."""
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - the pending events are lost with the disk space
            pass
