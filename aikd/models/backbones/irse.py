"""AdaFace's IR-18/50/101 backbones (the ``net.py`` layout of mk-minchul/AdaFace).

These are iResNets too, but written in the TreB1eN/face.evoLVe style, so the module tree and the checkpoint
keys differ from :mod:`aikd.models.backbones.iresnet`:

* ``input_layer``: ``Sequential(conv3x3(3, 64), BatchNorm2d, PReLU)``;
* ``body``: one flat ``Sequential`` of blocks, each with a ``res_layer`` ``Sequential(BN, conv3x3, BN, PReLU,
  conv3x3(stride), BN)`` and a ``shortcut_layer`` that is a parameter-free ``MaxPool2d(1, stride)`` when the
  width does not change (also the stride-2 first block of stage 1) and ``Sequential(conv1x1(stride), BN)``
  otherwise;
* ``output_layer``: ``Sequential(BatchNorm2d(512), Dropout(0.4), Flatten, Linear(512*7*7, 512),
  BatchNorm1d(512, affine=False))`` - the last BatchNorm has running statistics but no scale/shift.

All BatchNorms use PyTorch defaults (eps ``1e-5``, momentum ``0.1``). AdaFace feeds **BGR** images scaled to
``[-1, 1]`` (its ``to_input`` flips PIL's RGB before normalising), so the input spec here is BGR: canonical
RGB faces are flipped by :meth:`~aikd.geometry.preprocess.InputSpec.normalize`. The official ``forward`` returns
``(embedding / norm, norm)``; :meth:`IRNet.forward_features` returns their product, the raw embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from aikd.geometry.align import Geometry
from aikd.geometry.preprocess import InputSpec
from aikd.models.backbones import checkpoints
from aikd.models.backbones.base import FaceBackbone, he_init, register_backbone
from aikd.models.backbones.depths import IR_UNITS

__all__ = ["BasicBlockIR", "IRNet", "ADAFACE_SPEC", "build_ir", "ir_18", "ir_50", "ir_101"]

#: AdaFace input: ArcFace 112x112 crop, BGR, ``(x - 0.5) / 0.5``.
ADAFACE_SPEC = InputSpec(
    Geometry(size=112, template="arcface"), colour="BGR", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)


class BasicBlockIR(nn.Module):
    """IR residual block: ``res_layer(x) + shortcut_layer(x)``, the stride on the second convolution."""

    def __init__(self, in_channel: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channel == depth:
            # AdaFace uses MaxPool2d(1, stride): plain subsampling, or the identity at stride 1 (written as such
            # here to skip a copy). Neither has parameters, so the checkpoint keys are the same.
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride) if stride > 1 else nn.Identity()
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRNet(FaceBackbone):
    """AdaFace IR backbone producing raw (un-normalised) 512-d embeddings from 112x112 BGR faces.

    Args:
        units: blocks per stage (see :data:`~aikd.models.backbones.depths.IR_UNITS`).
        arch: name used in messages (``"ir_50"``...).
        embedding_dim: embedding size (512 in every released model).
        dropout: dropout before the linear layer (training only; AdaFace uses 0.4).
        input_spec: input contract; defaults to :data:`ADAFACE_SPEC`.
    """

    def __init__(
        self,
        units: tuple[int, int, int, int],
        *,
        arch: str = "ir",
        embedding_dim: int = 512,
        dropout: float = 0.4,
        input_spec: InputSpec | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.embedding_dim = int(embedding_dim)
        self.input_spec = input_spec or ADAFACE_SPEC
        if self.input_spec.size != (112, 112):
            raise ValueError(f"{arch} only works on 112x112 inputs (its linear layer expects a 7x7 map)")
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        )
        # Registered before ``body`` as in AdaFace's net.py, so state_dict() lists keys in the same order.
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, self.embedding_dim),
            nn.BatchNorm1d(self.embedding_dim, affine=False),
        )
        blocks: list[nn.Module] = []
        in_channel = 64
        for depth, n in zip((64, 128, 256, 512), units):
            blocks.append(BasicBlockIR(in_channel, depth, 2))
            blocks += [BasicBlockIR(depth, depth, 1) for _ in range(n - 1)]
            in_channel = depth
        self.body = nn.Sequential(*blocks)
        he_init(self, mode="fan_out")  # BatchNorm1d's default is the identity too: same start as before

    def forward_features(self, x: Tensor) -> Tensor:
        """Normalised BGR input ``(B, 3, 112, 112)`` -> raw embedding ``(B, embedding_dim)``."""
        return self.output_layer(self.body(self.input_layer(x)))


def build_ir(arch: str, weights: str | Path | dict[str, Any] | None = None, **kwargs: Any) -> IRNet:
    """Build an AdaFace IR backbone, optionally loading weights.

    Args:
        arch: one of :data:`~aikd.models.backbones.depths.IR_UNITS`.
        weights: an AdaFace Lightning ``.ckpt`` (``state_dict`` with ``model.`` keys; the margin head is
            skipped), a plain or DataParallel state dict of the backbone, a path or an already loaded object.
        **kwargs: forwarded to :class:`IRNet` (``input_spec``, ``dropout``...).
    """
    if arch not in IR_UNITS:
        raise KeyError(f"unknown AdaFace IR backbone '{arch}'. Known: {', '.join(IR_UNITS)}")
    model = IRNet(IR_UNITS[arch], arch=arch, **kwargs)
    if weights is not None:
        obj = checkpoints.read_checkpoint(weights) if isinstance(weights, (str, Path)) else weights
        source = weights if isinstance(weights, (str, Path)) else None
        info = checkpoints.detect_format(obj, source=source)
        if info.family != "ir":
            raise ValueError(
                f"{source or '<state dict>'}: this is a '{info.format}' checkpoint "
                f"({info.arch or 'unknown depth'}), not an AdaFace IR one; "
                f"build it with create_backbone('{info.arch or 'iresnet50'}', weights=...) instead"
            )
        checkpoints.load_state_dict_flexible(model, obj, source=source)
    return model


@register_backbone("ir_18")
def ir_18(weights: str | Path | None = None, **kwargs: Any) -> IRNet:
    """AdaFace IR-18 (released for CASIA-WebFace, VGGFace2, WebFace4M); see :func:`build_ir`."""
    return build_ir("ir_18", weights, **kwargs)


@register_backbone("ir_50")
def ir_50(weights: str | Path | None = None, **kwargs: Any) -> IRNet:
    """AdaFace IR-50 (released for CASIA-WebFace, WebFace4M, MS1MV2); see :func:`build_ir`."""
    return build_ir("ir_50", weights, **kwargs)


@register_backbone("ir_101")
def ir_101(weights: str | Path | None = None, **kwargs: Any) -> IRNet:
    """AdaFace IR-101 (released for MS1MV2/3, WebFace4M/12M); see :func:`build_ir`."""
    return build_ir("ir_101", weights, **kwargs)
