"""Open a log dir's TensorBoard pages in headless Chromium and save what a user would see.

    .venv/bin/python scripts/look_at_tensorboard.py outputs/multirun/<stamp>            # a sweep
    .venv/bin/python scripts/look_at_tensorboard.py outputs/multirun/<stamp>/tensorboard --arms

Starts TensorBoard on a free port, loads Time Series (the pinned cards of
``warmup_lab.runs.tb.time_series_url``), HParams and Custom Scalars, and writes one PNG per page to
``--out`` (default ``outputs/tensorboard_look/``). It also prints what TensorBoard's server hands the
HParams page: the first five columns, the ones the page ticks. Needs Debian's ``chromium``
(``apt-get install -y chromium``); nothing here is needed to train or test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from warmup_lab.analysis.tblayout import ARM_PINNED  # noqa: E402
from warmup_lab.runs.tb import TIME_SERIES_FIRST, time_series_url  # noqa: E402

# Chromium on a machine with no network: no background connections, a fresh profile
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"error: TensorBoard did not answer at {url} within {timeout:.0f} s")
            time.sleep(0.5)


def screenshot(browser: str, url: str, out: Path, size: str = "1400,1100") -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                        "--virtual-time-budget=40000", f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=180)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logdir", type=Path)
    ap.add_argument("--arms", action="store_true", help="the log dir is an analysis' <sweep>/tensorboard/")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "tensorboard_look")
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("error: chromium is not installed (apt-get install -y chromium)")
    if not args.logdir.is_dir():
        raise SystemExit(f"error: logdir {args.logdir} is not a directory")
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(args.logdir), "--port",
                           str(port), "--host", "127.0.0.1", "--samples_per_plugin", "scalars=100000"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/data/runs")
        pinned = ARM_PINNED if args.arms else TIME_SERIES_FIRST
        pages = {"time_series": time_series_url(pinned, port).replace("localhost", "127.0.0.1"),
                 "custom_scalars": base + "/#custom_scalars"}
        if not args.arms:
            pages["hparams"] = base + "/#hparams"
            req = urllib.request.Request(base + "/data/plugin/hparams/experiment", data=b'{"experimentName": ""}',
                                         headers={"Content-Type": "application/json"})
            exp = json.loads(urllib.request.urlopen(req, timeout=30).read())
            names = [i["name"] for i in exp.get("hparamInfos", [])]
            print(f"HParams: {len(names)} columns; shown first: {', '.join(names[:5])}")
        for name, url in pages.items():
            path = args.out / f"{name}.png"
            screenshot(browser, url, path)
            print(f"{name}: {path}")
    finally:
        tb.terminate()
        tb.wait(timeout=30)


if __name__ == "__main__":
    main()
