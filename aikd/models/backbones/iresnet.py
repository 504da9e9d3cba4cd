"""iResNet-18/34/50/100: the "improved ResNet" face recognition backbones of insightface's ``arcface_torch``.

These are the networks behind ArcFace, CR-FIQA and MagFace. The module names, and therefore the
``state_dict()`` keys and shapes, follow the official layout exactly (``conv1``, ``bn1``, ``prelu``,
``layer1..4.N.{bn1,conv1,bn2,prelu,conv2,bn3,downsample.0,downsample.1}``, ``bn2``, ``fc``, ``features``), so
released checkpoints load without renaming; :mod:`aikd.models.backbones.checkpoints` only unwraps containers and
prefixes.

The three official code bases share the layout but not every detail, and the details that matter at
inference time (input colour order and scaling) differ. They are captured as *presets*:

* ``arcface`` (insightface ``arcface_torch``): BatchNorm eps ``1e-5``; the final ``features`` BatchNorm1d has
  its scale fixed to 1 (not trained); input RGB scaled to ``[-1, 1]``.
* ``crfiqa`` (CR-FIQA): same network and input as ``arcface``, but the ``features`` scale is trainable; the
  quality head ``qs`` lives in the same checkpoint and is split off by
  :func:`aikd.models.backbones.checkpoints.load_crfiqa`. Note: CR-FIQA trains on insightface RecordIO data, which
  decodes to RGB, while its scoring script defaults to ``--color_channel BGR``; aikd uses RGB (the training
  order). Pass ``colour="BGR"`` to reproduce that script.
* ``magface`` (MagFace): BatchNorm eps ``2e-5`` and PyTorch momentum ``0.9`` (a literal port of MXNet's
  momentum, kept so fine-tuning behaves like the original), channel dropout 0.4 before the ``fc``; input
  BGR in ``[0, 1]`` (OpenCV images through ``ToTensor`` with mean 0, std 1).

The embedding is the ``features`` output, *before* L2 normalisation (its norm is MagFace's quality).
The network is fixed to 112 x 112 inputs: ``fc`` expects a 7 x 7 map after four stride-2 stages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aikd.geometry.align import Geometry
from aikd.geometry.preprocess import InputSpec
from aikd.models.backbones import checkpoints
from aikd.models.backbones.base import FaceBackbone, he_init, register_backbone
from aikd.models.backbones.depths import IRESNET_LAYERS

__all__ = ["IBasicBlock", "IResNet", "PRESETS", "iresnet18", "iresnet34", "iresnet50", "iresnet100"]

log = logging.getLogger(__name__)

_ARCFACE_GEOMETRY = Geometry(size=112, template="arcface")

#: Per-code-base settings; see the module docstring for where each value comes from.
PRESETS: dict[str, dict[str, Any]] = {
    "arcface": {
        "bn_eps": 1e-5,
        "bn_momentum": 0.1,
        "dropout": 0.0,
        "channel_dropout": False,
        "freeze_feature_scale": True,
        "input_spec": InputSpec(_ARCFACE_GEOMETRY, colour="RGB", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    },
    "crfiqa": {
        "bn_eps": 1e-5,
        "bn_momentum": 0.1,
        "dropout": 0.0,
        "channel_dropout": False,
        "freeze_feature_scale": False,
        "input_spec": InputSpec(_ARCFACE_GEOMETRY, colour="RGB", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    },
    "magface": {
        "bn_eps": 2e-5,
        "bn_momentum": 0.9,
        "dropout": 0.4,
        "channel_dropout": True,
        "freeze_feature_scale": False,
        "input_spec": InputSpec(_ARCFACE_GEOMETRY, colour="BGR", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
    },
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN (+ shortcut).

    Unlike the torchvision BasicBlock, the input is batch-normalised first, there is no activation after the
    addition, and the stride sits on the *second* convolution (the iResNet design of Duta et al., as used
    by insightface).
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=bn_eps, momentum=bn_momentum)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps, momentum=bn_momentum)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=bn_eps, momentum=bn_momentum)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(FaceBackbone):
    """iResNet face recognition backbone with the insightface module layout.

    Args:
        layers: residual blocks in each of the four stages (see :data:`~aikd.models.backbones.depths.IRESNET_LAYERS`).
        arch: name used in messages and checkpoint errors (e.g. ``"iresnet50"``).
        num_features: embedding size.
        dropout: dropout probability before ``fc`` (training only).
        channel_dropout: drop whole channels of the 7x7 map (MagFace's ``Dropout2d``) instead of single units.
        bn_eps: BatchNorm epsilon of every BatchNorm layer.
        bn_momentum: BatchNorm momentum (PyTorch convention: weight of the *new* batch statistic).
        freeze_feature_scale: keep the scale of the final ``features`` BatchNorm1d fixed at 1, as
            ``arcface_torch`` does.
        zero_init_residual: start every residual branch at zero (its last BN scale = 0) so that training from
            scratch starts from a near-identity network.
        input_spec: what the network expects; defaults to the ArcFace 112x112 crop, RGB in ``[-1, 1]``.
        preset: name of the preset the settings came from (informational, stored on the model).
    """

    def __init__(
        self,
        layers: Sequence[int],
        *,
        arch: str = "iresnet",
        num_features: int = 512,
        dropout: float = 0.0,
        channel_dropout: bool = False,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        freeze_feature_scale: bool = True,
        zero_init_residual: bool = False,
        input_spec: InputSpec | None = None,
        preset: str = "custom",
    ) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be 4 positive block counts, got {tuple(layers)}")
        self.arch = arch
        self.preset = preset
        self.embedding_dim = int(num_features)
        self.input_spec = input_spec or PRESETS["arcface"]["input_spec"]
        if self.input_spec.size != (112, 112):
            raise ValueError(f"{arch} only works on 112x112 inputs (fc expects a 7x7 map), got {self.input_spec.size}")
        bn = {"eps": bn_eps, "momentum": bn_momentum}

        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, **bn)
        self.prelu = nn.PReLU(64)
        widths = (64, 128, 256, 512)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip(widths, layers), start=1):
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=2, bias=False), nn.BatchNorm2d(planes, **bn)
            )
            stage = [IBasicBlock(inplanes, planes, 2, downsample, bn_eps=bn_eps, bn_momentum=bn_momentum)]
            stage += [IBasicBlock(planes, planes, bn_eps=bn_eps, bn_momentum=bn_momentum) for _ in range(blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*stage))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512, **bn)
        self.dropout = nn.Dropout2d(dropout) if channel_dropout else nn.Dropout(dropout)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, **bn)
        self._init_weights(zero_init_residual)
        if freeze_feature_scale:
            self.features.weight.requires_grad_(False)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # He initialisation for the convolutions (fan-out, as MagFace/AdaFace use) and identity BatchNorms.
        # insightface draws conv weights from N(0, 0.1), which makes an untrained deep iResNet in eval mode
        # blow up numerically; the initialisation does not affect loading trained weights.
        he_init(self, mode="fan_out")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """Normalised input ``(B, 3, 112, 112)`` -> raw embedding ``(B, num_features)``."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x))
        return self.features(self.fc(torch.flatten(x, 1)))


def build_iresnet(
    arch: str,
    weights: str | Path | dict[str, Any] | None = None,
    *,
    preset: str | None = None,
    colour: str | None = None,
    **kwargs: Any,
) -> IResNet:
    """Build an iResNet by name, optionally loading a checkpoint in any supported official format.

    Args:
        arch: one of :data:`~aikd.models.backbones.depths.IRESNET_LAYERS`.
        weights: path to (or already loaded) checkpoint: a plain insightface ``backbone.pth``, a DataParallel
            (``module.``) state dict, a CR-FIQA checkpoint (its ``qs`` quality head is skipped; use
            :func:`~aikd.models.backbones.checkpoints.load_crfiqa` to keep it) or a MagFace checkpoint. ``None``
            gives random weights.
        preset: ``"arcface"``, ``"crfiqa"`` or ``"magface"``. ``None`` picks it from the checkpoint format
            (``arcface`` without weights), so that a MagFace file never runs with ArcFace preprocessing.
        colour: override the preset's channel order (``"RGB"``/``"BGR"``).
        **kwargs: override any :class:`IResNet` argument (e.g. ``num_features``, ``dropout``).
    """
    if arch not in IRESNET_LAYERS:
        raise KeyError(f"unknown iResNet '{arch}'. Known: {', '.join(IRESNET_LAYERS)}")
    obj = None
    info = None
    source = weights if isinstance(weights, (str, Path)) else None
    if weights is not None:
        obj = checkpoints.read_checkpoint(weights) if source is not None else weights
        info = checkpoints.detect_format(obj, source=source)
        if info.family != "iresnet":
            raise ValueError(
                f"{source or '<state dict>'}: this is a '{info.format}' checkpoint "
                f"({info.arch or 'unknown depth'}), not an iResNet one; "
                f"build it with create_backbone('{info.arch or 'ir_50'}', weights=...) instead"
            )
    if preset is None:
        preset = info.format if info is not None and info.format in ("magface", "crfiqa") else "arcface"
        if info is not None:
            log.info("%s: %s checkpoint, using the '%s' preset", source or "<state dict>", info.format, preset)
    if preset not in PRESETS:
        raise KeyError(f"unknown iResNet preset '{preset}'. Known: {', '.join(PRESETS)}")
    settings = {**PRESETS[preset], **kwargs}
    if colour is not None:
        spec: InputSpec = settings["input_spec"]
        settings["input_spec"] = InputSpec.from_dict({**spec.to_dict(), "colour": colour})
    model = IResNet(IRESNET_LAYERS[arch], arch=arch, preset=preset, **settings)
    if obj is not None:
        ignore = ("qs.",) if info is not None and info.format == "crfiqa" else ()
        checkpoints.load_state_dict_flexible(model, obj, ignore_prefixes=ignore, source=source)
    return model


@register_backbone("iresnet18")
def iresnet18(weights: str | Path | None = None, **kwargs: Any) -> IResNet:
    """iResNet-18 (2-2-2-2 blocks, 24 M parameters); see :func:`build_iresnet`."""
    return build_iresnet("iresnet18", weights, **kwargs)


@register_backbone("iresnet34")
def iresnet34(weights: str | Path | None = None, **kwargs: Any) -> IResNet:
    """iResNet-34 (3-4-6-3 blocks, 34 M parameters); see :func:`build_iresnet`."""
    return build_iresnet("iresnet34", weights, **kwargs)


@register_backbone("iresnet50")
def iresnet50(weights: str | Path | None = None, **kwargs: Any) -> IResNet:
    """iResNet-50 (3-4-14-3 blocks, 44 M parameters; CR-FIQA(S)); see :func:`build_iresnet`."""
    return build_iresnet("iresnet50", weights, **kwargs)


@register_backbone("iresnet100")
def iresnet100(weights: str | Path | None = None, **kwargs: Any) -> IResNet:
    """iResNet-100 (3-13-30-3 blocks, 65 M parameters; CR-FIQA(L), MagFace); see :func:`build_iresnet`."""
    return build_iresnet("iresnet100", weights, **kwargs)
