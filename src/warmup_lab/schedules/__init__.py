"""Learning-rate schedules as pure functions of the optimizer step.

A schedule maps the step ``s`` (0 = the first update) to the multiplier of every param group's base
lr. It is built from a warmup part and a decay part, can be evaluated at any step (also past the
end of training), and holds no state, so plotting, testing and resuming need only the step count.
The optimizer sees it through :class:`ScheduleLR`, whose whole state is the step.

    sched = build_schedule(cfg.scheduler, total_steps=T, optimizer_cfg=cfg.optimizer)
    adapter = ScheduleLR(optimizer, sched)   # sets lr = initial_lr * sched(0)
    ...; optimizer.step(); adapter.step()    # once per update

Modules: ``parts`` (warmup ramps and decay curves), ``schedule`` (how parts combine),
``knobs`` (typed config reading and the ratio rounding rule), ``registry`` (one builder per
``conf/scheduler/<name>.yaml``), ``adapter`` (the optimizer side).
"""

from warmup_lab.schedules.adapter import ScheduleLR
from warmup_lab.schedules.errors import ScheduleError
from warmup_lab.schedules.knobs import ratio_to_steps
from warmup_lab.schedules.registry import SCHEDULES, STEP_RATIO_PAIRS, build_schedule
from warmup_lab.schedules.schedule import Schedule

__all__ = ["SCHEDULES", "STEP_RATIO_PAIRS", "Schedule", "ScheduleError", "ScheduleLR",
           "build_schedule", "ratio_to_steps"]
