"""Sweep bookkeeping: a run's identity from its overrides, earlier job directories, summaries.

A run is identified by its **overrides** (``.hydra/overrides.yaml`` of its directory), not by
its job number: ``seed=0 optimizer=sgd`` is the same run whatever its place in the sweep, and
whichever order the command line lists the values in. Overrides outside a run's identity
(:data:`warmup_lab.runs.identity.NOT_IDENTITY_OVERRIDES`: the resume flag, progress bars, threads,
device, checkpoint interval, launcher, output paths, the study's design) are left out.

Used by the resumable sweeper (``hydra_plugins/warmup_lab_sweeper``) and by ``train.py``
(``trainer.resume=true`` for a single run). No torch import here.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path

from omegaconf import OmegaConf

from warmup_lab.runs.identity import NOT_IDENTITY_OVERRIDES, SEEDS, matches
from warmup_lab.runs.rundir import FINISHED  # noqa: F401  (re-exported: a run with this status is done)

STATUSES = ("completed", "diverged", "failed", "interrupted", "unfinished")
IGNORED_OVERRIDES = NOT_IDENTITY_OVERRIDES  # the sweeper's default ignore_overrides


def _parse(overrides):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def override_key(overrides, ignore=IGNORED_OVERRIDES) -> tuple[str, ...]:
    """The run's identity: its overrides as sorted ``key=value`` strings, ``+``/``++`` prefixes
    and value spelling (``1e-1`` = ``0.1``) normalised, ``ignore``d keys (and their children)
    left out."""
    out = []
    for o in _parse(overrides):
        key = o.key_or_group + (f"@{o.package}" if o.package else "")
        if matches(o.key_or_group, ignore):
            continue
        if o.is_delete():
            out.append(f"~{key}")
        else:
            value = o.value()
            text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
            out.append(f"{key}={text}")
    return tuple(sorted(out))


def read_overrides(run_dir: Path) -> list[str] | None:
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    return [str(x) for x in OmegaConf.to_container(OmegaConf.load(path))]


def run_status(run_dir: Path) -> str:
    """``status`` of ``metrics.json``; ``unfinished`` when there is none (never started, or
    killed without a chance to write it)."""
    try:
        return json.loads((Path(run_dir) / "metrics.json").read_text()).get("status") or "unfinished"
    except (OSError, ValueError):
        return "unfinished"


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Directories under ``sweep_dir`` that Hydra ran a job in (they hold ``.hydra/overrides.yaml``)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    return sorted(p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")
                  if ".submitit" not in p.relative_to(sweep_dir).parts)


def index_runs(dirs, ignore=IGNORED_OVERRIDES) -> dict[tuple, Path]:
    """Identity -> directory; when a run appears twice, a finished one wins, then the newest."""
    best: dict[tuple, Path] = {}
    for d in dirs:
        overrides = read_overrides(d)
        if overrides is None:
            continue
        key = override_key(overrides, ignore)
        old = best.get(key)
        if old is None or _rank(d) >= _rank(old):
            best[key] = d
    return best


def latest_run(dirs, overrides, ignore=IGNORED_OVERRIDES, exclude: Path | None = None) -> Path | None:
    """The most recently active directory among ``dirs`` whose run has these overrides."""
    key = override_key(overrides, ignore)
    exclude = Path(exclude).resolve() if exclude is not None else None
    found = [d for d in dirs if Path(d).resolve() != exclude and (o := read_overrides(d)) is not None
             and override_key(o, ignore) == key]
    return max(found, key=lambda d: _rank(d)[1], default=None)


def _rank(d: Path) -> tuple:
    meta = Path(d) / "run_meta.json"
    return (run_status(d) in FINISHED, meta.stat().st_mtime if meta.exists() else 0.0)


def plan_resume(jobs: list[list[str]], sweep_dir: Path, ignore=IGNORED_OVERRIDES) -> list[dict]:
    """For each job of a sweep (its override list), where it runs on resume: ``skip`` (finished
    before, in ``dir``), ``continue`` (an earlier unfinished, interrupted or failed run of the
    same overrides: its directory, so it continues from its checkpoint) or ``new`` (a directory
    name after the highest numbered one)."""
    sweep_dir = Path(sweep_dir)
    known = index_runs(job_dirs(sweep_dir), ignore)
    numbers = [int(d.name) for d in job_dirs(sweep_dir) if d.name.isdigit()]
    next_num = max(numbers, default=-1) + 1
    plan, taken = [], set()
    for job in jobs:
        key = override_key(job, ignore)
        d = known.get(key)
        if d is not None and key not in taken:
            taken.add(key)
            status = run_status(d)
            action = "skip" if status in FINISHED else "continue"
            plan.append({"overrides": list(job), "subdir": d.relative_to(sweep_dir).as_posix(),
                         "action": action, "status": status})
        else:
            plan.append({"overrides": list(job), "subdir": str(next_num), "action": "new",
                         "status": None})
            next_num += 1
    return plan


# -- summary -----------------------------------------------------------------------------------
def summarize(records: list[dict], ignore=IGNORED_OVERRIDES, arm_ignore=SEEDS) -> dict:
    """Counts of run statuses over the sweep and per arm. ``records``: ``{"dir", "overrides",
    "status"}`` per job. An arm is the overrides that vary across the jobs, less ``arm_ignore``
    (the seed): the runs that should agree up to noise."""
    keys = [dict(k.split("=", 1) if "=" in k else (k, "") for k in override_key(r["overrides"], ignore))
            for r in records]
    varying = sorted({k for d in keys for k in d if len({e.get(k) for e in keys}) > 1}
                     - set(arm_ignore))
    arms: dict[str, Counter] = {}
    for r, d in zip(records, keys):
        label = " ".join(f"{k}={d[k]}" for k in varying if k in d) or "(all)"
        arms.setdefault(label, Counter())[r["status"]] += 1
    total = Counter(r["status"] for r in records)
    return {"jobs": len(records), "counts": dict(total),
            "arms": {label: dict(c) for label, c in arms.items()},
            "failed": [r["dir"] for r in records if r["status"] == "failed"],
            "records": records}


def format_summary(summary: dict, skipped: int = 0) -> list[str]:
    counts = summary["counts"]
    parts = [f"{counts[s]} {s}" for s in STATUSES if counts.get(s)]
    parts += [f"{n} {s}" for s, n in counts.items() if s not in STATUSES]
    lines = [f"sweep: {summary['jobs']} runs: {', '.join(parts) or 'none'}"
             + (f" ({skipped} finished earlier, skipped)" if skipped else "")]
    if len(summary["arms"]) > 1 and any(s in counts for s in ("failed", "diverged", "interrupted")):
        for label, c in summary["arms"].items():
            lines.append(f"  {label}: " + ", ".join(f"{c[s]} {s}" for s in STATUSES if c.get(s)))
    if summary["failed"]:
        lines.append("failed runs (traceback in error.txt): " + " ".join(summary["failed"]))
    return lines


# -- stopping a sweep ---------------------------------------------------------------------------
STOP_FILE = ".stop-requested"


def stop_requested(sweep_dir) -> bool:
    """True once the sweep's parent received SIGTERM/SIGINT: a job that has not started yet
    returns at once (its directory then continues on resume)."""
    return sweep_dir is not None and (Path(str(sweep_dir)) / STOP_FILE).exists()


def request_stop(sweep_dir, signal_name: str) -> None:
    """Ask the sweep to stop after the running job (a job of the sweep's own process was
    interrupted by a signal meant for the whole sweep)."""
    try:
        (Path(str(sweep_dir)) / STOP_FILE).write_text(f"{signal_name} pid {os.getpid()}\n")
    except OSError:
        pass


def _descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def job_workers() -> list[int]:
    """This process's job worker processes: joblib/loky workers (not loky's resource tracker)."""
    return [p for p in _descendants(os.getpid()) if "popen_loky" in _cmdline(p) or "LokyProcess" in _cmdline(p)]


class SweepStop:
    """SIGTERM/SIGINT to a sweep's parent: jobs that run finish their step, checkpoint and record
    ``interrupted``; jobs that have not started do not start; the parent then writes the sweep
    status, lets the worker processes end (no orphan keeps training) and exits 128 + signal.

    SIGTERM is forwarded to the job workers (``kill PID`` reaches only the parent); SIGINT is
    not, since Ctrl-C in a terminal already reached every process of the group, and a second
    signal would stop a job at once, without its checkpoint."""

    def __init__(self, sweep_dir):
        self.sweep_dir = Path(str(sweep_dir))
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "SweepStop":
        (self.sweep_dir / STOP_FILE).unlink(missing_ok=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except (ValueError, OSError):  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        first = self.signum is None
        self.signum = self.signum or signum
        if first:
            try:
                (self.sweep_dir / STOP_FILE).write_text(f"{name} pid {os.getpid()}\n")
            except OSError:
                pass
            print(f"\nreceived {name}: stopping the sweep: running jobs checkpoint and record interrupted, queued "
                  f"jobs do not start (send it again to stop the running jobs at once)", file=sys.stderr, flush=True)
        if signum == signal.SIGTERM or not first:
            for pid in job_workers():
                try:
                    os.kill(pid, signum)
                except OSError:
                    pass

    @property
    def stopped(self) -> int | None:
        """The signal that stopped the sweep: received here, or by a job of this process."""
        if self.signum is None and (self.sweep_dir / STOP_FILE).exists():
            name = (self.sweep_dir / STOP_FILE).read_text().split()[:1]
            self.signum = getattr(signal, name[0], signal.SIGTERM) if name else signal.SIGTERM
        return self.signum

    def __exit__(self, *exc) -> None:
        from warmup_lab.runs.signals import restore_handlers

        restore_handlers(self._previous)
        self._previous = {}

    def finish(self) -> None:
        """After a stop: wait for the job workers to end, remove the marker."""
        try:
            from joblib.externals.loky import reusable_executor

            if reusable_executor._executor is not None:  # the workers joblib keeps for reuse
                reusable_executor._executor.shutdown(wait=True)
        except Exception:  # noqa: BLE001 - no joblib here
            pass
        for pid in job_workers():
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
        (self.sweep_dir / STOP_FILE).unlink(missing_ok=True)


# -- SLURM: jobs that outlived the process that submitted them -------------------------------------
def slurm_job_of(run_dir: Path) -> str | None:
    """The SLURM job (``<array>_<task>`` or a plain id) that last ran ``run_dir``, from its
    ``run_meta.json``; None if SLURM never ran it."""
    from warmup_lab.runs.runinfo import read_json

    meta = read_json(Path(run_dir) / "run_meta.json") or {}
    job, task = meta.get("slurm_job_id"), meta.get("slurm_array_task_id")
    if not job:
        return None
    return f"{job}_{task}" if task not in (None, "") else str(job)


def release_slurm_jobs(run_dirs: list[Path], wait_s: float = 300.0, poll_s: float = 1.0) -> list[str]:
    """Cancel the SLURM jobs still running (or pending) in ``run_dirs``: a sweep that resumes
    after its submitting process was killed resubmits those runs, and the jobs of the dead
    submission must not write beside the new ones. ``scancel`` sends SIGTERM first (the run
    checkpoints after its step: train.py under submitit), then SIGKILL after the cluster's
    KillWait; this waits until the jobs have left the queue, so the new ones find the directory
    free and continue from that checkpoint. Returns the cancelled job ids."""
    import shutil
    import subprocess
    import time

    if shutil.which("squeue") is None:
        return []
    jobs = {j for j in (slurm_job_of(d) for d in run_dirs) if j}
    if not jobs:
        return []

    def alive() -> set[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(sorted(jobs))], capture_output=True,
                             text=True)
        return {line.strip() for line in out.stdout.splitlines() if line.strip()} & jobs

    running = alive()
    if not running:
        return []
    print(f"cancelling SLURM job(s) {', '.join(sorted(running))} of the earlier submission (they checkpoint "
          f"first); their runs continue in the new jobs", flush=True)
    subprocess.run(["scancel", *sorted(running)], check=False)
    deadline = time.monotonic() + wait_s
    while alive() and time.monotonic() < deadline:
        time.sleep(poll_s)
    return sorted(running)
