"""GPU only (skipped without CUDA): the step loop never synchronises the host with the device
except at the metrics flush, on the fast path (data on the GPU with tensor augmentation, bf16,
channels_last, torch.compile with tensor lrs), and fused runs do not either."""

from __future__ import annotations

import pytest
import torch
from conftest import build_trainer, compose_cfg, write_tiny_cifar

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def steps_without_sync(trainer, n: int) -> None:
    """``n`` train steps with any host-device synchronisation raising an error."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(n):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# Per-layer metrics (layer/*, and Adam's effective-step quantiles) are due at the first step
# of the no-sync window (layer_interval = log_interval).
FAST_PATHS = {
    "fp32": [],
    "bf16_channels_last": ["trainer.precision=bf16", "trainer.channels_last=true"],
    "compile": ["trainer.compile=true"],
    "compile_reduce_overhead_bf16_cl": ["trainer.compile=reduce-overhead", "trainer.precision=bf16",
                                        "trainer.channels_last=true"],
    "grad_clip_adamw": ["optimizer=adamw", "trainer.grad_clip=1.0"],
}


@pytest.mark.parametrize("variant", list(FAST_PATHS), ids=list(FAST_PATHS))
def test_step_loop_does_not_synchronise_except_at_the_flush(tmp_path, variant):
    root = write_tiny_cifar(tmp_path / "data", n_train_per_batch=64)
    log_interval = 8
    cfg = compose_cfg("data=cifar10", f"data.root={root}", "model.width=8", "trainer.device=cuda",
                      "trainer.batch_size=32", "trainer.max_steps=40", f"trainer.log_interval={log_interval}",
                      "trainer.eval_interval=40", f"trainer.metrics.layer_interval={log_interval}",
                      *FAST_PATHS[variant])
    trainer = build_trainer(cfg, tmp_path / "run", "cuda")
    for _ in range(2 * log_interval):  # warm-up: allocations, cuDNN autotuning, compilation, a flush
        trainer.train_step()
        if trainer.buffer.full:
            trainer.flush()
    assert len(trainer.buffer) == 0
    steps_without_sync(trainer, log_interval - 1)  # a whole block short of the flush
    trainer.train_step()
    trainer.flush()  # the one synchronisation per block
    assert trainer.runs[0].result.status == "running" and trainer.runs[0].result.last_train_loss is not None


def test_runs_of_a_group_do_not_synchronise(tmp_path):
    from conftest import build_trainer

    root = write_tiny_cifar(tmp_path / "data", n_train_per_batch=64)
    cfgs = [compose_cfg("data=cifar10", f"data.root={root}", "model.width=8", "trainer.device=cuda",
                        "trainer.batch_size=32", "trainer.max_steps=30", "trainer.log_interval=8",
                        "trainer.metrics.layer_interval=8", "trainer.precision=bf16", "trainer.channels_last=true",
                        f"seed={s}", f"optimizer.lr={lr}") for s, lr in ((0, 0.1), (1, 0.05), (2, 0.2))]
    trainer = build_trainer(cfgs, tmp_path / "runs", device="cuda")
    for _ in range(8):
        trainer.train_step()
    trainer.flush()
    steps_without_sync(trainer, 7)
    trainer.flush()
    assert all(len(r.windows.history["loss"]) == 15 for r in trainer.runs)


def test_runs_of_a_group_equal_runs_alone_on_the_gpu(tmp_path, monkeypatch):
    """The CPU test's check (tests/test_groups.py) on CUDA, looser: cuDNN picks other kernels for
    grouped and dense convolutions (TF32 off, so both are fp32)."""
    from conftest import read_scalars
    from warmup_lab.runs.run import run, run_group

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)

    cfgs = [compose_cfg("model.width=8", "trainer.device=cuda", "trainer.max_steps=6", f"seed={s}",
                        f"optimizer.lr={lr}") for s, lr in ((0, 0.02), (1, 0.01))]
    run_group(cfgs, [tmp_path / f"g{k}" for k in range(2)])
    for k, cfg in enumerate(cfgs):
        run(cfg, tmp_path / str(k))
        loss = [v for _, v in read_scalars(tmp_path / str(k))["train/loss"]]
        group = [v for _, v in read_scalars(tmp_path / f"g{k}")["train/loss"]]
        assert group == pytest.approx(loss, rel=1e-3, abs=1e-4)
