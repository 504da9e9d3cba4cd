"""Detector conditions: quality methods scored on faces cut from another face detector's landmarks.

A FIQA method deployed behind another detector than the one its training data was aligned with (YuNet instead of
MTCNN) sees faces aligned from that detector's 5 points: a misalignment that is not drawn at random but is the
detector's own per-face disagreement. The evaluation condition ``detector=<name>`` (``evaluation.conditions: [...,
yunet]``, reported as ``detector=yunet``) cuts every quality method's input from the landmarks ``<name>`` detects on
the source photo, while the comparison scores stay those of the properly aligned faces (the dataset's landmarks),
exactly as the misalignment presets keep the comparator on aligned faces: only what the quality method sees changes.

How the crop is cut: a face's crop from detected landmarks is its reference crop with the landmarks displaced by
``detected - reference`` (source pixels) before the similarity fit, which is what
:class:`~aikd.geometry.misalign.MisalignParams` ``jitter`` does. :class:`DetectorLandmarks` is therefore an ordinary
:class:`~aikd.geometry.misalign.Misalignment` whose parameters come from a table (one row per face of the index)
instead of a random draw, and the runner treats it like any preset: the crop equals
:func:`~aikd.geometry.align.crop` with the detected points, cut from the same canvas. The canvas (``data.canvas``,
the face with a border) is placed by the reference landmarks, so a detection that lands further from them than the
border (e.g. another face in the background) gets black padding where the photo has pixels; the report gives the
offsets, so such cases show.

Faces where the detector finds no face (the landmark cache keeps NaN points for them) cannot be left out: the
condition would then have other mated pairs and another threshold than every other column, and its pAUC would not
be comparable. They get the **box crop of the reference landmarks** instead (the ``boxcrop`` preset's geometry
without its random zoom: an axis-aligned square framed like the template on an upright frontal face, without roll
or yaw correction), standing for a pipeline that falls back to a face box when it has no points. They are counted
(``n_fallback``) in ``results.json`` and the report.

Detection runs once per evaluated split through the landmark cache (:func:`aikd.data.landmarks.detect_landmarks`,
keyed by the images and the detector's settings), so later runs read the points back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aikd.data.index import FaceIndex
from aikd.faces.detect import DETECTORS
from aikd.geometry.misalign import Misalignment, MisalignParams

log = logging.getLogger(__name__)

__all__ = [
    "DETECTOR_CONDITIONS",
    "FALLBACK",
    "DetectorLandmarks",
    "detector_condition",
    "detector_condition_label",
    "is_detector_condition",
]

#: Names ``evaluation.conditions`` accepts for detector conditions (besides ``conf/misalign`` presets): a detector.
DETECTOR_CONDITIONS: tuple[str, ...] = DETECTORS
#: What faces without a detection are given (quoted in the report).
FALLBACK = "box crop of the dataset's landmarks (the boxcrop preset's framing, no zoom)"
#: How reports spell the detectors.
_LABELS = {"mtcnn": "MTCNN", "yunet": "YuNet"}


def is_detector_condition(name: str) -> bool:
    """Whether ``name`` in ``evaluation.conditions`` is a detector condition (a detector's name)."""
    return str(name) in DETECTOR_CONDITIONS


def detector_condition_label(name: str) -> str:
    """Report label of the detector condition ``name`` (``yunet`` -> ``detector=yunet``)."""
    return f"detector={name}"


class DetectorLandmarks(Misalignment):
    """The crop of each face cut from replacement landmarks (another detector's), by index row.

    Args:
        landmarks: ``(N, 5, 2)`` source-pixel landmarks for every row of the evaluated :class:`FaceIndex`; rows of
            NaN had no detection and get the box crop of their reference landmarks (see the module docstring).
        detector: the detector's name (for reports).

    Only :meth:`sample_for_indices` is meaningful (it needs the index rows); :meth:`sample` refuses, because a
    table of detections is not a training perturbation.
    """

    def __init__(self, landmarks: np.ndarray | Tensor, detector: str = "yunet") -> None:
        super().__init__(p=1.0)
        lm = torch.as_tensor(np.asarray(landmarks, dtype=np.float64))
        if lm.ndim != 3 or lm.shape[1:] != (5, 2):
            raise ValueError(f"replacement landmarks must be (N, 5, 2), got {tuple(lm.shape)}")
        self.landmarks = lm
        self.detector = str(detector)

    @property
    def found(self) -> np.ndarray:
        """``(N,)`` bool: rows with a detection."""
        return torch.isfinite(self.landmarks).all(dim=2).all(dim=1).numpy()

    def _sample(self, landmarks: Tensor, generator: torch.Generator | None) -> MisalignParams:
        raise RuntimeError(
            f"the detector condition ({self.detector}) replaces each face's landmarks by its index row: it is an "
            "evaluation condition (sample_for_indices), not a training misalignment (use a conf/misalign preset)"
        )

    def sample_for_indices(self, landmarks: Tensor, indices: Tensor | Sequence[int], seed: int = 0) -> MisalignParams:
        """Parameters cutting face ``i`` from the detected landmarks of row ``indices[i]`` (``seed`` is unused: the
        condition is deterministic); rows without a detection get the box crop of their reference landmarks.

        Args:
            landmarks: ``(B, 5, 2)`` the faces' reference (dataset) landmarks, in source pixels.
            indices: their index rows.
            seed: ignored.
        """
        rows = torch.as_tensor([int(i) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)])
        params = MisalignParams.identity(len(rows), device=landmarks.device)
        if len(rows) == 0:
            return params
        if int(rows.min()) < 0 or int(rows.max()) >= len(self.landmarks):
            raise IndexError(
                f"detector condition ({self.detector}): index row {int(rows.max())} out of range; it was built for "
                f"an index of {len(self.landmarks)} faces (build it on the evaluated index)"
            )
        detected = self.landmarks[rows].to(landmarks.device)
        found = torch.isfinite(detected).all(dim=2).all(dim=1)
        offset = detected - landmarks.to(torch.float64)
        params.jitter = torch.where(found[:, None, None], offset, torch.zeros_like(offset))  # float64: exact points
        params.box = ~found
        return params

    def summary(self, rows: Sequence[int] | np.ndarray, reference: np.ndarray) -> dict[str, Any]:
        """How the detector did on ``rows`` (the evaluated faces): counts and landmark offsets.

        Args:
            rows: the index rows evaluated (faces with reference landmarks).
            reference: ``(N, 5, 2)`` the index's reference landmarks.

        Returns:
            ``{"detector", "n_images", "n_detected", "n_fallback", "fallback", "offset_iod"}``, ``offset_iod`` being
            the mean, median, 90th percentile and maximum over the detected faces of the mean distance of the 5
            points from the reference ones, in inter-ocular distances of the reference.
        """
        rows = np.asarray(rows, dtype=np.int64)
        det = self.landmarks.numpy()[rows]
        ref = np.asarray(reference, dtype=np.float64)[rows]
        found = np.isfinite(det).all(axis=(1, 2))
        iod = np.linalg.norm(ref[:, 0] - ref[:, 1], axis=-1).clip(1e-6)
        off = np.linalg.norm(det[found] - ref[found], axis=-1).mean(axis=-1) / iod[found]
        stats = (
            {
                "mean": float(off.mean()),
                "median": float(np.median(off)),
                "p90": float(np.percentile(off, 90)),
                "max": float(off.max()),
            }
            if len(off)
            else None
        )
        return {
            "detector": self.detector,
            "n_images": int(len(rows)),
            "n_detected": int(found.sum()),
            "n_fallback": int((~found).sum()),
            "fallback": FALLBACK,
            "offset_iod": stats,
        }

    def describe(self, rows: Sequence[int] | np.ndarray, reference: np.ndarray) -> str:
        """One line for the report: what the condition is and how the detector did (see :meth:`summary`)."""
        s = self.summary(rows, reference)
        label = _LABELS.get(self.detector, self.detector)
        text = (
            f"each quality method's input is aligned from {label}'s landmarks, detected on the source photo "
            f"(comparison scores stay those of the aligned faces): a face was found on {s['n_detected']} of "
            f"{s['n_images']} faces"
        )
        if s["offset_iod"] is not None:
            o = s["offset_iod"]
            text += (
                f", {o['mean']:.3f} inter-ocular distances from the dataset's landmarks on average (median "
                f"{o['median']:.3f}, 90th percentile {o['p90']:.3f})"
            )
        return text + f"; {s['n_fallback']} without a face get the {FALLBACK}"

    def extra_repr(self) -> str:
        return f"detector={self.detector}, faces={len(self.landmarks)}, detected={int(self.found.sum())}"


