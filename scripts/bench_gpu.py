"""Training throughput of the harness's fast path: images/s (ResNet-20, ResNet-18 on CIFAR-size
inputs) and tokens/s (the transformer on bytes) for eager fp32, channels_last, bf16 autocast
(+ channels_last) and ``torch.compile``, next to the compute and memory-bandwidth floors of
docs/perf notes (``/work/shared/reference/perf.md``, section 5).

Every variant runs the real ``Trainer`` steps (data resident on the device, augmentation as
tensor ops, metrics buffered on the device and flushed every ``log_interval`` steps, TensorBoard
written) on synthetic CIFAR-shaped images (random pixels: throughput does not depend on them)
or the bytes corpus. FLOPs per sample are counted with ``torch.utils.flop_counter``.

    .venv/bin/python scripts/bench_gpu.py                 # CUDA; prints a skip line without it
    .venv/bin/python scripts/bench_gpu.py --device cpu    # the same table on the CPU
        [--models resnet20 resnet18 transformer] [--variants fp32 cl bf16 bf16_cl compile]
        [--steps 50] [--batch 128] [--out table.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import compose  # noqa: E402

# Peak dense throughput (FLOP/s) and memory bandwidth (B/s) by device name [read in perf.md];
# CPU: this 2-vCPU EPYC at an assumed 32 FLOP/cycle/core x 3 GHz [unsure in perf.md].
PEAKS = {"H100": {"bf16": 989e12, "fp32": 67e12, "bw": 3.35e12},
         "H200": {"bf16": 989e12, "fp32": 67e12, "bw": 4.8e12},
         "A100": {"bf16": 312e12, "fp32": 19.5e12, "bw": 2.0e12}}
# Bytes moved per training image at ~15 unfused passes over the conv outputs in bf16 [derived
# in perf.md]: ResNet-20 5.7 MB (84 ms/epoch at 3.35 TB/s), ResNet-18 18.4 MB (275 ms/epoch).
BYTES_PER_IMAGE = {"resnet20": 5.7e6, "resnet18": 18.4e6}  # CIFAR-size inputs only
VARIANTS = {  # name -> trainer overrides
    "fp32": [],
    "cl": ["trainer.channels_last=true"],
    "bf16": ["trainer.precision=bf16"],
    "bf16_cl": ["trainer.precision=bf16", "trainer.channels_last=true"],
    "compile": ["trainer.compile=true"],
    "compile_bf16_cl": ["trainer.compile=true", "trainer.precision=bf16", "trainer.channels_last=true"],
}
MODELS = {
    "resnet20": ["model=resnet20"],
    "resnet18": ["model=resnet18"],
    "resnet20_digits": ["model=resnet20", "data=digits"],   # the default CPU experiment (8x8)
    "transformer": ["model=transformer", "data=bytes", "data.max_bytes=2000000", "data.context_length=256",
                    "model.n_layers=4", "model.d_model=256", "model.n_heads=4"],
}


def peaks(device: torch.device) -> tuple[str, dict | None]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, p in PEAKS.items():
            if key in name:
                return name, p
        return name, None
    cores = min(torch.get_num_threads(), len(os.sched_getaffinity(0)))
    # avx512_bf16 dot products do twice the fp32 FMAs per instruction [unsure]
    return f"CPU ({cores} threads)", {"fp32": cores * 32 * 3e9, "bf16": cores * 64 * 3e9, "bw": None}


def synthetic_cifar(n: int, device: torch.device):
    from warmup_lab.data import InMemoryData
    from warmup_lab.data.cifar import random_crop_flip
    from warmup_lab.data.spec import DataSpec

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return InMemoryData("synthetic-cifar", DataSpec("classification", (3, 32, 32), 10), x, y,
                        x[:512], y[:512], augment=random_crop_flip).to(device)


def flops_per_sample(model, x, y) -> float:
    """Forward + backward FLOPs of one training sample (counted on a small batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from warmup_lab.engine.trainer import loss_fn

    with FlopCounterMode(display=False) as counter:
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / x.shape[0]


def build(model_name: str, variant: str, device: torch.device, batch: int, steps: int, tmp: Path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from warmup_lab.engine import fastpath
    from warmup_lab.engine.optim import build_optimizer
    from warmup_lab.runs.tb import RunWriter
    from warmup_lab.engine.trainer import RunParts, Trainer
    from warmup_lab.runs.validate import check_schedule

    cfg = compose(MODELS[model_name] + VARIANTS[variant] + [
        f"trainer.device={device.type}", f"trainer.batch_size={batch}", f"trainer.max_steps={steps}",
        "trainer.progress=false"])
    data = (synthetic_cifar(20 * batch, device) if model_name in ("resnet20", "resnet18")
            else instantiate(cfg.data).to(device))
    torch.manual_seed(0)
    model = instantiate(cfg.model, _partial_=True)(spec=data.spec).to(device)
    xb, yb = data.batch(data.sampler(8, 0).next(), None)
    fps = flops_per_sample(model, xb, yb)  # before compiling
    opt = build_optimizer(cfg.optimizer, model)
    fastpath.apply(model, opt, cfg.trainer, device, is_image=len(data.spec.input_shape) == 3)
    tr = cfg.trainer
    metrics = OmegaConf.to_container(tr.metrics, resolve=True) if tr.get("metrics") else None
    kwargs = {"metrics": metrics} if metrics is not None else {}
    parts = RunParts(model, opt, check_schedule(cfg, steps), RunWriter(Path(tempfile.mkdtemp(dir=tmp))), 0)
    trainer = Trainer([parts], data, total_steps=steps, batch_size=batch, device=device, eval_interval=steps,
                      log_interval=tr.log_interval, precision=tr.precision, progress=False, **kwargs)
    return trainer, data, fps


def timed_steps(trainer, n: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        trainer.train_step()
        if trainer.buffer.full:
            trainer.flush()
    trainer.flush()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet18", "transformer"],
                    choices=list(MODELS))
    ap.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                    help="default: all on CUDA; all but the compiled ones on the CPU (minutes each)")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: skipped: no CUDA device here (run it on a GPU machine, or pass --device cpu "
              "for the same table on the CPU)")
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    variants = a.variants or ([v for v in VARIANTS if not v.startswith("compile")]
                              if device.type == "cpu" else list(VARIANTS))
    dev_name, peak = peaks(device)
    lines = [f"# training throughput on {dev_name} (torch {torch.__version__}, batch {a.batch}, "
             f"{a.steps} steps x {a.repeats}, median; threads {torch.get_num_threads()}; "
             f"load average {os.getloadavg()[0]:.2f})",
             "| model | variant | samples/s | ms/step | vs fp32 | compute floor samples/s | % of compute floor "
             "| bandwidth floor samples/s | peak mem GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in a.models:
            base = None
            for variant in variants:
                if "cl" in variant.split("_") and model_name == "transformer":
                    continue  # channels_last is for image models
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    trainer, data, fps = build(model_name, variant, device, a.batch, a.warmup + a.steps * a.repeats + 1,
                                          Path(tmp))
                except Exception as err:  # noqa: BLE001 - report and go on with the next variant
                    print(f"| {model_name} | {variant} | failed: {type(err).__name__}: {err} |||||||")
                    continue
                per_sample = data.spec.input_shape[0] if data.spec.is_lm else 1  # tokens per sample
                timed_steps(trainer, a.warmup, device)
                times = [timed_steps(trainer, a.steps, device) for _ in range(a.repeats)]
                step_s = statistics.median(times) / a.steps
                rate = a.batch * per_sample / step_s
                base = base or rate
                kind = "bf16" if "bf16" in variant else "fp32"
                peak_flops = (peak or {}).get(kind) or (peak or {}).get("fp32")
                floor = peak_flops / (fps / per_sample) if peak_flops else None
                bw = (peak or {}).get("bw")
                bw_floor = bw / BYTES_PER_IMAGE[model_name] if bw and model_name in BYTES_PER_IMAGE else None
                mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
                unit = "tok" if data.spec.is_lm else "img"
                row = (f"| {model_name} | {variant} | {rate:,.0f} {unit}/s | {step_s * 1e3:.1f} | {rate / base:.2f}x | "
                       f"{f'{floor:,.0f}' if floor else 'n/a'} | {f'{100 * rate / floor:.1f}%' if floor else 'n/a'} | "
                       f"{f'{bw_floor:,.0f}' if bw_floor else 'n/a'} | {f'{mem:.2f}' if mem is not None else 'n/a'} |")
                lines.append(row)
                print(row, flush=True)
                trainer.runs[0].writer.close()
                del trainer, data
    lines.append(f"FLOPs counted per training sample (fwd+bwd). Compute floor = peak/FLOPs "
                 "(bf16 peak for bf16 variants; CPU peaks are assumptions [unsure in perf.md]). "
                 f"Load average at end {os.getloadavg()[0]:.2f}.")
    print(lines[-1])
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
