"""Any FIQA model given as an ONNX file, run with onnxruntime, as an aikd teacher.

Most FIQA methods can be exported to ONNX from their own code base (or already ship that way), which makes ONNX the
one format through which a method aikd does not implement can still teach a student. What aikd cannot read off the
file is *how* the model wants its faces, so the config declares it:

* ``input_spec``: the crop geometry (``{size, template}``), colour order, ``mean``/``std``, ``value_range`` and
  ``standardize`` (see :meth:`aikd.geometry.preprocess.InputSpec.from_dict`). Canonical faces are cut with that geometry
  by the caller and normalised with :meth:`~aikd.geometry.preprocess.InputSpec.normalize` here, before onnxruntime;
* ``quality_output``: which output is the quality (name or index), and ``quality_transform``: ``"identity"`` (the
  output is the score), ``"norm"`` (the L2 norm of that output, for norm-based models such as MagFace exported
  with their un-normalised embedding) or ``"negate"`` (for models where *lower* means better);
* ``embedding_output``: optionally an output used as the teacher embedding.

The teacher has no torch parameters. Its identity is the file's content: the SHA-256 of the file is recorded in
the config (so it enters :attr:`~aikd.models.teacher.Teacher.fingerprint` and the teacher-score caches keyed by it), and
a teacher rebuilt from a saved teacher file refuses to run if the ONNX file at ``path`` has changed since. Where the
file lives and which execution providers run it do not change the fingerprint.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aikd.geometry.preprocess import InputSpec
from aikd.io import atomic_path, sha256_file
from aikd.models.teacher import Teacher, TeacherOutput, module_fingerprint, register_teacher

__all__ = ["ONNXTeacher", "QUALITY_TRANSFORMS", "export_example_model", "EXAMPLE_INPUT_SPEC"]

QUALITY_TRANSFORMS = ("identity", "norm", "negate")

_ORT_DTYPES: dict[str, Any] = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}

#: Input contract of the example model (BGR and uneven mean/std, so tests see normalisation being applied).
EXAMPLE_INPUT_SPEC: dict[str, Any] = {
    "geometry": {"size": 32, "template": "arcface"},
    "colour": "BGR",
    "mean": [0.5, 0.4, 0.3],
    "std": [0.2, 0.25, 0.3],
    "value_range": 1.0,
    "standardize": "none",
}


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:  # pragma: no cover - a dependency of aikd
        raise ImportError("the 'onnx' teacher runs on the PyPI package 'onnxruntime': pip install onnxruntime") from err
    return onnxruntime


def _as_input_spec(spec: InputSpec | Mapping[str, Any]) -> InputSpec:
    if isinstance(spec, InputSpec):
        return spec
    if not isinstance(spec, Mapping):
        raise TypeError(f"input_spec must be a mapping like {EXAMPLE_INPUT_SPEC}, got {type(spec).__name__}")
    return InputSpec.from_dict(dict(spec))


@register_teacher("onnx")
class ONNXTeacher(Teacher):
    """A FIQA model in an ONNX file, scored with onnxruntime (on the CPU unless ``providers`` say otherwise).

    Args:
        path: the ``.onnx`` file.
        input_spec: the model's input contract, an :class:`~aikd.geometry.preprocess.InputSpec` or its dict form.
        quality_output: name or index of the output holding the quality.
        embedding_output: name or index of an output to use as the embedding ``(B, D)``, or ``None``.
        quality_transform: ``"identity"``, ``"norm"`` or ``"negate"`` (see the module docstring).
        input_name: the model input to feed (needed only when the model has several inputs).
        sha256: expected SHA-256 of the file; a saved teacher records it, and a mismatch is an error.
        providers: onnxruntime execution providers (default ``["CPUExecutionProvider"]``).
        num_threads: onnxruntime intra-op threads (``None``: onnxruntime's default).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable model, file changed (``sha256``), an input shape that contradicts ``input_spec``,
            an unknown output name/index, or an output shape the transform cannot use.
    """

    #: Arguments that say where and how the model runs, not what it computes: left out of the fingerprint.
    runtime_args: tuple[str, ...] = ("path", "providers", "num_threads")

    def __init__(
        self,
        path: str,
        input_spec: InputSpec | Mapping[str, Any],
        quality_output: str | int = 0,
        embedding_output: str | int | None = None,
        quality_transform: str = "identity",
        input_name: str | None = None,
        sha256: str | None = None,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        if quality_transform not in QUALITY_TRANSFORMS:
            raise ValueError(f"quality_transform must be one of {QUALITY_TRANSFORMS}, got {quality_transform!r}")
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(
                f"ONNX teacher model not found: {file}. Set teacher.build.path to the .onnx file of your FIQA model"
            )
        self.path = file
        self.sha256 = sha256_file(file)
        if sha256 is not None and sha256 != self.sha256:
            raise ValueError(
                f"{file}: the ONNX file changed (sha256 {self.sha256[:12]}..., expected {sha256[:12]}...). The teacher "
                f"was saved with another model; restore that file, or build a new teacher (and new score caches)"
            )
        self.input_spec = _as_input_spec(input_spec)
        self.quality_transform = quality_transform
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.num_threads = num_threads
        self._session: Any = None
        session = self.session
        model_input = self._resolve_input(session, input_name)
        self._input_name = str(model_input.name)  # plain values: onnxruntime objects do not pickle
        self._dtype = _ORT_DTYPES.get(model_input.type)
        if self._dtype is None:
            raise ValueError(f"{file}: input '{self._input_name}' has type {model_input.type}; only float inputs work")
        self._fixed_batch = self._check_input_shape(list(model_input.shape))
        outputs = [o.name for o in session.get_outputs()]
        self._quality_name = self._resolve_output(outputs, quality_output, "quality_output")
        self._embedding_name = (
            None if embedding_output is None else self._resolve_output(outputs, embedding_output, "embedding_output")
        )
        # One probe run checks that the outputs have shapes the transform can use and gives the embedding size.
        h, w = self.input_spec.size
        probe = self.predict(torch.full((self._fixed_batch or 2, 3, h, w), 0.5))
        self.embedding_dim = None if probe.embedding is None else int(probe.embedding.shape[1])
        self.record_config(
            path=str(file),
            input_spec=self.input_spec.to_dict(),
            quality_output=self._quality_name,
            embedding_output=self._embedding_name,
            quality_transform=quality_transform,
            input_name=self._input_name,
            sha256=self.sha256,
            providers=self.providers if providers else None,
            num_threads=num_threads,
        )

    # -- onnxruntime ----------------------------------------------------------------------------------------
    @property
    def session(self) -> Any:
        """The onnxruntime session, created on first use (and again after unpickling: sessions do not pickle)."""
        if self._session is None:
            if self.config and sha256_file(self.path) != self.sha256:
                raise ValueError(f"{self.path}: the ONNX file changed after this teacher was built; rebuild it")
            ort = _onnxruntime()
            options = ort.SessionOptions()
            if self.num_threads:
                options.intra_op_num_threads = int(self.num_threads)
            try:
                self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=self.providers)
            except Exception as err:  # onnxruntime raises its own error types for invalid graphs
                raise ValueError(
                    f"{self.path}: onnxruntime cannot load this model ({err}); is it an ONNX file?"
                ) from err
        return self._session

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_session"] = None
        return state

    def _resolve_input(self, session: Any, input_name: str | None) -> Any:
        inputs = list(session.get_inputs())
        if input_name is not None:
            found = [i for i in inputs if i.name == input_name]
            if not found:
                raise ValueError(f"{self.path}: no input named '{input_name}'; inputs: {[i.name for i in inputs]}")
            return found[0]
        if len(inputs) != 1:
            raise ValueError(
                f"{self.path}: the model has {len(inputs)} inputs {[i.name for i in inputs]}; set input_name"
            )
        return inputs[0]

    def _check_input_shape(self, shape: Sequence[Any]) -> int | None:
        """Check the declared input shape against ``input_spec``; return a fixed batch size (``None``: dynamic)."""
        h, w = self.input_spec.size
        expected = f"(batch, 3, {h}, {w}) from input_spec.geometry ({self.input_spec.geometry.template} crop)"
        if len(shape) != 4:
            raise ValueError(f"{self.path}: input '{self._input_name}' has shape {list(shape)}, expected {expected}")
        fixed = [(axis, want) for axis, want in ((1, 3), (2, h), (3, w)) if isinstance(shape[axis], int)]
        if any(shape[axis] != want for axis, want in fixed):
            raise ValueError(
                f"{self.path}: input '{self._input_name}' has shape {list(shape)}, but the teacher feeds {expected}. "
                f"Fix teacher.build.input_spec (geometry size, or the layout: ONNX teachers take NCHW input)"
            )
        batch = shape[0]
        return int(batch) if isinstance(batch, int) and batch > 0 else None

    def _resolve_output(self, names: list[str], which: str | int, what: str) -> str:
        if isinstance(which, bool) or not isinstance(which, (str, int)):
            raise TypeError(f"{what} must be an output name or index, got {which!r}")
        if isinstance(which, int):
            if not -len(names) <= which < len(names):
                raise ValueError(f"{self.path}: {what}={which} but the model has {len(names)} outputs: {names}")
            return names[which]
        if which not in names:
            raise ValueError(f"{self.path}: {what}='{which}' is not an output of the model; outputs: {names}")
        return which

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        names = [self._quality_name] + ([self._embedding_name] if self._embedding_name else [])
        feed = self._input_name
        if self._fixed_batch is None:
            return self.session.run(names, {feed: x})
        if self._fixed_batch == 1:  # exported with batch 1: run face by face
            parts = [self.session.run(names, {feed: x[i : i + 1]}) for i in range(len(x))]
            return [np.concatenate([p[k] for p in parts]) for k in range(len(names))]
        if len(x) != self._fixed_batch:
            raise ValueError(
                f"{self.path}: the model was exported with a fixed batch of {self._fixed_batch}, got {len(x)} faces; "
                f"re-export it with a dynamic (or 1) batch axis"
            )
        return self.session.run(names, {feed: x})

    # -- teacher --------------------------------------------------------------------------------------------
    def _quality(self, out: Tensor, n: int) -> Tensor:
        if out.ndim == 0 or out.shape[0] != n:
            raise ValueError(f"{self.path}: output '{self._quality_name}' has shape {tuple(out.shape)} for {n} faces")
        if self.quality_transform == "norm":
            return out.reshape(n, -1).norm(dim=1)
        if out.numel() != n:
            raise ValueError(
                f"{self.path}: output '{self._quality_name}' has shape {tuple(out.shape)} for {n} faces, but "
                f"quality_transform='{self.quality_transform}' needs one value per face ((B,) or (B, 1)); use "
                f"quality_transform='norm' if it is an embedding whose norm is the quality"
            )
        q = out.reshape(n)
        return -q if self.quality_transform == "negate" else q

    def predict(self, faces: Tensor) -> TeacherOutput:
        """Canonical faces -> normalised with ``input_spec`` -> onnxruntime -> raw quality (and embedding)."""
        n = faces.shape[0]
        x = self.input_spec.normalize(faces.detach().float()).cpu().numpy().astype(self._dtype, copy=False)
        outs = [torch.from_numpy(np.ascontiguousarray(o)).to(faces.device, torch.float32) for o in self._run(x)]
        q = self._quality(outs[0], n)
        e = None
        if self._embedding_name is not None:
            e = outs[1]
            if e.ndim != 2 or e.shape[0] != n:
                raise ValueError(
                    f"{self.path}: embedding output '{self._embedding_name}' has shape {tuple(e.shape)}, expected "
                    f"({n}, D)"
                )
        return TeacherOutput(q, e)

    @property
    def fingerprint(self) -> str:
        """Hash of the config without :attr:`runtime_args`: the file's SHA-256 stands for the weights."""
        if self._fingerprint is None:
            config = {k: v for k, v in self.config.items() if k not in self.runtime_args}
            ident = {"name": self.name, "config": config, "input": self.input_spec.to_dict()}
            self._fingerprint = module_fingerprint(self, ident)
        return self._fingerprint

    @classmethod
    def example_kwargs_for_tests(cls, tmp_dir: Path) -> dict[str, Any]:
        """Export the tiny example model into ``tmp_dir`` (once) and point the teacher at it."""
        path = Path(tmp_dir) / "example_onnx_teacher.onnx"
        if not path.is_file():
            export_example_model(path)
        return {
            "path": str(path),
            "input_spec": dict(EXAMPLE_INPUT_SPEC),
            "quality_output": "quality",
            "embedding_output": "embedding",
        }


class _TinyFIQA(nn.Module):
    """A few-parameter stand-in for a FIQA network: conv -> pooled embedding -> quality."""

    def __init__(self, embedding_dim: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, embedding_dim)
        self.head = nn.Linear(embedding_dim, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        e = self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))
        return e, self.head(e)


def export_example_model(path: str | Path, seed: int = 0, dynamic_batch: bool = True) -> nn.Module:
    """Write a tiny FIQA model to ``path`` as ONNX (input ``faces`` ``(B, 3, 32, 32)``, outputs ``embedding``
    ``(B, 16)`` and ``quality`` ``(B, 1)``) and return the torch model it was exported from.

    It takes *normalised* input (see :data:`EXAMPLE_INPUT_SPEC`), as every ONNX teacher model does. Used by the
    registry-wide tests and as a template for exporting a real model.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _TinyFIQA().eval()
    size = EXAMPLE_INPUT_SPEC["geometry"]["size"]
    axes = {name: {0: "batch"} for name in ("faces", "embedding", "quality")} if dynamic_batch else None
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated but fast
        torch.onnx.export(
            model,
            (torch.zeros(2 if dynamic_batch else 1, 3, size, size),),
            str(tmp),
            dynamo=False,
            input_names=["faces"],
            output_names=["embedding", "quality"],
            dynamic_axes=axes,
            opset_version=17,
        )
    return model
