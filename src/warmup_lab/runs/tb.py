"""TensorBoard logging: one run = one directory, hparams linked to the run's own scalars."""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from warmup_lab.runs import identity

# Final metrics shown in the HParams dashboard; the same names in every run.
# metrics that mean something on a healthy run too: not max_spike_ratio, which divides by the
# lowest loss so far and reads 100+ once a run's loss falls to 1e-4 (the early-phase one is kept)
HPARAM_METRICS = ("summary/final_val_loss", "summary/best_val_loss", "summary/final_val_acc",
                  "summary/final_train_loss", "summary/diverged", "summary/steps",
                  "summary/early_jitter", "summary/early_max_spike_ratio", "summary/train_loss_auc")
#: What a user opens first, pinned on top of TensorBoard's Time Series by :func:`time_series_url`.
#: The other cards come in TensorBoard's own order (grouped by the tag's first segment, groups
#: sorted by name, the first two expanded): ``curvature/``, ``jitter/``, ``layer/`` (per-layer
#: statistics), ``summary/`` (the final values HParams reads, one point each), ``train/``, ``val/``.
TIME_SERIES_FIRST = ("train/loss", "train/lr", "val/loss", "val/acc", "jitter/loss_std")
HPARAM_GROUPS = ("model", "data", "optimizer", "scheduler", "trainer")
# HParams shows every knob but the bookkeeping ones (identity.BOOKKEEPING: resume flag, progress
# bars, checkpoint interval, data root); the speed knobs (threads, device, compile) stay, next to
# the run time they explain. ``_target_`` names a class, not a knob.


def tensorboard_command(logdir) -> str:
    """The exact command to view ``logdir``: the venv's TensorBoard, every scalar point kept."""
    return f".venv/bin/tensorboard --logdir {logdir} --samples_per_plugin scalars=100000"


def time_series_url(tags=TIME_SERIES_FIRST, port: int = 6006) -> str:
    """TensorBoard's Time Series with ``tags`` pinned on top, in that order: its own deep link
    (the ``pinnedCards`` query parameter the frontend reads and writes)."""
    import json
    from urllib.parse import quote

    cards = json.dumps([{"plugin": "scalars", "tag": t} for t in tags], separators=(",", ":"))
    return f"http://localhost:{port}/?pinnedCards={quote(cards, safe='[]{}:,/')}#timeseries"


def view_hint(logdir, tags=TIME_SERIES_FIRST) -> str:
    """One line for the console: the command, and the page to open once it runs."""
    return f"view: {tensorboard_command(logdir)}   then open {time_series_url(tags)}"


def _flatten(node, prefix: str, out: dict) -> None:
    flat = identity.flatten(node, prefix, skip=identity.BOOKKEEPING)
    out.update((k, v) for k, v in flat.items() if k.rsplit(".", 1)[-1] != "_target_")


