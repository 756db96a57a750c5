"""ResNets for small images.

``cifar_resnet``: the CIFAR ResNets of He et al. 2016 (arXiv:1512.03385, Sec. 4.2): a 3x3 conv,
three stages of ``n`` basic blocks with widths ``w, 2w, 4w`` (the last two start with stride 2),
global average pooling and a linear classifier; ``6n + 2`` weighted layers in all.
``resnet1d``: the same network with 1-D convolutions (kernel ``kernel_size``), for signals
``(B, C, L)`` such as MNIST-1D.
``resnet18``: torchvision's ImageNet ResNet-18 with a small-image stem (3x3 stride-1 conv1, no
max-pool), as commonly used on CIFAR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from warmup_lab.data.spec import DataSpec


def as_data_spec(spec) -> DataSpec:
    """Return ``spec`` as a :class:`DataSpec`.

    ``hydra.utils.instantiate(cfg.model, spec=spec)`` merges kwargs into the config, so the
    builder receives a DictConfig (or, with ``_convert_="object"``, a DataSpec whose
    ``input_shape`` is a list); both are normalized here.
    """
    if isinstance(spec, DataSpec) and isinstance(spec.input_shape, tuple):
        return spec
    get = spec.get if hasattr(spec, "get") else lambda k: getattr(spec, k)
    return DataSpec(
        task=str(get("task")),
        input_shape=tuple(int(s) for s in get("input_shape")),
        num_classes=int(get("num_classes")),
    )


def _image_spec(spec, model_name: str) -> tuple[int, int, int]:
    """Return ``(C, H, W)`` of an image-classification spec, or raise a ValueError."""
    if spec.task != "classification" or len(tuple(spec.input_shape)) != 3:
        raise ValueError(
            f"model={model_name} needs data with task 'classification' and image input (C,H,W); "
            f"data has task {spec.task!r} with input_shape {tuple(spec.input_shape)}"
        )
    c, h, w = (int(s) for s in spec.input_shape)
    return c, h, w


CONV = {1: nn.Conv1d, 2: nn.Conv2d}
BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}


class BasicBlock(nn.Module):
    """Two k x k conv-BN layers with a shortcut; ReLU after the addition (He et al. 2016).

    ``shortcut`` applies only when the shape changes (stride 2 / more channels): ``"A"`` takes
    every other pixel and zero-pads the new channels (parameter free), ``"B"`` is a 1x1 strided
    conv + BN projection. Same-shape shortcuts are the identity in both cases. ``dim``: 2 for
    images, 1 for signals; ``kernel_size`` odd (padding keeps the length).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str, dim: int = 2,
                 kernel_size: int = 3) -> None:
        super().__init__()
        conv, bn, k = CONV[dim], BATCHNORM[dim], kernel_size
        self.conv1 = conv(in_ch, out_ch, k, stride, k // 2, bias=False)
        self.bn1 = bn(out_ch)
        self.conv2 = conv(out_ch, out_ch, k, 1, k // 2, bias=False)
        self.bn2 = bn(out_ch)
        self.stride = stride
        self.dim = dim
        self.pad = out_ch - in_ch
        self.projection: nn.Module | None = None
        if (stride != 1 or in_ch != out_ch) and shortcut == "B":
            self.projection = nn.Sequential(conv(in_ch, out_ch, 1, stride, bias=False), bn(out_ch))

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            return self.projection(x)
        if self.stride != 1:
            x = x[..., :: self.stride] if self.dim == 1 else x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0) * self.dim + (0, self.pad))  # zero channels appended at the end
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images ``(B, C, H, W)`` (``dim=2``) or signals ``(B, C, L)``
    (``dim=1``); output logits ``(B, classes)``."""

    def __init__(
        self, in_channels: int, num_classes: int, n: int, width: int = 16, shortcut: str = "A",
        dim: int = 2, kernel_size: int = 3,
    ) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        k = kernel_size
        self.dim = dim
        self.conv1 = CONV[dim](in_channels, width, k, 1, k // 2, bias=False)
        self.bn1 = BATCHNORM[dim](width)
        blocks: list[nn.Module] = []
        in_ch = width
        for stage, out_ch in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride, shortcut, dim, k))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(x.mean(-1) if self.dim == 1 else F.adaptive_avg_pool2d(x, 1), 1))


def cifar_resnet(
    spec: DataSpec,
    depth: int = 20,
    width: int = 16,
    shortcut: str = "A",
    name: str | None = None,
) -> CifarResNet:
    """Build a CIFAR ResNet of ``depth = 6n + 2`` layers (20, 32, 44, 56, 110, ...).

    ``width``: channels of the first stage (16 in the paper). ``shortcut``: ``"A"`` (zero-pad
    identity, the paper's CIFAR choice) or ``"B"`` (1x1 projection where the shape changes).
    Convs get Kaiming-normal init (fan_out, ReLU), BN weight 1 / bias 0, the classifier PyTorch's
    default. ``name`` is ignored.
    """
    spec = as_data_spec(spec)
    c, _, _ = _image_spec(spec, name or f"resnet{depth}")
    depth, width = int(depth), int(width)
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"model.depth={depth} is invalid; it must be 6n+2 with n>=1 (20, 32, 44, 56, 110, ...)"
        )
    if width < 1:
        raise ValueError(f"model.width={width} is invalid; it must be a positive integer")
    sc = str(shortcut).upper()
    if sc not in ("A", "B"):
        raise ValueError(
            f"model.shortcut={shortcut!r} is invalid; allowed: A (zero-pad) or B (projection)"
        )
    return CifarResNet(c, int(spec.num_classes), (depth - 2) // 6, width, sc)


def resnet1d(
    spec: DataSpec,
    depth: int = 8,
    width: int = 16,
    kernel_size: int = 5,
    shortcut: str = "A",
    name: str | None = None,
) -> CifarResNet:
    """The CIFAR ResNet with 1-D convolutions, for signals ``(B, C, L)`` (MNIST-1D: C = 1, L = 40).

    ``depth = 6n + 2`` (8, 14, 20, ...); three stages of widths ``w, 2w, 4w``, the last two halving
    the length; ``kernel_size`` odd (5, as the MNIST-1D paper's CNN). Same init as
    :func:`cifar_resnet`. ``name`` is ignored.
    """
    spec = as_data_spec(spec)
    shape = tuple(spec.input_shape)
    if spec.task != "classification" or len(shape) != 2:
        raise ValueError(f"model={name or 'resnet1d'} needs data with task 'classification' and 1-D signals "
                         f"(C, L), e.g. data=mnist1d; data has task {spec.task!r} with input_shape {shape}")
    depth, width, kernel_size = int(depth), int(width), int(kernel_size)
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"model.depth={depth} is invalid; it must be 6n+2 with n>=1 (8, 14, 20, ...)")
    if width < 1:
        raise ValueError(f"model.width={width} is invalid; it must be a positive integer")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"model.kernel_size={kernel_size} is invalid; it must be an odd positive integer")
    sc = str(shortcut).upper()
    if sc not in ("A", "B"):
        raise ValueError(f"model.shortcut={shortcut!r} is invalid; allowed: A (zero-pad) or B (projection)")
    return CifarResNet(shape[0], int(spec.num_classes), (depth - 2) // 6, width, sc, dim=1,
                       kernel_size=kernel_size)


def resnet18(spec: DataSpec, name: str | None = None) -> nn.Module:
    """torchvision ResNet-18 (random init, no download) with a 3x3 stride-1 stem and no max-pool.

    ``name`` is ignored.
    """
    from torchvision.models import resnet18 as tv_resnet18

    spec = as_data_spec(spec)
    c, _, _ = _image_spec(spec, name or "resnet18")
    model = tv_resnet18(weights=None, num_classes=int(spec.num_classes))
    model.conv1 = nn.Conv2d(c, 64, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model
