"""FaceNet's network, Inception-ResNet-v1 (CASIA-WebFace, 512-d), in PyTorch, shaped after its frozen TF graph.

The registered factory is :func:`aikd.models.backbones.facenet.facenet`; the weights come from the graph through
:mod:`aikd.models.backbones.facenet_convert`, which maps the graph's constants onto these modules by name.

What the graph looks like (and therefore what the port mirrors):

* Every ``Conv2D`` except the residual up-projections is followed by a ``BiasAdd`` whose constant is the
  folded BatchNorm (``<scope>/Conv2D_bn_offset``), then ``Relu``: here a convolution with bias plus ReLU.
  The up-projections (``<block>/Conv2d_1x1``) keep their own ``biases`` and no activation.
* Residual units ``x + scale * up(branches(x))`` with scales 0.17 (Block35, x5), 0.10 (Block17, x10) and 0.20
  (Block8, x5), each followed by ReLU; a final Block8 with scale 1.0 and *no* ReLU.
* All stride-2 layers use ``VALID`` padding and all ``SAME`` layers have stride 1 and odd kernels, so TF's
  asymmetric ``SAME`` padding never arises and symmetric PyTorch padding is exact.
* Head: global average pooling (a 3x3 ``AvgPool`` on the 3x3 map of a 160x160 input), ``Bottleneck`` (a bias-free
  1792->512 ``MatMul``) and a ``BatchNorm`` with a constant unit scale and ``epsilon = 1e-3``. Its output
  (``InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1``) is the un-normalised embedding; the graph's output node
  ``embeddings`` L2-normalises it. :meth:`InceptionResnetV1.forward_features` returns the un-normalised one,
  because norm-based quality measures read its length.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from aikd.geometry.align import Geometry
from aikd.geometry.preprocess import InputSpec
from aikd.models.backbones.base import FaceBackbone

__all__ = ["InceptionResnetV1", "FACENET_INPUT_SPEC", "BN_EPS"]

#: FaceNet-CASIA was trained on 160x160 crops prewhitened per image on 0..255 RGB values.
FACENET_INPUT_SPEC = InputSpec(
    geometry=Geometry(size=160, template="arcface"), colour="RGB", value_range=255.0, standardize="prewhiten"
)
BN_EPS = 1e-3


# ----------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """Convolution + ReLU; the bias is the graph's folded BatchNorm offset.

    Only stride-1 ``SAME`` convolutions are padded (``kernel // 2`` on each side, exact for odd kernels); the
    stride-2 ones are ``VALID`` in the graph.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple[int, int], stride: int = 1, same: bool = False):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        if same and (stride != 1 or kh % 2 == 0 or kw % 2 == 0):
            raise ValueError("symmetric 'SAME' padding is only exact for stride 1 and odd kernels")
        padding = (kh // 2, kw // 2) if same else (0, 0)
        self.conv = nn.Conv2d(in_ch, out_ch, (kh, kw), stride=stride, padding=padding, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x))


def _branch(*layers: tuple[str, nn.Module]) -> nn.Sequential:
    """A named sequence, so state-dict keys read like the graph's scopes (``branch_1.conv2d_0b_3x3``)."""
    return nn.Sequential(OrderedDict(layers))


class _ResidualUnit(nn.Module):
    """``x + scale * conv2d_1x1(concat(branches(x)))``, optionally followed by ReLU.

    The up-projection ``conv2d_1x1`` has a real bias and no BatchNorm or activation in the graph.
    """

    block_name = "block"

    def __init__(self, channels: int, branches: Sequence[nn.Module], scale: float, activation: bool = True):
        super().__init__()
        for i, branch in enumerate(branches):
            self.add_module(f"branch_{i}", branch)
        self.num_branches = len(branches)
        inner = sum(_out_channels(b) for b in branches)
        self.conv2d_1x1 = nn.Conv2d(inner, channels, 1, bias=True)
        self.scale = float(scale)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.cat([getattr(self, f"branch_{i}")(x) for i in range(self.num_branches)], dim=1)
        out = x + self.scale * self.conv2d_1x1(mixed)
        return torch.relu(out) if self.activation else out

    def extra_repr(self) -> str:
        return f"scale={self.scale}, activation={self.activation}"


def _out_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class Block35(_ResidualUnit):
    """35x35 residual unit of Inception-ResNet (17x17 here, on 160 px inputs): 256 channels."""

    block_name = "block35"

    def __init__(self, scale: float = 0.17, activation: bool = True):
        super().__init__(
            256,
            [
                _branch(("conv2d_1x1", BasicConv2d(256, 32, 1))),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(256, 32, 1)), ("conv2d_0b_3x3", BasicConv2d(32, 32, 3, same=True))
                ),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(256, 32, 1)),
                    ("conv2d_0b_3x3", BasicConv2d(32, 32, 3, same=True)),
                    ("conv2d_0c_3x3", BasicConv2d(32, 32, 3, same=True)),
                ),
            ],
            scale,
            activation,
        )


class Block17(_ResidualUnit):
    """17x17 residual unit (8x8 here): 896 channels, factorised 1x7 / 7x1 convolutions."""

    block_name = "block17"

    def __init__(self, scale: float = 0.10, activation: bool = True):
        super().__init__(
            896,
            [
                _branch(("conv2d_1x1", BasicConv2d(896, 128, 1))),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(896, 128, 1)),
                    ("conv2d_0b_1x7", BasicConv2d(128, 128, (1, 7), same=True)),
                    ("conv2d_0c_7x1", BasicConv2d(128, 128, (7, 1), same=True)),
                ),
            ],
            scale,
            activation,
        )


