"""A run directory's integrity: one writer at a time, no stale curves, no half-written files.

* :class:`RunDirLock`: an exclusive ``flock`` on ``<run dir>/.lock`` held for the whole run. A
  second process on the same directory (two commands with one ``hydra.run.dir``, a resumed sweep
  next to orphaned workers) gets :class:`RunDirBusy`, one line naming the holder (pid, host,
  start time, command). The kernel drops the lock when the holder dies, even by SIGKILL, so a
  lock is never stale.
* :func:`set_aside_dead_session`: a run that starts again from step 0 in a directory that holds
  an earlier session's events (killed before its first checkpoint, or its checkpoints deleted)
  moves those event files and its ``error.txt`` to ``stale/<time>/``, renamed so that no
  TensorBoard reader loads them (``tfevents`` becomes ``dead-session``): the curves then hold
  exactly one point per step, all from the new session, and nothing is deleted.
* :func:`remove_orphan_temp_files`: temporary files of a killed writer (``checkpoints/.tmp-*``,
  ``.metrics.json.*.tmp``) are removed at the next start.
* :class:`RunDir`: the records of a run, each written whole (a temporary file, then a rename):
  ``metrics.json`` (the result), ``run_meta.json`` (when, where and by what code, and every
  session), ``error.txt``. A failure record never replaces a finished one.
* :class:`DiskReserve` and :func:`disk_full`: 256 KiB kept aside while a run trains, freed when
  the disk fills so the run can still record ``status: failed`` and why; :func:`disk_full` tells
  a full disk from other errors, however deep torch or TensorBoard wrapped it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

from warmup_lab.runs.runinfo import now, read_json, write_json, write_text as write_text_atomic

FINISHED = ("completed", "diverged")  # a run with this status is done: its record is final
LOCK_FILE = ".lock"
STALE = "stale"
GROUP_CHECKPOINTS = "fused_checkpoints"  # a group of K > 1 runs: its checkpoints, in its first run dir
RESERVE_FILE = ".disk-reserve"
RESERVE_BYTES = 256 * 1024


class RunDir:
    """The files that record one run. Every write is atomic (:func:`runinfo.write_text`); readers
    get None for a missing or unreadable file."""

    METRICS, META, ERROR = "metrics.json", "run_meta.json", "error.txt"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def metrics(self) -> dict | None:
        return read_json(self.path / self.METRICS)

    def meta(self) -> dict | None:
        return read_json(self.path / self.META)

    def status(self) -> str | None:
        return (self.metrics() or {}).get("status")

    def finished(self) -> bool:
        return self.status() in FINISHED

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.path / self.METRICS, metrics)

    def write_meta(self, meta: dict) -> None:
        write_json(self.path / self.META, meta)

    def write_error(self, text: str) -> None:
        write_text_atomic(self.path / self.ERROR, text)

    def start_session(self, meta: dict, continuing: bool, restart: dict | None = None) -> tuple[dict, list]:
        """Write ``run_meta.json`` for a session that starts now (``meta``: :func:`runinfo.run_metadata`
        plus ``status: running``) and return ``(meta, sessions)``. Earlier sessions are kept (a
        restart from step 0 included), one that never ended (SIGKILL, a node lost, OOM) is listed
        as ``killed``; ``first_start_time`` carries over when the run continues from a checkpoint;
        ``restart`` (a restart from step 0 and why) is added to ``restarts``."""
        earlier = self.meta() or {}
        old = earlier if continuing else {}
        meta = {**meta, "first_start_time": old.get("first_start_time", old.get("start_time", meta["start_time"]))}
        restarts = list(earlier.get("restarts", [])) + ([restart] if restart else [])
        if restarts:
            meta["restarts"] = restarts
        sessions = list(earlier.get("sessions", []))
        if earlier.get("status") == "running":  # that session never ended: say so
            sessions.append({"start_time": earlier.get("start_time"), "end_time": None, "status": "killed",
                             "from_step": earlier.get("resumed_from_step") or 0, "to_step": None,
                             "hostname": earlier.get("hostname"), "device_name": earlier.get("device_name")})
        self.write_meta({**meta, "sessions": sessions})  # the history survives a SIGKILL of this session
        return meta, sessions

    def end_session(self, meta: dict, sessions: list, status: str, from_step: int, to_step: int | None) -> None:
        """Append this session (from its start to now) and write the final ``run_meta.json``."""
        end = now()
        sessions.append({"start_time": meta["start_time"], "end_time": end, "status": status, "from_step": from_step,
                         "to_step": to_step, "hostname": meta.get("hostname"), "device_name": meta.get("device_name")})
        self.write_meta({**meta, "end_time": end, "status": status, "sessions": sessions})

    def record_failure(self, error: str, traceback_text: str) -> dict:
        """``error.txt`` and ``metrics.json`` with ``status: failed``, unless the run already
        finished (then its record stays and is returned with the error added)."""
        self.path.mkdir(parents=True, exist_ok=True)
        metrics = {"status": "failed", "error": error, "run_dir": str(self.path)}
        previous = self.metrics()
        if previous and previous.get("status") in FINISHED:
            return {**metrics, "status": previous["status"]}
        self.write_error(traceback_text)
        self.write_metrics(metrics)
        return metrics


class RunDirBusy(RuntimeError):
    """Another process writes this run directory; the message names it."""


class DiskFull(OSError):
    """No space left on the device; the message says where."""


class RunDirLock:
    """``with RunDirLock(run_dir): ...``: this process is the directory's only writer."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunDirLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunDirBusy(f"{self.run_dir} is in use by {holder_text(self.path)}: one writer per run "
                                 f"directory; wait for it to end or stop it first") from None
            if err.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                print(f"warning: {self.run_dir}: this filesystem has no file locks ({err.strerror}); "
                      f"running without the one-writer guard", file=sys.stderr, flush=True)
                return self
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:300]}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(info) + "\n").encode())
        except OSError:  # a full disk: the lock itself still holds
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder_text(lock_path: Path) -> str:
    try:
        info = json.loads(Path(lock_path).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} "
            f"({info.get('command', '')[:120]})")


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%S-%fZ")


