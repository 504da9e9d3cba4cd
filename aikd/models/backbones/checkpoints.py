"""Loading released face recognition checkpoints in their official file formats, safely and strictly.

FIQA users bring weights from several code bases, each saving them differently:

==============  ==================================================================================================
format          what the file holds
==============  ==================================================================================================
``insightface``  ``arcface_torch`` ``backbone.pth``: a plain iResNet state dict (``conv1.weight``, ``layer1.0...``,
                 ``fc.weight``, ``features.*``), sometimes with DataParallel ``module.`` prefixes.
``crfiqa``      the same plus the quality head ``qs.weight`` (1 x 512) and ``qs.bias`` in the *same* state dict.
``magface``     ``{'epoch', 'arch', 'state_dict', 'optimizer'}`` with the backbone under ``module.features.``
                 (DataParallel around the model) or ``features.module.`` (distributed training) and the MagLinear
                 classifier as ``module.fc.weight``.
``adaface``     a PyTorch Lightning ``.ckpt``: ``state_dict`` with the IR backbone under ``model.`` and the margin
                 head under ``head.`` (``kernel``, ``t``, ``batch_mean``, ``batch_std``), plus training state.
==============  ==================================================================================================

Everything is read with ``torch.load(..., map_location="cpu", weights_only=True)`` (or safetensors), so a
checkpoint can never run code. Loading is all-or-nothing: the sub-tree of the checkpoint that belongs to the
model must match it key for key and shape for shape (only missing ``num_batches_tracked`` counters, which old
exports drop and inference never reads, are tolerated), otherwise a :class:`ValueError` names the file, the
architecture and the offending keys, and the model is left untouched. A silently half-loaded FR model gives
plausible but wrong quality scores, which is the failure this module exists to rule out.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from aikd.models.backbones.base import FaceBackbone, create_backbone
from aikd.models.backbones.depths import IR_UNITS, IRESNET_LAYERS

__all__ = [
    "DEFAULT_STRIP_PREFIXES",
    "CheckpointInfo",
    "LoadReport",
    "read_checkpoint",
    "state_dict_of",
    "detect_format",
    "load_state_dict_flexible",
    "load_crfiqa",
    "load_magface",
    "load_adaface",
    "load_backbone",
]

log = logging.getLogger(__name__)

#: Wrapper prefixes peeled off checkpoint keys: DataParallel/DDP, MagFace's builder, Lightning modules, and
#: containers that hold a backbone as an attribute.
DEFAULT_STRIP_PREFIXES: tuple[str, ...] = ("module.", "features.", "model.", "backbone.")

#: Where training scripts nest the state dict inside a checkpoint dict, tried in this order.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "backbone")

#: Plain-data classes some training scripts pickle into checkpoints (e.g. argparse hyper-parameters); they
#: run no code when unpickled, so they are allowed on top of torch's weights-only defaults.
_HARMLESS_GLOBALS: list[Any] = [argparse.Namespace]

_IRESNET_SIGNATURE = "layer1.0.bn1.weight"
_IR_SIGNATURE = "body.0.res_layer.0.weight"

Source = str | Path | Mapping[str, Any]


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`detect_format` found in a checkpoint.

    Attributes:
        format: ``"insightface"``, ``"crfiqa"``, ``"magface"`` or ``"adaface"``.
        family: network family: ``"iresnet"`` (insightface layout) or ``"ir"`` (AdaFace layout).
        arch: registered backbone name inferred from the block counts (``"iresnet100"``, ``"ir_50"``...), or
            ``None`` for a depth aikd does not define.
        prefix: the key prefix the backbone sits under (``""``, ``"module."``, ``"module.features."``...).
        n_tensors: number of tensors in the state dict (all prefixes).
    """

    format: str
    family: str
    arch: str | None
    prefix: str
    n_tensors: int


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_state_dict_flexible` did.

    Attributes:
        source: the file (or ``"<state dict>"``).
        prefix: prefix stripped from the checkpoint keys.
        loaded: number of tensors copied into the model.
        ignored: checkpoint keys deliberately not loaded (outside the prefix, e.g. a margin head, or matching
            ``ignore_prefixes``).
        filled: model keys absent from the file and kept from the model (``num_batches_tracked`` only).
    """

    source: str
    prefix: str
    loaded: int
    ignored: tuple[str, ...]
    filled: tuple[str, ...]


def _source_name(obj: Any, source: str | Path | None = None) -> str:
    if source is not None:
        return str(source)
    return str(obj) if isinstance(obj, (str, Path)) else "<state dict>"


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with a little-endian u64 header length followed by a JSON object."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n < path.stat().st_size


def read_checkpoint(path: str | Path) -> Any:
    """Read a checkpoint file safely: safetensors, or ``torch.load`` with ``weights_only=True`` on the CPU.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is truncated, corrupt, not a checkpoint, or pickles classes that a weights-only
            load refuses; the message names the file and what to do.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}. aikd ships no pretrained face recognition weights; pass the path of a "
            f"checkpoint you have (insightface/arcface_torch, CR-FIQA, MagFace or AdaFace)"
        )
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError on damaged files
            raise ValueError(f"{path}: cannot read this safetensors file (truncated or corrupt?): {e}") from e
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with allow(_HARMLESS_GLOBALS) if allow is not None else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:
            raise ValueError(
                f"{path}: the checkpoint pickles the Python object '{found.group(1)}', which a safe "
                f"(weights_only) load refuses. If you trust the file, extract its tensors once in a separate "
                f"session: torch.save(torch.load(p, weights_only=False)['state_dict'], 'clean.pth') "
                f"(or the object holding the weights), then load 'clean.pth'"
            ) from e
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        raise ValueError(
            f"{path}: cannot read the checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"the file is probably truncated (interrupted download/copy) or not a PyTorch/safetensors file"
        ) from e


def state_dict_of(obj: Any, source: str | Path | None = None) -> dict[str, Tensor]:
    """The tensor state dict inside a loaded checkpoint object.

    Accepts a plain state dict, a module, or a training checkpoint nesting it under ``state_dict``
    (MagFace, Lightning), ``model_state_dict``, ``model``, ``net`` or ``backbone``.
    """
    src = _source_name(obj, source)
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise ValueError(f"{src}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        return dict(obj)
    for key in _STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, (Mapping, nn.Module)):
            return state_dict_of(inner, src)
    keys = ", ".join(map(str, list(obj)[:12]))
    raise ValueError(
        f"{src}: no state dict found. A checkpoint must be a mapping of tensors or nest one under one of "
        f"{_STATE_DICT_KEYS}; its top-level keys are: {keys}"
    )


def _prefixes_with(keys: Iterable[str], signature: str) -> list[str]:
    return sorted({k[: -len(signature)] for k in keys if k.endswith(signature)})


def _block_counts(keys: Iterable[str], prefix: str, stage: str) -> int:
    """Number of blocks ``prefix + stage + '<i>.'`` present (``max i + 1``), 0 if none."""
    pattern = re.compile(re.escape(prefix + stage) + r"(\d+)\.")
    found = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


def detect_format(obj: Any, source: str | Path | None = None) -> CheckpointInfo:
    """Tell which official format a checkpoint is in, and which architecture it holds.

    Args:
        obj: a path or an already loaded checkpoint object.
        source: name for messages when ``obj`` is not a path.

    Raises:
        ValueError: the checkpoint is none of the known formats (the message lists its first keys), or holds
            several backbones.
    """
    src = _source_name(obj, source)
    loaded = read_checkpoint(obj) if isinstance(obj, (str, Path)) else obj
    sd = state_dict_of(loaded, src)
    keys = list(sd)
    res_prefixes = _prefixes_with(keys, _IRESNET_SIGNATURE)
    ir_prefixes = _prefixes_with(keys, _IR_SIGNATURE)
    if len(res_prefixes) + len(ir_prefixes) > 1:
        raise ValueError(
            f"{src}: the checkpoint holds several backbones (under prefixes "
            f"{', '.join(repr(p) for p in res_prefixes + ir_prefixes)}); load one with "
            f"load_state_dict_flexible(model, path, strip_prefixes=(<its prefix>,))"
        )
    if res_prefixes:
        prefix = res_prefixes[0]
        counts = tuple(_block_counts(keys, prefix, f"layer{i}.") for i in range(1, 5))
        arch = next((name for name, layers in IRESNET_LAYERS.items() if layers == counts), None)
        if prefix + "qs.weight" in sd:
            fmt = "crfiqa"
        elif "features" in prefix.split(".") or (isinstance(loaded, Mapping) and "arch" in loaded):
            fmt = "magface"
        else:
            fmt = "insightface"
        return CheckpointInfo(fmt, "iresnet", arch, prefix, len(sd))
    if ir_prefixes:
        prefix = ir_prefixes[0]
        n_blocks = _block_counts(keys, prefix, "body.")
        arch = next((name for name, units in IR_UNITS.items() if sum(units) == n_blocks), None)
        return CheckpointInfo("adaface", "ir", arch, prefix, len(sd))
    shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
    raise ValueError(
        f"{src}: not a face recognition checkpoint aikd recognises. Known formats: insightface/arcface_torch "
        f"iResNet (keys like 'layer1.0.bn1.weight'), CR-FIQA (the same plus 'qs.weight'), MagFace "
        f"('state_dict' with 'module.features.*'), AdaFace (Lightning 'state_dict' with 'model.body.*'). "
        f"This file holds {len(keys)} tensors: {shown}. For a model you defined yourself use "
        f"load_state_dict_flexible(model, path)"
    )


def _candidate_prefixes(keys: list[str], strip_prefixes: tuple[str, ...], depth: int = 4) -> set[str]:
    """All concatenations of up to ``depth`` strip prefixes that start at least one key."""
    found = {""}
    frontier = {""}
    for _ in range(depth):
        frontier = {c + p for c in frontier for p in strip_prefixes if any(k.startswith(c + p) for k in keys)}
        found |= frontier
    return found


def _examples(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def _arch_name(model: nn.Module) -> str:
    return str(getattr(model, "arch", type(model).__name__))


def _mismatch_hint(sd: Mapping[str, Any], model: nn.Module, src: str) -> str:
    try:
        info = detect_format(dict(sd), src)
    except ValueError:
        return ""
    where = f" under prefix '{info.prefix}'" if info.prefix else ""
    hint = f" The file is a '{info.format}' checkpoint of {info.arch or 'an unknown depth'}{where}."
    if info.arch and info.arch != getattr(model, "arch", None):
        hint += f" Build that architecture instead: create_backbone('{info.arch}', weights=...)."
    if info.format == "crfiqa":
        hint += " Its quality head 'qs' is loaded by aikd.models.backbones.checkpoints.load_crfiqa."
    return hint


def load_state_dict_flexible(
    model: nn.Module,
    path_or_state: Source,
    *,
    strip_prefixes: tuple[str, ...] = DEFAULT_STRIP_PREFIXES,
    ignore_prefixes: tuple[str, ...] = (),
    source: str | Path | None = None,
) -> LoadReport:
    """Load a checkpoint into ``model`` whatever wrapper it was saved from, or fail loudly.

    The checkpoint's state dict is unwrapped (``state_dict`` etc., see :func:`state_dict_of`). Then the key
    prefix made of ``strip_prefixes`` (e.g. ``module.features.`` for MagFace, ``model.`` for Lightning) that
    matches the most model keys is selected; keys outside it (classifier or margin heads, other sub-modules
    of a training wrapper) are ignored and reported. Inside it the match must be exact.

    Args:
        model: the module to fill.
        path_or_state: a checkpoint path, or an already loaded checkpoint / state dict.
        strip_prefixes: wrapper prefixes that may be peeled off, in any combination and order.
        ignore_prefixes: keys (after stripping) that may be present in the file without a counterpart in the
            model, e.g. ``("qs.",)`` to load a CR-FIQA file into a bare backbone.
        source: name for messages when ``path_or_state`` is not a path.

    Returns:
        a :class:`LoadReport`.

    Raises:
        ValueError: unreadable file, no state dict, ambiguous prefixes, or missing / unexpected / wrongly shaped
            keys. The message names the file, the architecture and the keys; the model is not modified.
    """
    src = _source_name(path_or_state, source)
    obj = read_checkpoint(path_or_state) if isinstance(path_or_state, (str, Path)) else path_or_state
    sd = state_dict_of(obj, src)
    target = model.state_dict()
    arch = _arch_name(model)
    keys = list(sd)

    scores = {
        p: sum(1 for k in keys if k.startswith(p) and k[len(p) :] in target)
        for p in _candidate_prefixes(keys, strip_prefixes)
    }
    best = max(scores.values())
    if best == 0:
        raise ValueError(
            f"{src}: no key of the checkpoint matches {arch} ({type(model).__name__}), even after stripping "
            f"{strip_prefixes}. Checkpoint keys: {_examples(keys)}; model keys: {_examples(list(target))}. "
            f"Nothing was loaded.{_mismatch_hint(sd, model, src)}"
        )
    winners = sorted(p for p, s in scores.items() if s == best)
    if len(winners) > 1:
        raise ValueError(
            f"{src}: {arch} matches {best} keys under each of the prefixes {winners}: the file holds several "
            f"copies of the network. Pick one with strip_prefixes=(<prefix>,). Nothing was loaded."
        )
    prefix = winners[0]
    sub = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    outside = [k for k in keys if not k.startswith(prefix)]
    skipped = [k for k in sub if k not in target and ignore_prefixes and k.startswith(ignore_prefixes)]
    unexpected = [k for k in sub if k not in target and k not in skipped]
    missing = [k for k in target if k not in sub]
    filled = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in filled]
    mismatched = [k for k in sub if k in target and tuple(sub[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys: {_examples(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys: {_examples(unexpected)}")
        if mismatched:
            shapes = [f"{k} {tuple(sub[k].shape)} in file vs {tuple(target[k].shape)} in model" for k in mismatched]
            problems.append(f"{len(mismatched)} shape mismatches: {_examples(shapes, 4)}")
        where = f" (after stripping prefix '{prefix}')" if prefix else ""
        raise ValueError(
            f"{src}: checkpoint does not fit {arch} ({type(model).__name__}){where}: "
            + "; ".join(problems)
            + f". Nothing was loaded.{_mismatch_hint(sd, model, src)}"
        )
    state = {k: (sub[k] if k in sub else target[k]) for k in target}
    model.load_state_dict(state, strict=True)
    ignored = tuple(outside + skipped)
    if ignored:
        log.info(
            "%s: loaded %d tensors into %s; ignored %d: %s",
            src,
            len(sub) - len(skipped),
            arch,
            len(ignored),
            _examples(list(ignored)),
        )
    return LoadReport(src, prefix, len(sub) - len(skipped), ignored, tuple(filled))


class _WithQualityHead(nn.Module):
    """The backbone's modules plus ``qs`` at the top level: exactly CR-FIQA's ``IResNet`` key layout."""

    def __init__(self, backbone: FaceBackbone, head: nn.Linear) -> None:
        super().__init__()
        if list(backbone.named_parameters(recurse=False)) or list(backbone.named_buffers(recurse=False)):
            raise TypeError(f"{type(backbone).__name__} has top-level tensors; it cannot be combined with a head")
        for name, child in backbone.named_children():
            self.add_module(name, child)
        self.qs = head
        self.arch = f"CR-FIQA {_arch_name(backbone)} (backbone + qs head)"


def _check_arch(arch: str | None, family: str, loader: str) -> None:
    known = IRESNET_LAYERS if family == "iresnet" else IR_UNITS
    if arch is not None and arch not in known:
        raise ValueError(f"{loader}: arch must be one of {', '.join(known)} (or None to infer it), got '{arch}'")


def _read(path_or_state: Source, source: str | Path | None) -> tuple[Any, str]:
    src = _source_name(path_or_state, source)
    obj = read_checkpoint(path_or_state) if isinstance(path_or_state, (str, Path)) else path_or_state
    return obj, src


def load_crfiqa(
    path: Source, arch: str | None = "iresnet50", *, source: str | Path | None = None
) -> tuple[FaceBackbone, nn.Linear]:
    """Load a CR-FIQA checkpoint: the iResNet and its quality regression head ``qs``.

    CR-FIQA saves ``backbone.module.state_dict()`` of an iResNet that owns ``qs = Linear(512, 1)``, so the
    head's weights sit in the backbone file. Quality is the raw head output on the (un-normalised) embedding:
    ``head(backbone(faces))``.

    Args:
        path: the ``<step>backbone.pth`` file (or a loaded state dict).
        arch: ``"iresnet50"`` (CR-FIQA(S)) or ``"iresnet100"`` (CR-FIQA(L)); ``None`` infers it from the file.
        source: name for messages when ``path`` is not a path.

    Returns:
        ``(backbone, head)``, both in eval mode; the backbone uses the ``crfiqa`` preset (RGB, ``[-1, 1]``).
    """
    _check_arch(arch, "iresnet", "load_crfiqa")
    obj, src = _read(path, source)
    info = detect_format(obj, src)
    if info.format != "crfiqa":
        raise ValueError(
            f"{src}: not a CR-FIQA checkpoint - there is no quality head ('qs.weight'); it is a "
            f"'{info.format}' checkpoint of {info.arch or 'unknown depth'}. Load plain FR weights with "
            f"create_backbone('{info.arch or 'iresnet50'}', weights=...)"
        )
    backbone = create_backbone(arch or info.arch or "iresnet50", preset="crfiqa")
    head = nn.Linear(backbone.embedding_dim, 1)
    load_state_dict_flexible(_WithQualityHead(backbone, head), obj, source=src)
    return backbone.eval(), head.eval()


def load_magface(path: Source, arch: str | None = "iresnet100", *, source: str | Path | None = None) -> FaceBackbone:
    """Load a MagFace checkpoint (``{'state_dict': {'module.features.*': ...}}``) as an iResNet.

    The MagLinear classifier (``module.fc.weight``) and optimiser state are ignored. The backbone uses the
    ``magface`` preset: BGR input in ``[0, 1]``, BatchNorm eps ``2e-5``; its embedding norm is the quality.

    Args:
        path: the ``.pth`` checkpoint (or a loaded object).
        arch: ``"iresnet100"`` (the released model), ``"iresnet50"``, ``"iresnet18"``; ``None`` infers it.
        source: name for messages when ``path`` is not a path.
    """
    _check_arch(arch, "iresnet", "load_magface")
    obj, src = _read(path, source)
    info = detect_format(obj, src)
    if info.format != "magface":
        raise ValueError(
            f"{src}: not a MagFace checkpoint (expected 'state_dict' with 'module.features.*' or "
            f"'features.module.*' keys); it is a '{info.format}' checkpoint of {info.arch or 'unknown depth'}. "
            f"To use MagFace preprocessing with other weights: create_backbone('iresnet100', weights=..., "
            f"preset='magface')"
        )
    model = create_backbone(arch or info.arch or "iresnet100", preset="magface")
    load_state_dict_flexible(model, obj, source=src)
    return model.eval()


def load_adaface(path: Source, arch: str | None = "ir_50", *, source: str | Path | None = None) -> FaceBackbone:
    """Load an AdaFace checkpoint (Lightning ``.ckpt`` with ``model.*`` keys, or a bare IR state dict).

    The AdaFace margin head (``head.kernel`` and its EMA buffers) and the training state are ignored.

    Args:
        path: the ``.ckpt`` file (or a loaded object).
        arch: ``"ir_18"``, ``"ir_50"`` or ``"ir_101"``; ``None`` infers it from the file.
        source: name for messages when ``path`` is not a path.
    """
    _check_arch(arch, "ir", "load_adaface")
    obj, src = _read(path, source)
    info = detect_format(obj, src)
    if info.format != "adaface":
        raise ValueError(
            f"{src}: not an AdaFace checkpoint (expected IR keys 'input_layer.*', 'body.*', 'output_layer.*', "
            f"usually under 'model.'); it is a '{info.format}' checkpoint of {info.arch or 'unknown depth'}"
        )
    model = create_backbone(arch or info.arch or "ir_50")
    load_state_dict_flexible(model, obj, source=src)
    return model.eval()


def load_backbone(path: Source, arch: str | None = None, *, source: str | Path | None = None) -> FaceBackbone:
    """Detect a checkpoint's format and architecture and load it with the right preset.

    CR-FIQA files give the backbone only (use :func:`load_crfiqa` for the quality head too).
    """
    obj, src = _read(path, source)
    info = detect_format(obj, src)
    if info.format == "crfiqa":
        return load_crfiqa(obj, arch or info.arch, source=src)[0]
    if info.format == "magface":
        return load_magface(obj, arch or info.arch, source=src)
    if info.format == "adaface":
        return load_adaface(obj, arch or info.arch, source=src)
    if not (arch or info.arch):
        raise ValueError(f"{src}: iResNet with unknown block counts; pass arch=")
    model = create_backbone(arch or info.arch, preset="arcface")
    load_state_dict_flexible(model, obj, source=src)
    return model.eval()
