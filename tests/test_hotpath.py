"""The step loop reads nothing back from the training device between flushes, checked on the CPU.

On a GPU, reading a device value on the host (``.item()``, ``float(t)``, ``if t:``,
``.tolist()``, data-dependent shapes such as ``nonzero`` or boolean masks) waits for the GPU.
tests/test_gpu.py proves the loop is sync-free with ``torch.cuda.set_sync_debug_mode`` but only
runs where there is a GPU; this test runs everywhere (CI has no GPU): it records every such read
during the steps between two flushes, through a ``TorchDispatchMode`` and patched
``tolist``/``numpy``. Allowed: tensors that torch keeps on the host by design (an optimizer's
``step`` counters, the lr tensors of the compiled fast path), whose reads cost no device sync.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TINY_BYTES, TINY_TRANSFORMER, build_trainer, compose_cfg, read_scalars

HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
              torch.ops.aten.masked_select.default, torch.ops.aten.equal.default,
              torch.ops.aten.is_nonzero.default}


class HostReads(TorchDispatchMode):
    """Records (op, stack) for every host read of a tensor not in ``allowed`` (by identity)."""

    def __init__(self, allowed: set[int]):
        super().__init__()
        self.allowed, self.reads = allowed, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS and not (args and id(args[0]) in self.allowed):
            self.reads.append((str(func), "".join(traceback.format_stack(limit=8)[:-1])))
        if func is torch.ops.aten.index.Tensor and any(
                i is not None and i.dtype == torch.bool for i in args[1]):
            self.reads.append(("boolean-mask indexing", "".join(traceback.format_stack(limit=8)[:-1])))
        return func(*args, **(kwargs or {}))


def host_reads_in_steps(trainer, n: int, monkeypatch) -> list[tuple[str, str]]:
    allowed = set()
    for opt in trainer.optimizers:
        allowed |= {id(s["step"]) for s in opt.state.values() if "step" in s}
        allowed |= {id(g["lr"]) for g in opt.param_groups if torch.is_tensor(g["lr"])}
    mode = HostReads(allowed)
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def record(self, *a, _name=name, _original=original, **k):
            if id(self) not in allowed:
                mode.reads.append((f"Tensor.{_name}", "".join(traceback.format_stack(limit=8)[:-1])))
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, record)
    with mode:
        for _ in range(n):
            trainer.train_step()
    monkeypatch.undo()
    return mode.reads


LOOPS = {
    "sgd": [],
    "adamw_clip": ["optimizer=adamw", "trainer.grad_clip=1.0"],
    "bf16_channels_last": ["trainer.precision=bf16", "trainer.channels_last=true"],
    "rmsprop_no_layers": ["optimizer=rmsprop", "trainer.metrics.layers=false"],
    "transformer": ["model=transformer", "data=bytes", *TINY_TRANSFORMER, *TINY_BYTES,
                    "optimizer=adamw"],
    # the sharpness probe (plain and preconditioned) at steps inside the window
    "curvature_adamw": ["optimizer=adamw", "trainer.metrics.curvature_interval=3", "trainer.metrics.curvature_batch=8"],
    "curvature_sgd_transformer": ["model=transformer", "data=bytes", *TINY_TRANSFORMER, *TINY_BYTES,
                                  "trainer.metrics.curvature_interval=2", "trainer.metrics.curvature_batch=4"],
}


@pytest.mark.parametrize("loop", list(LOOPS), ids=list(LOOPS))
def test_steps_between_flushes_read_nothing_from_the_device(tmp_path, monkeypatch, loop):
    log_interval = 8
    cfg = compose_cfg("trainer.max_steps=40", f"trainer.log_interval={log_interval}",
                      "trainer.eval_interval=40", f"trainer.metrics.layer_interval={log_interval}",
                      *([] if "transformer" in loop else ["model.width=8"]), *LOOPS[loop])
    trainer = build_trainer(cfg, tmp_path / "run")
    for _ in range(2 * log_interval):  # optimizer state exists, two flushes done
        trainer.train_step()
        if trainer.buffer.full:
            trainer.flush()
    assert len(trainer.buffer) == 0 and trainer.step % cfg.trainer.metrics.layer_interval == 0
    reads = host_reads_in_steps(trainer, log_interval - 1, monkeypatch)  # a layer step included
    assert not reads, f"{len(reads)} host reads in the step loop; first: {reads[0][0]}\n{reads[0][1]}"
    trainer.train_step()
    trainer.flush()  # the one read-back per block
    assert len(trainer.runs[0].windows.history["loss"]) == 3 * log_interval  # every step reached the host


@pytest.mark.parametrize("model,stack", [("resnet", "auto"), ("transformer", "vmap"), ("transformer", "loop")])
def test_steps_of_k_runs_read_nothing_from_the_device(tmp_path, monkeypatch, model, stack):
    """K = 2 runs through one Trainer (the grouped ResNet, the vmapped or looped Transformer), update
    ratios and a layer step (per-layer norms, Adam quantiles) inside the window; the runs differ
    in seed, lr and optimizer."""
    extra = (["model=transformer", "data=bytes", *TINY_TRANSFORMER, *TINY_BYTES] if model == "transformer"
             else ["model.width=8"])
    cfgs = [compose_cfg(*extra, "trainer.max_steps=30", "trainer.log_interval=8", "trainer.metrics.layer_interval=8",
                        f"trainer.stack={stack}",
                        f"seed={s}", f"optimizer={o}", f"optimizer.lr={lr}")
            for s, o, lr in ((0, "adamw", 1e-3), (1, "rmsprop", 3e-3))]
    trainer = build_trainer(cfgs, tmp_path)
    for _ in range(8):
        trainer.train_step()
    trainer.flush()
    reads = host_reads_in_steps(trainer, 7, monkeypatch)
    assert not reads, f"{len(reads)} host reads in the K-run step; first: {reads[0][0]}\n{reads[0][1]}"
    trainer.train_step()
    trainer.flush()
    for r in trainer.runs:
        assert len(r.windows.history["update_ratio"]) == 16 and all(v > 0 for v in r.windows.history["update_ratio"])
    trainer.runs[1].writer.flush()
    scalars = read_scalars(tmp_path / "1")
    assert [s for s, _ in scalars["layer/grad_norm/" + next(n for n, p in trainer.runs[1].model.named_parameters()
                                                              if p.ndim >= 2)]] == [0, 8]


def test_the_check_sees_a_host_read(tmp_path, monkeypatch):
    """The detector itself: a ``loss.item()`` slipped into the step is reported."""
    cfg = compose_cfg("model.width=8", "trainer.log_interval=8")
    trainer = build_trainer(cfg, tmp_path / "run")
    trainer.train_step()
    original = trainer.buffer.put

    def put_reading_loss(step, runs=None, **scalars):
        scalars["loss"].sum().item()
        original(step, runs, **scalars)

    trainer.buffer.put = put_reading_loss
    reads = host_reads_in_steps(trainer, 2, monkeypatch)
    assert len(reads) == 2 and "_local_scalar_dense" in reads[0][0]
