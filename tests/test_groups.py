"""K runs through one Trainer (``run_group``, ``launcher=fused``) give each run the numbers it gets
alone through ``run`` (K = 1 of the same Trainer): the stacks, the per-run optimizers, the masking
of a diverged run."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_BYTES, TINY_TRANSFORMER, compose_cfg, read_scalars, run_group_keeping_trainer, write_tiny_cifar
from warmup_lab.engine.stacking import GroupedResNet, LoopStack, Single, VmapStack, stack_models
from warmup_lab.models.resnet import CifarResNet
from warmup_lab.models.transformer import transformer
from warmup_lab.data.spec import DataSpec
from warmup_lab.sweeps.grouping import check_fusable, fusable

COMMON = ["trainer.max_steps=6", "trainer.eval_interval=3", "trainer.log_interval=4", "model.width=8"]
TF = ["model=transformer", "data=bytes", *TINY_TRANSFORMER, *TINY_BYTES, "trainer.max_steps=6",
      "trainer.eval_interval=3", "trainer.log_interval=4"]


def trained(monkeypatch, cfgs, dirs):
    """``run_group`` (or ``run`` for one config) keeping its Trainer: (metrics, trainer)."""
    return run_group_keeping_trainer(cfgs, dirs, monkeypatch)


GROUPS = {
    # sgd with one run diverging at step 3 (masked out, the others go on), weight decay and schedules differing
    "resnet_sgd": (COMMON, [["seed=0", "optimizer.lr=0.02"],
                            ["seed=1", "optimizer.lr=0.01", "scheduler=warmuplinear"],
                            ["seed=2", "optimizer.lr=0.02", "scheduler=constantlr", "scheduler.warmup_steps=null",
                             "optimizer.weight_decay=0"],
                            ["seed=3", "optimizer.lr=1e9"]]),
    # every optimizer the project offers, in one group, grouped 2-D convolutions in NHWC
    "resnet_every_optimizer": ([*COMMON, "trainer.channels_last=true"],
                               [["seed=0", "optimizer=adamw", "optimizer.lr=1e-3"],
                                ["seed=1", "optimizer=adam", "optimizer.lr=1e-3", "+optimizer.amsgrad=true"],
                                ["seed=2", "optimizer=radam", "optimizer.lr=1e-3"],
                                ["seed=3", "optimizer=rmsprop", "optimizer.lr=1e-4"],
                                ["seed=4", "optimizer=sgd", "optimizer.lr=0.02", "optimizer.nesterov=true"]]),
    # the vmapped Transformer (LayerNorm, attention, tied embeddings), Post-LN, clipping
    "transformer_vmap": ([*TF, "model.norm_first=false", "model.tie_embeddings=true", "trainer.grad_clip=0.5",
                          "trainer.stack=vmap"],
                         [["seed=0", "optimizer=adamw", "optimizer.lr=3e-3"], ["seed=1", "optimizer=adamw", "optimizer.lr=1e-2"],
                          ["seed=2", "optimizer=sgd", "optimizer.lr=0.1", "scheduler=reduceonplateau"]]),
    # the Transformer on the CPU by default: one model after another in one step
    "transformer_loop": (TF, [["seed=0", "optimizer=adamw", "optimizer.lr=3e-3"], ["seed=1", "optimizer=radam"]]),
}
KIND = {"resnet_sgd": GroupedResNet, "resnet_every_optimizer": GroupedResNet, "transformer_vmap": VmapStack,
        "transformer_loop": LoopStack}


@pytest.mark.parametrize("name", list(GROUPS))
def test_runs_of_a_group_equal_runs_alone(tmp_path, monkeypatch, name):
    """Same seeds, same numbers to float rounding: per-step loss, gradient norm, lr (exactly),
    update ratio, validation, final weights and BN statistics, status and diverged step. The
    configs keep 1 vs 2 threads of a run alone within the same tolerance."""
    common, runs = GROUPS[name]
    cfgs = [compose_cfg(*common, *extra) for extra in runs]
    metrics, group = trained(monkeypatch, cfgs, [tmp_path / f"g{k}" for k in range(len(cfgs))])
    assert group.k == len(cfgs) and type(group.stack) is KIND[name]
    for k, cfg in enumerate(cfgs):
        [alone_m], alone = trained(monkeypatch, [cfg], [tmp_path / f"a{k}"])
        assert isinstance(alone.stack, Single)
        m = metrics[k]
        assert m["fused"]["k"] == len(cfgs) and m["fused"]["index"] == k
        assert (m["status"], m["diverged_step"], m["steps"]) == (alone_m["status"], alone_m["diverged_step"], alone_m["steps"])
        g, a = read_scalars(tmp_path / f"g{k}"), read_scalars(tmp_path / f"a{k}")
        assert set(g) == set(a), set(g) ^ set(a)
        end = alone_m["diverged_step"]  # past divergence only "non-finite" is defined
        for tag, rel in (("train/loss", 1e-5), ("train/grad_norm", 1e-4), ("train/update_ratio", 1e-3)):
            assert [s for s, _ in g[tag]] == [s for s, _ in a[tag]], tag
            assert [v for _, v in g[tag]][:end] == pytest.approx([v for _, v in a[tag]][:end], rel=rel, nan_ok=True), tag
        assert [v for _, v in g["train/lr"]] == [v for _, v in a["train/lr"]]
        assert [v["step"] for v in m["val_history"]] == [v["step"] for v in alone_m["val_history"]]
        for x, y in zip(m["val_history"], alone_m["val_history"]):
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, nan_ok=True) and x["acc"] == pytest.approx(y["acc"], abs=1e-6)
        if m["status"] == "completed":
            mine = group.runs[k].model.state_dict()
            for key, value in alone.runs[0].model.state_dict().items():
                torch.testing.assert_close(mine[key], value, rtol=1e-3, atol=1e-4, msg=key)
    if name == "resnet_sgd":  # the diverged run stopped updating at the flush that saw it; the others trained on
        assert metrics[3]["status"] == "diverged" and metrics[3]["steps"] == 4
        assert all(m["status"] == "completed" and m["steps"] == 6 for m in metrics[:3])


def _models(make, k=3):
    out = []
    for s in range(k):
        torch.manual_seed(s)
        out.append(make())
    return out


STACKS = {
    "resnet2d_A": (lambda: CifarResNet(3, 10, n=1, width=4, shortcut="A"), (5, 3, 8, 8)),
    "resnet2d_B": (lambda: CifarResNet(3, 10, n=1, width=4, shortcut="B"), (5, 3, 8, 8)),
    "resnet1d_A": (lambda: CifarResNet(1, 10, n=1, width=4, dim=1, kernel_size=5), (5, 1, 40)),
    "transformer": (lambda: transformer(DataSpec("lm", (16,), 256), n_layers=1, d_model=16, n_heads=2,
                                        tie_embeddings=True), (5, 16)),
}
CASES = [("resnet2d_A", "auto", GroupedResNet), ("resnet2d_B", "auto", GroupedResNet),
         ("resnet1d_A", "auto", GroupedResNet), ("transformer", "auto", LoopStack),  # auto on the CPU
         ("resnet2d_B", "vmap", VmapStack), ("resnet1d_A", "vmap", VmapStack), ("transformer", "vmap", VmapStack),
         ("resnet1d_A", "loop", LoopStack)]


@pytest.mark.parametrize("name,via,kind", CASES)
def test_a_stack_computes_each_model_and_updates_its_own_statistics(name, via, kind):
    """Training-mode forward of every stack (auto on the CPU: grouped ResNets, a loop for the
    rest; and vmap) = each model's own forward; BatchNorm running statistics
    (stacked buffers, under vmap too) = each model's after its own forward, and they are the
    runs' own modules' buffers; run k's loss drives only run k's gradients."""
    make, shape = STACKS[name]
    models = _models(make)
    reference = copy.deepcopy(models)
    stack = stack_models(models, via)
    assert type(stack) is kind
    gen = torch.Generator().manual_seed(0)
    xs = (torch.randint(0, 256, (3, *shape), generator=gen) if name == "transformer"
          else torch.randn(3, *shape, generator=gen))
    out = stack(xs)
    for k, m in enumerate(reference):
        torch.testing.assert_close(out[k], m(xs[k]), rtol=1e-4, atol=1e-5)
        for key, value in m.state_dict().items():  # running stats after one training forward
            torch.testing.assert_close(models[k].state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    F.cross_entropy(out[0].reshape(-1, out.shape[-1]), torch.zeros(out[0].numel() // out.shape[-1], dtype=torch.long)).backward()
    for k, m in enumerate(models):
        grads = [p.grad for p in m.parameters()]
        assert all(g is not None for g in grads)
        total = sum(g.abs().sum().item() for g in grads)
        assert (total > 0) == (k == 0), (k, total)


def test_k1_is_the_model_itself_and_costs_nothing_extra():
    model = CifarResNet(3, 10, n=1, width=4)
    stack = stack_models([model])
    assert isinstance(stack, Single) and stack.model is model
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(stack(x.unsqueeze(0))[0], model(x), rtol=0, atol=0)


def test_configs_that_differ_outside_the_per_run_keys_are_refused():
    check_fusable([compose_cfg("seed=0"), compose_cfg("seed=1", "optimizer=rmsprop", "scheduler=sgdr")])
    with pytest.raises(ValueError, match="model.width"):
        check_fusable([compose_cfg(), compose_cfg("model.width=8")])
    with pytest.raises(ValueError, match="trainer.threads"):  # one process trains the group
        check_fusable([compose_cfg(), compose_cfg("trainer.threads=3")])
    with pytest.raises(ValueError, match="curvature probe"):
        check_fusable([compose_cfg("trainer.metrics.curvature_interval=5"), compose_cfg()])


def test_what_runs_alone_says_why():
    assert fusable(compose_cfg("scheduler=reduceonplateau")) is None  # each run follows its own validation loss
    assert "curvature" in fusable(compose_cfg("trainer.metrics.curvature_interval=5"))


def test_a_group_draws_each_runs_own_batches_with_augmentation(tmp_path):
    """Each run draws from its own sampler and generator, in the order a run alone does (CIFAR's
    random crop and flip included), past an epoch boundary."""
    from conftest import build_trainer

    root = write_tiny_cifar(tmp_path)
    cfgs = [compose_cfg("data=cifar10", f"data.root={root}", "model.width=4", f"seed={s}") for s in (0, 5, 9)]
    trainer = build_trainer(cfgs, tmp_path / "runs")
    alone = [trainer.data.sampler(16, s) for s in (0, 5, 9)]
    for _ in range(8):  # 100 images, batch 16
        xs, ys = trainer.batches()
        for k, s in enumerate(alone):
            x, y = trainer.data.batch(s.next(), s.generator)
            assert torch.equal(xs[k], x) and torch.equal(ys[k], y)
