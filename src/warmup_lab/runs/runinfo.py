"""Run directory files: atomic JSON writes and the run's metadata (code, software, hardware)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def write_text(path: Path, text: str) -> None:
    """Write then rename, so a reader never sees a half-written file; on an error (a full
    disk, a signal) no temporary file stays behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict, default=str) -> None:
    """:func:`write_text` of ``data`` as indented JSON; ``default`` serialises what JSON does not
    know (numpy numbers, say)."""
    write_text(path, json.dumps(data, indent=2, default=default) + "\n")


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_state() -> dict:
    def git(*args):
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"git_commit": commit, "git_dirty": dirty}


def run_metadata(device, seed: int) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "platform": platform.platform(), "hostname": platform.node(),
            "device": str(device), "threads": torch.get_num_threads(), "seed": seed,
            "command": [sys.executable, *sys.argv], "start_time": now(), **git_state()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = platform.processor() or platform.machine()
    info["versions"] = package_versions()
    info.update(launch_info())
    return info


def package_versions() -> dict:
    import numpy
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "numpy": numpy.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for name in ("torchvision", "hydra-core", "omegaconf", "tensorboard", "warmup-lab"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def launch_info() -> dict:
    """How this process was started: the Hydra overrides of this run and the command that
    repeats it alone (under a launcher ``command`` is the worker's), the sweep job, the
    launcher, the cluster job id and the GPUs it may see."""
    env = os.environ
    info = {"pid": os.getpid(), "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
            "slurm_job_id": env.get("SLURM_ARRAY_JOB_ID", env.get("SLURM_JOB_ID")),
            "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
            "submitit_executor": env.get("SUBMITIT_EXECUTOR")}
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            hc = HydraConfig.get()
            overrides = [str(o) for o in hc.overrides.task]
            info.update(overrides=overrides, hydra_mode=str(hc.mode).rsplit(".", 1)[-1],
                        launcher=hc.runtime.choices.get("hydra/launcher"),
                        job_num=hc.job.get("num"), sweep_dir=hc.sweep.dir if str(hc.mode).endswith("MULTIRUN") else None,
                        rerun=" ".join(["python", "train.py", *(_quote(o) for o in overrides),
                                        f"hydra.run.dir={_quote(hc.runtime.output_dir)}"]))
    except Exception:  # noqa: BLE001 - metadata must never fail a run
        pass
    return info


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(str(text))
