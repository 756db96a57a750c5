"""Checkpoints of one run: atomic writes, the last two kept, safe loading with fallback.

A checkpoint is one ``torch.save`` file ``<run_dir>/checkpoints/step_<step>.pt`` holding only
tensors and plain Python types (the RNG states included), so it loads with
``torch.load(weights_only=True)``: no pickled code runs when a checkpoint is read. A file is
written to a temporary name and renamed into place, so a reader sees a whole checkpoint or
none; the newest :data:`KEEP` are kept. A truncated or corrupt newest file is moved aside
(``*.corrupt``) with a warning and the previous one is used.

The state itself comes from :meth:`warmup_lab.engine.trainer.Trainer.state_dict` (K runs: a run alone
is K = 1); this module adds the RNG helpers; the ``config`` it stores is the list of the runs'
identities (:func:`warmup_lab.runs.identity.run_identity`), which a resumed run must match.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

FORMAT = 3            # 2: a header line with the SHA-256 of the payload; 3: K runs (``runs``, one stacked ``model``)
READS = (3,)
HEADER = b"warmup-lab checkpoint sha256="
KEEP = 2
FOLDER = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")
REQUIRED = ("format", "step", "purge_step", "model", "runs", "buffer", "rng", "config")

class CheckpointError(RuntimeError):
    """No usable checkpoint, or one written by a different config; the message says what to do."""


class CheckpointFormatError(CheckpointError):
    """A whole checkpoint of a format this code does not read (an earlier version wrote it)."""


# -- RNG states as tensors and plain types ---------------------------------------------------------
def rng_state() -> dict:
    """torch (CPU and, once initialised, every CUDA device), numpy's global and Python's
    ``random`` states, in types that ``weights_only`` loading accepts."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    cuda = (torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and torch.cuda.is_initialized() else [])
    return {"torch": torch.get_rng_state(), "cuda": cuda,
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# -- files ----------------------------------------------------------------------------------------
def checkpoint_files(folder: str | Path) -> list[Path]:
    """The checkpoints in ``folder``, newest (highest step) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save(folder: str | Path, state: dict, keep: int = KEEP) -> Path:
    """Write ``state`` atomically as ``step_<step>.pt`` (temporary file, fsync, rename), then
    delete all but the newest ``keep`` checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{int(state['step']):09d}.pt"
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    payload = buf.getbuffer()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(HEADER + hashlib.sha256(payload).hexdigest().encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    for old in checkpoint_files(folder)[keep:]:
        old.unlink(missing_ok=True)
    return path


def load(path: str | Path) -> dict:
    """Read one checkpoint safely (``weights_only``) on the CPU and check it is complete and
    that its bytes match the SHA-256 written with it (a flipped or zeroed byte anywhere, even
    inside tensor data that would load, is caught). Files of another format raise :class:`CheckpointFormatError`."""
    raw = Path(path).read_bytes()
    if raw.startswith(HEADER):
        end = raw.index(b"\n", len(HEADER))
        want, payload = raw[len(HEADER):end].decode(), memoryview(raw)[end + 1:]
        if hashlib.sha256(payload).hexdigest() != want:
            raise CheckpointError(f"{path} fails its checksum (sha256): the file was damaged after it was written")
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    else:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict")
    if state.get("format") not in READS:
        raise CheckpointFormatError(
            f"{path} has format {state.get('format')} (an earlier warmup-lab wrote it); this version reads "
            f"{', '.join(map(str, READS))}: delete {Path(path).parent} to start this run again from step 0")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    return state


def load_latest(folder: str | Path) -> tuple[dict, Path] | None:
    """The newest readable checkpoint in ``folder`` and its path, or None when there is none.

    An unreadable one (truncated, corrupt, incomplete) is logged, renamed to ``*.corrupt`` and
    skipped for the one before it. Raises :class:`CheckpointError` when checkpoints exist but
    none can be read."""
    folder = Path(folder)
    problems = []
    for path in checkpoint_files(folder):
        try:
            return load(path), path
        except CheckpointFormatError:
            raise  # whole, only older: never moved aside
        except Exception as err:  # noqa: BLE001 - any failure to read means: use the previous one
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            aside = path.with_name(path.name + ".corrupt")
            try:
                path.replace(aside)
            except OSError:
                aside = path
            log.warning("checkpoint %s cannot be read (%s); moved it to %s and falling back to "
                        "the previous checkpoint", path, reason, aside.name)
            problems.append(f"{path.name}: {reason}")
    if problems:
        raise CheckpointError(f"no readable checkpoint in {folder} ({'; '.join(problems)}); "
                              f"delete {folder} to start this run again from step 0")
    return None
