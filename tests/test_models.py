"""Tests of the model builders (shapes, structure, validation, no-decay rule, YAML configs)."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from warmup_lab.models import (
    cifar_resnet,
    count_parameters,
    no_decay_param_names,
    resnet18,
    transformer,
)
from warmup_lab.data.spec import DataSpec

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
CIFAR = DataSpec("classification", (3, 32, 32), 10)
DIGITS = DataSpec("classification", (1, 8, 8), 10)
LM = DataSpec("lm", (16,), 50)
SMALL_TF = dict(n_layers=2, d_model=32, n_heads=4)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _input(spec: DataSpec, batch: int = 2) -> torch.Tensor:
    if spec.is_lm:
        return torch.randint(0, spec.num_classes, (batch, *spec.input_shape))
    return torch.randn(batch, *spec.input_shape)


def _check_forward_backward(model: nn.Module, spec: DataSpec) -> None:
    x = _input(spec)
    out = model(x)
    expected = (2, *spec.input_shape, spec.num_classes) if spec.is_lm else (2, spec.num_classes)
    assert out.shape == expected
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# --- ResNets -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [CIFAR, DIGITS], ids=["cifar", "digits"])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_cifar_resnet_forward_backward(spec, shortcut):
    _check_forward_backward(cifar_resnet(spec, depth=20, shortcut=shortcut), spec)


def test_resnet56_forward_backward():
    _check_forward_backward(cifar_resnet(CIFAR, depth=56), CIFAR)


def test_cifar_resnet_parameter_counts():
    # He et al. 2016, Table 6: ResNet-20 0.27M, ResNet-56 0.85M (option A: parameter-free
    # shortcuts); option B adds the two 1x1 projections + BN.
    assert count_parameters(cifar_resnet(CIFAR, depth=20)) == 269_722
    assert count_parameters(cifar_resnet(CIFAR, depth=56)) == 853_018
    assert count_parameters(cifar_resnet(CIFAR, depth=20, shortcut="B")) == 272_474
    assert count_parameters(cifar_resnet(CIFAR, depth=20, width=32)) > 1_000_000


def test_cifar_resnet_depth_is_6n_plus_2():
    model = cifar_resnet(CIFAR, depth=32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 32
    assert [m.out_channels for m in convs][-1] == 64


def test_resnet18_small_image_stem():
    model = resnet18(CIFAR)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.in_channels == 3
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10
    assert 11.1e6 < count_parameters(model) < 11.2e6
    _check_forward_backward(model, CIFAR)
    assert resnet18(DIGITS).conv1.in_channels == 1


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(depth=21), "model.depth"),
        (dict(depth=2), "model.depth"),
        (dict(width=0), "model.width"),
        (dict(shortcut="C"), "model.shortcut"),
    ],
)
def test_cifar_resnet_bad_knobs(kwargs, key):
    with pytest.raises(ValueError, match=key):
        cifar_resnet(CIFAR, **kwargs)


@pytest.mark.parametrize("builder", [cifar_resnet, resnet18])
def test_resnets_reject_lm_data(builder):
    with pytest.raises(ValueError, match=r"model=.*data"):
        builder(LM)


# --- Transformer ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre_ln", "post_ln"])
@pytest.mark.parametrize("spec", [LM, DIGITS, CIFAR], ids=["lm", "digits", "cifar"])
def test_transformer_forward_backward(spec, norm_first):
    patch = 4 if spec is CIFAR else 2
    model = transformer(spec, norm_first=norm_first, patch_size=patch, **SMALL_TF)
    _check_forward_backward(model, spec)


def test_transformer_defaults():
    model = transformer(LM)
    assert len(model.blocks) == 2
    assert model.blocks[0].mlp[0].out_features == 4 * 128
    assert model.pos_emb.shape == (LM.input_shape[0], 128)  # context_length=None: the data's T
    assert model.blocks[0].norm_first


def test_lm_is_causal():
    model = transformer(LM, **SMALL_TF).eval()
    x = _input(LM)
    t = 6
    y = x.clone()
    y[:, t + 1 :] = torch.randint(0, LM.num_classes, y[:, t + 1 :].shape)
    with torch.no_grad():
        out_x, out_y = model(x), model(y)
    torch.testing.assert_close(out_x[:, : t + 1], out_y[:, : t + 1])
    assert not torch.allclose(out_x[:, t + 1 :], out_y[:, t + 1 :])


def test_image_transformer_attends_to_all_patches():
    model = transformer(DIGITS, **SMALL_TF).eval()
    x = _input(DIGITS)
    y = x.clone()
    y[:, :, -2:, -2:] += 1.0  # only the last patch changes
    with torch.no_grad():
        h_x = model.patch_emb(model.patchify(x)) + model.pos_emb[:16]
        h_y = model.patch_emb(model.patchify(y)) + model.pos_emb[:16]
        first_x, first_y = model.blocks[0](h_x)[:, 0], model.blocks[0](h_y)[:, 0]
    assert not torch.allclose(first_x, first_y)  # non-causal: patch 0 sees the last patch


def test_patchify_is_row_major_non_overlapping():
    model = transformer(DataSpec("classification", (2, 4, 4), 3), d_model=8, n_heads=2)
    x = torch.arange(32.0).view(1, 2, 4, 4)
    patches = model.patchify(x)
    assert patches.shape == (1, 4, 8)
    # patch 1 = rows 0-1, cols 2-3 of both channels
    torch.testing.assert_close(patches[0, 1], x[0, :, 0:2, 2:4].reshape(-1))


def _block_output(norm_first: bool) -> torch.Tensor:
    model = transformer(LM, norm_first=norm_first, **SMALL_TF).eval()
    h = 3.0 * torch.randn(2, 16, 32) + 1.0  # a residual stream far from normalized
    with torch.no_grad():
        return model.blocks[0](h)


def test_post_ln_block_output_is_normalized():
    out = _block_output(norm_first=False)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 16), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(-1, unbiased=False), torch.ones(2, 16), atol=1e-3, rtol=0)


def test_pre_ln_block_output_is_not_normalized():
    out = _block_output(norm_first=True)
    assert out.mean(-1).abs().mean() > 0.3
    assert (out.std(-1, unbiased=False) - 1).abs().mean() > 0.5


def test_final_norm_placement():
    pre = transformer(LM, norm_first=True, **SMALL_TF)
    assert isinstance(pre.norm, nn.LayerNorm)
    no_final = transformer(LM, norm_first=True, final_norm=False, **SMALL_TF)
    assert isinstance(no_final.norm, nn.Identity)
    post = transformer(LM, norm_first=False, final_norm=True, **SMALL_TF)
    assert isinstance(post.norm, nn.Identity)  # Post-LN's last block already ends in LN
    n_ln = lambda m: sum(isinstance(x, nn.LayerNorm) for x in m.modules())  # noqa: E731
    assert n_ln(pre) == n_ln(post) + 1 == 2 * 2 + 1


def test_tie_embeddings():
    tied = transformer(LM, tie_embeddings=True, **SMALL_TF)
    untied = transformer(LM, **SMALL_TF)
    assert tied.head.weight is tied.tok_emb.weight
    assert count_parameters(untied) - count_parameters(tied) == LM.num_classes * 32


@pytest.mark.parametrize(
    "spec, kwargs, key",
    [
        (LM, dict(d_model=30, n_heads=4), "model.d_model"),
        (LM, dict(context_length=8), "model.context_length"),
        (CIFAR, dict(context_length=64, patch_size=2), "model.context_length"),
        (DIGITS, dict(patch_size=3), "model.patch_size"),
        (DIGITS, dict(tie_embeddings=True), "model.tie_embeddings"),
        (LM, dict(n_layers=0), "model.n_layers"),
        (LM, dict(n_heads=0), "model.n_heads"),
        (LM, dict(dropout=1.0), "model.dropout"),
    ],
)
def test_transformer_bad_knobs(spec, kwargs, key):
    with pytest.raises(ValueError, match=key):
        transformer(spec, **kwargs)


def test_transformer_rejects_unknown_task():
    with pytest.raises(ValueError, match="model=transformer"):
        transformer(DataSpec("regression", (4,), 1))


def test_lm_shorter_sequence_ok_longer_rejected():
    model = transformer(LM, context_length=16, **SMALL_TF)
    assert model(torch.randint(0, 50, (1, 5))).shape == (1, 5, 50)
    with pytest.raises(ValueError, match="model.context_length"):
        model(torch.randint(0, 50, (1, 17)))


# --- no-decay rule and parameter counting --------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: cifar_resnet(CIFAR, depth=20, shortcut="B"),
        lambda: resnet18(CIFAR),
        lambda: transformer(LM, tie_embeddings=True, **SMALL_TF),
        lambda: transformer(DIGITS, norm_first=False, **SMALL_TF),
    ],
    ids=["resnet20B", "resnet18", "tf_lm_tied", "tf_img_postln"],
)
def test_no_decay_param_names(make):
    model = make()
    no_decay = no_decay_param_names(model)
    params = dict(model.named_parameters())
    assert no_decay <= set(params)
    norms = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if full not in params:  # a tied weight, listed under its first name
                continue
            if isinstance(mod, norms) or p_name == "bias":
                assert full in no_decay, full
            elif isinstance(mod, (nn.Conv2d, nn.Linear, nn.Embedding)):
                assert full not in no_decay, full  # weights and embeddings are decayed
    assert all(params[n].dim() == 1 for n in no_decay)
    if hasattr(model, "pos_emb"):
        assert "pos_emb" not in no_decay


def test_count_parameters_trainable_only():
    lin = nn.Linear(4, 3)
    assert count_parameters(lin) == 15
    lin.bias.requires_grad_(False)
    assert count_parameters(lin, trainable_only=True) == 12


# --- YAML configs through Hydra ------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet18", "transformer"])
def test_yaml_instantiates(name):
    model_cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert model_cfg.name == name
    spec = DIGITS if name != "transformer" else LM
    data = {"context_length": 16} if spec.is_lm else {}
    cfg = OmegaConf.create({"model": model_cfg, "data": data})
    model = hydra.utils.instantiate(cfg.model, spec=spec)  # spec arrives as a DictConfig
    _check_forward_backward(model, spec)


def test_yaml_transformer_context_length_follows_data():
    model_cfg = OmegaConf.load(CONF / "transformer.yaml")
    m = hydra.utils.instantiate(model_cfg, spec=DataSpec("lm", (32,), 50))
    assert m.pos_emb.shape[0] == 32
    m = hydra.utils.instantiate(model_cfg, spec=DIGITS, _convert_="object")
    assert m.pos_emb.shape[0] == (8 // model_cfg.patch_size) ** 2  # one position per patch
    m = hydra.utils.instantiate(model_cfg, spec=DIGITS, context_length=40)
    assert m.pos_emb.shape[0] == 40
