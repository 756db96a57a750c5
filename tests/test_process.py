"""The ``train.py`` process around its runs (``warmup_lab.runs.process``): the garbage collector
off during start-up and the start-up objects frozen before training, and the config composed once."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from conftest import FAST, ROOT
from warmup_lab.runs import process

# train.py run in a child process, watched: how often Hydra composes the config, how many
# collections ran before start-up ended, and the collector's state when each training starts.
# Only Hydra and OmegaConf load before train.py (torch loads after its pause begins).
PROBE = r'''
import gc, json, runpy, sys
import hydra._internal.config_loader_impl as loader
import warmup_lab.runs.process as process

seen = {"compositions": 0, "collections": 0, "fits": []}
gc.callbacks.append(lambda phase, info: seen.update(collections=seen["collections"] + (phase == "start")))
load = loader.ConfigLoaderImpl.load_configuration
def counting(self, *args, **kwargs):
    seen["compositions"] += 1
    return load(self, *args, **kwargs)
loader.ConfigLoaderImpl.load_configuration = counting
end_startup = process.end_startup
def ending():
    if "collections_in_startup" not in seen:
        seen["collections_in_startup"] = seen["collections"]
        import warmup_lab.engine.trainer as trainer  # loaded by now
        fit = trainer.Trainer.fit
        def watched(self):
            seen["fits"].append({"gc_enabled": gc.isenabled(), "frozen": gc.get_freeze_count()})
            return fit(self)
        trainer.Trainer.fit = watched
    end_startup()
process.end_startup = ending
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
    # no collection while torch, Hydra and the package loaded (6 full ones without the pause)
    assert seen["collections_in_startup"] == 0 and seen["collections"] > 0
    [fit] = seen["fits"]
    # the collector is back on for training, and what start-up made (torch, Hydra) is frozen
    assert fit["gc_enabled"] and fit["frozen"] > 50_000
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "completed"


def test_a_command_line_that_sets_hydra_mode_keeps_hydras_mode_probe(tmp_path):
    seen = watch_train(f"hydra.run.dir={tmp_path / 'run'}", "hydra.mode=RUN")
    assert seen["compositions"] == 2


@pytest.mark.parametrize("launcher", ["basic", "fused"])
def test_a_sweep_ends_start_up_once_whichever_launcher_trains_its_jobs(tmp_path, launcher):
    """The basic launcher calls train.py's main per job; the fused launcher trains the jobs
    in-process through run_group, never calling it: both train with the collector on."""
    args = ("seed=0,1", f"launcher={launcher}")
    seen = watch_train(*args, f"hydra.sweep.dir={tmp_path / 'sweep'}", flags=("-m",))
    probed = watch_train(*args, f"hydra.sweep.dir={tmp_path / 'probed'}", "hydra.mode=MULTIRUN", flags=("-m",))
    assert seen["compositions"] == probed["compositions"] - 1  # the sweeper's and the jobs' own stay
    assert seen["collections_in_startup"] == 0
    assert len(seen["fits"]) == (2 if launcher == "basic" else 1)  # fused: one Trainer of K = 2
    # frozen once, when the sweep started (frozen objects that are freed leave the count)
    assert all(f["gc_enabled"] and 50_000 < f["frozen"] <= seen["fits"][0]["frozen"] for f in seen["fits"])
    for job in ("0", "1"):
        assert json.loads((tmp_path / "sweep" / job / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("argv", [["hydra.mode=MULTIRUN"], ["+hydra.mode=RUN"], ["-cd", "/elsewhere"],
                                  ["--config-name=other"], ["--config-n", "other"], ["--config-d=/x"],
                                  ["hydra.searchpath=[file:///x]"], ["+arm@_global_=x"]])
def test_hydra_mode_may_come_from_the_command_line(argv):
    assert process.sets_hydra_mode(argv)


@pytest.mark.parametrize("argv", [[], ["-m", "seed=0,1"], ["--multirun", "optimizer=adamw"], ["hydra.run.dir=/tmp/x"],
                                  ["hydra/launcher=joblib"]])
def test_plain_overrides_leave_hydra_mode_unset(tmp_path, argv):
    (tmp_path / "train.yaml").write_text("defaults:\n  - optimizer: sgd\nhydra:\n  run:\n    dir: x\n")
    assert not process.sets_hydra_mode(argv, tmp_path)


@pytest.mark.parametrize("path,text,sets", [
    ("scheduler/plateau.yaml", "name: plateau\nmode: min\nthreshold_mode: rel\n", False),
    ("model/net.yaml", "# the model\nname: net\n", False),
    ("hydra/launcher/mine.yaml", "mode: fast\n", False),              # lands at hydra.launcher.mode
    ("experiment/sweep.yaml", "# @package _global_\nhydra:\n  mode: MULTIRUN\n", True),
    ("experiment/flow.yaml", "# @package _global_\nhydra: {mode: MULTIRUN}\n", True),
    ("experiment/quoted.yaml", '# @package _global_\n"hydra":\n  "mode": MULTIRUN\n', True),
    ("train.yaml", "hydra:\n  mode: MULTIRUN\n", True),
    ("hydra/default.yaml", "mode: MULTIRUN\n", True),
    ("hydra/global.yaml", "# @package _global_\nhydra:\n  mode: MULTIRUN\n", True),
    ("local/default.yaml", "# @package hydra\nmode: MULTIRUN\n", True),
    ("experiment/more.yaml", "# @package _global_\nhydra:\n  searchpath: [file:///x]\n", True),
    ("train.yaml", "defaults:\n  - elsewhere@hydra: x\n", True),
    ("experiment/broken.yaml", "mode: [\n", True),
])
def test_hydra_mode_set_in_a_config_file_is_seen_and_other_modes_are_not(tmp_path, path, text, sets):
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(text)
    assert process.sets_hydra_mode([], tmp_path) is sets


def test_the_repositorys_configs_leave_hydra_mode_to_the_command_line():
    assert not process.sets_hydra_mode(["optimizer=adamw", "hydra.run.dir=/tmp/x"])


def test_end_startup_is_a_no_op_when_the_collector_was_never_paused():
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    process.end_startup()
    assert gc.isenabled() and gc.get_freeze_count() == frozen
