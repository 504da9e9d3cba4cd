"""EDC, pAUC, thresholds, ROC and report writers, checked against hand computations and properties."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aikd.evaluation import (
    EDCCurve,
    EDCWarning,
    edc_curve,
    edc_curve_legacy,
    equal_error_rate,
    evaluate_quality,
    fnmr_at_fmr,
    fr_summary,
    lower_bound_edc,
    lower_bound_pauc,
    markdown_table,
    oracle_edc,
    pair_quality,
    parse_operating_point,
    pauc,
    random_edc,
    random_quality_pauc,
    read_results_json,
    roc,
    threshold_at_fmr,
    threshold_at_starting_error,
    write_report,
    write_results_json,
)
from aikd.evaluation.report import build_report, plot_det, plot_edc_condition

# --------------------------------------------------------------------------------------------------------------
# A hand-made example with tied qualities
# --------------------------------------------------------------------------------------------------------------
# Threshold 0.5: the errors (score < 0.5) are pairs 0, 1, 3 and 9, so E = 4 of N = 10 and EDC(0) = 0.4.
#   pair:     0    1    2    3    4    5    6     7    8     9
SCORES = [0.1, 0.2, 0.9, 0.3, 0.8, 0.7, 0.95, 0.6, 0.85, 0.4]
QUALITY = [1, 2, 2, 3, 3, 3, 4, 5, 5, 6]
# Steps, one per distinct quality (ties leave together):
#   q >= 1: discard 0              -> 4 errors / 10 = 0.4      at d = 0.0
#   q >= 2: discard {0}        (1) -> 3 errors / 9  = 1/3      at d = 0.1
#   q >= 3: discard {0,1,2}    (3) -> 2 errors / 7  = 2/7      at d = 0.3   (pair 1 and 2 tie: no step at 0.2)
#   q >= 4: discard up to 5    (6) -> 1 error  / 4  = 1/4      at d = 0.6
#   q >= 5: discard up to 6    (7) -> 1 error  / 3  = 1/3      at d = 0.7
#   q >= 6: discard up to 8    (9) -> 1 error  / 1  = 1        at d = 0.9
HAND_D = [0.0, 0.1, 0.3, 0.6, 0.7, 0.9]
HAND_FNMR = [0.4, 1 / 3, 2 / 7, 1 / 4, 1 / 3, 1.0]


def test_edc_hand_example_with_ties():
    curve = edc_curve(SCORES, QUALITY, threshold=0.5)
    np.testing.assert_allclose(curve.discard_fractions, HAND_D)
    np.testing.assert_allclose(curve.fnmr, HAND_FNMR)
    assert curve.discard_counts.tolist() == [0, 1, 3, 6, 7, 9]
    assert curve.error_counts.tolist() == [4, 3, 2, 1, 1, 1]
    assert curve.quality_cutoffs.tolist() == [1, 2, 3, 4, 5, 6]
    assert curve.starting_error == pytest.approx(0.4)
    assert curve.n_errors == 4 and curve.n_pairs == 10 and curve.threshold == 0.5
    # The tie group {1, 2} cannot be split: no step at d = 0.2, the value at 0.2 is still that of d = 0.1.
    assert 0.2 not in curve.discard_fractions.tolist()
    assert curve.value_at(0.2) == pytest.approx(1 / 3)
    assert curve.value_at([0.0, 0.05, 0.1, 0.29, 0.3, 0.95, 1.0]).tolist() == pytest.approx(
        [0.4, 0.4, 1 / 3, 1 / 3, 2 / 7, 1.0, 1.0]
    )


def test_pauc_hand_example():
    curve = edc_curve(SCORES, QUALITY, threshold=0.5)
    # D = 0.2: 0.4 on [0, 0.1) + 1/3 on [0.1, 0.2) = 0.04 + 0.0333... = 0.07333...
    p = pauc(curve, 0.2)
    assert p.raw == pytest.approx(0.04 + 0.1 / 3)
    assert p.normalised == pytest.approx((0.04 + 0.1 / 3) / (0.2 * 0.4))  # 0.91666...
    assert p.starting_error == pytest.approx(0.4) and p.limit == 0.2
    # D = 0.3: 0.04 + 1/3 * 0.2 = 0.10666..., normalised by 0.3 * 0.4 = 0.12 -> 0.888...
    assert pauc(curve, 0.3).raw == pytest.approx(0.04 + 0.2 / 3)
    assert pauc(curve, 0.3).normalised == pytest.approx((0.04 + 0.2 / 3) / 0.12)
    # D = 0.5 adds 2/7 on [0.3, 0.5)
    assert pauc(curve, 0.5).raw == pytest.approx(0.04 + 0.2 / 3 + 0.2 * 2 / 7)
    # D = 1: every step, the last (value 1) holding on [0.9, 1]
    full = 0.4 * 0.1 + (1 / 3) * 0.2 + (2 / 7) * 0.3 + 0.25 * 0.1 + (1 / 3) * 0.2 + 1.0 * 0.1
    assert pauc(curve, 1.0).raw == pytest.approx(full)


def test_score_equal_to_threshold_is_a_match():
    # Accept when score >= threshold: the mated pair scoring exactly 0.5 is NOT a false non-match.
    curve = edc_curve([0.5, 0.4, 0.9, 0.6], [4, 3, 2, 1], threshold=0.5)
    assert curve.n_errors == 1 and curve.starting_error == pytest.approx(0.25)
    # q >= 2 drops the 0.6 pair (no error) -> 1/3; q >= 3 drops 0.9 -> 1/2; q >= 4 drops 0.4 (the error) -> 0/1
    assert curve.fnmr.tolist() == pytest.approx([0.25, 1 / 3, 0.5, 0.0])


def test_all_equal_qualities_is_flat_until_everything_goes():
    scores = [0.1, 0.7, 0.3, 0.9, 0.8]  # threshold 0.5 -> errors 0.1, 0.3 -> EDC(0) = 2/5
    curve = edc_curve(scores, [7.0] * 5, threshold=0.5)
    assert curve.discard_fractions.tolist() == [0.0]
    assert curve.fnmr.tolist() == [0.4]
    assert curve.value_at(0.99) == pytest.approx(0.4)
    p = pauc(curve, 0.2)
    assert p.raw == pytest.approx(0.2 * 0.4)  # = 0.08
    assert p.normalised == pytest.approx(1.0)


def test_no_mated_errors_gives_nan_normalised_with_warning():
    curve = edc_curve([0.6, 0.7, 0.8], [1, 2, 3], threshold=0.5)
    assert curve.starting_error == 0.0 and curve.fnmr.tolist() == [0.0, 0.0, 0.0]
    with pytest.warns(EDCWarning, match="EDC\\(0\\) is 0"):
        p = pauc(curve, 0.2)
    assert p.raw == 0.0
    assert math.isnan(p.normalised)


def test_random_edc_is_flat_at_starting_error():
    flat = random_edc(SCORES, 0.5)
    assert flat.discard_fractions.tolist() == [0.0] and flat.fnmr.tolist() == [0.4]
    assert pauc(flat, 0.2).normalised == pytest.approx(1.0)
    assert pauc(flat, 0.3).raw == pytest.approx(0.3 * 0.4)


def test_lower_bound_hand_values():
    # e = 0.10, D = 0.20: area of the triangle under 0.1 - d on [0, 0.1] = 0.1 * 0.1 / 2 = 0.005;
    # normalised by D * e = 0.02 -> 0.25 (docs/methods.md section 2).
    lb = lower_bound_pauc(0.10, 0.20)
    assert lb.raw == pytest.approx(0.005)
    assert lb.normalised == pytest.approx(0.25)
    # D <= e: trapezoid e*D - D^2/2 = 0.4 * 0.2 - 0.02 = 0.06, normalised 0.06 / 0.08 = 0.75 = 1 - 0.2 / 0.8
    assert lower_bound_pauc(0.4, 0.2).raw == pytest.approx(0.06)
    assert lower_bound_pauc(0.4, 0.2).normalised == pytest.approx(0.75)
    assert lower_bound_edc(0.1, [0.0, 0.05, 0.1, 0.5]).tolist() == pytest.approx([0.1, 0.05, 0.0, 0.0])


def test_input_errors_are_clear():
    with pytest.raises(ValueError, match="mated_qualities contains 1 NaN"):
        edc_curve([0.1, 0.2], [1.0, float("nan")], 0.5)
    with pytest.raises(ValueError, match="one value per mated pair"):
        edc_curve([0.1, 0.2], [1.0], 0.5)
    with pytest.raises(ValueError, match="empty"):
        edc_curve([], [], 0.5)
    with pytest.raises(ValueError, match="limit"):
        pauc(edc_curve(SCORES, QUALITY, 0.5), 0.0)
    with pytest.raises(ValueError, match="same length"):
        pair_quality([1, 2], [1])
    with pytest.raises(ValueError, match="1-D"):
        edc_curve(np.zeros((2, 2)), np.zeros((2, 2)), 0.5)


def test_pair_quality_is_elementwise_min():
    assert pair_quality([1.0, 5.0, -2.0], [3.0, 4.0, -1.0]).tolist() == [1.0, 4.0, -2.0]


# --------------------------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------------------------


def test_threshold_at_fmr_hand():
    nonmated = [0.1, 0.5, 0.3, 0.9, 0.7]
    # FMR 0.2 of 5 pairs: k = 1 false match allowed -> just above the 2nd highest score, 0.7.
    t = threshold_at_fmr(nonmated, 0.2)
    assert t > 0.7 and t == np.nextafter(0.7, np.inf)
    assert np.mean(np.asarray(nonmated) >= t) == pytest.approx(0.2)
    assert np.mean(np.asarray(nonmated) >= 0.7) == pytest.approx(0.4)  # 0.7 itself would give FMR 0.4
    # FMR 0.4: k = 2 -> just above the 3rd highest, 0.5.
    assert threshold_at_fmr(nonmated, 0.4) == np.nextafter(0.5, np.inf)
    # Ties at the cut are all rejected: achieved FMR 0 <= 0.2.
    tied = [0.1, 0.9, 0.9, 0.3, 0.2]
    t = threshold_at_fmr(tied, 0.2)
    assert t > 0.9 and np.mean(np.asarray(tied) >= t) == 0.0


def test_threshold_at_fmr_counts_despite_float_rounding():
    # 0.29 * 100 = 28.999999999999996 in float64; 29 false matches must still be allowed.
    scores = np.arange(100.0)
    t = threshold_at_fmr(scores, 0.29)
    assert t == np.nextafter(70.0, np.inf)  # 30th highest is 70
    assert np.mean(scores >= t) == pytest.approx(0.29)


def test_threshold_at_fmr_too_few_nonmated_pairs():
    rng = np.random.default_rng(0)
    few = rng.normal(size=999)
    with pytest.raises(ValueError, match="999 non-mated pairs for FMR 0.001.*1000 are needed"):
        threshold_at_fmr(few, 1e-3)
    with pytest.warns(EDCWarning, match="999 non-mated"):
        t = threshold_at_fmr(few, 1e-3, strict=False)
    assert t == np.nextafter(few.max(), np.inf)
    # 1000 pairs: one false match allowed -> just above the 2nd highest.
    enough = rng.normal(size=1000)
    assert threshold_at_fmr(enough, 1e-3) == np.nextafter(np.sort(enough)[-2], np.inf)


def test_threshold_at_starting_error_hand():
    mated = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 9.0, 8.0, 7.0, 6.0]  # sorted: 1..10
    # e = 0.10: h = (10 - 1) * 0.1 = 0.9 -> t = x_0 + 0.9 (x_1 - x_0) = 1.9; one score (1) below -> EDC(0) = 0.1
    assert threshold_at_starting_error(mated, 0.10) == pytest.approx(1.9)
    assert edc_curve(mated, mated, 1.9).starting_error == pytest.approx(0.1)
    # e = 0.25: h = 2.25 -> t = 3 + 0.25 * (4 - 3) = 3.25; scores 1, 2, 3 below -> 0.3 (within 1/N of e)
    assert threshold_at_starting_error(mated, 0.25) == pytest.approx(3.25)
    with pytest.raises(ValueError, match="starting_error"):
        threshold_at_starting_error(mated, 0.0)


def test_parse_operating_point():
    op = parse_operating_point("start_err=0.10")
    assert (op.kind, op.value, op.label) == ("start_err", 0.1, "start_err=0.10")
    assert parse_operating_point("fmr=1e-3").value == 1e-3
    assert parse_operating_point("threshold=-0.25").value == -0.25
    for bad in ("fmr=2", "start_err=0", "eer=0.1", "fmr"):
        with pytest.raises(ValueError):
            parse_operating_point(bad)


# --------------------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------------------


def _brute_force_edc(scores, quality, threshold):
    """Independent, slow EDC: for each distinct quality u, keep q >= u."""
    scores, quality = np.asarray(scores, float), np.asarray(quality, float)
    d, f = [], []
    for u in np.unique(quality):
        keep = quality >= u
        d.append(1.0 - keep.mean())
        f.append(np.mean(scores[keep] < threshold))
    return np.array(d), np.array(f)


def _brute_force_pauc(curve: EDCCurve, limit: float) -> float:
    """Every step point is a multiple of 1/N, so integrate cell by cell over [j/N, (j+1)/N)."""
    n = curve.n_pairs
    total = 0.0
    for j in range(n):
        lo, hi = j / n, min((j + 1) / n, limit)
        if hi <= lo:
            break
        total += float(curve.value_at(lo)) * (hi - lo)
    return total


pairs_strategy = st.integers(min_value=2, max_value=40).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-1, 1, allow_nan=False), min_size=n, max_size=n),
        st.lists(st.integers(0, 8), min_size=n, max_size=n),  # small range -> many ties
    )
)


@settings(max_examples=80, deadline=None)
@given(pairs_strategy, st.floats(-0.5, 0.5), st.sampled_from([0.1, 0.2, 0.3, 0.55, 1.0]))
def test_edc_and_pauc_match_brute_force(data, threshold, limit):
    scores, quality = data
    curve = edc_curve(scores, quality, threshold)
    d, f = _brute_force_edc(scores, quality, threshold)
    np.testing.assert_allclose(curve.discard_fractions, d, atol=1e-12)
    np.testing.assert_allclose(curve.fnmr, f, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EDCWarning)  # EDC(0) = 0 draws: normalised is NaN, raw is still checked
        raw = pauc(curve, limit).raw
    assert raw == pytest.approx(_brute_force_pauc(curve, limit), abs=1e-12)


TRANSFORMS = {
    "affine": lambda q: 3.0 * q - 7.0,
    "exp": lambda q: np.exp(q / 3.0),
    "cubic": lambda q: q**3 + q,
    "arctan": lambda q: np.arctan(q / 5.0),
}


@settings(max_examples=60, deadline=None)
@given(pairs_strategy, st.floats(-0.5, 0.5), st.sampled_from(sorted(TRANSFORMS)))
def test_invariance_to_strictly_increasing_quality_transform(data, threshold, name):
    scores, quality = data
    q = np.asarray(quality, float)
    tq = TRANSFORMS[name](q)
    u = np.unique(q)
    assume(np.all(np.diff(TRANSFORMS[name](u)) > 0))  # strictly increasing on these values, in floating point
    a, b = edc_curve(scores, q, threshold), edc_curve(scores, tq, threshold)
    np.testing.assert_array_equal(a.discard_fractions, b.discard_fractions)
    np.testing.assert_array_equal(a.fnmr, b.fnmr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EDCWarning)
        for limit in (0.2, 0.3):
            pa, pb = pauc(a, limit), pauc(b, limit)
            assert pa.raw == pb.raw
            assert pa.normalised == pb.normalised or (math.isnan(pa.normalised) and math.isnan(pb.normalised))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=2, max_value=40).flatmap(
        lambda n: st.tuples(
            st.lists(st.floats(-1, 1, allow_nan=False), min_size=n, max_size=n, unique=True),
            st.lists(st.floats(-5, 5, allow_nan=False), min_size=n, max_size=n),
        )
    ),
    st.floats(-0.9, 0.9),
)
def test_perfect_quality_is_pointwise_minimal(data, threshold):
    scores, quality = data
    scores = np.asarray(scores)
    n = scores.size
    best = oracle_edc(scores, threshold)
    other = edc_curve(scores, quality, threshold)
    # No ties in the scores: one step per pair, and FNMR after discarding the c lowest = max(0, (E - c) / (N - c)).
    n_err = int((scores < threshold).sum())
    c = np.arange(n)
    np.testing.assert_allclose(best.fnmr, np.maximum(0, n_err - c) / (n - c))
    grid = np.union1d(np.linspace(0, 1, 101), np.concatenate([best.discard_fractions, other.discard_fractions]))
    assert np.all(best.value_at(grid) <= other.value_at(grid) + 1e-12)
    # ... and never below the lower bound max(0, EDC(0) - d)
    assert np.all(best.value_at(grid) >= lower_bound_edc(best.starting_error, grid) - 1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EDCWarning)  # EDC(0) = 0 draws
        for limit in (0.2, 0.3, 1.0):
            assert pauc(best, limit).raw <= pauc(other, limit).raw + 1e-12
            assert pauc(best, limit).raw >= lower_bound_pauc(best.starting_error, limit).raw - 1e-12


def test_oracle_vs_lower_bound_large_n():
    # The lower bound max(0, e - d) is not attained: the best step curve (E - c) / (N - c) tends to
    # (e - d) / (1 - d), whose normalised area for D >= e is (e + (1 - e) ln(1 - e)) / (D e):
    # 0.2588 at e = 0.1, D = 0.2.
    n = 100_000
    scores = np.arange(n, dtype=float)
    threshold = threshold_at_starting_error(scores, 0.1)
    best = oracle_edc(scores, threshold)
    e = best.starting_error
    assert e == pytest.approx(0.1, abs=1e-4)
    expected = (e + (1 - e) * math.log(1 - e)) / (0.2 * e)
    assert pauc(best, 0.2).normalised == pytest.approx(expected, abs=1e-3)
    assert lower_bound_pauc(e, 0.2).normalised == pytest.approx(0.25, abs=1e-3)


def test_random_quality_averages_to_flat_line():
    rng = np.random.default_rng(1)
    n = 200
    scores = rng.normal(size=n)
    threshold = np.sort(scores)[40]  # 40 errors: EDC(0) = 0.2
    grid = np.linspace(0, 0.5, 26)
    draws = 400
    values = np.empty((draws, grid.size))
    norms = np.empty(draws)
    for i in range(draws):
        curve = edc_curve(scores, rng.random(n), threshold)
        values[i] = curve.value_at(grid)
        norms[i] = pauc(curve, 0.2).normalised
    # The expected FNMR after discarding any random subset is E / N = 0.2 (sd of each mean here ~0.0015).
    np.testing.assert_allclose(values.mean(axis=0), 0.2, atol=0.01)
    assert norms.mean() == pytest.approx(1.0, abs=0.02)
    spread = random_quality_pauc(scores, threshold, (0.2,), n_draws=100, seed=3)["0.2"]
    assert spread["mean"] == pytest.approx(1.0, abs=0.03)
    assert spread["p05"] < 1.0 < spread["p95"]


@settings(max_examples=100, deadline=None)
@given(st.floats(0.01, 1.0), st.floats(0.01, 1.0))
def test_lower_bound_normalised_formula(e, frac):
    limit = e * frac  # D <= e
    # Independent numeric integral: trapezoid on a grid containing the kink at e (exact for piecewise-linear).
    grid = np.union1d(np.linspace(0, limit, 1001), [min(e, limit)])
    y = lower_bound_edc(e, grid)
    numeric = float(np.sum((grid[1:] - grid[:-1]) * (y[1:] + y[:-1]) / 2))
    lb = lower_bound_pauc(e, limit)
    assert lb.raw == pytest.approx(numeric, rel=1e-9, abs=1e-15)
    assert lb.normalised == pytest.approx(1 - limit / (2 * e), rel=1e-9)


# --------------------------------------------------------------------------------------------------------------
# Legacy mode
# --------------------------------------------------------------------------------------------------------------


def test_legacy_mode_differs_from_standard():
    # Mated pairs: all the same quality, so the standard EDC cannot improve (normalised pAUC exactly 1).
    # Non-mated: 50 of 1000 score very high (0.95..0.99) and have the LOWEST quality. The legacy mode discards
    # them first, recomputes the threshold on the rest, and the "FNMR" collapses without a single mated pair
    # being ordered: the documented reason the two are not comparable.
    mated = np.linspace(0.0, 1.0, 100)
    mated_q = np.full(100, 2.0)
    nonmated = np.concatenate([np.linspace(0.95, 0.99, 50), np.linspace(-1.0, 0.3, 950)])
    nonmated_q = np.concatenate([np.zeros(50), np.ones(950)])

    t0 = threshold_at_fmr(nonmated, 1e-2)  # k = 10: just above the 11th highest, inside the 0.95..0.99 block
    standard = edc_curve(mated, mated_q, t0)
    assert pauc(standard, 0.2).normalised == pytest.approx(1.0)

    with pytest.warns(EDCWarning, match="fewer than 1/FMR non-mated pairs remain"):
        legacy = edc_curve_legacy(mated, nonmated, mated_q, nonmated_q, fmr=1e-2)
    assert legacy.discard_fractions.tolist() == pytest.approx([0.05 * i for i in range(20)])
    # At zero discard both use the same threshold and agree.
    assert legacy.thresholds[0] == t0
    assert legacy.fnmr[0] == pytest.approx(standard.starting_error)
    # At 5% of ALL pairs (floor(0.05 * 1100) = 55 pairs: the 50 high impostors + 5 more) the threshold drops to
    # just above the 11th highest remaining impostor (~0.29), and the mated FNMR with it.
    assert legacy.thresholds[1] < 0.31
    assert legacy.fnmr[1] < legacy.fnmr[0] - 0.5
    # Once the mated pairs (highest quality) are all that is left, no threshold can be recomputed: NaN.
    # floor(0.95 * 1100) = 1045 discarded leaves exactly the 55 highest-quality pairs, all mated.
    assert math.isnan(legacy.fnmr[-1]) and not np.isnan(legacy.fnmr[:-1]).any()
    # Area: trapezoids over the defined points (0..0.90 here), computed by hand from the curve.
    x, y = legacy.discard_fractions, legacy.fnmr
    assert legacy.auc == pytest.approx(sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(18)))
    assert legacy.auc / 0.95 < 0.5 * standard.starting_error


# --------------------------------------------------------------------------------------------------------------
# FR model: ROC, FNMR at FMR
# --------------------------------------------------------------------------------------------------------------


def test_roc_and_fnmr_at_fmr_hand():
    mated = [0.2, 0.4, 0.6, 0.8]
    nonmated = [0.1, 0.3, 0.5, 0.7]
    curve = roc(mated, nonmated)
    # t:     0.1   0.2   0.3   0.4   0.5   0.6   0.7   0.8   >0.8
    # FMR:   4/4   3/4   3/4   2/4   2/4   1/4   1/4   0     0      (non-mated >= t)
    # FNMR:  0     0     1/4   1/4   2/4   2/4   3/4   3/4   1      (mated < t)
    assert curve.fmr.tolist() == pytest.approx([1, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0, 0])
    assert curve.fnmr.tolist() == pytest.approx([0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1])
    assert equal_error_rate(curve) == pytest.approx(0.5)
    # FMR 0.25: k = 1 -> t just above 0.5 -> mated 0.2, 0.4 rejected -> 0.5
    # FMR 0.5:  k = 2 -> t just above 0.3 -> mated 0.2 rejected -> 0.25
    assert fnmr_at_fmr(mated, nonmated, (0.25, 0.5)) == pytest.approx({0.25: 0.5, 0.5: 0.25})
    with pytest.raises(ValueError, match="non-mated pairs for FMR"):
        fnmr_at_fmr(mated, nonmated, (0.1,))
    with pytest.warns(EDCWarning):
        lenient = fnmr_at_fmr(mated, nonmated, (0.1, 0.25), strict=False)
    assert math.isnan(lenient[0.1]) and lenient[0.25] == pytest.approx(0.5)


def test_fr_summary_consistent_with_roc():
    rng = np.random.default_rng(2)
    mated, nonmated = rng.normal(2, 1, 500), rng.normal(0, 1, 5000)
    summary = fr_summary(mated, nonmated, (1e-3, 1e-2))
    assert summary["n_mated"] == 500 and summary["n_nonmated"] == 5000
    assert summary["fnmr_at_fmr"]["0.001"] == pytest.approx(fnmr_at_fmr(mated, nonmated, (1e-3,))[1e-3])
    fmr, fnmr = np.asarray(summary["det"]["fmr"]), np.asarray(summary["det"]["fnmr"])
    assert np.all(np.diff(fmr) >= 0) and np.all(np.diff(fnmr) <= 0)  # more FMR allowed -> fewer rejections
    assert 0.1 < summary["eer"] < 0.25  # two unit normals 2 apart: EER = Phi(-1) = 0.159
    json.dumps(summary, allow_nan=False)


# --------------------------------------------------------------------------------------------------------------
# evaluate_quality
# --------------------------------------------------------------------------------------------------------------


def _synthetic(seed: int = 0, n: int = 400, n_non: int = 4000):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n)
    mated = 0.5 + 0.15 * latent + rng.normal(0, 0.08, n)
    nonmated = rng.normal(0.0, 0.1, n_non)
    qa, qb = latent + rng.normal(0, 0.5, n), latent + rng.normal(0, 0.5, n)
    return mated, nonmated, qa, qb


def test_evaluate_quality_figures():
    mated, nonmated, qa, qb = _synthetic()
    out = evaluate_quality(mated, nonmated, qa, qb, operating_points=("start_err=0.10", "fmr=1e-3"))
    assert out["n_mated"] == 400 and out["n_nonmated"] == 4000
    assert list(out["operating_points"]) == ["start_err=0.10", "fmr=1e-3"]
    se = out["operating_points"]["start_err=0.10"]
    t = threshold_at_starting_error(mated, 0.1)
    curve = edc_curve(mated, np.minimum(qa, qb), t)
    assert se["threshold"] == t and se["edc0"] == curve.starting_error and se["n_errors"] == curve.n_errors
    for limit, key in ((0.2, "0.2"), (0.3, "0.3")):
        assert se["pauc"][key]["raw"] == pauc(curve, limit).raw
        assert se["pauc"][key]["normalised"] == pauc(curve, limit).normalised
        assert se["random"][key]["normalised"] == pytest.approx(1.0)
        assert se["lower_bound"][key]["raw"] <= se["oracle"][key]["raw"] <= se["pauc"][key]["raw"]
    assert 0.3 < se["pauc"]["0.2"]["normalised"] < 0.95  # an informative quality beats random
    fm = out["operating_points"]["fmr=1e-3"]
    assert fm["threshold"] == threshold_at_fmr(nonmated, 1e-3)
    assert fm["fmr"] <= 1e-3
    restored = EDCCurve.from_dict(se["curve"])
    np.testing.assert_array_equal(restored.fnmr, curve.fnmr)
    np.testing.assert_array_equal(restored.discard_fractions, curve.discard_fractions)
    json.dumps(out, allow_nan=False)


def test_evaluate_quality_errors():
    mated, nonmated, qa, qb = _synthetic(n_non=500)
    with pytest.raises(ValueError, match="500 non-mated pairs for FMR 0.001"):
        evaluate_quality(mated, nonmated, qa, qb, operating_points=("fmr=1e-3",))
    with pytest.warns(EDCWarning):
        evaluate_quality(mated, nonmated, qa, qb, operating_points=("fmr=1e-3",), strict=False)
    with pytest.raises(ValueError, match="needs nonmated_scores"):
        evaluate_quality(mated, None, qa, qb, operating_points=("fmr=1e-2",))
    with pytest.raises(ValueError, match="one quality per image"):
        evaluate_quality(mated, nonmated, qa[:-1], qb[:-1])
    out = evaluate_quality(mated, None, qa, qb, operating_points=("start_err=0.05",), include_curve=False)
    assert "curve" not in out["operating_points"]["start_err=0.05"]


# --------------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------------


def _results():
    mated, nonmated, qa, qb = _synthetic(seed=4)
    rng = np.random.default_rng(5)
    results = {}
    for condition, noise in (("aligned", 0.0), ("misaligned +-3px", 1.0)):
        results[condition] = {
            "CR-FIQA": evaluate_quality(mated, nonmated, qa + noise * rng.normal(size=400), qb, limits=(0.2, 0.3)),
            "AI-KD|CR": evaluate_quality(mated, nonmated, qa, qb + 0.1 * noise * rng.normal(size=400)),
        }
    return results, mated, nonmated


def test_report_json_round_trip(tmp_path):
    results, mated, nonmated = _results()
    fr = fr_summary(mated, nonmated, (1e-3, 1e-2))
    path = write_results_json(tmp_path / "r" / "results.json", results, fr=fr, meta={"data": "synthetic"})
    doc = read_results_json(path)
    assert doc["meta"] == {"data": "synthetic"}
    assert doc["results"] == build_report(results)["results"]
    assert doc["fr"]["fnmr_at_fmr"] == pytest.approx(fr["fnmr_at_fmr"])
    entry = doc["results"]["misaligned +-3px"]["CR-FIQA"]["operating_points"]["start_err=0.10"]
    assert (
        entry["pauc"]["0.2"]
        == results["misaligned +-3px"]["CR-FIQA"]["operating_points"]["start_err=0.10"]["pauc"]["0.2"]
    )
    # the curve read back gives back the same pAUC
    assert pauc(EDCCurve.from_dict(entry["curve"]), 0.2).raw == entry["pauc"]["0.2"]["raw"]
    # strict JSON: NaN is stored as null
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something else"}')
    with pytest.raises(ValueError, match="not an aikd EDC report"):
        read_results_json(bad)


def test_report_json_is_compact_and_leaves_strings_alone(tmp_path):
    results, _, _ = _results()
    odd = {"q[1,2]  x": results["aligned"]["CR-FIQA"]}
    path = write_results_json(tmp_path / "odd.json", {"cond [a, b]": odd}, meta={"note": "[1,  2]", "xs": [1, 2]})
    doc = read_results_json(path)
    assert list(doc["results"]) == ["cond [a, b]"] and list(doc["results"]["cond [a, b]"]) == ["q[1,2]  x"]
    assert doc["meta"] == {"note": "[1,  2]", "xs": [1, 2]}
    # one curve (400 steps) per line, not one number per line
    lines = path.read_text().splitlines()
    assert len(lines) < 300
    assert any(line.strip().startswith('"discard_count": [0, ') for line in lines)


def test_report_nan_becomes_null(tmp_path):
    with pytest.warns(EDCWarning):
        out = evaluate_quality([0.6, 0.7, 0.8], None, [1, 2, 3], [1, 2, 3], operating_points=("threshold=0.5",))
    path = write_results_json(tmp_path / "nan.json", {"aligned": {"m": out}})
    doc = read_results_json(path)
    assert doc["results"]["aligned"]["m"]["operating_points"]["threshold=0.5"]["pauc"]["0.2"]["normalised"] is None
    assert "n/a" in markdown_table(doc["results"])


def test_markdown_table_contents():
    results, _, _ = _results()
    table = markdown_table(results, limit=0.2)
    for name in ("aligned", "misaligned +-3px", "CR-FIQA", r"AI-KD\|CR", "random quality (expected)", "lower bound"):
        assert name in table
    assert table.count("### Normalised pAUC@0.20") == 2  # one table per operating point
    value = results["aligned"]["CR-FIQA"]["operating_points"]["fmr=1e-3"]["pauc"]["0.2"]["normalised"]
    assert f"{value:.3f}" in table
    # header + separator + 2 methods + 3 baselines + FNMR row per table
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows) == 2 * 8


def test_report_pngs_are_valid_images(tmp_path):
    from PIL import Image

    results, mated, nonmated = _results()
    paths = write_report(tmp_path / "out", results, fr=fr_summary(mated, nonmated, (1e-3, 1e-2)))
    pngs = [p for p in paths.values() if p.suffix == ".png"]
    assert len(pngs) == 3  # det + one per condition
    md = paths["markdown"].read_text()
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            w, h = im.size
        assert w >= 500 and h >= 400
        assert f"]({p.name})" in md
    # two operating points side by side: twice as wide as tall-ish, at the documented size
    with Image.open(paths["edc/aligned"]) as im:
        assert im.size == (round(2 * 6.8 * 110), round(5.6 * 110))
    import matplotlib.image

    arr = matplotlib.image.imread(paths["det"])
    assert arr.ndim == 3 and arr.shape[2] in (3, 4) and arr.std() > 0.01  # not blank
    log_png = plot_edc_condition(tmp_path / "log.png", results["aligned"], condition="aligned", log_fnmr=True)
    with Image.open(log_png) as im:
        assert im.size[0] > 0
    det = plot_det(tmp_path / "det_scores.png", mated_scores=mated, nonmated_scores=nonmated)
    assert det.stat().st_size > 1000
