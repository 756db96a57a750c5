"""One live progress line for a sweep, whatever launcher runs its jobs.

The sweeper knows how many jobs it planned; the jobs may run in this process (basic, fused), in
worker processes (joblib) or on a cluster (submitit). So the line counts what every launcher
leaves behind: a job is done once its directory holds a ``metrics.json`` written since the round
started, with a final status. A thread polls the sweep directory once a second and redraws the
line on a terminal (``\\r``); in a log (CI, a file) it prints a new line when the count changes,
at most every ``log_every`` seconds. The line: runs done of planned, elapsed time, ETA.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

TERMINAL = ("completed", "diverged", "failed", "interrupted")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def finished_since(sweep_dir: Path, since: float) -> int:
    """Job directories below ``sweep_dir`` whose metrics.json was written at or after ``since``
    (a wall-clock time) with a final status."""
    n = 0
    for path in Path(sweep_dir).glob("**/metrics.json"):
        if ".submitit" in path.parts or path.parent == Path(sweep_dir):
            continue
        try:
            if path.stat().st_mtime + 1e-3 < since:
                continue
            if json.loads(path.read_text()).get("status") in TERMINAL:
                n += 1
        except (OSError, ValueError):
            continue
    return n


class SweepProgress:
    """``with SweepProgress(dir, planned, skipped, prefix): launcher.launch(...)``."""

    def __init__(self, sweep_dir: Path, planned: int, skipped: int = 0, prefix: str = "sweep",
                 stream=None, interval: float = 1.0, log_every: float = 15.0, total_planned: int | None = None):
        self.sweep_dir, self.planned, self.skipped, self.prefix = Path(sweep_dir), planned, skipped, prefix
        self.stream = stream or sys.stderr
        self.interval, self.log_every = interval, log_every
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total_planned = total_planned
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_done, self._last_print = -1, 0.0
        self.done = 0

    def line(self, done: int, elapsed: float) -> str:
        todo = self.planned - self.skipped
        new = max(0, done - self.skipped)
        eta = None if new == 0 else elapsed / new * max(0, todo - new)
        text = f"{self.prefix}: {done}/{self.planned} runs"
        if self.skipped:
            text += f" ({self.skipped} done earlier)"
        if self.total_planned:
            text += f", at most {self.total_planned} in all"
        return text + f" | elapsed {fmt_duration(elapsed)} | ETA {fmt_duration(eta) if done < self.planned else '0s'}"

    def _tick(self, final: bool = False) -> None:
        done = min(self.planned, self.skipped + finished_since(self.sweep_dir, self.start_wall))
        self.done = done
        elapsed = time.monotonic() - self.t0
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + self.line(done, elapsed) + ("\n" if final else ""))
            self.stream.flush()
        elif final or (done != self._last_done and now - self._last_print >= self.log_every):
            print(self.line(done, elapsed), file=self.stream, flush=True)
            self._last_print = now
        self._last_done = done

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._tick()
            except Exception:  # never let the display break a sweep
                pass

    def __enter__(self) -> "SweepProgress":
        self.t0, self.start_wall = time.monotonic(), time.time()
        self._thread = threading.Thread(target=self._loop, name="sweep-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._tick(final=True)
        except Exception:
            pass