def _as_hparam(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    return "null" if value is None else str(value)


def conf_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "conf"


def group_keys(group: str) -> set[str]:
    """Every knob of every option of a config group, read from ``conf/<group>/*.yaml``, so that
    every run logs the same hparam key set (the dashboard takes its columns from one run). Only
    keys matter, so plain YAML (libyaml when present) reads them: 4 ms for all groups against
    50 ms through OmegaConf, paid at every start-up."""
    return {k for flat in option_defaults(group) for k in flat}


@functools.lru_cache(maxsize=None)
def option_defaults(group: str) -> tuple[dict, ...]:
    """Each option file of ``conf/<group>/`` as flat ``group.key`` defaults, read once."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out = []
    folder = conf_dir() / group
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        flat: dict = {}
        node = yaml.load(path.read_text(), Loader=loader) or {}
        _flatten({k: v for k, v in node.items() if k != "defaults"}, group, flat)
        out.append(flat)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def string_keys() -> frozenset[str]:
    """Knobs whose YAML default, in some option, is a string (or a list: logged as text); every
    other knob is a number or a boolean, so a missing or null value of it is logged as NaN, not
    text that would turn its HParams column into strings."""
    keys = {"trainer.device", "data.path"}
    for group in HPARAM_GROUPS:
        keys.update(k for flat in option_defaults(group) for k, v in flat.items() if isinstance(v, (str, list)))
    return frozenset(keys)


@functools.lru_cache(maxsize=None)
def resolved_keys() -> frozenset[str]:
    """``resolved.<key>`` of every schedule's ``info()`` (built once at its defaults), so the
    resolved columns are the same in every run too."""
    from warmup_lab.schedules import SCHEDULES, build_schedule

    keys: set[str] = set()
    for name in SCHEDULES:
        try:
            sched = build_schedule({"name": name}, total_steps=1000,
                                   optimizer_cfg={"name": "adamw", "lr": 1.0, "betas": [0.9, 0.999]})
        except Exception:  # noqa: BLE001 - a schedule with a required knob: its keys come with its runs
            continue
        keys.update(f"resolved.{k}" for k in sched.info())
    return frozenset(keys | {"resolved.total_steps", "resolved.steps_per_epoch", "resolved.params"})


def flat_hparams(cfg: DictConfig, extra: dict | None = None) -> dict:
    """The run's config as flat ``group.key`` scalars plus ``extra`` (resolved values such as
    warmup steps, the device the run used), padded so every run has the same key set: knobs
    that other options of a group have, and every schedule's resolved keys. A missing or null
    value is NaN for numeric and boolean knobs (so their columns stay numeric) and ``"n/a"`` or
    ``"null"`` for string ones."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    flat: dict = {"seed": resolved.get("seed")}
    for group in HPARAM_GROUPS:
        _flatten(resolved.get(group, {}), group, flat)
        for key in group_keys(group):
            flat.setdefault(key, _MISSING)
    flat.update(extra or {})
    for key in resolved_keys():
        flat.setdefault(key, _MISSING)
    text = string_keys()
    out = {}
    for k, v in sorted(flat.items()):
        if v is _MISSING:
            v = "n/a" if k in text else math.nan
        elif v is None:
            v = "null" if k in text else math.nan
        out[k] = _as_hparam(v)
    return out


_MISSING = object()


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

    def start_hparams(self, hparams: dict, experiment: bool = True) -> None:
        """The run's HParams session; with ``experiment`` also the experiment (its columns and
        :data:`HPARAM_METRICS`), which a single run needs. A run of a sweep writes none: the
        dashboard takes the first experiment it finds, so there must be one per log dir, the
        sweep's own (:func:`write_sweep_experiment`, at its root); until the sweep writes it,
        TensorBoard builds one from the sessions, the varying keys first."""
        exp, ssi, self._session_end = hparams_summary(hparams, {m: 0.0 for m in HPARAM_METRICS})
        if experiment:
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


# -- one HParams experiment per sweep ---------------------------------------------------------
HPARAMS_SUFFIX = ".hparams"


def swept_keys(rows: list[dict]) -> set[str]:
    """The keys a sweep varies on purpose, out of those whose value differs between runs
    (``rows``: each run's flat hparams). A key that differs only because an option changed is
    left out: with ``optimizer=sgd,adamw``, ``optimizer.betas`` and the default ``optimizer.lr``
    follow ``optimizer.name``. So: every differing ``<group>.name`` and ``seed``; any other
    differing config key unless the differing names together determine it or it copies a swept
    key (``trainer.seed: ${seed}``); a differing
    ``resolved.*`` key unless the swept config keys (seed aside) determine it. The HParams
    dashboard sorts these first and shows the first five."""
    def value(r, k):
        v = r.get(k)
        return "nan" if isinstance(v, float) and math.isnan(v) else repr(v)

    def determines(by: list[str], k: str) -> bool:
        seen: dict = {}
        return bool(by) and all(seen.setdefault(tuple(value(r, b) for b in by), value(r, k)) == value(r, k)
                                for r in rows)

    keys = sorted({k for r in rows for k in r})
    differ = [k for k in keys if len({value(r, k) for r in rows}) > 1]
    names = [k for k in differ if k.endswith(".name")]
    swept = set(names) | ({"seed"} & set(differ))
    for k in differ:
        copy = any(all(value(r, k) == value(r, o) for r in rows) for o in swept)  # trainer.seed: ${seed}
        if k not in swept and not k.startswith("resolved.") and not copy and not determines(names, k):
            swept.add(k)
    by = sorted(swept - {"seed"})
    swept |= {k for k in differ if k.startswith("resolved.") and not determines(by, k)}
    return swept


