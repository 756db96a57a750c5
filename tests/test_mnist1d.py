"""MNIST-1D (data=mnist1d) and the models for 1-D signals (model=resnet1d, the Transformer's
signal patches): the data is the package's own make_dataset output, generated offline, cached by
its arguments; the models' shapes and parameter counts against their formulas."""

from __future__ import annotations

import random
import socket

import numpy as np
import pytest
import torch

from warmup_lab.data import load_mnist1d
from warmup_lab.data import mnist1d as m1d
from warmup_lab.models import count_parameters, resnet1d, transformer
from warmup_lab.data.spec import DataSpec

SIGNALS = DataSpec("classification", (1, 40), 10)


def reference(num_samples: int, seed: int = 42, train_split: float = 0.8) -> dict:
    """The package called directly, as its README shows."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, train_split
    return make_dataset(args)


def test_signals_are_the_packages_make_dataset_output(tmp_path):
    data = load_mnist1d(num_samples=600, cache_dir=str(tmp_path))
    ref = reference(600)
    assert data.spec == SIGNALS and data.train_x.shape == (480, 1, 40) and data.val_x.shape == (120, 1, 40)
    np.testing.assert_allclose(data.train_x[:, 0].numpy(), ref["x"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(data.val_x[:, 0].numpy(), ref["x_test"], rtol=0, atol=1e-6)
    assert np.array_equal(data.train_y.numpy(), ref["y"]) and np.array_equal(data.val_y.numpy(), ref["y_test"])
    assert torch.bincount(torch.cat([data.train_y, data.val_y]), minlength=10).tolist() == [60] * 10
    other = load_mnist1d(num_samples=600, seed=7, cache_dir=str(tmp_path))
    assert not torch.equal(other.train_x, data.train_x)  # the generator seed is a knob


def test_generating_leaves_the_global_rngs_as_they_were(tmp_path):
    random.seed(3)
    np.random.seed(3)
    expect_py, expect_np = random.random(), np.random.rand()
    random.seed(3)
    np.random.seed(3)
    load_mnist1d(num_samples=100, cache=False)
    assert random.random() == expect_py and np.random.rand() == expect_np


def test_nothing_touches_the_network(tmp_path, monkeypatch):
    import requests

    def refuse(*a, **k):
        raise AssertionError("MNIST-1D tried the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(requests, "get", refuse)
    data = load_mnist1d(num_samples=200, cache_dir=str(tmp_path))
    assert data.num_train == 160


def test_the_cache_is_keyed_by_every_argument_and_read_back_exactly(tmp_path, monkeypatch):
    first = load_mnist1d(num_samples=300, cache_dir=str(tmp_path))
    files = sorted(p.name for p in (tmp_path / "mnist1d").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npz")
    calls = []
    real = m1d.generate
    monkeypatch.setattr(m1d, "generate", lambda args: calls.append(args) or real(args))
    again = load_mnist1d(num_samples=300, cache_dir=str(tmp_path))
    assert calls == [] and torch.equal(again.train_x, first.train_x) and torch.equal(again.val_y, first.val_y)
    for changed in ({"num_samples": 310}, {"seed": 1}, {"train_split": 0.5}):
        load_mnist1d(**{"num_samples": 300, **changed}, cache_dir=str(tmp_path))
    assert len(calls) == 3 and len(list((tmp_path / "mnist1d").glob("*.npz"))) == 4
    keys = {m1d.cache_key(m1d.generation_args(300, 42, 0.8)), m1d.cache_key(m1d.generation_args(300, 42, 0.5))}
    assert len(keys) == 2


def test_a_damaged_cache_file_is_made_again_and_no_cache_writes_nothing(tmp_path, monkeypatch):
    load_mnist1d(num_samples=200, cache_dir=str(tmp_path))
    (npz,) = (tmp_path / "mnist1d").glob("*.npz")
    npz.write_bytes(b"not a zip file")
    data = load_mnist1d(num_samples=200, cache_dir=str(tmp_path))
    assert np.array_equal(data.train_y.numpy(), reference(200)["y"])
    with np.load(npz) as f:  # rewritten whole
        assert f["x"].shape == (160, 40)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_mnist1d(num_samples=200, cache=False)
    assert not (tmp_path / "xdg").exists()
    load_mnist1d(num_samples=200)  # the default: the user cache dir
    assert len(list((tmp_path / "xdg" / "warmup-lab" / "mnist1d").glob("*.npz"))) == 1


def test_split_sizes_match_what_loading_gives():
    for n, split in ((1000, 0.8), (999, 0.8), (310, 0.37)):
        data = load_mnist1d(num_samples=n, train_split=split, cache=False)
        assert m1d.split_sizes(n, split) == (data.num_train, len(data.val_y))


# --- models for signals -------------------------------------------------------------------------


def resnet1d_params(depth: int, width: int, k: int, classes: int = 10, channels: int = 1, dims: int = 1) -> int:
    """Parameter count from the architecture: stem conv + BN, 3 stages of n blocks of two convs
    with k**dims taps each and BN (shortcut A has no parameters), linear head."""
    n, taps = (depth - 2) // 6, k**dims
    total = channels * width * taps + 2 * width
    c_in = width
    for c in (width, 2 * width, 4 * width):
        for _ in range(n):
            total += c_in * c * taps + c * c * taps + 4 * c
            c_in = c
    return total + c_in * classes + classes


@pytest.mark.parametrize("depth,width,k", [(8, 16, 5), (14, 8, 3), (20, 4, 7)])
def test_resnet1d_shapes_and_parameter_count(depth, width, k):
    torch.manual_seed(0)
    model = resnet1d(SIGNALS, depth=depth, width=width, kernel_size=k)
    assert count_parameters(model) == resnet1d_params(depth, width, k)
    x = torch.randn(3, 1, 40)
    out = model(x)
    assert out.shape == (3, 10)
    out.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # the length halves at stages 2 and 3: 40 -> 20 -> 10 before the pool
    feats = model.blocks(torch.relu(model.bn1(model.conv1(x))))
    assert feats.shape == (3, 4 * width, 10)


def test_resnet1d_shortcut_b_and_bad_knobs():
    model = resnet1d(SIGNALS, depth=8, width=4, shortcut="B")
    assert model(torch.randn(2, 1, 40)).shape == (2, 10)
    assert count_parameters(model) > resnet1d_params(8, 4, 5)
    for kwargs, key in (({"depth": 9}, "model.depth"), ({"kernel_size": 4}, "model.kernel_size"),
                        ({"width": 0}, "model.width"), ({"shortcut": "C"}, "model.shortcut")):
        with pytest.raises(ValueError, match=key):
            resnet1d(SIGNALS, **kwargs)
    for spec in (DataSpec("classification", (1, 8, 8), 10), DataSpec("lm", (16,), 256)):
        with pytest.raises(ValueError, match="1-D signals"):
            resnet1d(spec)


def test_the_2d_resnet_is_unchanged_by_the_1d_generalisation():
    """The CIFAR ResNet keeps 3x3 kernels and the same formula with k*k taps (ResNet-20: 0.27M)."""
    from warmup_lab.models import cifar_resnet

    model = cifar_resnet(DataSpec("classification", (3, 32, 32), 10), depth=20)
    assert count_parameters(model) == resnet1d_params(20, 16, 3, channels=3, dims=2) == 269722
    assert all(m.kernel_size == (3, 3) for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_transformer_tokens_of_a_signal_are_runs_of_patch_size_samples():
    torch.manual_seed(0)
    spec = DataSpec("classification", (2, 40), 10)
    model = transformer(spec, n_layers=1, d_model=16, n_heads=2, patch_size=4)
    x = torch.randn(3, 2, 40)
    tokens = model.patchify(x)
    assert tokens.shape == (3, 10, 8)
    for i in (0, 3, 9):  # token i holds samples 4i..4i+3 of channel 0, then of channel 1
        assert torch.equal(tokens[:, i], x[:, :, 4 * i : 4 * i + 4].reshape(3, 8))
    assert model.pos_emb.shape == (10, 16) and model(x).shape == (3, 10)
    with pytest.raises(ValueError, match="signal length 40"):
        transformer(spec, patch_size=3)
