"""FastFaceNet: MobileFaceNet's layout, slimmed for a fast CPU student (``student=fastfacenet``).

MobileFaceNet (:mod:`aikd.models.backbones.mobilefacenet`) has about 1 M parameters but runs in onnxruntime at
about the speed of the 10 M parameter SFace teacher: both are built of ``Conv -> BatchNorm -> PReLU`` units, and
onnxruntime's CPU kernels fuse BatchNorm and ReLU-family activations into the convolution but not PReLU. Profiled
at batch 64 on 2 threads, PReLU takes about 40 % of MobileFaceNet's time and the layout changes it forces around
every convolution (``ReorderInput`` / ``ReorderOutput``, from the blocked NCHWc layout to NCHW and back) another
20 %. Small students are wanted for speed above all, so this network keeps what makes MobileFaceNet a *face*
network and changes what makes it slow:

* kept: MobileNetV2 inverted-residual bottlenecks with MobileFaceNet's channel plan, a 1x1 expansion, the global
  *depthwise* convolution (GDConv: a learnt weight per position of the final map, since a face's centre and corners
  do not mean the same thing; global average pooling would throw that layout away), the linear embedding with
  BatchNorm1d, and the raw, un-normalised embedding;
* changed: ReLU instead of PReLU (fused into each convolution); a stem of two dense stride-2 3x3 convolutions
  instead of MobileFaceNet's depthwise stem conv and first stride-2 bottleneck row (depthwise convolutions at the
  highest resolutions are memory-bound: they took 40 % of the time of a first draft of this network, while a dense
  3x3 convolution does the same down-sampling in a fraction of that, as EfficientNetV2's fused early blocks do); a
  width multiplier (default 0.5); 6 bottlenecks instead of 15; and a smaller input (64 px by default: the ArcFace
  template scaled to it, so the student's crops, misaligned views and scored faces are cut at 64x64 straight from
  the canvas, not resized from 112).

At 64 px the input is divided by 16 (the stem's 4 and two stride-2 bottlenecks) to a 4x4 map, which the GDConv
reduces to one vector; any input side divisible by 16 works (80 -> 5x5, 112 -> 7x7). Measured with
``python benchmarks/student_speed.py`` (batch 64, 2 threads, onnxruntime): see ``conf/student/fastfacenet.yaml``.

No pretrained weights: a from-scratch student, or a state dict saved from one.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from aikd.geometry.align import Geometry
from aikd.geometry.preprocess import InputSpec
from aikd.models.backbones.base import register_backbone
from aikd.models.backbones.mobilefacenet import Bottleneck, ConvBN, MobileFaceNetLayout, relu, with_weights

__all__ = ["FastFaceNet", "FASTFACENET_SETTINGS", "fastfacenet"]

#: ``(t, c, n, s)`` bottleneck rows: expansion, output channels (before the width multiplier), repeats, stride.
#: MobileFaceNet's five rows after the stem, which already did the first row's stride 2; repeats 5 / 6 / 2 cut to
#: 1 / 2 / 1: the same channel plan, 6 bottlenecks instead of 15.
FASTFACENET_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 1, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
    (4, 128, 1, 2),
    (2, 128, 1, 1),
)

#: Total down-sampling of the input to the final map (the stem's 4 and two stride-2 bottleneck rows).
STRIDE = 16


def _width(channels: int, multiplier: float, divisor: int = 8) -> int:
    """Channels scaled by ``multiplier``, rounded to a multiple of ``divisor`` (vectorised kernels want it)."""
    return max(divisor, int(channels * multiplier + divisor / 2) // divisor * divisor)


#: MobileFaceNet's ``Conv -> BatchNorm -> act`` unit and bottleneck with ReLU (folded and fused by onnxruntime).
ConvBNAct = partial(ConvBN, act=relu)
InvertedResidual = partial(Bottleneck, act=relu)


class FastFaceNet(MobileFaceNetLayout):
    """A slim MobileFaceNet with ReLU on small ArcFace crops (see the module docstring for why).

    Submodules, input to output (so ``trainable=last:K`` fine-tunes the embedding end first): ``stem`` (two dense
    conv3x3 s2, to half and then full stem width), ``blocks`` (the bottlenecks), ``conv_expand`` (1x1), ``gdconv``
    (linear global depthwise conv over the whole final map), ``linear`` (1x1 to the embedding) and ``features``
    (BatchNorm1d).

    Args:
        input_size: side of the square ArcFace-template crop; a multiple of 16.
        width: channel multiplier of the stem and bottlenecks (1.0: MobileFaceNet's 64/128 channels).
        expand: channels of the 1x1 expansion before the GDConv (MobileFaceNet: 512).
        embedding_dim: embedding size.
        settings: bottleneck rows ``(t, c, n, s)`` (default :data:`FASTFACENET_SETTINGS`); exactly two rows have
            stride 2, so that the final map is ``input_size / 16`` wide.
        dropout: dropout before the embedding layer while training.
    """

    def __init__(
        self,
        input_size: int = 64,
        width: float = 0.5,
        expand: int = 512,
        embedding_dim: int = 128,
        settings: Sequence[Sequence[int]] = FASTFACENET_SETTINGS,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if input_size % STRIDE or input_size < STRIDE:
            raise ValueError(
                f"fastfacenet input_size must be a positive multiple of {STRIDE} (the network down-samples by "
                f"{STRIDE}), got {input_size}; use e.g. 64, 80, 96 or 112"
            )
        strides = [int(row[3]) for row in settings]
        if sorted(strides) != [1] * (len(strides) - 2) + [2, 2]:
            raise ValueError(f"fastfacenet settings need exactly two stride-2 rows (t, c, n, 2), got {settings}")
        if width <= 0:
            raise ValueError(f"fastfacenet width must be positive, got {width}")
        self.input_spec = InputSpec(
            geometry=Geometry(size=int(input_size), template="arcface"),
            colour="RGB",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        )
        self.embedding_dim = int(embedding_dim)
        stem = _width(64, width)
        half = _width(32, width)  # the first conv sees 3 channels: a narrow output keeps it off the critical path
        self.stem = nn.Sequential(
            ConvBNAct(3, half, 3, stride=2, padding=1), ConvBNAct(half, stem, 3, stride=2, padding=1)
        )
        blocks: list[nn.Module] = []
        cin = stem
        for t, c, n, s in settings:
            cout = _width(int(c), width)
            for i in range(int(n)):
                blocks.append(InvertedResidual(cin, cout, int(s) if i == 0 else 1, int(t)))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.conv_expand = ConvBNAct(cin, int(expand), 1)
        side = int(input_size) // STRIDE
        self.gdconv = ConvBNAct(int(expand), int(expand), side, groups=int(expand), linear=True)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Conv2d(int(expand), self.embedding_dim, 1, bias=False)
        self.features = nn.BatchNorm1d(self.embedding_dim)
        self._init_weights()


@register_backbone("fastfacenet")
def fastfacenet(weights: str | Path | None = None, **kwargs: Any) -> FastFaceNet:
    """Build a :class:`FastFaceNet` (random initialisation: no published weights exist).

    Args:
        weights: ``None`` (from scratch) or a ``.safetensors`` / torch state dict of this module (e.g. saved from
            a trained student), loaded strictly after unwrapping training containers.
        **kwargs: forwarded to :class:`FastFaceNet` (``input_size``, ``width``, ``expand``, ``embedding_dim``,
            ``settings``, ``dropout``).
    """
    return with_weights(FastFaceNet(**kwargs), weights)