def sweep_experiment(rows: list[dict]) -> "Summary":
    """The hparams plugin's experiment for a sweep, from each run's flat hparams (``rows``):
    every key once, the swept ones first (:func:`swept_keys`, marked ``differs``, which the
    dashboard sorts first), each
    with its type (float where every value is a number, bool, else string) and its domain (the
    values the sweep has, or their range above 12 values), then :data:`HPARAM_METRICS`."""
    from google.protobuf import struct_pb2
    from tensorboard.compat.proto.summary_pb2 import SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    keys = sorted({k for r in rows for k in r})
    swept = swept_keys(rows)
    infos = []
    for k in keys:
        vals = [r.get(k) for r in rows]
        real = [v for v in vals if not (isinstance(v, float) and math.isnan(v)) and v not in ("n/a", "null", None)]
        info = api_pb2.HParamInfo(name=k, differs=k in swept)
        if real and all(isinstance(v, bool) for v in real):
            info.type = api_pb2.DATA_TYPE_BOOL
        elif real and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in real):
            info.type = api_pb2.DATA_TYPE_FLOAT64
            nums = sorted({float(v) for v in real})
            if len(nums) <= 12:
                info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=[struct_pb2.Value(number_value=x) for x in nums]))
            else:
                info.domain_interval.CopyFrom(api_pb2.Interval(min_value=nums[0], max_value=nums[-1]))
        else:
            info.type = api_pb2.DATA_TYPE_STRING
            texts = sorted({str(v) for v in vals if v is not None})
            if len(texts) <= 12:
                info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=[struct_pb2.Value(string_value=x) for x in texts]))
        infos.append(info)
    infos.sort(key=lambda i: (not i.differs, i.name))
    exp = api_pb2.Experiment(hparam_infos=infos,
                             metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=m)) for m in HPARAM_METRICS])
    content = plugin_data_pb2.HParamsPluginData(experiment=exp, version=metadata.PLUGIN_DATA_VERSION)
    smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                 content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=metadata.EXPERIMENT_TAG, metadata=smd)])


def write_sweep_experiment(sweep_dir: Path, run_dirs: list[Path]) -> Path | None:
    """Write :func:`sweep_experiment` of the runs' composed configs (``.hydra/config.yaml``) as
    the sweep root's own event file (suffix ``.hparams``), replacing an earlier one. Each run
    keeps its own session in its directory."""
    import warmup_lab  # noqa: F401  (resolvers used by presets)

    rows = []
    for d in run_dirs:
        cfg_path = Path(d) / ".hydra" / "config.yaml"
        if not cfg_path.is_file():
            continue
        try:
            row = flat_hparams(OmegaConf.load(cfg_path))
        except Exception:  # noqa: BLE001 - a config this code cannot resolve: left out of the columns
            continue
        from warmup_lab.runs.runinfo import read_json

        meta, metrics = read_json(Path(d) / "run_meta.json") or {}, read_json(Path(d) / "metrics.json") or {}
        if meta.get("device"):  # what the run's own session says: the device it used
            row["trainer.device"] = str(meta["device"])
        for key in ("total_steps", "warmup_steps"):
            if isinstance(metrics.get(key), (int, float)):
                row[f"resolved.{key}"] = metrics[key]
        rows.append(row)
    if not rows:
        return None
    sweep_dir = Path(sweep_dir)
    for old in sweep_dir.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"):
        old.unlink()
    w = SummaryWriter(log_dir=str(sweep_dir), filename_suffix=HPARAMS_SUFFIX)
    w.file_writer.add_summary(sweep_experiment(rows))
    w.close()
    return next(sweep_dir.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"), None)
