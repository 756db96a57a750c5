"""One definition of a run's identity (warmup_lab.runs.identity) and of its records (rundir.RunDir):
which keys define a run, which do not change its numbers, one flatten, and every consumer
(checkpoints, sweeps, the analysis, TensorBoard, fused grouping) agreeing with it."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from conftest import compose_cfg
from warmup_lab.runs import identity as I
from warmup_lab.runs.rundir import RunDir


def test_a_key_covers_its_children_at_a_dot_only():
    assert I.matches("paths.output_root", ["paths"]) and I.matches("paths", ["paths"])
    assert not I.matches("study.metrics", ["study.metric"]) and not I.matches("pathsx", ["paths"])


def test_one_flatten_for_every_caller():
    node = {"a": {"b": 1, "c": [1, 2], "empty": {}}, "d": None, "e": {"f": {"g": "x"}}}
    assert I.flatten(node) == {"a.b": 1, "a.c": [1, 2], "d": None, "e.f.g": "x"}
    assert list(I.flatten(node)) == ["a.b", "a.c", "d", "e.f.g"]  # insertion order
    assert I.flatten(node, sequences=tuple)["a.c"] == (1, 2)
    assert I.flatten(node, "top", skip=["top.a.c", "top.e"]) == {"top.a.b": 1, "top.d": None}
    tree = {"trainer": {"seed": 1, "max_steps": 3}, "seed": 1, "paths": {"x": 1}}
    assert I.without(tree, ["trainer.seed", "paths"]) == {"trainer": {"max_steps": 3}, "seed": 1}
    assert tree["trainer"] == {"seed": 1, "max_steps": 3}  # the input is not changed


ADDED_SINCE = ("trainer.stack",)  # speed knobs added after 5653181


def _old_run_config(cfg) -> str:
    """checkpoint.run_config before warmup_lab.runs.identity existed (commit 5653181): the reference the
    digests of every earlier run were made with."""
    volatile = ("trainer.resume", "trainer.progress", "trainer.threads", "trainer.device",
                "trainer.checkpoint_interval", "trainer.compile", "trainer.compile_optimizer",
                "trainer.channels_last", "paths", "study",
                *ADDED_SINCE)  # not in the configs earlier runs had
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in volatile:
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return json.dumps(data, sort_keys=True, default=str)


@pytest.mark.parametrize("overrides", [[], ["optimizer=adamw", "scheduler=noam"], ["experiment=warmup_adam_vs_sgd"],
                                       ["model=transformer", "data=bytes", "model.d_model=32", "model.n_heads=2"]])
def test_digests_of_earlier_runs_do_not_change(overrides):
    cfg = compose_cfg(*overrides)
    assert I.run_identity(cfg) == _old_run_config(cfg)


def test_what_defines_a_run_and_what_changes_its_numbers():
    base = I.run_identity(compose_cfg())
    for same in (["trainer.threads=2"], ["trainer.progress=true"], ["trainer.compile=true"],
                 ["trainer.checkpoint_interval=7"], ["study.max_seeds=12"], ["paths.output_root=/x"]):
        assert I.run_identity(compose_cfg(*same)) == base, same
    for other in (["seed=1"], ["optimizer.lr=0.3"], ["trainer.log_interval=3"], ["task_name=other"],
                  ["trainer.eval_interval=2"]):
        assert I.run_identity(compose_cfg(*other)) != base, other
    numbers = {k: I.changes_numbers(k) for k in (
        "seed", "trainer.seed", "trainer.log_interval", "trainer.metrics.jitter_window", "task_name",
        "trainer.compile", "trainer.threads", "study.lr_mult", "data.root", "optimizer.lr", "trainer.eval_interval",
        "model.depth", "scheduler.warmup_ratio")}
    assert [k for k, v in numbers.items() if v] == ["optimizer.lr", "trainer.eval_interval", "model.depth",
                                                     "scheduler.warmup_ratio"]


def test_every_consumer_agrees_with_the_one_definition(tmp_path):
    from warmup_lab.analysis.arms import run_settings
    from warmup_lab.analysis.load import Run, flatten, is_ignored
    from warmup_lab.sweeps.grouping import fused_groups
    from warmup_lab.runs.run import run
    from warmup_lab.sweeps.jobs import IGNORED_OVERRIDES, override_key

    cfg = compose_cfg("model.width=4")
    metrics = run(cfg, tmp_path)  # checkpoints and finished records
    assert metrics["config_digest"] == I.digest(I.run_identity(cfg))
    # sweeps: the design of a study is not a run's identity, its lr multiplier is
    assert IGNORED_OVERRIDES == I.NOT_IDENTITY_OVERRIDES
    assert override_key(["seed=1", "study.max_seeds=12", "trainer.threads=2"]) == ("seed=1",)
    assert override_key(["study.lr_mult=4"]) == ("study.lr_mult=4",)
    # analysis: arms split on what changes numbers only
    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    kept = run_settings(Run(tmp_path, flat, [], metrics))
    assert {k for k in flat if not is_ignored(k)} <= set(kept)
    assert not any(k.startswith(("trainer.compile", "trainer.log_interval", "study.", "paths.")) for k in kept)
    assert "trainer.eval_interval" in kept and "seed" not in kept
    # fused grouping: seeds, lrs, schedules and bookkeeping may differ inside a group; speed knobs may not
    same = [compose_cfg(f"seed={s}", f"optimizer.lr={lr}", f"trainer.progress={p}")
            for s, lr, p in ((0, 0.1, "false"), (1, 0.2, "true"))]
    assert fused_groups(same + [compose_cfg("trainer.threads=2"), compose_cfg("model.width=8")], 8) == \
        [[0, 1], [2], [3]]


def test_tensorboard_hides_bookkeeping_and_shows_speed():
    from warmup_lab.runs.tb import flat_hparams

    keys = set(flat_hparams(compose_cfg("data=cifar10", "data.root=/nowhere")))
    assert not keys & {"trainer.progress", "trainer.resume", "trainer.checkpoint_interval", "data.root",
                       "data.download"}
    assert {"trainer.threads", "trainer.device", "trainer.compile", "trainer.log_interval"} <= keys
    assert not any(k.endswith("._target_") for k in keys)


# -- RunDir: the records of a run -------------------------------------------------------------------
def test_a_failure_never_replaces_a_finished_record(tmp_path):
    rd = RunDir(tmp_path)
    rd.write_metrics({"status": "completed", "final_val_loss": 0.1})
    out = rd.record_failure("RuntimeError: late", "Traceback ...")
    assert out["status"] == "completed" and rd.metrics() == {"status": "completed", "final_val_loss": 0.1}
    assert not (tmp_path / "error.txt").exists()
    other = RunDir(tmp_path / "b")
    assert other.record_failure("ValueError: bad", "Traceback: bad")["status"] == "failed"
    assert other.metrics()["error"] == "ValueError: bad" and (tmp_path / "b" / "error.txt").read_text() == "Traceback: bad"
    assert not list(tmp_path.rglob("*.tmp"))  # written whole, nothing left aside


def test_sessions_survive_a_killed_session_and_are_on_disk_from_the_start(tmp_path):
    rd = RunDir(tmp_path)
    first = {"start_time": "t0", "status": "running", "hostname": "h", "resumed_from_step": None}
    meta, sessions = rd.start_session(first, continuing=False)
    assert rd.meta()["sessions"] == [] and meta["first_start_time"] == "t0"
    rd.end_session(meta, sessions, "interrupted", 0, 40)
    meta, sessions = rd.start_session({**first, "start_time": "t1", "resumed_from_step": 40}, continuing=True)
    assert meta["first_start_time"] == "t0" and [s["status"] for s in rd.meta()["sessions"]] == ["interrupted"]
    # this session is SIGKILLed: nothing more is written; the next one lists it as killed
    meta, sessions = rd.start_session({**first, "start_time": "t2", "resumed_from_step": 40}, continuing=True)
    assert [(s["status"], s["start_time"], s["from_step"]) for s in rd.meta()["sessions"]] == \
        [("interrupted", "t0", 0), ("killed", "t1", 40)]
    rd.end_session(meta, sessions, "completed", 40, 100)
    assert [s["status"] for s in rd.meta()["sessions"]] == ["interrupted", "killed", "completed"]
    assert rd.meta()["status"] == "completed" and rd.meta()["first_start_time"] == "t0"
