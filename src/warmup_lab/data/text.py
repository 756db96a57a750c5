"""Byte-level language-modelling corpora: the Python standard library's sources, or a file."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch

from warmup_lab.data.spec import DataSpec
from warmup_lab.data.dataset import InMemoryData


def stdlib_corpus(max_bytes: int) -> bytes:
    """The standard library's top-level ``.py`` files in sorted order, concatenated, cut at
    ``max_bytes``. Python versions ship different sources, so the corpus hash is recorded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out, size = [], 0
    for path in sorted(root.glob("*.py")):
        chunk = path.read_bytes()
        out.append(chunk)
        size += len(chunk)
        if size >= max_bytes:
            break
    return b"".join(out)[:max_bytes]


def load_bytes(path: str | None = None, max_bytes: int = 2_000_000, val_fraction: float = 0.1,
               context_length: int = 128, eval_sequences: int = 256, name: str = "bytes") -> InMemoryData:
    """Tokens are raw bytes (vocabulary 256). The first ``1 - val_fraction`` of the corpus is
    for training; validation uses ``eval_sequences`` evenly spaced windows of the rest."""
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"data.path={path} does not exist (give a UTF-8 text file)")
        raw = file.read_text(encoding="utf-8").encode("utf-8")[:max_bytes]
    else:
        raw = stdlib_corpus(max_bytes)
    tokens = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    split = int(len(tokens) * (1 - val_fraction))
    train, val = tokens[:split], tokens[split:]
    span = context_length + 1
    if len(val) < span or len(train) < span + 1:
        raise ValueError(f"data.context_length={context_length} is too long for a corpus of "
                         f"{len(tokens)} bytes with data.val_fraction={val_fraction}")
    starts = torch.linspace(0, len(val) - span, min(eval_sequences, len(val) - span + 1)).long()
    windows = val[starts[:, None] + torch.arange(span)]
    return InMemoryData(name=name, spec=DataSpec("lm", (context_length,), 256),
                        train_x=train, train_y=None, val_x=windows[:, :-1], val_y=windows[:, 1:],
                        info={"corpus_bytes": len(raw), "corpus_sha1": hashlib.sha1(raw).hexdigest()[:12],
                              "source": str(path) if path else "python-stdlib",
                              "unigram_entropy": unigram_entropy(train)})


def unigram_entropy(tokens: torch.Tensor, vocab: int = 256) -> float:
    """Entropy in nats of the token frequencies of ``tokens``: the loss of a model that predicts
    the frequencies and ignores the context (the unigram plateau; failure rule of docs/claims.md)."""
    counts = torch.bincount(tokens.reshape(-1), minlength=vocab).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())
