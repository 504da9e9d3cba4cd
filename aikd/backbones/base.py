"""Base class and factory for face recognition (FR) backbones.

An FR backbone maps canonical aligned faces (float ``(B, 3, H, W)`` RGB in ``[0, 1]``, cut with its
``input_spec.geometry``) to *un-normalised* embeddings ``(B, D)``. Keeping the raw embedding matters: its norm
is the quality signal of MagFace/AdaFace-style teachers. Each backbone converts canonical faces to its own
input space with :meth:`aikd.preprocess.InputSpec.normalize`, so callers never hand-match preprocessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from aikd.preprocess import InputSpec
from aikd.registry import Registry

__all__ = ["FaceBackbone", "BACKBONES", "register_backbone", "create_backbone", "list_backbones"]


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

        from aikd.align import Geometry

        g = dict(geometry)
        if "size" in g and Geometry(size=g["size"]).hw != net.input_spec.geometry.hw:
            raise ValueError(
                f"backbone '{name}' takes {net.input_spec.geometry.hw} inputs; geometry.size cannot change it"
            )
        g.pop("size", None)
        net.input_spec = replace(net.input_spec, geometry=replace(net.input_spec.geometry, **g))
    return net
