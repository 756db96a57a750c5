"""Every bad input: one line that names the key and what is allowed, exit code 2, before any
data is loaded or a model is built, whether Hydra or our checks would have caught it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, compose_cfg
from warmup_lab.runs.cli import check_command_line
from warmup_lab.runs.validate import ConfigError, validate

T = ["model=transformer", "model.n_layers=1", "model.d_model=32", "model.n_heads=2"]
BYTES = ["data=bytes", *T, "data.max_bytes=20000", "data.context_length=16", "data.eval_sequences=8"]


def corpus(tmp_path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


# (overrides, the key the line must name, a fragment of what is allowed)
BAD = [
    # composition: options and keys that do not exist
    (["scheduler=warmupcosin"], "scheduler=warmupcosin", "did you mean 'warmupcosine'"),
    (["optimizer=adamx"], "optimizer=adamx", "allowed adam, adamw"),
    (["optimizer.lrr=0.1"], "optimizer.lrr", "did you mean 'optimizer.lr'"),
    (["+trainer.foo=1"], "+trainer.foo", "nothing would read it"),
    (["+trainer.max_steps=3"], "+trainer.max_steps", "without the +"),
    (["optimizer.betas=[0.9,0.99]"], "optimizer.betas", "optimizer=adam|adamw|radam"),
    (["sed=1"], "sed", "did you mean 'seed'"),
    (["paths.outptu=x"], "paths.outptu", "did you mean 'paths.output_root'"),
    (["seed=0,1"], "seed=0,1", "add -m"),
    (["experiment=warmup_fractoin"], "experiment=warmup_fractoin", "did you mean 'warmup_fraction'"),
    # optimizer knobs
    (["optimizer.momentum=-0.5"], "optimizer.momentum=-0.5", "[0, 1)"),
    (["optimizer.momentum=1.5"], "optimizer.momentum=1.5", "[0, 1)"),
    (["optimizer=adamw", "optimizer.betas=[1.5,0.9]"], "optimizer.betas=[1.5, 0.9]", "two numbers in [0, 1)"),
    (["optimizer=adamw", "optimizer.betas=[0.9]"], "optimizer.betas=[0.9]", "two numbers in [0, 1)"),
    (["optimizer=adamw", "optimizer.eps=0"], "optimizer.eps=0", "> 0"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1", ">= 0"),
    (["optimizer.lr=1e400"], "optimizer.lr=inf", "finite number > 0"),
    (["optimizer.lr=nan"], "optimizer.lr=nan", "finite number > 0"),
    (["optimizer.nesterov=yes"], "optimizer.nesterov=yes", "true or false"),
    (["optimizer.nesterov=true", "optimizer.momentum=0"], "optimizer.nesterov=true", "momentum > 0"),
    (["optimizer=rmsprop", "optimizer.alpha=1"], "optimizer.alpha=1", "[0, 1)"),
    # model knobs and model x data
    (["model.depth=21"], "model.depth=21", "6n+2"),
    (["model.width=0"], "model.width=0", ">= 1"),
    (["model.shortcut=C"], "model.shortcut=C", "one of A, B"),
    ([*T, "model.n_heads=3"], "model.n_heads=3", "divide model.d_model=32"),
    ([*T, "model.dropout=1"], "model.dropout=1", "[0, 1)"),
    ([*T, "model.patch_size=3"], "model.patch_size=3", "image side 8"),
    ([*BYTES, "model.context_length=8"], "model.context_length=8", ">= 16"),
    (["data=bytes"], "model=resnet20", "needs image data"),
    (["data=mnist1d"], "model=resnet20", "use model=resnet1d or model=transformer"),
    (["model=resnet1d"], "model=resnet1d", "needs 1-D signals (data=mnist1d)"),
    (["model=resnet1d", "data=mnist1d", "model.kernel_size=4"], "model.kernel_size=4", "must be odd"),
    (["model=resnet1d", "data=mnist1d", "model.depth=9"], "model.depth=9", "6n+2"),
    (["data=mnist1d", *T, "model.patch_size=3"], "model.patch_size=3", "signal length 40"),
    (["model=resnet1d", "data=mnist1d", "data.num_samples=100", "trainer.batch_size=128"],
     "trainer.batch_size=128", "use at most 80"),
    (["model=resnet1d", "data=mnist1d", "data.num_samples=5"], "data.num_samples=5", ">= 10"),
    (["model=resnet1d", "data=mnist1d", "data.train_split=1"], "data.train_split=1", "(0, 1)"),
    (["model=resnet1d", "data=mnist1d", "data.cache=sometimes"], "data.cache=sometimes", "true or false"),
    # data knobs, data x trainer, data files
    (["data.val_fraction=0"], "data.val_fraction=0", "(0, 1)"),
    (["data.val_fraction=1"], "data.val_fraction=1", "(0, 1)"),
    ([*BYTES, "data.context_length=0"], "data.context_length=0", ">= 1"),
    ([*BYTES, "data.context_length=5000"], "data.context_length=5000", "too long for a corpus of 20000 bytes"),
    ([*BYTES, "data.max_bytes=1"], "data.max_bytes=1", ">= 2"),
    (["trainer.batch_size=5000"], "trainer.batch_size=5000", "at most 1438"),
    (["data=cifar10", "data.train_subset=0"], "data.train_subset=0", ">= 1 or null"),
    (["data=cifar10", "data.root={tmp}"], "data.root=", "data.download=true"),
    ([*BYTES, "data.path=/no/such/file.txt"], "data.path=/no/such/file.txt", "does not exist"),
    ([*BYTES, "data.path={tmp}"], "data.path=", "is a directory"),
    ([*BYTES, "data.path={empty}"], "data.path=", "is empty"),
    ([*BYTES, "data.path={binary}"], "data.path=", "binary file"),
    ([*BYTES, "data.path={latin1}"], "data.path=", "not UTF-8 text (byte 0xe9"),
    ([*BYTES, "data.path={tiny}"], "data.context_length=16", "too long for a corpus of 12 bytes"),
    # trainer and scheduler knobs (checked before too)
    (["trainer.batch_size=0"], "trainer.batch_size=0", ">= 1"),
    (["trainer.precision=fp8"], "trainer.precision=fp8", "fp32, bf16"),
    (["trainer.progress=maybe"], "trainer.progress=maybe", "true or false"),
    (["trainer.compile=fast"], "trainer.compile=fast", "reduce-overhead"),
    (["trainer.threads=0"], "trainer.threads=0", ">= 1"),
    (["trainer.stack=fused"], "trainer.stack=fused", "auto, grouped, vmap, loop"),
    (["model=transformer", "data=bytes", "trainer.stack=grouped"], "trainer.stack=grouped", "not model=transformer"),
    (["scheduler.warmup_ratio=1.5", "scheduler.warmup_steps=null"], "scheduler.warmup_ratio=1.5", "[0.0, 1.0)"),
    (["+trainer.metrics.windw=3"], "+trainer.metrics.windw", "nothing would read it"),
    (["study.max_seeds=1", "study.claim=warmup_fraction"], "study.max_seeds=1", ">= 2"),
]


def _files(tmp_path) -> dict:
    return {"tmp": str(tmp_path), "empty": corpus(tmp_path, "empty.txt", b""),
            "binary": corpus(tmp_path, "img.bin", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" * 500),
            "latin1": corpus(tmp_path, "latin1.txt", "caf\u00e9 au lait ".encode("latin-1") * 500),
            "tiny": corpus(tmp_path, "tiny.txt", b"tiny corpus!")}


def _check(argv: list[str]) -> str:
    """What train.py does before it loads data: the command line, then the composed config."""
    try:
        check_command_line(argv)
        validate(compose_cfg(*argv))
    except ConfigError as err:
        return str(err)
    raise AssertionError(f"{argv} was accepted")


@pytest.mark.parametrize("overrides,key,allowed", BAD, ids=[" ".join(b[0][-2:]) for b in BAD])
def test_every_bad_input_is_one_line_naming_the_key_and_what_is_allowed(overrides, key, allowed, tmp_path,
                                                                       monkeypatch):
    import warmup_lab.data as data

    for loader in ("load_bytes", "load_digits", "load_cifar10", "load_mnist1d"):  # nothing may be loaded to find out
        monkeypatch.setattr(data, loader, lambda *a, **k: pytest.fail("data was loaded"))
    argv = [o.format(**_files(tmp_path)) for o in overrides]
    msg = _check(argv)
    assert "\n" not in msg and key in msg and allowed in msg, msg


def test_sklearn_digits_class_counts_match_the_table_used_for_the_batch_check():
    from warmup_lab.data import load_digits
    from warmup_lab.runs.schema import _image_train_size

    for vf in (0.2, 0.5):
        assert _image_train_size("warmup_lab.data.load_digits", {"val_fraction": vf}, None) == \
            load_digits(val_fraction=vf).num_train


def test_every_model_data_and_optimizer_option_passes_with_its_defaults(tmp_path):
    from conftest import options, write_tiny_cifar

    write_tiny_cifar(tmp_path)
    for group in ("model", "data", "optimizer"):
        for opt in options(group):
            extra = {("data", "bytes"): BYTES, ("data", "cifar10"): [f"data.root={tmp_path}"],
                     ("data", "mnist1d"): ["model=resnet1d"], ("model", "resnet1d"): ["data=mnist1d"]}.get((group, opt), [])
            check_command_line([f"{group}={opt}", *extra])
            validate(compose_cfg(f"{group}={opt}", *extra))


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["scheduler=warmupcosin"], ["optimizer.lrr=0.1"], ["+trainer.foo=1"],
                                  ["optimizer.momentum=1.5"], ["model.depth=21"], ["data.val_fraction=0"]],
                         ids=lambda a: a[0])
def test_the_cli_exits_2_with_one_line_and_writes_nothing(argv, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv, f"paths.output_root={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_in_a_sweep_a_bad_job_fails_alone_and_an_all_bad_sweep_exits_nonzero(tmp_path):
    ok = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "trainer.batch_size=16,5000",
                         "trainer.max_steps=4", "trainer.eval_interval=4", f"hydra.sweep.dir={tmp_path / 'a'}",
                         "trainer.device=cpu", "trainer.checkpoint_interval=null"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    statuses = sorted(json.loads(p.read_text())["status"] for p in (tmp_path / "a").glob("*/metrics.json"))
    assert statuses == ["completed", "failed"]
    bad = json.loads((tmp_path / "a" / "1" / "metrics.json").read_text())
    assert "trainer.batch_size=5000" in bad["error"] and "\n" not in bad["error"]
    allbad = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "trainer.batch_size=4000,5000",
                             f"hydra.sweep.dir={tmp_path / 'b'}", "trainer.device=cpu"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert allbad.returncode == 1 and "every job of the sweep failed" in allbad.stderr, allbad.stderr[-2000:]


@pytest.mark.parametrize("argv", [
    ["experiment=postln_needs_warmup_gpu", "model.n_layers=4"],          # a preset that inherits its choices
    ["experiment=warmup_fraction_gpu", "data.context_length=64"],
    ["+arm=adamw_warmup10pct", "optimizer.betas=[0.9,0.98]"],            # an arm preset picks adamw
    ["-m", "experiment=warmup_fraction,postln_needs_warmup", "model.n_layers=2"],
    ["optimizer=adam", "+optimizer.amsgrad=true"],                       # a torch keyword no YAML sets
    ["hydra.launcher.n_jobs=2"], ["~trainer.metrics"], ["data=bytes", "data.path=null"], ["-m", "seed=range(0,4)"],
], ids=lambda a: " ".join(a))
def test_valid_overrides_pass_the_command_line_check(argv):
    check_command_line(argv)


def test_a_claim_file_reads_numbers_as_hydra_does(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-3 as a string; claim files are read like Hydra's YAML."""
    from warmup_lab.analysis.claimspec import load_claim

    path = tmp_path / "c.yaml"
    path.write_text("name: x\nstatement: s\narms: {a: {optimizer.lr: 1e-3}, b: {optimizer.lr: 3e-3}}\n"
                    "parts: [{effect: a - b, rule: greater, reduce: mean}]\n")
    assert load_claim(str(path)).arms["a"]["optimizer.lr"] == (0.001,)
