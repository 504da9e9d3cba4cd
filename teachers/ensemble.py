"""An ensemble teacher: one quality score from several FIQA teachers.

FIQA methods disagree in ways that partly cancel out (CR-FIQA, MagFace and RI fail on different images), so an
average of their *rankings* is often a better target than any single teacher. Raw scores live on unrelated scales
(a CR-FIQA head output around 0..3, a MagFace norm around 20-30), so members are first put on a common scale with
their own calibrations:

* ``mode="rank"`` (default): the mean of the members' ECDF-calibrated scores (0..100). An ECDF calibration is the
  member's empirical CDF on its reference set, so this is a rank average: "on average, better than x% of the
  reference faces". Every member must carry an ``ecdf`` calibration (teachers obtained through
  :func:`aikd.training.teacher_fit.obtain_teacher` do). The result is already on 0..100.
* ``mode="zscore"``: the mean of ``(raw - centre) / scale`` per member, a robust z-score. ``centre``/``scale`` come
  from the member's calibration: a ``logistic`` calibration's own parameters, or, for an ``ecdf`` one, the median
  and ``IQR / (2 ln 3)`` of its quantile knots - the same convention as :meth:`aikd.models.calibration.Calibration.fit`
  with ``kind="logistic"``, so both give the same z for a member fitted on the same scores. Unlike rank averaging
  it keeps how far apart faces are (an outstanding face in one member counts more than a marginal one), but is
  sensitive to skewed score distributions.

An ``identity`` calibration says nothing about a member's scale, so both modes reject it with an error that says
how to calibrate. Member ``weights`` (non-negative, normalised to sum 1) weight the mean.

All members score canonical faces cut with ONE geometry (the distillation pipeline cuts one teacher crop per face),
so they must declare the same ``input_spec.geometry``; each still normalises the crop its own way (colour order,
mean/std). Members are sub-modules: their weights enter the ensemble's fingerprint and its saved file, and the
ensemble's recorded config holds each member's config, input spec and calibration, so a saved ensemble reloads
without the members' original files. The ensemble has no embedding.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from aikd.geometry.preprocess import InputSpec
from aikd.models.calibration import Calibration
from aikd.models.teacher import TEACHERS, Teacher, TeacherOutput, create_teacher, register_teacher

__all__ = ["EnsembleTeacher", "ENSEMBLE_MODES", "calibration_centre_scale"]

ENSEMBLE_MODES = ("rank", "zscore")


def calibration_centre_scale(calibration: Calibration) -> tuple[float, float]:
    """``(centre, scale)`` of a member's score distribution, read off its calibration (see the module docstring).

    Raises:
        ValueError: an ``identity`` calibration (no scale information).
    """
    if calibration.kind == "logistic":
        return float(calibration.centre), float(calibration.scale)
    if calibration.kind == "ecdf":
        q1, med, q3 = np.interp([25.0, 50.0, 75.0], calibration.levels, calibration.knots)
        scale = (q3 - q1) / (2.0 * math.log(3.0))
        if not scale > 0:  # more than half the reference scores tied: fall back to the knots' spread
            scale = max(float(np.std(calibration.knots)), 1e-6)
        return float(med), float(scale)
    raise ValueError("an identity calibration has no centre or scale")


def _member_example(projection_dim: int) -> dict[str, Any]:
    """A small crfiqa member with an ECDF calibration spread over its typical raw range (random weights)."""
    from teachers.crfiqa import CRFIQATeacher

    knots = np.linspace(-2.0, 2.0, 9).tolist()
    levels = np.linspace(0.0, 100.0, 9).tolist()
    return {
        "name": "crfiqa",
        **CRFIQATeacher.example_kwargs,
        "projection_dim": projection_dim,
        "calibration": {"kind": "ecdf", "knots": knots, "levels": levels},
    }


@register_teacher("ensemble")
class EnsembleTeacher(Teacher):
    """Mean of several teachers' calibrated scores.

    Args:
        members: one dict per member: ``{"name": <registered teacher>, "weights": <teacher file> | None,
            "calibration": <calibration dict> | None, "input_spec_override": <input spec dict> | None, **kwargs}``.
            The member is built with :func:`aikd.models.teacher.create_teacher` (from ``weights``, or from ``kwargs``),
            then ``calibration`` (if given) replaces its calibration and ``input_spec_override`` (if given) its
            input spec - the latter is how a saved ensemble restores members exactly; users rarely need it.
        mode: ``"rank"`` or ``"zscore"`` (see the module docstring).
        member_weights: optional non-negative weights, one per member (default: equal).

    Raises:
        ValueError: no members, unknown mode, bad weights, members with different geometries, or members whose
            calibration the mode cannot use.
    """

    embedding_dim = None
    #: Two small CR-FIQA members (different projection sizes) in the default rank mode. Random-weight members have
    #: no reference set, so the example gives each an explicit ECDF calibration over their typical raw range
    #: instead of relaxing the rule that an ensemble needs calibrated members.
    example_kwargs: ClassVar[dict[str, Any]] = {
        "members": [_member_example(32), _member_example(16)],
        "mode": "rank",
    }

    def __init__(
        self,
        members: Sequence[Mapping[str, Any]],
        mode: str = "rank",
        member_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if mode not in ENSEMBLE_MODES:
            raise ValueError(f"ensemble mode must be one of {ENSEMBLE_MODES}, got {mode!r}")
        if not members:
            raise ValueError("an ensemble needs at least one member: members=[{name: ..., weights: ...}, ...]")
        self.mode = mode
        self.members = nn.ModuleList([self._build_member(i, dict(m)) for i, m in enumerate(members)])
        self._check_geometry()
        self.input_spec = InputSpec(geometry=self.members[0].input_spec.geometry)
        if member_weights is None:
            w = np.full(len(self.members), 1.0 / len(self.members))
        else:
            w = np.asarray(list(member_weights), dtype=np.float64)
            if w.shape != (len(self.members),) or not np.all(np.isfinite(w)) or (w < 0).any() or not w.sum() > 0:
                raise ValueError(
                    f"member_weights must be {len(self.members)} non-negative numbers with a positive sum, got "
                    f"{list(member_weights)}"
                )
            w = w / w.sum()
        self.member_weights = [float(v) for v in w]
        for i, m in enumerate(self.members):
            self._check_calibration(i, m)
        self.record_config(
            members=[self._member_record(m) for m in self.members],
            mode=mode,
            member_weights=None if member_weights is None else [float(v) for v in member_weights],
        )

    # -- members --------------------------------------------------------------------------------------------
    @staticmethod
    def _build_member(i: int, spec: dict[str, Any]) -> Teacher:
        if "name" not in spec:
            raise ValueError(f"ensemble member {i} has no 'name' (a registered teacher); got keys {sorted(spec)}")
        name = spec.pop("name")
        weights = spec.pop("weights", None)
        calibration = spec.pop("calibration", None)
        input_spec = spec.pop("input_spec_override", None)
        if weights is not None and spec:
            raise ValueError(
                f"ensemble member {i} ('{name}') gives a teacher file and constructor arguments {sorted(spec)}; a "
                f"teacher file restores its own configuration, give one or the other"
            )
        member = create_teacher(name, weights=weights, calibration=calibration, **spec)
        if input_spec is not None:
            member.input_spec = InputSpec.from_dict(dict(input_spec))
            if hasattr(member, "backbone"):
                member.backbone.input_spec = member.input_spec
            member.invalidate_fingerprint()
        return member

    def _check_geometry(self) -> None:
        first = self.members[0].input_spec.geometry.to_dict()
        for i, m in enumerate(self.members[1:], start=1):
            other = m.input_spec.geometry.to_dict()
            if other != first:
                raise ValueError(
                    f"ensemble members must share one input geometry (they score the same face crop): member 0 "
                    f"('{self.members[0].name}') uses {first}, member {i} ('{m.name}') uses {other}. Pick members "
                    f"that take the same crop"
                )

    def _check_calibration(self, i: int, member: Teacher) -> None:
        kind = member.calibration.kind
        needed = ("ecdf",) if self.mode == "rank" else ("ecdf", "logistic")
        if kind not in needed:
            how = (
                "teachers from aikd.training.teacher_fit.obtain_teacher carry an ecdf calibration; otherwise give the "
                "member "
                "'calibration': Calibration.fit(<its raw scores on a reference set>, kind='ecdf').to_dict()"
            )
            raise ValueError(
                f"ensemble mode '{self.mode}' needs members calibrated with {' or '.join(needed)}, but member {i} "
                f"('{member.name}') has a '{kind}' calibration: {how}"
                + (", or use mode='zscore' with a logistic calibration" if self.mode == "rank" else "")
            )

    @staticmethod
    def _member_record(member: Teacher) -> dict[str, Any]:
        """What rebuilds ``member`` without its original files (its weights come from the ensemble's state)."""
        factory = TEACHERS.get(member.name)
        weight_args = getattr(factory, "weight_args", Teacher.weight_args)
        params = inspect.signature(factory).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        config = {k: (None if k in weight_args else v) for k, v in member.config.items() if takes_any or k in params}
        return {
            "name": member.name,
            **config,
            "calibration": member.calibration.to_dict(),
            "input_spec_override": member.input_spec.to_dict(),
        }

    # -- scoring --------------------------------------------------------------------------------------------
    def member_scores(self, faces: Tensor) -> Tensor:
        """``(B, M)`` per-member scores on the ensemble's common scale (0..100 ranks, or z-scores)."""
        cols = []
        for member in self.members:
            raw = member(faces).quality.float()
            if self.mode == "rank":
                cols.append(member.calibration(raw))
            else:
                centre, scale = calibration_centre_scale(member.calibration)
                cols.append((raw - centre) / scale)
        return torch.stack(cols, dim=1)

    def predict(self, faces: Tensor) -> TeacherOutput:
        scores = self.member_scores(faces)
        w = torch.tensor(self.member_weights, dtype=scores.dtype, device=scores.device)
        return TeacherOutput(scores @ w, None)
