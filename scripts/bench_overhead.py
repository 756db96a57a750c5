"""Harness-overhead benchmark: steps/s of the real ``Trainer`` with K = 1 (every log and stability metric on,
TensorBoard writing, buffered flushes) against a minimal hand-written PyTorch loop on the same
model, data, batch, optimizer and schedule (forward, backward, step, lr set by a Python lambda).

Single steps of the two are interleaved in one process (bare step, harness step, bare step, ...;
the harness flushes where ``Trainer.fit`` does), from the same initial weights, then each side's
final evaluation; ``--blocks`` alternates whole runs instead. Wall and process-CPU times; the ratio
of the medians over repeats is printed. Target: >= 0.97.

    .venv/bin/python scripts/bench_overhead.py [--steps 60] [--repeats 5] [--threads 2]
        [--device cpu] [--preset resnet20-digits transformer-bytes] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.97
PRESETS = {
    "resnet20-digits": ["model=resnet20", "data=digits"],
    # diagnostic: the per-step update-ratio metric off (a parameter copy and three passes)
    "resnet20-digits-no-update-ratio": ["model=resnet20", "data=digits", "trainer.metrics.update_ratio=false"],
    "transformer-bytes": ["model=transformer", "data=bytes", "data.max_bytes=400000",
                          "data.context_length=64", "data.eval_sequences=32"],
}


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_dir

    import warmup_lab  # noqa: F401  (resolvers)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


class Setup:
    """Model, data, optimizer config and schedule built by the harness's own builders."""

    def __init__(self, overrides: list[str], device: torch.device, steps: int):
        from hydra.utils import instantiate

        from warmup_lab.runs.validate import check_schedule

        self.cfg = cfg = compose(overrides + [f"trainer.max_steps={steps}"])
        self.device, self.steps = device, steps
        self.data = instantiate(cfg.data).to(device)
        torch.manual_seed(cfg.seed)
        self.model0 = instantiate(cfg.model, _partial_=True)(spec=self.data.spec).to(device)
        self.schedule = check_schedule(cfg, steps)

    def fresh(self):
        from warmup_lab.engine import fastpath
        from warmup_lab.engine.optim import build_optimizer

        model = copy.deepcopy(self.model0)
        opt = build_optimizer(self.cfg.optimizer, model)
        fastpath.apply(model, opt, self.cfg.trainer, self.device,
                       is_image=len(self.data.spec.input_shape) == 3)
        return model, opt


def prepare(device_name: str, threads: int | None, script: str) -> torch.device | None:
    """The benchmark's device with torch threads set (None: all cores); None, after saying so,
    when it asks for CUDA and there is none."""
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{script}: skipped: --device cuda but no CUDA device here")
        return None
    torch.set_num_threads(threads or os.cpu_count() or 1)
    return device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class BareLoop:
    """The minimal loop on a fresh copy of the model: forward, backward, ``step()``, and the lr
    set by a Python lambda; one final evaluation."""

    def __init__(self, s: Setup):
        self.model, self.opt = s.fresh()
        self.data, self.device = s.data, s.device
        cfg = s.cfg
        self.sampler = self.data.sampler(cfg.trainer.batch_size, cfg.seed)
        self.base = [float(g["lr"]) for g in self.opt.param_groups]
        self.lr_at = lambda step: s.schedule(step)  # the "python lambda" schedule
        self.set_lr(0)
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                         if cfg.trainer.precision == "bf16" else nullcontext())
        self.model.train()

    def set_lr(self, step: int) -> None:
        for g, b in zip(self.opt.param_groups, self.base):
            g["lr"] = b * self.lr_at(step)

    def step(self, step: int) -> None:
        x, y = self.data.batch(self.sampler.next(), self.sampler.generator)
        with self.autocast:
            logits = self.model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.set_lr(step + 1)

    def evaluate(self) -> None:
        self.model.eval()
        with torch.no_grad():
            total = torch.zeros((), device=self.device)
            for x, y in self.data.val_batches(512):
                with self.autocast:
                    logits = self.model(x).float()
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
            total.item()


def bare_loop(s: Setup, final_eval: bool = True) -> tuple[float, float]:
    """:class:`BareLoop` for ``s.steps`` steps plus (``final_eval``) one evaluation; returns
    (wall, process CPU) seconds."""
    loop = BareLoop(s)
    sync(s.device)
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(s.steps):
        loop.step(step)
    if final_eval:
        loop.evaluate()
    sync(s.device)
    return time.perf_counter() - t0, time.process_time() - c0


def harness_loop(s: Setup, tmp: Path, profile: cProfile.Profile | None = None,
                 final_eval: bool = True) -> tuple[float, float]:
    """``Trainer.fit`` with a real TensorBoard writer and every metric on; same step count and
    one final evaluation (eval_interval = steps)."""
    trainer = make_trainer(s, tmp)
    sync(s.device)
    t0, c0 = time.perf_counter(), time.process_time()
    if profile is not None:
        profile.enable()
    if final_eval:
        trainer.fit()
    else:  # fit's loop without its evaluation
        while trainer.step < s.steps:
            trainer.train_step()
            if trainer.buffer.full or trainer.step == s.steps:
                trainer.flush()
    if profile is not None:
        profile.disable()
    sync(s.device)
    elapsed = time.perf_counter() - t0, time.process_time() - c0
    trainer.runs[0].writer.close()
    return elapsed


