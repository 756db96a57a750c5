"""Which runs of a sweep train together as one group (``launcher=fused``, :func:`warmup_lab.runs.run.run_group`).

Runs of one group share one process, one data set and one architecture: their configs may differ
only in :data:`warmup_lab.runs.identity.PER_RUN` (seeds, the whole optimizer, the schedule), since
each run keeps its own torch optimizer and schedule. A run that cannot join a group
(:func:`fusable` names why) trains alone, as a group of one.
"""

from __future__ import annotations

from omegaconf import DictConfig

from warmup_lab.runs.identity import PER_RUN, fuse_key


def fusable(cfg: DictConfig) -> str | None:
    """Why the run of ``cfg`` must train alone, or None when it may share a group."""
    if (cfg.trainer.get("metrics") or {}).get("curvature_interval"):
        return "the curvature probe runs in the trainer of a run alone"
    return None


def check_fusable(cfgs: list[DictConfig]) -> None:
    """``ValueError`` unless the configs may train as one group: each :func:`fusable` and all
    the same outside :data:`PER_RUN`."""
    for i, cfg in enumerate(cfgs):
        reason = fusable(cfg)
        if reason is not None:
            raise ValueError(f"config {i} cannot train in a group of {len(cfgs)}: {reason}")
    first = fuse_key(cfgs[0])
    for i, cfg in enumerate(cfgs[1:], 1):
        other = fuse_key(cfg)
        diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if diff:
            raise ValueError(f"config {i} differs from config 0 in {', '.join(diff)}; runs of one group "
                             f"may differ only in {', '.join(PER_RUN)}")


def fused_groups(cfgs: list[DictConfig], max_runs: int) -> list[list[int]]:
    """Indices of ``cfgs`` in groups of at most ``max_runs`` that may train together (same config
    outside :data:`PER_RUN`, each :func:`fusable`), in first-seen order; a config that cannot
    share a group is a group of its own."""
    groups: dict[str, list[list[int]]] = {}
    order: list[list[int]] = []
    for i, cfg in enumerate(cfgs):
        if fusable(cfg) is not None:
            order.append([i])
            continue
        key = repr(sorted(fuse_key(cfg).items()))
        chunks = groups.setdefault(key, [])
        if not chunks or len(chunks[-1]) >= max_runs:
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(i)
    return order
