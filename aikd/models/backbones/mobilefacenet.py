"""MobileFaceNet (Chen et al., 2018): a face recognition network of about 1 M parameters for small, fast students.

Written from Table 1 of the paper ("MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on
Mobile Devices", arXiv:1804.07573). Every layer is ``conv -> BatchNorm -> PReLU`` except where the table says
"linear"; the bottlenecks are MobileNetV2's inverted residuals (1x1 expansion by ``t``, 3x3 depthwise with the
stride, linear 1x1 projection; a shortcut when the shape is kept):

=========  ===================  ====  ====  ==  ==
input      operator             t     c     n   s
=========  ===================  ====  ====  ==  ==
112x112x3  conv3x3              -     64    1   2
56x56x64   depthwise conv3x3    -     64    1   1
56x56x64   bottleneck           2     64    5   2
28x28x64   bottleneck           4     128   1   2
14x14x128  bottleneck           2     128   6   1
14x14x128  bottleneck           4     128   1   2
7x7x128    bottleneck           2     128   2   1
7x7x128    conv1x1              -     512   1   1
7x7x512    linear GDConv7x7     -     512   1   1
1x1x512    linear conv1x1       -     128   1   1
=========  ===================  ====  ====  ==  ==

The global depthwise convolution (GDConv, a 7x7 depthwise kernel without padding) replaces global average pooling:
a face's 7x7 map is not translation invariant (the centre cells see the eyes and nose, the corners background), so
each position gets its own learnt weight. The paper trains the embedding with a BatchNorm after the last linear
layer, as insightface's networks do; it is kept here (``features``), so the output is the raw, un-normalised
embedding like every other :class:`~aikd.models.backbones.base.FaceBackbone`.

Input: ArcFace-template 112x112 RGB crops scaled to ``[-1, 1]`` (``(x - 0.5) / 0.5``). No pretrained weights ship
with aikd: it is a from-scratch student (``student=mobilefacenet``), or loads a state dict saved from one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from aikd.geometry.align import Geometry
from aikd.geometry.preprocess import InputSpec
from aikd.models.backbones.base import FaceBackbone, he_init, register_backbone

__all__ = ["MobileFaceNet", "MOBILEFACENET_SETTINGS", "MOBILEFACENET_INPUT_SPEC", "mobilefacenet"]

#: ``(t, c, n, s)`` of the bottleneck rows of Table 1: expansion factor, output channels, repeats, first stride.
MOBILEFACENET_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)

#: ArcFace template at 112x112, RGB, ``(x - 0.5) / 0.5``: the insightface convention the paper trained with.
MOBILEFACENET_INPUT_SPEC = InputSpec(
    geometry=Geometry(size=112, template="arcface"), colour="RGB", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)


def prelu(channels: int) -> nn.Module:
    """MobileFaceNet's activation: a PReLU with one slope per channel."""
    return nn.PReLU(channels)


def relu(channels: int) -> nn.Module:
    """ReLU (``channels`` unused): fused into the convolution by onnxruntime, which PReLU is not."""
    return nn.ReLU(inplace=True)