def make_trainer(s: Setup, tmp: Path):
    """A ``Trainer`` as ``run()`` builds it (every metric on, real TensorBoard writer)."""
    from omegaconf import OmegaConf

    from warmup_lab.runs.tb import RunWriter
    from warmup_lab.engine.trainer import RunParts, Trainer

    model, opt = s.fresh()
    tr = s.cfg.trainer
    metrics = OmegaConf.to_container(tr.metrics, resolve=True) if tr.get("metrics") else None
    kwargs = {"metrics": metrics} if metrics is not None else {}  # defaults: every metric on
    writer = RunWriter(Path(tempfile.mkdtemp(dir=tmp)))
    return Trainer([RunParts(model, opt, s.schedule, writer, int(s.cfg.seed))], s.data, total_steps=s.steps,
                   batch_size=tr.batch_size, device=s.device,
                   eval_interval=s.steps, log_interval=tr.log_interval, grad_clip=tr.grad_clip,
                   precision=tr.precision, progress=False, **kwargs)


def interleaved(s: Setup, tmp: Path) -> tuple[float, float, float, float]:
    """Bare step, harness step, bare step, ... (the harness's flushes where ``fit`` does them),
    then each side's final evaluation. Returns (bare wall, bare cpu, harness wall, harness cpu)
    seconds: interleaving single steps cancels the drift of a shared machine's load."""
    bare = BareLoop(s)
    trainer = make_trainer(s, tmp)
    bw = bc = hw = hc = 0.0
    for step in range(s.steps):
        sync(s.device)
        t0, c0 = time.perf_counter(), time.process_time()
        bare.step(step)
        sync(s.device)
        t1, c1 = time.perf_counter(), time.process_time()
        trainer.train_step()
        if trainer.buffer.full or trainer.step == s.steps:
            trainer.flush()
        sync(s.device)
        t2, c2 = time.perf_counter(), time.process_time()
        bw, bc, hw, hc = bw + t1 - t0, bc + c1 - c0, hw + t2 - t1, hc + c2 - c1
    t0, c0 = time.perf_counter(), time.process_time()
    bare.evaluate()
    t1, c1 = time.perf_counter(), time.process_time()
    trainer.evaluate()
    trainer.runs[0].writer.flush()
    t2, c2 = time.perf_counter(), time.process_time()
    trainer.runs[0].writer.close()
    return bw + t1 - t0, bc + c1 - c0, hw + t2 - t1, hc + c2 - c1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", nargs="+", default=["resnet20-digits"], choices=sorted(PRESETS))
    ap.add_argument("--blocks", action="store_true",
                    help="interleave whole runs (bare loop / Trainer.fit) instead of single steps "
                         "(always on CUDA)")
    ap.add_argument("--profile", action="store_true", help="with --blocks: cProfile the harness blocks")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (e.g. trainer.channels_last=true)")
    a = ap.parse_args()
    device = prepare(a.device, a.threads, "bench_overhead")
    if device is None:
        return
    print(f"# harness overhead: Trainer (all metrics, TensorBoard) vs bare loop; device {device}, "
          f"threads {torch.get_num_threads()}, {a.steps} steps x {a.repeats} interleaved repeats, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print("wall: elapsed time; cpu: this process's CPU time (all its threads), much less sensitive "
          "to other processes on a shared machine. ratio = harness steps/s / bare steps/s.")
    print(f"{'preset':31s} {'bare steps/s':>12s} {'harness':>9s} {'wall ratio':>10s} {'cpu ratio':>9s}"
          "  pairwise wall ratios")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.preset:
            s = Setup(PRESETS[name] + [f"trainer.device={a.device}"] + a.overrides, device, a.steps)
            interleaved(s, Path(tmp))  # warm-up (allocator, oneDNN primitives)
            prof = cProfile.Profile() if a.profile else None
            if a.blocks or device.type == "cuda":  # whole runs alternately: on a GPU a per-step
                # sync would serialise host and device and hide what the no-sync loop buys
                b, h = [], []
                for _ in range(a.repeats):
                    b.append(bare_loop(s))
                    h.append(harness_loop(s, Path(tmp), prof))
            else:  # single steps interleaved (default)
                runs = [interleaved(s, Path(tmp)) for _ in range(a.repeats)]
                b, h = [(r[0], r[1]) for r in runs], [(r[2], r[3]) for r in runs]
            med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
            wall, cpu = med(b, 0) / med(h, 0), med(b, 1) / med(h, 1)
            pair = sorted(bb[0] / hh[0] for bb, hh in zip(b, h))
            results.append((name, wall, cpu))
            print(f"{name:31s} {a.steps / med(b, 0):12.2f} {a.steps / med(h, 0):9.2f} {wall:10.3f} "
                  f"{cpu:9.3f}  {' '.join(f'{r:.3f}' for r in pair)}", flush=True)
            if prof is not None:
                pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    target = [r for r in results if "no-update-ratio" not in r[0]] or results  # diagnostics aside
    worst = min(min(w, c) for _, w, c in target)
    print(f"load average at end {os.getloadavg()[0]:.2f}; target ratio >= {TARGET}: "
          f"{'met' if worst >= TARGET else 'MISSED'} (worst of wall/cpu {worst:.3f})")


if __name__ == "__main__":
    main()
