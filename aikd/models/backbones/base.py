"""Base class and factory for face recognition (FR) backbones.

An FR backbone maps canonical aligned faces (float ``(B, 3, H, W)`` RGB in ``[0, 1]``, cut with its
``input_spec.geometry``) to *un-normalised* embeddings ``(B, D)``. Keeping the raw embedding matters: its norm
is the quality signal of MagFace/AdaFace-style teachers. Each backbone converts canonical faces to its own
input space with :meth:`aikd.geometry.preprocess.InputSpec.normalize`, so callers never hand-match preprocessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from aikd.geometry.preprocess import InputSpec
from aikd.models.registry import Registry

__all__ = [
    "FaceBackbone",
    "BACKBONES",
    "he_init",
    "TRAINABLE_MODES",
    "register_backbone",
    "create_backbone",
    "list_backbones",
    "parse_trainable",
    "set_trainable",
]

#: The forms of a "which backbone parameters train" setting (the student's ``trainable``, a teacher's
#: ``trainable_backbone``). ``none`` and ``head`` are the same: the backbone is frozen and only the layers on top of
#: it (projection, quality head) train.
TRAINABLE_MODES = ("all", "none", "head", "last:K")


class FaceBackbone(nn.Module):
    """A network from canonical faces to raw embeddings.

    Subclasses set ``input_spec`` and ``embedding_dim`` and implement :meth:`forward_features` on the
    already-normalised input.
    """

    input_spec: InputSpec
    embedding_dim: int

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, faces: Tensor) -> Tensor:
        """Canonical faces -> ``(B, embedding_dim)`` un-normalised embeddings."""
        return self.forward_features(self.input_spec.normalize(faces))


BACKBONES: Registry[FaceBackbone] = Registry("backbone")


def he_init(module: nn.Module, mode: str = "fan_out") -> None:
    """He-normal weights for every convolution in ``module`` and identity BatchNorms, the start the backbones
    trained from scratch share (``mode``: ``fan_out`` as the iResNet/IR trainings use, ``fan_in`` where depthwise
    kernels must see their 9 inputs rather than ``9 x channels``). Loading trained weights overrides it."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def register_backbone(name: str | None = None, **kwargs: Any):
    """Decorator registering a backbone factory (``fn(weights=None, **kw) -> FaceBackbone``)."""
    return BACKBONES.register(name, **kwargs)


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone` (``timm/<any timm model>`` is accepted too)."""
    return BACKBONES.list()


def create_backbone(
    name: str, weights: str | Path | None = None, geometry: dict[str, Any] | None = None, **kwargs: Any
) -> FaceBackbone:
    """Build a registered FR backbone, or any timm model as ``"timm/<model_name>"``.

    Args:
        name: registry key (see :func:`list_backbones`) or ``timm/<model_name>``.
        weights: checkpoint to load: a path in any format the backbone's loader understands, ``None`` for
            random initialisation, or backbone-specific keywords (e.g. ``"default"``).
        geometry: optional crop override (``template``, ``zoom``, box settings; not ``size``, which the network's
            architecture fixes): e.g. ``{"zoom": 1.3}`` feeds a tighter crop than the network was trained on.
        **kwargs: forwarded to the backbone's factory.
    """
    if name.startswith("timm/"):
        kwargs.setdefault("model_name", name.split("/", 1)[1])
        name = "timm"
    net = BACKBONES.get(name)(weights=weights, **kwargs)
    if geometry:
        from dataclasses import replace

        from aikd.geometry.align import Geometry

        g = dict(geometry)
        if "size" in g and Geometry(size=g["size"]).hw != net.input_spec.geometry.hw:
            raise ValueError(
                f"backbone '{name}' takes {net.input_spec.geometry.hw} inputs; geometry.size cannot change it"
            )
        g.pop("size", None)
        net.input_spec = replace(net.input_spec, geometry=replace(net.input_spec.geometry, **g))
    return net


def parse_trainable(mode: str) -> int | None:
    """How many of a backbone's parameter tensors, counted from its output end, a trainable setting lets train.

    Students and teachers freeze their backbones the same way, so they share this one parser: a setting valid for
    one is valid for the other (AI-KD fine-tunes the last layers of a pretrained FR network; a teacher trained on
    cached features keeps its backbone frozen).

    Args:
        mode: ``"all"``, ``"none"`` / ``"head"`` (frozen backbone) or ``"last:K"`` (the last ``K`` parameter
            tensors, ``K >= 0``).

    Returns:
        ``None`` for all of them, else the count (``0``: frozen).

    Raises:
        ValueError: any other value; the message lists the valid forms.
    """
    text = str(mode).strip()
    if text == "all":
        return None
    if text in ("none", "head"):
        return 0
    if text.startswith("last:"):
        k = text.split(":", 1)[1].strip()
        if k.isdigit():
            return int(k)
    raise ValueError(
        f"trainable backbone setting {mode!r} is not one of {' | '.join(TRAINABLE_MODES)} "
        "(all: every backbone parameter trains; none or head: the backbone is frozen; last:K: its last K parameter "
        "tensors train, K >= 0)"
    )


def set_trainable(backbone: nn.Module, mode: str) -> None:
    """Set ``requires_grad`` of ``backbone``'s parameters as ``mode`` says (see :func:`parse_trainable`).

    "Last" follows ``backbone.parameters()`` order, which for the networks here is input to output, so ``last:K``
    fine-tunes the layers nearest the embedding.
    """
    keep = parse_trainable(mode)
    params = list(backbone.parameters())
    first = 0 if keep is None else max(0, len(params) - keep)
    for i, p in enumerate(params):
        p.requires_grad_(i >= first)


def load_weights_strict(model: nn.Module, path: str | Path, what: str, hint: str = "") -> nn.Module:
    """Load a ``.safetensors`` file or a torch state dict (``weights_only=True``) into ``model``, strictly.

    Converted weights (FaceNet, SFace) are only ever loaded into the architecture they were converted for, so any
    missing or unexpected key or shape means a wrong file: the error names them instead of loading half a network.

    Args:
        model: the network to fill.
        path: the weights file.
        what: the architecture's name for messages (e.g. ``"SFace"``).
        hint: what to do when the file is missing or does not fit (e.g. how to reconvert it).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights {path} do not exist; {hint}".rstrip("; "))
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            state = safetensors.torch.load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read {what} weights {path}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not fit {what}: {len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected "
            f"keys {unexpected[:5]}, shape mismatches {wrong[:5]}. Was it written for another backbone? {hint}"
        )
    model.load_state_dict(state, strict=True)
    return model


def save_converted_weights(
    state: dict[str, Tensor], out_path: str | Path, metadata: dict[str, str], source: Any
) -> Path:
    """Write weights converted from another framework as safetensors, atomically, with their provenance metadata
    (FaceNet from its TensorFlow graph, SFace from its ONNX file): an interrupted conversion leaves no file a later
    run would trust."""
    import logging

    import safetensors.torch

    from aikd.io import atomic_path

    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    logging.getLogger(__name__).info("converted %s -> %s", source, out_path)
    return out_path