class Block8(_ResidualUnit):
    """8x8 residual unit (3x3 here): 1792 channels, factorised 1x3 / 3x1 convolutions."""

    block_name = "block8"

    def __init__(self, scale: float = 0.20, activation: bool = True):
        super().__init__(
            1792,
            [
                _branch(("conv2d_1x1", BasicConv2d(1792, 192, 1))),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(1792, 192, 1)),
                    ("conv2d_0b_1x3", BasicConv2d(192, 192, (1, 3), same=True)),
                    ("conv2d_0c_3x1", BasicConv2d(192, 192, (3, 1), same=True)),
                ),
            ],
            scale,
            activation,
        )


class _Reduction(nn.Module):
    """Grid reduction: stride-2 branches concatenated in graph order, the last one a 3x3/2 max-pool."""

    def __init__(self, branches: Sequence[nn.Module]):
        super().__init__()
        for i, branch in enumerate(branches):
            self.add_module(f"branch_{i}", branch)
        self.num_branches = len(branches)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([getattr(self, f"branch_{i}")(x) for i in range(self.num_branches)], dim=1)


class Mixed6a(_Reduction):
    """Reduction-A: 256 -> 384 + 256 + 256 = 896 channels, 17x17 -> 8x8."""

    def __init__(self) -> None:
        super().__init__(
            [
                _branch(("conv2d_1a_3x3", BasicConv2d(256, 384, 3, stride=2))),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(256, 192, 1)),
                    ("conv2d_0b_3x3", BasicConv2d(192, 192, 3, same=True)),
                    ("conv2d_1a_3x3", BasicConv2d(192, 256, 3, stride=2)),
                ),
                nn.MaxPool2d(3, stride=2),
            ]
        )


class Mixed7a(_Reduction):
    """Reduction-B: 896 -> 384 + 256 + 256 + 896 = 1792 channels, 8x8 -> 3x3."""

    def __init__(self) -> None:
        super().__init__(
            [
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(896, 256, 1)), ("conv2d_1a_3x3", BasicConv2d(256, 384, 3, stride=2))
                ),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(896, 256, 1)), ("conv2d_1a_3x3", BasicConv2d(256, 256, 3, stride=2))
                ),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(896, 256, 1)),
                    ("conv2d_0b_3x3", BasicConv2d(256, 256, 3, same=True)),
                    ("conv2d_1a_3x3", BasicConv2d(256, 256, 3, stride=2)),
                ),
                nn.MaxPool2d(3, stride=2),
            ]
        )


class InceptionResnetV1(FaceBackbone):
    """Inception-ResNet-v1 as in FaceNet's CASIA-WebFace model, with BatchNorm folded into conv biases.

    Module names follow the graph's scopes in lower case (``repeat_1.3.branch_1.conv2d_0b_1x7`` is
    ``InceptionResnetV1/Repeat_1/block17_4/Branch_1/Conv2d_0b_1x7``), which is what the converter relies on.

    Args:
        dropout: dropout probability before the bottleneck, for fine-tuning (FaceNet trained with keep
            probability 0.8; the frozen graph has none, so the default is 0 and inference is unaffected).
    """

    input_spec = FACENET_INPUT_SPEC
    embedding_dim = 512

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.conv2d_2b_3x3 = BasicConv2d(32, 64, 3, same=True)
        self.maxpool_3a_3x3 = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.conv2d_4b_3x3 = BasicConv2d(192, 256, 3, stride=2)
        self.repeat = nn.Sequential(*[Block35() for _ in range(5)])
        self.mixed_6a = Mixed6a()
        self.repeat_1 = nn.Sequential(*[Block17() for _ in range(10)])
        self.mixed_7a = Mixed7a()
        self.repeat_2 = nn.Sequential(*[Block8() for _ in range(5)])
        self.block8 = Block8(scale=1.0, activation=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.bottleneck = nn.Linear(1792, self.embedding_dim, bias=False)
        # The graph's BatchNorm has no learned scale (a constant 1); the PyTorch weight starts from that constant.
        self.bottleneck_bn = nn.BatchNorm1d(self.embedding_dim, eps=BN_EPS)

    def forward_features(self, x: Tensor) -> Tensor:
        """Prewhitened ``(B, 3, 160, 160)`` input -> un-normalised ``(B, 512)`` embeddings."""
        x = self.conv2d_1a_3x3(x)
        x = self.conv2d_2a_3x3(x)
        x = self.conv2d_2b_3x3(x)
        x = self.maxpool_3a_3x3(x)
        x = self.conv2d_3b_1x1(x)
        x = self.conv2d_4a_3x3(x)
        x = self.conv2d_4b_3x3(x)
        x = self.repeat(x)
        x = self.mixed_6a(x)
        x = self.repeat_1(x)
        x = self.mixed_7a(x)
        x = self.repeat_2(x)
        x = self.block8(x)
        x = self.avgpool(x).flatten(1)
        x = self.dropout(x)
        return self.bottleneck_bn(self.bottleneck(x))
