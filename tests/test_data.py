"""Data loaders: real offline data, fixed splits, CIFAR-10 format, batching, augmentation."""

from __future__ import annotations

import math
import random

import pytest
import torch

from conftest import write_tiny_cifar
from warmup_lab.data import load_bytes, load_cifar10, load_digits
from warmup_lab.data.cifar import random_crop_flip
from warmup_lab.data.text import stdlib_corpus


def test_digits_split_is_fixed_stratified_and_standardised():
    a, b = load_digits(), load_digits()
    assert a.num_train + len(a.val_x) == 1797
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert torch.bincount(a.val_y, minlength=10).min() >= 30  # every class in validation
    assert abs(float(a.train_x.mean())) < 1e-4 and abs(float(a.train_x.std()) - 1) < 1e-3
    assert a.spec.input_shape == (1, 8, 8) and a.spec.num_classes == 10


def test_bytes_corpus_is_the_sorted_stdlib_and_deterministic():
    corpus = stdlib_corpus(50_000)
    assert len(corpus) == 50_000 and corpus == stdlib_corpus(50_000)
    data = load_bytes(max_bytes=50_000, context_length=32, eval_sequences=10)
    assert data.spec.task == "lm" and data.spec.num_classes == 256
    assert data.val_x.shape == (10, 32)
    assert torch.equal(data.val_x[:, 1:], data.val_y[:, :-1])  # targets are the next byte
    assert data.info["source"] == "python-stdlib"


def test_bytes_from_a_text_file(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 50
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    data = load_bytes(path=str(path), context_length=8, eval_sequences=4)
    stream = torch.cat([data.train_x, data.val_x[0]])
    assert bytes(data.train_x[:9].tolist()).decode() == text[:9]
    assert len(stream) > 0 and data.info["corpus_bytes"] == len(text)
    with pytest.raises(FileNotFoundError, match="data.path"):
        load_bytes(path=str(tmp_path / "missing.txt"))


def test_cifar10_reads_the_standard_pickle_format(tmp_path):
    write_tiny_cifar(tmp_path, n_train_per_batch=7, n_test=5)
    data = load_cifar10(root=str(tmp_path), train_subset=30)
    assert data.train_x.shape == (30, 3, 32, 32) and data.val_x.shape == (5, 3, 32, 32)
    assert data.train_y.dtype == torch.long and int(data.train_y.max()) < 10


def test_cifar10_missing_files_name_the_location(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*data.download=true"):
        load_cifar10(root=str(tmp_path))


def test_crop_flip_keeps_shape_and_moves_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).reshape(2, 3, 8, 8)
    y = random_crop_flip(x, g, pad=2)
    assert y.shape == x.shape and not torch.equal(x, y)
    # with no padding and no flip the crop is the identity
    same = random_crop_flip(x, torch.Generator().manual_seed(1), pad=0)
    flipped = x.flip(-1)
    for i in range(2):
        assert torch.equal(same[i], x[i]) or torch.equal(same[i], flipped[i])


def test_shuffled_batches_cover_each_epoch_once_and_resume():
    data = load_digits()
    s = data.sampler(100, seed=3)
    seen = torch.cat([s.next() for _ in range(s.steps_per_epoch)])
    assert len(set(seen.tolist())) == len(seen) == 100 * (data.num_train // 100)
    state = s.state_dict()
    following = [s.next() for _ in range(20)]
    t = data.sampler(100, seed=99)
    t.load_state_dict(state)
    assert all(torch.equal(a, t.next()) for a in following)


def test_lm_windows_are_reproducible_per_seed():
    data = load_bytes(max_bytes=20_000, context_length=16, eval_sequences=4)
    a, b, c = data.sampler(4, 0), data.sampler(4, 0), data.sampler(4, 1)
    first = a.next()
    assert torch.equal(first, b.next()) and not torch.equal(first, c.next())
    x, y = data.batch(first)
    assert x.shape == y.shape == (4, 16)


def test_unigram_entropy_is_the_entropy_of_the_training_bytes(tmp_path):
    from collections import Counter

    text = "aaaabbc" * 400 + "tail of the corpus for validation " * 20
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    data = load_bytes(path=str(path), context_length=8, eval_sequences=4)
    train = bytes(data.train_x.tolist())
    counts = Counter(train)
    h = -sum(c / len(train) * math.log(c / len(train)) for c in counts.values())
    assert data.info["unigram_entropy"] == pytest.approx(h, rel=1e-12)


def _lm_run(tmp_path, name: str, text: str):
    from conftest import TINY_TRANSFORMER, compose_cfg
    from warmup_lab.runs.run import run

    path = tmp_path / f"{name}.txt"
    path.write_text(text, encoding="utf-8")
    cfg = compose_cfg("model=transformer", "data=bytes", "optimizer=adamw", "optimizer.lr=0.003",
                      *TINY_TRANSFORMER, f"data.path={path}", "data.context_length=16", "data.eval_sequences=64",
                      "trainer.max_steps=80", "trainer.eval_interval=80", "trainer.log_interval=10")
    return run(cfg, tmp_path / name)


def test_a_language_model_that_only_learns_byte_frequencies_has_failed(tmp_path):
    """On i.i.d. uniform bytes from {a, c, g, t}, nothing but the frequencies can be learned: the
    validation loss cannot beat ln 4 >= the training split's unigram entropy, so the run counts
    as failed. The same alphabet in a fixed order is learnable: far below it, trained."""
    from warmup_lab.analysis.load import failure_reason

    rng = random.Random(0)
    iid = "".join(rng.choice("acgt") for _ in range(30_000))
    m = _lm_run(tmp_path, "iid", iid)
    h = m["data"]["unigram_entropy"]
    assert h == pytest.approx(math.log(4), abs=0.01) and m["status"] == "completed"
    assert m["final_val_loss"] >= h and m["final_val_loss"] < m["initial_train_loss"]  # it did learn something
    assert "unigram entropy" in failure_reason(m)
    ordered = _lm_run(tmp_path, "ordered", "acgt" * 7_500)
    assert ordered["data"]["unigram_entropy"] == pytest.approx(h, abs=0.01)
    assert ordered["final_val_loss"] < 0.5 * h and failure_reason(ordered) is None
