"""The ``train.py`` process around its runs (``warmup_lab.runs.cli``): the garbage collector off
during start-up and the start-up objects frozen before training, and the config composed once."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from conftest import FAST, ROOT
from warmup_lab.runs import cli

# train.py run in a child process, watched: how often Hydra composes the config, and the
# collector's state when training starts
PROBE = r'''
import gc, json, runpy, sys
import hydra._internal.config_loader_impl as loader
import warmup_lab.engine.trainer as trainer

seen = {"compositions": 0}
load = loader.ConfigLoaderImpl.load_configuration
def counting(self, *args, **kwargs):
    seen["compositions"] += 1
    return load(self, *args, **kwargs)
loader.ConfigLoaderImpl.load_configuration = counting
fit = trainer.Trainer.fit
def watched(self):
    seen.setdefault("fits", []).append({"gc_enabled": gc.isenabled(), "frozen": gc.get_freeze_count()})
    return fit(self)
trainer.Trainer.fit = watched
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("PROBE " + json.dumps(seen))
'''


def watch_train(*args: str, flags: tuple[str, ...] = ()) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "train.py"), *flags, *FAST, *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("PROBE "))
    return json.loads(line[len("PROBE "):])


def test_train_py_composes_the_config_once_and_trains_with_the_start_up_objects_frozen(tmp_path):
    seen = watch_train(f"hydra.run.dir={tmp_path / 'run'}")
    assert seen["compositions"] == 1  # Hydra's own get_mode would compose it a second time
    [fit] = seen["fits"]
    # the collector is back on for training, and what start-up made (torch, Hydra) is frozen
    assert fit["gc_enabled"] and fit["frozen"] > 50_000
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


def test_a_command_line_that_sets_hydra_mode_keeps_hydras_mode_probe(tmp_path):
    seen = watch_train(f"hydra.run.dir={tmp_path / 'run'}", "hydra.mode=RUN")
    assert seen["compositions"] == 2


def test_a_sweep_composes_per_job_and_later_jobs_run_with_the_collector_on(tmp_path):
    seen = watch_train("seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}", flags=("-m",))
    probed = watch_train("seed=0,1", f"hydra.sweep.dir={tmp_path / 'probed'}", "hydra.mode=MULTIRUN", flags=("-m",))
    assert seen["compositions"] == probed["compositions"] - 1  # the sweeper's and the jobs' own stay
    first, second = seen["fits"]
    # frozen once, at the first job (frozen objects that are freed leave the count)
    assert first["gc_enabled"] and second["gc_enabled"] and 50_000 < second["frozen"] <= first["frozen"]
    for job in ("0", "1"):
        assert json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("argv", [["hydra.mode=MULTIRUN"], ["+hydra.mode=RUN"], ["-cd", "/elsewhere"],
                                  ["--config-name=other"], ["hydra.searchpath=[file:///x]"]])
def test_hydra_mode_may_come_from_the_command_line(argv):
    assert cli.sets_hydra_mode(argv)


def test_hydra_mode_set_in_a_config_file_is_seen_and_other_modes_are_not(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "CONF", tmp_path)
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "plateau.yaml").write_text("name: plateau\nmode: min\n")
    (tmp_path / "train.yaml").write_text("hydra:\n  run:\n    dir: x\n")
    assert not cli.sets_hydra_mode(["hydra.run.dir=y"])
    (tmp_path / "experiment").mkdir()
    preset = tmp_path / "experiment" / "sweep.yaml"
    preset.write_text("# @package _global_\nhydra:\n  mode: MULTIRUN\n")
    assert cli.sets_hydra_mode([])
    preset.unlink()
    (tmp_path / "hydra").mkdir()
    (tmp_path / "hydra" / "default.yaml").write_text("mode: MULTIRUN\n")
    assert cli.sets_hydra_mode([])


def test_the_repositorys_configs_leave_hydra_mode_to_the_command_line():
    assert not cli.sets_hydra_mode(["optimizer=adamw", "hydra.run.dir=/tmp/x"])


def test_end_startup_is_a_no_op_when_the_collector_was_never_paused():
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    cli.end_startup()
    assert gc.isenabled() and gc.get_freeze_count() == frozen
