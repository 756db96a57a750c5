"""The one error type of the schedule library."""


class ScheduleError(ValueError):
    """A bad scheduler setting. The message is one line naming the config key and the allowed
    values, e.g. ``scheduler.warmup_ratio=1.5 is invalid: must be in [0, 1)``."""