def event_files(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob("events.out.tfevents.*"))


def set_aside_dead_session(run_dir: str | Path) -> Path | None:
    """Move the event files, ``error.txt`` and the checkpoints of another group
    (``fused_checkpoints/``) an earlier session left in ``run_dir`` (the run starts from step 0) to
    ``stale/<time>/``, renamed so no TensorBoard reader loads them and no resume finds them.
    Returns that folder, or None when there was nothing to move."""
    run_dir = Path(run_dir)
    files = event_files(run_dir) + [p for p in (run_dir / "error.txt", run_dir / GROUP_CHECKPOINTS) if p.exists()]
    if not files:
        return None
    folder = run_dir / STALE / _stamp()
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        f.replace(folder / f.name.replace("tfevents", "dead-session"))
    return folder


def remove_orphan_temp_files(run_dir: str | Path) -> list[Path]:
    """Temporary files that a killed writer left (checkpoints and atomic JSON writes)."""
    run_dir = Path(run_dir)
    found = (list((run_dir / "checkpoints").glob(".tmp-*")) + list((run_dir / GROUP_CHECKPOINTS).glob(".tmp-*"))
             + list(run_dir.glob(".*.json.*.tmp"))
             + list(run_dir.glob(".error.txt.*.tmp")))
    for p in found:
        p.unlink(missing_ok=True)
    return found


class DiskReserve:
    """A file of ``RESERVE_BYTES`` kept while the run trains; :meth:`free` gives the space back
    (the disk is full, and the run still has to write its record)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / RESERVE_FILE

    def __enter__(self) -> "DiskReserve":
        try:
            with open(self.path, "wb") as f:
                f.write(b"\0" * RESERVE_BYTES)
                f.flush()
                os.fsync(f.fileno())
        except OSError:  # no room even for this: nothing to give back later
            self.path.unlink(missing_ok=True)
        return self

    def free(self) -> None:
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc) -> None:
        self.free()


_FULL_TEXT = ("no space left on device", "file write failed", "disk quota exceeded")


def disk_full(err: BaseException | None) -> bool:
    """True when ``err`` (or anything in its cause/context chain) is a full disk: ENOSPC/EDQUOT,
    or torch's zip writer's "file write failed", which hides the errno."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(err, DiskFull):
            return True
        text = str(err).lower()
        if any(t in text for t in _FULL_TEXT):
            return True
        err = err.__cause__ or err.__context__
    return False


def disk_full_text(where: str | Path) -> str:
    where = Path(where)
    try:
        usage = shutil.disk_usage(where if where.exists() else where.parent)
        room = f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.0f} MiB"
    except OSError:
        room = "free space unknown"
    return (f"disk full: no space left on the device of {where} ({room}); free some space or move "
            f"the outputs (hydra.run.dir / paths.output_root), then run the same command again to continue")
