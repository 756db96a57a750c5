"""Graceful stop on SIGTERM / SIGINT (and submitit's preemption signal) during a run.

The first signal only sets ``trainer.stop_requested``: the loop finishes the current step
(and the evaluation due at it), saves a checkpoint, flushes the logs and ends with
``status: interrupted``. A second stop signal acts at once (Ctrl-C twice = stop now).

Under submitit (``SUBMITIT_EXECUTOR`` set; SLURM or submitit_local) the roles follow submitit:

* its preemption/timeout signal (``SIGUSR2``, or ``$SUBMITIT_PREEMPT_SIGNAL``) stops the run as
  above; afterwards :meth:`GracefulStop.hand_over` calls submitit's own handler, which
  requeues the job (the requeued job continues from the checkpoint) and exits;
* ``SIGTERM``, which submitit ignores because SLURM sends it both before a preemption and on
  ``scancel``, only asks for a checkpoint after the current step; training goes on.

Handlers are installed only in the main thread and restored on exit.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)


def restore_handlers(previous: dict) -> None:
    """Put back the signal handlers that ``signal.signal`` returned (where this thread may)."""
    for sig, handler in previous.items():
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError, TypeError):
            pass


def under_submitit() -> bool:
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def submitit_signal() -> signal.Signals | None:
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, name, None)


class GracefulStop:
    """Context manager for one run; :meth:`attach` the trainer once it exists."""

    def __init__(self):
        self.signum: int | None = None          # the signal that asked to stop
        self.trainer = None
        self._previous: dict[int, object] = {}
        self._checkpoint_asked = False
        self._submitit_handler = None           # submitit's own handler of its signal

    # -- installation ---------------------------------------------------------------------------
    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is not threading.main_thread():
            return self
        if under_submitit():
            usr = submitit_signal()
            stops = [signal.SIGINT] + ([usr] if usr is not None else [])
            self._install(signal.SIGTERM, self._checkpoint_now)
            if usr is not None:
                self._submitit_handler = signal.getsignal(usr)
        else:
            stops = [signal.SIGINT, signal.SIGTERM]
        for sig in stops:
            self._install(sig, self._stop)
        return self

    def _install(self, sig: int, handler) -> None:
        try:
            self._previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # not the main thread of the main interpreter
            pass

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        restore_handlers(self._previous)
        self._previous = {}

    # -- handlers --------------------------------------------------------------------------------
    def _stop(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: no more waiting
            previous = self._previous.get(signum, signal.SIG_DFL)
            self.restore()
            log.warning("second %s: stopping now, without a new checkpoint", signal.Signals(signum).name)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.signum = signum
        log.warning("received %s: stopping after the current step (checkpoint, logs, "
                    "status interrupted); send it again to stop at once", signal.Signals(signum).name)
        if self.trainer is not None:
            self.trainer.stop_requested = True

    def _checkpoint_now(self, signum, frame) -> None:
        log.warning("received %s under submitit: checkpointing after the current step and going "
                    "on (submitit requeues on %s)", signal.Signals(signum).name,
                    getattr(submitit_signal(), "name", "its signal"))
        self._checkpoint_asked = True
        if self.trainer is not None:
            self.trainer.checkpoint_requested = True

    # -- the run's side ---------------------------------------------------------------------------
    def attach(self, trainer) -> None:
        """Route signals to ``trainer`` (one that arrived before it existed applies now)."""
        self.trainer = trainer
        if self.signum is not None:
            trainer.stop_requested = True
        if self._checkpoint_asked:
            trainer.checkpoint_requested = True

    @property
    def signal_name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def hand_over(self) -> None:
        """After the run has written everything: under submitit, give the preemption signal to
        submitit's handler, which requeues the job and exits the process (``SystemExit``)."""
        usr = submitit_signal()
        previous = self._submitit_handler
        self.restore()
        if self.signum is None or self.signum != usr or not callable(previous):
            return
        log.info("handing %s over to submitit (requeue)", usr.name)
        try:
            previous(self.signum, None)
        except SystemExit:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. "timed-out too many times": job ends here
            log.warning("submitit did not requeue the job: %s", err)
