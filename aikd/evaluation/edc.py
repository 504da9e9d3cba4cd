"""Error-versus-Discard Characteristic (EDC), its partial area (pAUC), and the FR model's own ROC.

Every quality claim aikd makes is a number from this module, so the rules are spelled out exactly here.

Conventions
-----------
* Comparison scores are *similarities*: higher means "more likely the same person".
* A pair is accepted as a match when ``score >= threshold``. Hence a **mated** pair is a false non-match when
  ``score < threshold`` and a **non-mated** pair is a false match when ``score >= threshold``:
  ``FNMR(t) = #{mated s < t} / N_mated`` and ``FMR(t) = #{non-mated s >= t} / N_non-mated``.
* Quality: higher means better. A pair's quality is ``min(q_a, q_b)`` (:func:`pair_quality`): a pair is only as
  usable as its worse image, and discarding pairs in increasing pair quality is the same as discarding images in
  increasing quality.

The EDC (the protocol of Schlett et al., "Considerations on the evaluation of biometric quality assessment
algorithms", which docs/methods.md section 2 restates)
-------------------------------------------------------------------------------------------------------------
1. The decision threshold ``t`` is fixed ONCE on the full set, at an *operating point*:
   ``start_err=e`` (:func:`threshold_at_starting_error`, the e-quantile of the mated scores, so that the FNMR at
   zero discard is about ``e``), ``fmr=f`` (:func:`threshold_at_fmr`, NIST style) or ``threshold=t`` (given).
2. The curve runs over the MATED pairs only. Sort them by pair quality; for every distinct quality value
   ``q_k`` (ascending), discard all mated pairs with quality ``< q_k``. Tied qualities therefore always leave
   together: a quality measure cannot be credited with an ordering it did not make. Step ``k`` has discard
   fraction ``d_k = c_k / N`` (``c_k`` = #pairs with quality < ``q_k``) and value
   ``EDC(d_k) = #{remaining mated pairs with s < t} / (N - c_k)``.
3. Between step points the curve is a right-continuous step function: ``EDC(d) = EDC(d_k)`` for
   ``d_k <= d < d_{k+1}`` (you can only discard whole quality groups, so at a requested fraction ``d`` you discard
   the largest achievable fraction not above it). The last step holds until ``d = 1``.
4. ``pAUC(D) = integral_0^D EDC(d) dd`` of that step function (:func:`pauc`), reported raw and normalised by
   ``D * EDC(0)``: 1.0 means "no better than not discarding" (what a random quality achieves in expectation,
   :func:`random_edc`), lower is better.
5. ``max(0, EDC(0) - d)`` (:func:`lower_bound_edc`) bounds every EDC from below (discarding a fraction ``d`` of
   the pairs can remove at most ``d * N`` errors, and the FNMR among the remaining ``(1 - d) N`` pairs is then at
   least ``(EDC(0) - d) / (1 - d) >= EDC(0) - d``). It is the "theoretical best" line of the reference
   implementation; note that no quality reaches it exactly: the best achievable curve (a quality that orders
   mated pairs by their comparison score, :func:`oracle_edc`) is ``max(0, (E - c) / (N - c))`` at ``c`` discarded
   pairs, slightly above it. For ``EDC(0) = 0.10`` and ``D = 0.20``: lower bound 0.25 normalised, oracle
   about 0.259 (continuous limit ``(e + (1 - e) ln(1 - e)) / (D e)``).

Legacy mode (:func:`edc_curve_legacy`): older FIQA repositories discard the lowest-quality fraction of ALL pairs
(mated and non-mated together, ties broken arbitrarily), recompute the FMR threshold on what remains at every
step, and integrate the FNMR trapezoidally over discard rates 0, 0.05, ..., 0.95. A quality measure can then
lower the "FNMR" by discarding high-scoring non-mated pairs (which lowers the threshold) without ordering a single
mated pair well, and the area is over a different range. Those numbers are NOT comparable with :func:`pauc`;
the mode exists only to reproduce old tables.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "EDCWarning",
    "EDCCurve",
    "PAUC",
    "LegacyEDC",
    "ROC",
    "OperatingPoint",
    "pair_quality",
    "threshold_at_fmr",
    "threshold_at_starting_error",
    "parse_operating_point",
    "threshold_for",
    "edc_curve",
    "oracle_edc",
    "random_edc",
    "pauc",
    "lower_bound_edc",
    "lower_bound_pauc",
    "random_quality_pauc",
    "edc_curve_legacy",
    "fmr_at_threshold",
    "fnmr_at_threshold",
    "fnmr_at_fmr",
    "roc",
    "equal_error_rate",
    "fr_summary",
    "evaluate_quality",
    "limit_key",
    "LEGACY_DISCARD_FRACTIONS",
]

LEGACY_DISCARD_FRACTIONS: np.ndarray = np.round(np.arange(20) * 0.05, 10)
"""Discard rates of the legacy protocol: 0, 0.05, ..., 0.95 (the older repositories' ``np.arange(0, 0.98, 0.05)``)."""

# Relative slack when turning a rate times a count into an integer count: 0.29 * 100 is 28.999999999999996 in
# floating point, and flooring that would silently allow one error fewer than the user asked for.
_COUNT_EPS = 1e-9


class EDCWarning(UserWarning):
    """A figure was computed but is not meaningful (too few pairs, no errors to discard, ...)."""


# --------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------


def _as_1d(values: ArrayLike, name: str, *, allow_empty: bool = False) -> np.ndarray:
    """Convert to a finite-checked 1-D float64 array, with an error that names the argument."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array with one value per pair, got shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: at least one pair is needed")
    n_nan = int(np.isnan(arr).sum())
    if n_nan:
        raise ValueError(
            f"{name} contains {n_nan} NaN value(s) out of {arr.size}; remove those pairs or give them an explicit "
            f"value (e.g. quality -inf for images where quality could not be computed, so they are discarded first)"
        )
    return arr


def _check_rate(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return value


def _check_limit(limit: float) -> float:
    limit = float(limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"pAUC limit (largest discard fraction) must be in (0, 1], got {limit}")
    return limit


def limit_key(limit: float) -> str:
    """The JSON key of a pAUC limit: ``0.2 -> "0.2"``, ``0.3 -> "0.3"`` (shortest exact form)."""
    return f"{float(limit):g}"


# --------------------------------------------------------------------------------------------------------------
# Pair quality and thresholds
# --------------------------------------------------------------------------------------------------------------


def pair_quality(q_a: ArrayLike, q_b: ArrayLike) -> np.ndarray:
    """Pair quality ``min(q_a, q_b)``, elementwise.

    The minimum models discarding *images*: once an image's quality is below the cut, every pair that contains it
    is gone, which is exactly when the pair's minimum falls below the cut.
    """
    a = _as_1d(q_a, "q_a")
    b = _as_1d(q_b, "q_b")
    if a.shape != b.shape:
        raise ValueError(f"q_a and q_b must have the same length (one value per pair), got {a.size} and {b.size}")
    return np.minimum(a, b)


def threshold_at_fmr(nonmated_scores: ArrayLike, fmr: float, *, strict: bool = True) -> float:
    """The smallest threshold at which the false match rate of the non-mated pairs is at most ``fmr``.

    With ``FMR(t) = #{non-mated s >= t} / N`` and ``k = floor(fmr * N)`` the number of false matches allowed,
    ``FMR(t) <= fmr`` holds exactly for ``t > s_(k+1)``, the (k+1)-th highest non-mated score. No smallest real
    ``t`` exists in that open interval, so the threshold returned is the next float64 above ``s_(k+1)``
    (``np.nextafter``): the smallest representable threshold meeting the target. Any larger threshold up to the
    k-th highest score gives the same FMR but can only raise the FNMR, so this is the operating point at which
    "FNMR at FMR" is usually quoted. Ties at ``s_(k+1)`` are all rejected, so the achieved FMR can be below
    ``fmr``.

    Args:
        nonmated_scores: similarity scores of the non-mated (impostor) pairs.
        fmr: target false match rate in (0, 1).
        strict: if there are fewer non-mated pairs than ``1 / fmr`` (``fmr * N < 1``), no false match at all may be
            allowed and the "threshold at FMR" is just "above the highest impostor score": a number that says
            nothing about the FMR asked for. ``True`` (default) raises ``ValueError``; ``False`` warns
            (:class:`EDCWarning`) and returns that threshold.

    Returns:
        The threshold (a pair matches when ``score >= threshold``).
    """
    scores = _as_1d(nonmated_scores, "nonmated_scores")
    fmr = _check_rate(fmr, "fmr")
    n = scores.size
    k = math.floor(fmr * n + _COUNT_EPS)
    if k < 1:
        # The pipeline's key is evaluation.strict (default false: this warning); name it, since the user sets that.
        message = (
            f"only {n} non-mated pairs for FMR {fmr:g}: at least {math.ceil(1 / fmr - _COUNT_EPS)} are needed for "
            f"one false match to be allowed; the threshold just sits above the highest impostor score, so figures "
            f"at this operating point say nothing about FMR {fmr:g}. Use more non-mated pairs or a larger FMR"
        )
        if strict:
            raise ValueError(
                f"{message}, or accept it with a warning: strict=False (in a run config, evaluation.strict=false)"
            )
        warnings.warn(
            f"{message}. Reported anyway because strict=False (in a run config, evaluation.strict=false, the "
            f"default); evaluation.strict=true makes this an error",
            EDCWarning,
            stacklevel=2,
        )
    if k >= n:  # fmr * N >= N cannot happen for fmr < 1, kept for safety
        return -math.inf
    # (k+1)-th highest = element n-1-k in ascending order; np.partition avoids a full sort on big impostor sets.
    pivot = np.partition(scores, n - 1 - k)[n - 1 - k]
    return float(np.nextafter(pivot, np.inf))


def threshold_at_starting_error(mated_scores: ArrayLike, starting_error: float) -> float:
    """The ``e``-quantile of the mated scores, so that the FNMR at zero discard is about ``e``.

    This is the rule of the reference implementation of Schlett et al. (``numpy.quantile`` with its default
    ``"linear"`` method, Hyndman-Fan type 7): sort the mated scores ascending ``x_0 <= ... <= x_{N-1}``, let
    ``h = (N - 1) e``, ``j = floor(h)``; then ``t = x_j + (h - j) (x_{j+1} - x_j)``.

    With distinct scores the achieved starting error ``EDC(0) = #{x < t} / N`` is ``(j + 1) / N`` when ``h`` is
    not an integer and ``j / N`` when it is, i.e. within ``1 / N`` of ``e`` (e.g. N = 100, e = 0.10: h = 9.9,
    t between x_9 and x_10, EDC(0) = 10/100). Ties among the mated scores can move it further; the achieved value
    is always reported as :attr:`EDCCurve.starting_error`.
    """
    scores = _as_1d(mated_scores, "mated_scores")
    e = _check_rate(starting_error, "starting_error")
    return float(np.quantile(scores, e, method="linear"))


@dataclass(frozen=True)
class OperatingPoint:
    """How the decision threshold is fixed: ``kind`` is ``"start_err"``, ``"fmr"`` or ``"threshold"``."""

    kind: str
    value: float
    label: str

    @property
    def description(self) -> str:
        """Words for plot titles and tables."""
        if self.kind == "start_err":
            return f"starting error {self.value:g}"
        if self.kind == "fmr":
            return f"FMR {self.value:g}"
        return f"fixed threshold {self.value:g}"


_OP_RE = re.compile(r"^\s*(start_err|fmr|threshold)\s*=\s*([-+0-9.eE]+|[-+]?inf)\s*$")


def parse_operating_point(spec: str | OperatingPoint) -> OperatingPoint:
    """Parse ``"start_err=0.10"``, ``"fmr=1e-3"`` or ``"threshold=0.42"`` (the spelling is kept as the label)."""
    if isinstance(spec, OperatingPoint):
        return spec
    match = _OP_RE.match(str(spec))
    if not match:
        raise ValueError(
            f"operating point {spec!r} not understood; use 'start_err=<e>' (e.g. start_err=0.10), "
            f"'fmr=<f>' (e.g. fmr=1e-3) or 'threshold=<t>'"
        )
    kind, value = match.group(1), float(match.group(2))
    if kind != "threshold":
        _check_rate(value, f"operating point {spec!r}")
    return OperatingPoint(kind=kind, value=value, label=str(spec).strip())


def threshold_for(
    op: str | OperatingPoint,
    mated_scores: ArrayLike,
    nonmated_scores: ArrayLike | None = None,
    *,
    strict: bool = True,
) -> float:
    """The threshold of an operating point on the full set (see :func:`parse_operating_point`)."""
    op = parse_operating_point(op)
    if op.kind == "start_err":
        return threshold_at_starting_error(mated_scores, op.value)
    if op.kind == "fmr":
        if nonmated_scores is None:
            raise ValueError(f"operating point '{op.label}' needs nonmated_scores")
        return threshold_at_fmr(nonmated_scores, op.value, strict=strict)
    return float(op.value)


# --------------------------------------------------------------------------------------------------------------
# The EDC
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EDCCurve:
    """An EDC as its step points (see the module docstring for the exact rules).

    Attributes:
        discard_fractions: ``d_k = c_k / n_pairs``, starting at 0, strictly increasing, all < 1.
        fnmr: ``EDC(d_k)``, the FNMR among the mated pairs left after discarding ``c_k`` of them.
        discard_counts: ``c_k``, mated pairs discarded at step k (all pairs with quality < ``quality_cutoffs[k]``).
        error_counts: false non-matches among the remaining pairs at step k.
        quality_cutoffs: ``q_k``, the k-th distinct pair quality (ascending); ``-inf`` for synthetic curves.
        threshold: the comparison threshold, fixed on the full set.
        n_pairs: number of mated pairs.
    """

    discard_fractions: np.ndarray
    fnmr: np.ndarray
    discard_counts: np.ndarray
    error_counts: np.ndarray
    quality_cutoffs: np.ndarray
    threshold: float
    n_pairs: int

    @property
    def starting_error(self) -> float:
        """``EDC(0)``: the FNMR with nothing discarded."""
        return float(self.fnmr[0])

    @property
    def n_errors(self) -> int:
        """False non-matches on the full set."""
        return int(self.error_counts[0])

    def value_at(self, d: ArrayLike) -> np.ndarray:
        """``EDC(d)`` of the right-continuous step function, for discard fractions ``d`` in ``[0, 1]``."""
        d = np.asarray(d, dtype=np.float64)
        if np.any((d < 0) | (d > 1)):
            raise ValueError("discard fractions must lie in [0, 1]")
        idx = np.searchsorted(self.discard_fractions, d, side="right") - 1
        return self.fnmr[idx]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` restores the curve exactly.

        Only the integer counts and the quality cutoffs are stored (the rest follows exactly:
        ``discard_fraction = discard_count / n_pairs``, ``fnmr = error_count / (n_pairs - discard_count)``), which
        keeps a report with thousands of steps per curve small. Non-finite cutoffs are written as ``"inf"`` /
        ``"-inf"`` strings, as strict JSON has no infinity.
        """
        return {
            "threshold": float(self.threshold),
            "n_pairs": int(self.n_pairs),
            "discard_count": self.discard_counts.astype(int).tolist(),
            "error_count": self.error_counts.astype(int).tolist(),
            "quality_cutoff": [float(q) if np.isfinite(q) else str(float(q)) for q in self.quality_cutoffs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EDCCurve:
        """Rebuild a curve written by :meth:`to_dict` (e.g. read back from a report JSON)."""
        try:
            n = int(data["n_pairs"])
            counts = np.asarray(data["discard_count"], dtype=np.int64)
            errors = np.asarray(data["error_count"], dtype=np.int64)
            cutoffs = np.asarray([float(q) for q in data["quality_cutoff"]], dtype=np.float64)
            threshold = float(data["threshold"])
        except KeyError as exc:
            raise ValueError(f"EDC curve record lacks key {exc}; expected the output of EDCCurve.to_dict()") from exc
        if not (counts.shape == errors.shape == cutoffs.shape) or counts.size == 0 or counts[0] != 0:
            raise ValueError("EDC curve record is inconsistent: counts/cutoffs differ in length or do not start at 0")
        return cls(
            discard_fractions=counts / n,
            fnmr=errors / (n - counts),
            discard_counts=counts,
            error_counts=errors,
            quality_cutoffs=cutoffs,
            threshold=threshold,
            n_pairs=n,
        )


def edc_curve(mated_scores: ArrayLike, mated_qualities: ArrayLike, threshold: float) -> EDCCurve:
    """The EDC of one quality measure on the mated pairs, at a threshold fixed beforehand on the full set.

    Args:
        mated_scores: similarity scores of the mated pairs.
        mated_qualities: pair qualities (already ``min(q_a, q_b)``, see :func:`pair_quality`); higher is better.
        threshold: from :func:`threshold_at_starting_error`, :func:`threshold_at_fmr` or given. It is NOT
            recomputed while discarding: the point is to see how the FNMR of a fixed system falls.

    Returns:
        The step points; tied qualities are discarded together, so there is one step per distinct quality.
    """
    scores = _as_1d(mated_scores, "mated_scores")
    quality = _as_1d(mated_qualities, "mated_qualities")
    if scores.shape != quality.shape:
        raise ValueError(
            f"mated_scores and mated_qualities must have one value per mated pair, got {scores.size} and {quality.size}"
        )
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    n = scores.size
    order = np.argsort(quality, kind="stable")
    q_sorted = quality[order]
    is_error = (scores[order] < threshold).astype(np.int64)
    # errors_from[i] = false non-matches among sorted positions i..n-1, i.e. left after discarding i pairs.
    errors_from = np.cumsum(is_error[::-1])[::-1]
    # Group starts: position 0 and every position where the quality changes. Discarding "everything below q_k"
    # means discarding exactly the first c_k sorted pairs, so tie groups can never be split.
    starts = np.concatenate(([0], np.flatnonzero(q_sorted[1:] != q_sorted[:-1]) + 1)).astype(np.int64)
    error_counts = errors_from[starts]
    return EDCCurve(
        discard_fractions=starts / n,
        fnmr=error_counts / (n - starts),
        discard_counts=starts,
        error_counts=error_counts,
        quality_cutoffs=q_sorted[starts],
        threshold=threshold,
        n_pairs=n,
    )


def oracle_edc(mated_scores: ArrayLike, threshold: float) -> EDCCurve:
    """The best achievable EDC: quality = the comparison score itself, so errors are discarded first.

    With distinct mated scores it is pointwise the lowest EDC any quality can produce:
    ``EDC(c / N) = max(0, (E - c) / (N - c))``. It lies above :func:`lower_bound_edc`.
    """
    scores = _as_1d(mated_scores, "mated_scores")
    return edc_curve(scores, scores, threshold)


def random_edc(mated_scores: ArrayLike, threshold: float) -> EDCCurve:
    """The expected EDC of a quality that carries no information: flat at ``EDC(0)``.

    If the discarded pairs are a uniformly random subset of size ``c``, the expected number of errors left is
    ``E (N - c) / N``, so the expected FNMR among the remaining ``N - c`` pairs is ``E / N`` for every ``c``.
    Its normalised pAUC is therefore exactly 1 (when ``E > 0``).
    """
    scores = _as_1d(mated_scores, "mated_scores")
    threshold = float(threshold)
    n_err = int((scores < threshold).sum())
    return EDCCurve(
        discard_fractions=np.zeros(1),
        fnmr=np.array([n_err / scores.size]),
        discard_counts=np.zeros(1, dtype=np.int64),
        error_counts=np.array([n_err], dtype=np.int64),
        quality_cutoffs=np.array([-np.inf]),
        threshold=threshold,
        n_pairs=scores.size,
    )


# --------------------------------------------------------------------------------------------------------------
# Areas
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PAUC:
    """A partial area under an EDC.

    Attributes:
        raw: ``integral_0^limit EDC(d) dd``.
        normalised: ``raw / (limit * EDC(0))``; 1.0 = no better than not discarding, lower is better; NaN when
            ``EDC(0) == 0`` (nothing to improve, the ratio is 0/0).
        limit: the largest discard fraction ``D``.
        starting_error: ``EDC(0)``.
    """

    raw: float
    normalised: float
    limit: float
    starting_error: float

    def to_dict(self) -> dict[str, float]:
        return {"raw": self.raw, "normalised": self.normalised}


def _normalise(raw: float, limit: float, edc0: float) -> float:
    if edc0 == 0.0:
        warnings.warn(
            "EDC(0) is 0 (no false non-matches at this threshold): the normalised pAUC is undefined (0/0) and "
            "is returned as NaN; choose an operating point with errors to discard (e.g. start_err=0.10)",
            EDCWarning,
            stacklevel=3,
        )
        return math.nan
    return raw / (limit * edc0)


def pauc(curve: EDCCurve, limit: float = 0.20) -> PAUC:
    """Partial area under the step EDC from 0 to ``limit``, raw and normalised by ``limit * EDC(0)``.

    Step ``k`` contributes ``EDC(d_k) * (min(d_{k+1}, D) - min(d_k, D))`` with ``d_K = 1`` after the last step
    (right-continuous steps: the value at ``d_k`` holds until the next discard point).
    """
    limit = _check_limit(limit)
    d = curve.discard_fractions
    right = np.append(d[1:], 1.0)
    widths = np.minimum(right, limit) - np.minimum(d, limit)
    raw = float(np.dot(curve.fnmr, widths))
    edc0 = curve.starting_error
    return PAUC(raw=raw, normalised=_normalise(raw, limit, edc0), limit=limit, starting_error=edc0)


def lower_bound_edc(starting_error: float, d: ArrayLike) -> np.ndarray:
    """The lower bound ``max(0, EDC(0) - d)`` on every EDC (the reference implementation's "theoretical best")."""
    return np.maximum(0.0, float(starting_error) - np.asarray(d, dtype=np.float64))


def lower_bound_pauc(starting_error: float, limit: float = 0.20) -> PAUC:
    """Area under :func:`lower_bound_edc` from 0 to ``limit`` (closed form).

    ``e D - D^2 / 2`` for ``D <= e`` (normalised ``1 - D / (2 e)``), else ``e^2 / 2`` (normalised ``e / (2 D)``);
    e.g. ``e = 0.10, D = 0.20``: 0.005 raw, 0.25 normalised.
    """
    limit = _check_limit(limit)
    e = float(starting_error)
    if not 0.0 <= e <= 1.0:
        raise ValueError(f"starting_error must be in [0, 1], got {e}")
    raw = e * limit - limit**2 / 2 if limit <= e else e**2 / 2
    return PAUC(raw=raw, normalised=_normalise(raw, limit, e), limit=limit, starting_error=e)


def random_quality_pauc(
    mated_scores: ArrayLike,
    threshold: float,
    limits: Sequence[float] = (0.20,),
    *,
    n_draws: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Spread of the normalised pAUC of *random* qualities (i.i.d. uniform, no ties) on these mated pairs.

    The expected value is 1 (:func:`random_edc`); the spread says how far below 1 a useless quality can land by
    chance on a set this size, i.e. how much of a method's gain could be noise.

    Returns:
        ``{limit_key: {"mean", "std", "p05", "p50", "p95"}}`` of the normalised pAUC over ``n_draws`` draws.
    """
    scores = _as_1d(mated_scores, "mated_scores")
    limits = [_check_limit(x) for x in limits]
    rng = np.random.default_rng(seed)
    values = np.empty((n_draws, len(limits)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EDCWarning)
        for i in range(n_draws):
            curve = edc_curve(scores, rng.random(scores.size), threshold)
            values[i] = [pauc(curve, lim).normalised for lim in limits]
    out: dict[str, dict[str, float]] = {}
    for j, lim in enumerate(limits):
        v = values[:, j]
        out[limit_key(lim)] = {
            "mean": float(np.mean(v)),
            "std": float(np.std(v, ddof=1)) if n_draws > 1 else math.nan,
            "p05": float(np.quantile(v, 0.05)),
            "p50": float(np.quantile(v, 0.50)),
            "p95": float(np.quantile(v, 0.95)),
        }
    return out


# --------------------------------------------------------------------------------------------------------------
# Legacy mode
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LegacyEDC:
    """Result of :func:`edc_curve_legacy` (NOT comparable with :class:`EDCCurve` / :func:`pauc`).

    Attributes:
        discard_fractions: fractions of ALL pairs (mated + non-mated) discarded.
        fnmr: FNMR of the remaining mated pairs at the threshold recomputed on the remaining non-mated pairs.
        thresholds: the recomputed threshold at each step.
        auc: trapezoidal area over ``discard_fractions`` (by default [0, 0.95]).
        fmr: the FMR the threshold is recomputed for.
    """

    discard_fractions: np.ndarray
    fnmr: np.ndarray
    thresholds: np.ndarray
    auc: float
    fmr: float


def edc_curve_legacy(
    mated_scores: ArrayLike,
    nonmated_scores: ArrayLike,
    mated_qualities: ArrayLike,
    nonmated_qualities: ArrayLike,
    *,
    fmr: float = 1e-3,
    discard_fractions: ArrayLike = LEGACY_DISCARD_FRACTIONS,
) -> LegacyEDC:
    """The older repositories' "ERC": threshold recomputed at every step. NOT comparable with :func:`pauc`.

    Documented so old tables can be reproduced, and so the difference is explicit:

    * all pairs, mated and non-mated, are sorted by pair quality together (stable sort: ties are broken by input
      order, mated pairs first) and the lowest ``floor(u * N_all)`` are dropped, for ``u`` in
      ``discard_fractions`` (default 0, 0.05, ..., 0.95);
    * the threshold is recomputed on the remaining non-mated pairs at ``fmr`` (:func:`threshold_at_fmr` with
      ``strict=False``: the old code silently went on with too few impostors; a warning is issued here);
    * the FNMR of the remaining mated pairs at that threshold is the curve (NaN when no mated pair is left);
    * the area is the trapezoidal rule over the discard fractions (``sklearn.metrics.auc`` in the old code).

    Because the threshold moves, a quality that ranks non-mated pairs with high scores low "improves" the FNMR
    without ordering any mated pair, and the integration range differs: a different quantity.
    """
    ms = _as_1d(mated_scores, "mated_scores")
    ns = _as_1d(nonmated_scores, "nonmated_scores")
    mq = _as_1d(mated_qualities, "mated_qualities")
    nq = _as_1d(nonmated_qualities, "nonmated_qualities")
    if ms.shape != mq.shape or ns.shape != nq.shape:
        raise ValueError("scores and qualities must have one value per pair (mated and non-mated separately)")
    fmr = _check_rate(fmr, "fmr")
    fractions = np.asarray(discard_fractions, dtype=np.float64).reshape(-1)
    if fractions.size == 0 or np.any((fractions < 0) | (fractions >= 1)) or np.any(np.diff(fractions) <= 0):
        raise ValueError("discard_fractions must be increasing values in [0, 1)")
    scores = np.concatenate([ms, ns])
    quality = np.concatenate([mq, nq])
    is_mated = np.concatenate([np.ones(ms.size, bool), np.zeros(ns.size, bool)])
    order = np.argsort(quality, kind="stable")
    n_all = scores.size
    fnmr = np.full(fractions.size, np.nan)
    thresholds = np.full(fractions.size, np.nan)
    warned = False
    for i, u in enumerate(fractions):
        keep = order[math.floor(u * n_all + _COUNT_EPS) :]
        kept_mated = scores[keep][is_mated[keep]]
        kept_nonmated = scores[keep][~is_mated[keep]]
        if kept_nonmated.size == 0:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EDCWarning)
            t = threshold_at_fmr(kept_nonmated, fmr, strict=False)
        if caught and not warned:
            warnings.warn(
                f"legacy EDC: from discard fraction {u:g} on, fewer than 1/FMR non-mated pairs remain; the "
                f"recomputed threshold is not meaningful there",
                EDCWarning,
                stacklevel=2,
            )
            warned = True
        thresholds[i] = t
        if kept_mated.size:
            fnmr[i] = float(np.mean(kept_mated < t))
    valid = ~np.isnan(fnmr)
    x, y = fractions[valid], fnmr[valid]
    auc = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2)) if x.size > 1 else 0.0
    return LegacyEDC(discard_fractions=fractions, fnmr=fnmr, thresholds=thresholds, auc=auc, fmr=fmr)


# --------------------------------------------------------------------------------------------------------------
# The FR model itself
# --------------------------------------------------------------------------------------------------------------


def fmr_at_threshold(nonmated_scores: ArrayLike, threshold: float) -> float:
    """``#{non-mated s >= t} / N``."""
    return float(np.mean(_as_1d(nonmated_scores, "nonmated_scores") >= float(threshold)))


def fnmr_at_threshold(mated_scores: ArrayLike, threshold: float) -> float:
    """``#{mated s < t} / N``."""
    return float(np.mean(_as_1d(mated_scores, "mated_scores") < float(threshold)))


def fnmr_at_fmr(
    mated_scores: ArrayLike,
    nonmated_scores: ArrayLike,
    fmrs: Iterable[float] = (1e-4, 1e-3, 1e-2),
    *,
    strict: bool = True,
) -> dict[float, float]:
    """FNMR of the FR model at the thresholds of :func:`threshold_at_fmr`, one per target FMR.

    With ``strict=False`` an FMR that the number of non-mated pairs cannot resolve gives NaN (and a warning)
    instead of an error, so a summary over several FMRs still shows the others.
    """
    mated = _as_1d(mated_scores, "mated_scores")
    nonmated = _as_1d(nonmated_scores, "nonmated_scores")
    out: dict[float, float] = {}
    for f in fmrs:
        f = float(f)
        if not strict and math.floor(_check_rate(f, "fmr") * nonmated.size + _COUNT_EPS) < 1:
            warnings.warn(
                f"FNMR at FMR {f:g} not computed: {nonmated.size} non-mated pairs are fewer than 1/FMR",
                EDCWarning,
                stacklevel=2,
            )
            out[f] = math.nan
            continue
        out[f] = fnmr_at_threshold(mated, threshold_at_fmr(nonmated, f, strict=strict))
    return out


@dataclass(frozen=True, eq=False)
class ROC:
    """The empirical ROC of the FR model (as FMR/FNMR pairs; plot FNMR against FMR for a DET view).

    ``fmr[i] = #{non-mated s >= thresholds[i]} / N_nm``, ``fnmr[i] = #{mated s < thresholds[i]} / N_m``; the
    thresholds are every distinct observed score plus one just above the maximum (FMR 0, FNMR 1), ascending, so
    ``fmr`` falls and ``fnmr`` rises along the arrays.
    """

    thresholds: np.ndarray
    fmr: np.ndarray
    fnmr: np.ndarray
    n_mated: int
    n_nonmated: int


def roc(mated_scores: ArrayLike, nonmated_scores: ArrayLike) -> ROC:
    """Empirical ROC at every distinct score (exact, no binning)."""
    mated = np.sort(_as_1d(mated_scores, "mated_scores"))
    nonmated = np.sort(_as_1d(nonmated_scores, "nonmated_scores"))
    thresholds = np.unique(np.concatenate([mated, nonmated]))
    thresholds = np.append(thresholds, np.nextafter(thresholds[-1], np.inf))
    fmr = 1.0 - np.searchsorted(nonmated, thresholds, side="left") / nonmated.size
    fnmr = np.searchsorted(mated, thresholds, side="left") / mated.size
    return ROC(thresholds=thresholds, fmr=fmr, fnmr=fnmr, n_mated=mated.size, n_nonmated=nonmated.size)


def equal_error_rate(curve: ROC) -> float:
    """Equal error rate of the empirical ROC.

    The empirical ROC is a staircase, so FMR == FNMR rarely holds exactly. Take the first threshold where
    FNMR >= FMR and the one before it, keep whichever has the smaller gap |FMR - FNMR|, and return the mean of its
    two rates.
    """
    i = int(np.argmax(curve.fnmr >= curve.fmr))
    candidates = [i] if i == 0 else [i - 1, i]
    gaps = [abs(curve.fmr[j] - curve.fnmr[j]) for j in candidates]
    j = candidates[int(np.argmin(gaps))]
    return float((curve.fmr[j] + curve.fnmr[j]) / 2)


def fr_summary(
    mated_scores: ArrayLike,
    nonmated_scores: ArrayLike,
    fmrs: Iterable[float] = (1e-4, 1e-3, 1e-2),
    *,
    n_roc_points: int = 200,
) -> dict[str, Any]:
    """JSON-ready summary of the FR model: counts, FNMR at each FMR, EER, and a down-sampled DET curve.

    The DET curve keeps the ROC points at (at most) ``n_roc_points`` log-spaced FMRs from ``1 / N_nm`` to 1, FMR
    increasing (the full ROC has one point per distinct score, too many for a report).
    """
    curve = roc(mated_scores, nonmated_scores)
    fmrs = [float(f) for f in fmrs]
    at = fnmr_at_fmr(mated_scores, nonmated_scores, fmrs, strict=False)
    grid = np.logspace(np.log10(1.0 / curve.n_nonmated), 0.0, n_roc_points)
    # For each target FMR, the first (smallest) threshold with fmr <= target; fmr is non-increasing.
    idx = np.searchsorted(-curve.fmr, -grid, side="left")
    idx = np.unique(np.clip(idx, 0, curve.fmr.size - 1))  # ascending thresholds; drop repeated points
    idx = idx[::-1]  # so the DET arrays run with FMR increasing
    return {
        "n_mated": curve.n_mated,
        "n_nonmated": curve.n_nonmated,
        "fnmr_at_fmr": {limit_key(f): at[f] for f in fmrs},
        "eer": equal_error_rate(curve),
        "det": {"fmr": curve.fmr[idx].tolist(), "fnmr": curve.fnmr[idx].tolist()},
    }


# --------------------------------------------------------------------------------------------------------------
# Everything for one quality measure
# --------------------------------------------------------------------------------------------------------------


def evaluate_quality(
    mated_scores: ArrayLike,
    nonmated_scores: ArrayLike | None,
    mated_q_a: ArrayLike,
    mated_q_b: ArrayLike,
    *,
    operating_points: Sequence[str | OperatingPoint] = ("start_err=0.10", "fmr=1e-3"),
    limits: Sequence[float] = (0.20, 0.30),
    strict: bool = True,
    include_curve: bool = True,
    random_draws: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Every EDC figure of one quality measure, in the JSON layout the reports use.

    Args:
        mated_scores: FR similarity of each mated pair (from properly aligned images in every condition).
        nonmated_scores: FR similarity of the non-mated pairs; needed for ``fmr=`` operating points (and to report
            the FMR at every threshold); may be ``None`` when only ``start_err=``/``threshold=`` points are used.
        mated_q_a, mated_q_b: quality of the two images of each mated pair (pair quality = their minimum).
        operating_points: e.g. ``("start_err=0.10", "fmr=1e-3")``.
        limits: pAUC limits ``D``.
        strict: passed to :func:`threshold_at_fmr` (raise, or warn, when there are too few non-mated pairs).
        include_curve: store the EDC step points (needed for plots).
        random_draws: if > 0, add the spread of random qualities' normalised pAUC (:func:`random_quality_pauc`).
        seed: seed of those random draws.

    Returns:
        ``{"n_mated", "n_nonmated", "operating_points": {label: {"kind", "value", "threshold", "edc0",
        "n_errors", "fmr" (NaN without non-mated scores), "pauc": {limit: {"raw", "normalised"}},
        "lower_bound": {...}, "oracle": {...}, "random": {...}, ["random_draws": {...}], ["curve": {...}]}}}``
        with limits keyed by :func:`limit_key` (``"0.2"``).
    """
    mated = _as_1d(mated_scores, "mated_scores")
    nonmated = None if nonmated_scores is None else _as_1d(nonmated_scores, "nonmated_scores")
    quality = pair_quality(mated_q_a, mated_q_b)
    if quality.shape != mated.shape:
        raise ValueError(
            f"mated_q_a/mated_q_b have {quality.size} values but there are {mated.size} mated scores; "
            f"one quality per image of each mated pair is needed"
        )
    limits = [_check_limit(x) for x in limits]
    result: dict[str, Any] = {
        "n_mated": int(mated.size),
        "n_nonmated": None if nonmated is None else int(nonmated.size),
        "operating_points": {},
    }
    for spec in operating_points:
        op = parse_operating_point(spec)
        threshold = threshold_for(op, mated, nonmated, strict=strict)
        curve = edc_curve(mated, quality, threshold)
        best = oracle_edc(mated, threshold)
        flat = random_edc(mated, threshold)
        entry: dict[str, Any] = {
            "kind": op.kind,
            "value": op.value,
            "threshold": threshold,
            "edc0": curve.starting_error,
            "n_errors": curve.n_errors,
            "fmr": math.nan if nonmated is None else fmr_at_threshold(nonmated, threshold),
        }
        with warnings.catch_warnings():
            # one warning per operating point is enough when EDC(0) == 0
            warnings.simplefilter("once", EDCWarning)
            entry["pauc"] = {limit_key(lim): pauc(curve, lim).to_dict() for lim in limits}
            entry["lower_bound"] = {
                limit_key(lim): lower_bound_pauc(curve.starting_error, lim).to_dict() for lim in limits
            }
            entry["oracle"] = {limit_key(lim): pauc(best, lim).to_dict() for lim in limits}
            entry["random"] = {limit_key(lim): pauc(flat, lim).to_dict() for lim in limits}
        if random_draws > 0:
            entry["random_draws"] = random_quality_pauc(mated, threshold, limits, n_draws=random_draws, seed=seed)
        if include_curve:
            entry["curve"] = curve.to_dict()
        result["operating_points"][op.label] = entry
    return result