class ConvBN(nn.Sequential):
    """``Conv2d (no bias) -> BatchNorm2d [-> activation]``; ``linear=True`` leaves out the activation (the table's
    "linear" layers: a non-linearity on a low-dimensional projection destroys information, MobileNetV2's
    argument). ``act`` builds the activation from the channel count (:func:`prelu`, the paper's, or :func:`relu`)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        linear: bool = False,
        act: Callable[[int], nn.Module] = prelu,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if not linear:
            layers.append(act(cout))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expansion to ``t * cin`` -> 3x3 depthwise (stride ``s``) -> linear 1x1 projection.

    The shortcut is added when the block keeps the shape (stride 1, same channels), as in MobileNetV2.
    """

    def __init__(
        self, cin: int, cout: int, stride: int, expansion: int, act: Callable[[int], nn.Module] = prelu
    ) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            ConvBN(cin, hidden, 1, act=act),
            ConvBN(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, act=act),
            ConvBN(hidden, cout, 1, linear=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class MobileFaceNetLayout(FaceBackbone):
    """What MobileFaceNet-style networks share: the submodules ``stem -> blocks -> conv_expand -> gdconv ->
    dropout -> linear -> features`` (a subclass builds them), their initialisation and their forward."""

    def _init_weights(self) -> None:
        """He initialisation (fan-in: depthwise kernels see 9 inputs, not ``9 x channels``) for the convolutions,
        and every shortcut block starting as the identity (the scale of its last BatchNorm at 0), so a network
        trained from scratch starts with well-scaled activations in train and eval mode alike."""
        he_init(self, mode="fan_in")
        for block in self.blocks:
            if block.residual:
                nn.init.zeros_(block.conv[-1][1].weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """Normalised ``(B, 3, S, S)`` input -> ``(B, embedding_dim)`` un-normalised embeddings."""
        x = self.gdconv(self.conv_expand(self.blocks(self.stem(x))))
        return self.features(self.linear(self.dropout(x)).flatten(1))


def with_weights(model: FaceBackbone, weights: str | Path | None) -> FaceBackbone:
    """``model`` as built (``weights=None``: from scratch), or with a ``.safetensors`` / torch state dict of it (e.g.
    saved from a trained student) loaded strictly after unwrapping training containers, in eval mode."""
    if weights is not None:
        from aikd.models.backbones.checkpoints import load_state_dict_flexible

        load_state_dict_flexible(model, weights)
        model.eval()
    return model


class MobileFaceNet(MobileFaceNetLayout):
    """MobileFaceNet of Table 1 (about 1 M parameters at ``embedding_dim=128``) on ArcFace 112x112 RGB crops.

    Submodules, input to output (so ``trainable=last:K`` fine-tunes the embedding end first): ``stem`` (conv3x3 s2
    and the depthwise conv3x3), ``blocks`` (the 15 bottlenecks), ``conv_expand`` (1x1 to 512), ``gdconv`` (linear
    7x7 global depthwise conv), ``linear`` (linear 1x1 to the embedding) and ``features`` (BatchNorm1d).

    Args:
        embedding_dim: embedding size (the paper: 128).
        dropout: dropout before the last linear layer while training (0: none, the paper's setting).
    """

    input_spec = MOBILEFACENET_INPUT_SPEC

    def __init__(self, embedding_dim: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding_dim = int(embedding_dim)
        self.stem = nn.Sequential(ConvBN(3, 64, 3, stride=2, padding=1), ConvBN(64, 64, 3, padding=1, groups=64))
        blocks: list[nn.Module] = []
        cin = 64
        for t, c, n, s in MOBILEFACENET_SETTINGS:
            for i in range(n):
                blocks.append(Bottleneck(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.conv_expand = ConvBN(cin, 512, 1)
        self.gdconv = ConvBN(512, 512, 7, groups=512, linear=True)  # 7x7 -> 1x1: a weight per position
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Conv2d(512, self.embedding_dim, 1, bias=False)
        self.features = nn.BatchNorm1d(self.embedding_dim)
        self._init_weights()


@register_backbone("mobilefacenet")
def mobilefacenet(weights: str | Path | None = None, embedding_dim: int = 128, **kwargs: Any) -> MobileFaceNet:
    """Build a :class:`MobileFaceNet` (random initialisation: no published weights ship with aikd).

    Args:
        weights: ``None`` (from scratch) or a ``.safetensors`` / torch state dict of this module (e.g. saved from
            a trained student), loaded strictly after unwrapping training containers.
        embedding_dim: embedding size.
        **kwargs: forwarded to :class:`MobileFaceNet` (``dropout``).
    """
    return with_weights(MobileFaceNet(embedding_dim=embedding_dim, **kwargs), weights)
