"""A small Transformer whose layer-norm placement is a knob: Post-LN or Pre-LN.

One block, written out so both variants are exact (Xiong et al. 2020, "On Layer Normalization
in the Transformer Architecture"):

* Post-LN (``norm_first=False``, Vaswani et al. 2017):
  ``x = LN1(x + Attn(x)); x = LN2(x + MLP(x))``
* Pre-LN (``norm_first=True``, GPT-2):
  ``x = x + Attn(LN1(x)); x = x + MLP(LN2(x))``

For ``task == "lm"``: token embedding + learned positions, causal self-attention, linear LM head
-> logits ``(B, T, vocab)``. For ``task == "classification"``: the image is cut into
non-overlapping ``patch_size`` x ``patch_size`` patches (a 1-D signal ``(C, L)`` into runs of
``patch_size`` samples), each linearly projected to a token, plus learned positions; non-causal
attention, mean pooling over tokens, linear head -> logits ``(B, num_classes)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from warmup_lab.models.resnet import as_data_spec
from warmup_lab.data.spec import DataSpec


class SelfAttention(nn.Module):
    """Multi-head self-attention via ``F.scaled_dot_product_attention``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.causal = causal
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).transpose(1, 3).unbind(2)
        dropout = self.dropout if self.training else 0.0
        if torch._C._functorch.is_batchedtensor(q):  # K runs under vmap (engine/stacking.py):
            y = attention(q, k, v, dropout, self.causal)  # SDPA has no batching rule on the CPU
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=self.causal)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float, causal: bool) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` written out (``(B, H, T, D)``), for ``vmap``."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if causal:
        t = q.shape[-2]
        mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
    weights = F.dropout(scores.softmax(-1), dropout) if dropout else scores.softmax(-1)
    return weights @ v


class Block(nn.Module):
    """One Transformer block; ``norm_first`` picks Pre-LN (True) or Post-LN (False)."""

    def __init__(
        self, d_model: int, n_heads: int, d_ff: int, dropout: float, causal: bool, norm_first: bool
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, dropout, causal)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.mlp(x))


class Transformer(nn.Module):
    """Stack of :class:`Block` with an LM or an image-classification front end and head."""

    def __init__(
        self,
        spec: DataSpec,
        n_layers: int,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float,
        context_length: int,
        norm_first: bool,
        final_norm: bool,
        patch_size: int,
        tie_embeddings: bool,
    ) -> None:
        super().__init__()
        self.is_lm = spec.is_lm
        self.context_length = context_length
        self.patch_size = patch_size
        if self.is_lm:
            self.tok_emb = nn.Embedding(spec.num_classes, d_model)
        else:
            spatial = len(spec.input_shape) - 1  # 2 for images (C, H, W), 1 for signals (C, L)
            self.patch_emb = nn.Linear(spec.input_shape[0] * patch_size**spatial, d_model)
        self.pos_emb = nn.Parameter(torch.zeros(context_length, d_model))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff, dropout, self.is_lm, norm_first) for _ in range(n_layers)
        )
        # Post-LN blocks already end in a LayerNorm, so final_norm only acts in Pre-LN.
        self.norm = nn.LayerNorm(d_model) if (final_norm and norm_first) else nn.Identity()
        self.head = nn.Linear(d_model, spec.num_classes, bias=not self.is_lm)
        self.apply(self._init)
        nn.init.normal_(self.pos_emb, std=0.02)
        if tie_embeddings:
            self.head.weight = self.tok_emb.weight

    @staticmethod
    def _init(m: nn.Module) -> None:
        """GPT-2 style: N(0, 0.02) for linear and embedding weights, zero biases, LN at (1, 0)."""
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, H/p * W/p, C*p*p)``, patches in row-major order;
        ``(B, C, L)`` -> ``(B, L/p, C*p)``, runs of p samples in order."""
        p = self.patch_size
        if x.dim() == 3:
            b, c, n = x.shape
            return x.reshape(b, c, n // p, p).permute(0, 2, 1, 3).reshape(b, n // p, c * p)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tok_emb(x) if self.is_lm else self.patch_emb(self.patchify(x))
        t = tokens.shape[1]
        if t > self.context_length:
            raise ValueError(
                f"input has {t} tokens but model.context_length={self.context_length}"
            )
        h = self.drop(tokens + self.pos_emb[:t])
        for block in self.blocks:
            h = block(h)
        h = self.norm(h)
        return self.head(h if self.is_lm else h.mean(dim=1))


def transformer(
    spec: DataSpec,
    n_layers: int = 2,
    d_model: int = 128,
    n_heads: int = 4,
    d_ff: int | None = None,
    dropout: float = 0.0,
    context_length: int | None = None,
    norm_first: bool = True,
    final_norm: bool = True,
    patch_size: int = 2,
    tie_embeddings: bool = False,
    name: str | None = None,
) -> Transformer:
    """Build a Pre-LN (``norm_first=True``) or Post-LN (``norm_first=False``) Transformer.

    ``d_ff``: MLP hidden width, ``4 * d_model`` when None. ``context_length``: number of learned
    positions; must cover the sequence (T for ``lm``, the number of patches for images); None
    takes exactly that length from the data.
    ``final_norm``: a LayerNorm before the head in Pre-LN; ignored in Post-LN, whose last block
    already ends in a LayerNorm. ``patch_size``: side of the square image patches (images only).
    ``tie_embeddings``: share the LM head's weight with the token embedding (``lm`` only).
    Init: N(0, 0.02) for all linear/embedding/position weights, zero biases. ``name`` is ignored.
    """
    spec = as_data_spec(spec)
    d_ff = 4 * int(d_model) if d_ff is None else int(d_ff)
    n_layers, d_model, n_heads = int(n_layers), int(d_model), int(n_heads)
    patch_size, dropout = int(patch_size), float(dropout)
    for key, value in (
        ("n_layers", n_layers), ("d_model", d_model), ("n_heads", n_heads), ("d_ff", d_ff),
        ("patch_size", patch_size),
    ):
        if value < 1:
            raise ValueError(f"model.{key}={value} is invalid; it must be a positive integer")
    if d_model % n_heads:
        raise ValueError(
            f"model.d_model={d_model} is not divisible by model.n_heads={n_heads}; "
            "pick n_heads dividing d_model"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.dropout={dropout} is invalid; it must be in [0, 1)")

    if spec.task == "lm":
        if len(spec.input_shape) != 1:
            raise ValueError(
                f"model=transformer needs input_shape (T,) for task 'lm', got {spec.input_shape}"
            )
        seq_len, what = spec.input_shape[0], f"the data's sequence length T={spec.input_shape[0]}"
    elif spec.task == "classification" and len(spec.input_shape) == 2:  # signals (C, L)
        if tie_embeddings:
            raise ValueError("model.tie_embeddings=true is only allowed for data with task 'lm'")
        n = spec.input_shape[1]
        if n % patch_size:
            raise ValueError(
                f"model.patch_size={patch_size} does not divide the signal length {n}; pick a divisor"
            )
        seq_len = n // patch_size
        what = f"the {seq_len} patches of a length-{n} signal with patch_size {patch_size}"
    elif spec.task == "classification":
        if len(spec.input_shape) != 3:
            raise ValueError(
                f"model=transformer needs images (C,H,W) or signals (C,L) for task 'classification', "
                f"got input_shape {spec.input_shape}"
            )
        if tie_embeddings:
            raise ValueError("model.tie_embeddings=true is only allowed for data with task 'lm'")
        _, h, w = spec.input_shape
        if h % patch_size or w % patch_size:
            raise ValueError(
                f"model.patch_size={patch_size} does not divide the image size {h}x{w}; "
                "pick a divisor of both sides"
            )
        seq_len = (h // patch_size) * (w // patch_size)
        what = f"the {seq_len} patches of a {h}x{w} image with patch_size {patch_size}"
    else:
        raise ValueError(
            f"model=transformer supports data task 'lm' or 'classification', got {spec.task!r}"
        )
    context_length = seq_len if context_length is None else int(context_length)
    if context_length < seq_len:
        raise ValueError(
            f"model.context_length={context_length} is too small; it must be >= {seq_len}, "
            f"{what}"
        )
    return Transformer(
        spec, n_layers, d_model, n_heads, d_ff, dropout, context_length,
        bool(norm_first), bool(final_norm), patch_size, bool(tie_embeddings),
    )
