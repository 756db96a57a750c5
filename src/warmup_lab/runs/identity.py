"""What defines a run, and which config keys do not change its numbers: one definition for
checkpoints, sweeps, the analysis, TensorBoard and fused grouping.

Keys are dotted paths into the composed config (``trainer.threads``); a key also covers its
children (``paths`` covers ``paths.output_root``), never a longer name (``study.metric`` does not
cover ``study.metrics``). Four kinds of key sit outside a run's identity:

* :data:`BOOKKEEPING`: how a run is driven and where its files and data live (the resume flag,
  progress bars, checkpoint interval, output paths, the data root and download flag, launcher and
  Hydra settings). Never part of a run.
* :data:`SPEED`: how fast a run goes (threads, device, compile, memory layout). A run may resume
  under other values; CPU results are bitwise equal only at the same thread count (run.py warns).
  Fused runs share them (one process), and HParams shows them next to the wall time.
* :data:`STUDY`: the ``study`` block, what a sweep asks of its runs (the claim, the sequential
  design) and the inputs of interpolations such as ``optimizer.lr = base_lr x lr_mult``. In a
  resolved config those inputs show in the keys they feed, so the whole block is left out; in an
  override list only :data:`STUDY_DESIGN` is (``study.lr_mult=4`` is the only record of an lr there).
* :data:`RECORDING`: what a run records, not what it trains: the task name (the first part of
  its output path), the log interval, the stability metrics. Part of a run's identity (a resumed
  run keeps recording the same way) but not of its numbers: runs that differ only in these are
  one arm.

:data:`SEEDS` change the numbers but are the paired factor of every comparison, so arms pool
them. :data:`PER_RUN` are the keys runs of one fused group may differ in.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

BOOKKEEPING = ("trainer.resume", "trainer.progress", "trainer.checkpoint_interval", "paths", "data.root",
               "data.download", "launcher", "hydra")
SPEED = ("trainer.threads", "trainer.device", "trainer.compile", "trainer.compile_optimizer",
         "trainer.channels_last", "trainer.stack")
STUDY = ("study",)
STUDY_DESIGN = ("study.claim", "study.max_seeds", "study.round_seeds", "study.budget_minutes", "study.alpha",
                "study.spending", "study.margin", "study.metric")
RECORDING = ("task_name", "trainer.log_interval", "trainer.metrics")
SEEDS = ("seed", "trainer.seed")
PER_RUN = ("seed", "trainer.seed", "optimizer", "scheduler")

#: keys of a resolved config outside a run's identity
NOT_IDENTITY = BOOKKEEPING + SPEED + STUDY
#: keys of an override list outside a run's identity (the sweeps' ``ignore_overrides`` default)
NOT_IDENTITY_OVERRIDES = BOOKKEEPING + SPEED + STUDY_DESIGN
#: keys that do not change a run's numbers (seeds aside)
NOT_NUMBERS = NOT_IDENTITY + RECORDING


def matches(key: str, prefixes: Iterable[str]) -> bool:
    """``key`` is one of ``prefixes`` or below one of them (at a dot)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def flatten(node, prefix: str = "", *, sequences=list, skip: Iterable[str] = ()) -> dict:
    """A nested mapping as ``{"a.b": leaf}`` in insertion order. Lists become ``sequences`` (``tuple``
    for hashable values); keys under ``skip`` (dotted, :func:`matches`) are left out; an empty
    mapping leaves no key."""
    out: dict = {}
    skip = tuple(skip)

    def walk(n, p):
        if isinstance(n, dict):
            for k, v in n.items():
                key = f"{p}.{k}" if p else str(k)
                if not (skip and matches(key, skip)):
                    walk(v, key)
        elif isinstance(n, (list, tuple)):
            out[p] = sequences(n)
        else:
            out[p] = n

    walk(node, prefix)
    return out


def without(tree: dict, keys: Iterable[str]) -> dict:
    """A copy of a nested mapping with the dotted ``keys`` (and what is under them) removed."""
    out = {}
    for k, v in tree.items():
        below = [key[len(k) + 1:] for key in keys if key.startswith(f"{k}.")]
        if k in keys:
            continue
        out[k] = without(v, below) if isinstance(v, dict) and below else v
    return out


def _container(cfg) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def run_identity(cfg) -> str:
    """The resolved config without :data:`NOT_IDENTITY`, as canonical JSON: what a checkpoint or a
    finished record must have been written by for a run to continue from it or be skipped."""
    return json.dumps(without(_container(cfg), NOT_IDENTITY), sort_keys=True, default=str)


def digest(identity: str) -> str:
    """16 hex digits of the SHA-256 of a :func:`run_identity` (``config_digest`` in metrics.json)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def identity_diff(old: str, new: str, limit: int = 5) -> list[str]:
    """``key: old -> new`` lines for the leaves that differ between two :func:`run_identity`."""
    a, b = flatten(json.loads(old)), flatten(json.loads(new))
    lines = [f"{k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}"
             for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def changes_numbers(key: str) -> bool:
    """Whether runs that differ in ``key`` (a flat config key) may have different numbers: False
    for :data:`NOT_NUMBERS` and :data:`SEEDS` (pooled as the paired factor). Arms group on the rest."""
    return not (key in SEEDS or matches(key, NOT_NUMBERS))


def fuse_key(cfg) -> dict:
    """The flat config runs of one fused group must share: the identity without :data:`PER_RUN`,
    plus :data:`SPEED` (one process trains the group)."""
    tree = without(_container(cfg), BOOKKEEPING + STUDY + PER_RUN)
    return flatten(tree, sequences=tuple)