def detector_condition(
    index: FaceIndex, detector: str = "yunet", *, progress: bool = True, workers: int | None = None
) -> DetectorLandmarks:
    """The ``detector=<detector>`` condition for the faces of ``index``: detect (or read from the landmark cache)
    the landmarks of every image of ``index`` with ``detector``, ignoring the landmarks the index has.

    Args:
        index: the evaluated faces (the condition is indexed by its rows).
        detector: a name from :data:`~aikd.faces.detect.DETECTORS`.
        progress: show the detector's progress bar.
        workers: detection threads (default: the landmark cache's).
    """
    from aikd.data.landmarks import detect_landmarks

    if not is_detector_condition(detector):
        raise ValueError(f"unknown detector condition '{detector}': use one of {', '.join(DETECTOR_CONDITIONS)}")
    blank = index.with_landmarks(np.full_like(index.landmarks, np.nan))  # detect every image, not only missing ones
    found = detect_landmarks(blank, detector=detector, progress=progress, workers=workers)
    cond = DetectorLandmarks(found.landmarks, detector=detector)
    log.info(
        "condition %s: %s found a face on %d of %d images of %s",
        detector_condition_label(detector),
        _LABELS.get(detector, detector),
        int(cond.found.sum()),
        len(index),
        index.root,
    )
    return cond
