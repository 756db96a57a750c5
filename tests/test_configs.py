"""Every option of every config group composes and builds."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from conftest import CONF, TINY_BYTES, compose_cfg, options, write_tiny_cifar
from warmup_lab.engine.optim import build_optimizer
from warmup_lab.schedules import ScheduleLR, build_schedule
from warmup_lab.data.spec import DataSpec

GROUPS = ["model", "data", "optimizer", "scheduler", "trainer"]
SPECS = {"resnet20": DataSpec("classification", (1, 8, 8), 10),
         "resnet56": DataSpec("classification", (1, 8, 8), 10),
         "resnet18": DataSpec("classification", (3, 16, 16), 10),
         "resnet1d": DataSpec("classification", (1, 40), 10),
         "transformer": DataSpec("lm", (16,), 256)}


def test_every_group_has_options():
    for group in GROUPS + ["hydra"]:
        assert options(group), group
    assert {"constantlr", "warmupconstant", "warmuplinear", "warmupcosine",
            "warmupcosinewithhardrestarts"} <= set(options("scheduler"))
    assert {"sgd", "adamw", "adam", "radam", "rmsprop"} == set(options("optimizer"))
    assert {"resnet20", "resnet56", "resnet18", "resnet1d", "transformer"} == set(options("model"))
    assert {"digits", "bytes", "cifar10", "mnist1d"} == set(options("data"))


@pytest.mark.parametrize("name", options("model"))
def test_model_options_build(name):
    cfg = compose_cfg(f"model={name}")
    model = instantiate(cfg.model, _partial_=True)(spec=SPECS[name])
    spec = SPECS[name]
    x = (torch.randint(0, 256, (2, *spec.input_shape)) if spec.is_lm
         else torch.randn(2, *spec.input_shape))
    assert model(x).shape[-1] == spec.num_classes


@pytest.mark.parametrize("name", options("data"))
def test_data_options_load(name, tmp_path):
    extra = {"bytes": TINY_BYTES, "cifar10": [f"data.root={write_tiny_cifar(tmp_path)}"],
             "mnist1d": ["data.num_samples=200"]}
    cfg = compose_cfg(f"data={name}", *extra.get(name, []))
    data = instantiate(cfg.data)
    assert data.name == name and len(data.val_x) > 0 and data.num_train > 0


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizer_options_build_with_no_decay_group(name):
    cfg = compose_cfg(f"optimizer={name}", "optimizer.weight_decay=0.1")
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(cfg.optimizer, model)
    decays = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decays == {"decay": 0.1, "no_decay": 0.0}
    assert opt.defaults["lr"] == cfg.optimizer.lr


@pytest.mark.parametrize("name", options("scheduler"))
def test_scheduler_options_build_and_drive_an_optimizer(name):
    """Each option with its own defaults (untuned warmups get beta2=0.99, i.e. tau of 100-200 steps)."""
    optimizer = ["optimizer=adamw", "optimizer.betas=[0.9,0.99]"] if "untuned" in name else []
    cfg = compose_cfg(f"scheduler={name}", *optimizer, fast=False)
    schedule = build_schedule(cfg.scheduler, total_steps=400, optimizer_cfg=cfg.optimizer)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    adapter = ScheduleLR(opt, schedule)
    for _ in range(400):
        opt.step()
        adapter.step()
    assert all(lr >= 0 for lr in adapter.get_last_lr())


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options_compose(name):
    cfg = compose_cfg(f"trainer={name}", fast=False)
    assert cfg.trainer.batch_size >= 1


def test_experiment_presets_compose():
    for name in options("experiment"):
        cfg = compose_cfg(f"experiment={name}", fast=False)
        assert cfg.model and cfg.optimizer and cfg.scheduler, name


def test_conf_dir_is_the_one_in_the_repo():
    assert (CONF / "train.yaml").is_file()
