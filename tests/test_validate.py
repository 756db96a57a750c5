"""Bad input: one clear line naming the key and what is allowed, before anything is built."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_cfg, run_cli
from warmup_lab.runs.validate import ConfigError, validate

BAD = [
    (["optimizer.lr=0"], r"optimizer\.lr=0 .*> 0"),
    (["optimizer.lr=-0.1"], r"optimizer\.lr=-0\.1 .*> 0"),
    (["scheduler.warmup_steps=100", "trainer.max_steps=50"], r"scheduler\.warmup_steps=100 .*<= total_steps=50"),
    (["scheduler.warmup_steps=null", "scheduler.warmup_ratio=1.0"], r"scheduler\.warmup_ratio=1\.0 .*\[0\.0, 1\.0\)"),
    (["scheduler.warmup_steps=null", "scheduler.warmup_ratio=-0.1"], r"scheduler\.warmup_ratio=-0\.1 .*\[0\.0, 1\.0\)"),
    (["trainer.max_steps=null", "trainer.epochs=2", "scheduler.warmup_steps=null",
      "scheduler.warmup_ratio=2"], r"scheduler\.warmup_ratio=2"),
    (["optimizer=sgd", "scheduler=untunedlinearwarmup", "scheduler.warmup_steps=null"],
     r"optimizer\.betas.*adam, adamw, radam"),
    (["trainer.batch_size=0"], r"trainer\.batch_size=0 .*>= 1"),
    (["trainer.device=tpu"], r"trainer\.device=tpu .*auto, cpu, cuda, mps"),
    (["trainer.precision=fp8"], r"trainer\.precision=fp8 .*fp32, bf16"),
    (["trainer.max_steps=null"], r"exactly one"),
    (["trainer.grad_clip=-1"], r"trainer\.grad_clip=-1"),
    (["data=bytes", "model=transformer", "data.path=/no/such/file.txt"], r"data\.path=/no/such/file\.txt does not exist"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_raise_one_line_naming_the_key(overrides, message):
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError, match=message) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the no-CUDA message; a CUDA device exists")
def test_cuda_asked_where_there_is_none():
    with pytest.raises(ConfigError, match=r"trainer\.device=cuda .*no CUDA device"):
        validate(compose_cfg("trainer.device=cuda"))


def test_defaults_are_valid():
    validate(compose_cfg(fast=False))


def test_cli_bad_input_exits_nonzero_with_one_line_and_builds_nothing(tmp_path):
    proc = run_cli("optimizer.lr=-1", f"paths.output_root={tmp_path}")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["error: optimizer.lr=-1 is invalid: must be a finite number > 0"]
    assert not list(tmp_path.rglob("events.out.tfevents.*"))  # nothing trained or logged
