"""Degradation fidelity: does a student rank degraded faces as its teacher does?

A quality method is sensitive to a degradation when the faces it ranks low are the degraded ones. On a graded set
(:mod:`aikd.data.graded`: the same faces with known blur or down-scaling levels) that sensitivity is read off the
**mean percentile rank of quality per level**: each face's quality is turned into its percentile rank among all
faces of the copy (0 = lowest quality, 1 = highest; ties share their mean rank), and the ranks are averaged per
level. A sensitive method's mean rank falls from about 0.5 + x at level 0 to well below 0.5 at the strongest level;
a method blind to the degradation stays near 0.5 at every level.

Fidelity of a student to its teacher is the **Spearman correlation between their per-level mean ranks**: per kind
(the levels of one copy) and over all levels of both kinds together (each kind's ranks are computed within its own
copy). A student that keeps its teacher's sensitivity orders the levels as the teacher does (Spearman 1); one that
has forgotten it does not. Ranks are invariant to monotone changes of the score (calibration), so the figures
compare what the methods rank, not their scales. The EDC/pAUC of every method on each copy, with the run's
comparator, says whether that ranking still predicts recognition errors; it comes from
:func:`aikd.evaluation.runner.evaluate` (this module only reads it).

Everything here works on arrays of scores and levels (no images, no models): the command ``aikd fidelity``
(:mod:`aikd.app.graded`) scores the graded copies and hands the scores over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata, spearmanr

from aikd.evaluation.report import bootstrap_markdown
from aikd.io import atomic_path, write_text

__all__ = [
    "percentile_ranks",
    "mean_rank_per_level",
    "level_spearman",
    "fidelity_figures",
    "pauc_figures",
    "bootstrap_by_kind",
    "fidelity_markdown",
    "plot_fidelity",
    "write_fidelity_report",
    "HEADLINE",
]

#: The operating point and pAUC limit of the headline pAUC figures (the reference implementation's choice).
HEADLINE = ("start_err=0.10", "0.2")


def percentile_ranks(quality: np.ndarray) -> np.ndarray:
    """Percentile rank of each score among all of them, in ``(0, 1)``: ``(rank - 0.5) / n`` with ties averaged.

    The mean over all faces is exactly 0.5, so a level's mean rank above or below 0.5 says whether the method
    ranks that level's faces above or below the typical face.
    """
    q = np.asarray(quality, dtype=np.float64).reshape(-1)
    if q.size == 0:
        return q
    if not np.isfinite(q).all():
        raise ValueError(f"quality scores must be finite ({int((~np.isfinite(q)).sum())} of {q.size} are not)")
    return (rankdata(q, method="average") - 0.5) / q.size


def mean_rank_per_level(ranks: np.ndarray, levels: np.ndarray, n_levels: int) -> list[float]:
    """Mean of ``ranks`` over the faces of each level ``0 .. n_levels - 1`` (NaN for an empty level; faces with a
    negative level, i.e. not part of the graded set, are ignored)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    levels = np.asarray(levels)
    if ranks.shape != levels.shape:
        raise ValueError(f"ranks {ranks.shape} and levels {levels.shape} differ in shape")
    return [float(ranks[levels == k].mean()) if (levels == k).any() else float("nan") for k in range(n_levels)]


def level_spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman correlation of two per-level sequences, over the levels where both are finite (NaN when fewer
    than 3 remain or either is constant)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return float("nan")
    return float(spearmanr(x[ok], y[ok]).statistic)


def fidelity_figures(
    quality: Mapping[str, Mapping[str, np.ndarray]],
    levels: Mapping[str, np.ndarray],
    reference: str,
    strengths: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Mean rank per level of every method, and each method's Spearman correlation with ``reference``.

    Args:
        quality: ``quality[kind][method]`` -> ``(N_kind,)`` scores of the faces of that copy (higher = better).
        levels: ``levels[kind]`` -> ``(N_kind,)`` level of each face (0 = clean; negative = leave out).
        reference: the method the others are compared with (the teacher).
        strengths: ``strengths[kind]`` -> per-level strength (fixes the number of levels; default: the largest
            level seen + 1).

    Returns:
        ``{"reference", "kinds", "methods", "levels": {kind: {"strengths", "n_images"}}, "mean_rank": {kind:
        {method: [per level]}}, "spearman": {method: {kind: r, ..., "all": r}}, "trend": {kind: {method: r}},
        "rank_drop": {kind: {method: level 0 - last level}}}``. ``trend`` is the Spearman correlation of a method's
        mean ranks with the level: -1 when every stronger level ranks lower.
    """
    kinds = list(quality)
    if not kinds:
        raise ValueError("no graded kinds to analyse")
    methods = list(next(iter(quality.values())))
    for kind in kinds:
        if list(quality[kind]) != methods:
            raise ValueError(f"kind {kind!r} has methods {list(quality[kind])}, expected {methods}")
    if reference not in methods:
        raise KeyError(f"reference method {reference!r} is not among the scored methods {methods}")
    out: dict[str, Any] = {"reference": reference, "kinds": kinds, "methods": methods, "levels": {}}
    mean_rank: dict[str, dict[str, list[float]]] = {}
    for kind in kinds:
        lv = np.asarray(levels[kind])
        n_levels = len(strengths[kind]) if strengths and kind in strengths else int(lv.max()) + 1
        keep = lv >= 0
        out["levels"][kind] = {
            "strengths": list(strengths[kind]) if strengths and kind in strengths else list(range(n_levels)),
            "n_images": [int((lv == k).sum()) for k in range(n_levels)],
        }
        mean_rank[kind] = {}
        for method in methods:
            q = np.asarray(quality[kind][method], dtype=np.float64)
            if q.shape != lv.shape:
                raise ValueError(f"{kind}/{method}: {q.shape[0]} scores for {lv.shape[0]} faces")
            ranks = np.full(q.shape, np.nan)
            ranks[keep] = percentile_ranks(q[keep])
            mean_rank[kind][method] = mean_rank_per_level(np.where(keep, ranks, 0.0), np.where(keep, lv, -1), n_levels)
    out["mean_rank"] = mean_rank
    ref = mean_rank
    out["spearman"] = {
        m: {
            **{k: level_spearman(mean_rank[k][m], ref[k][reference]) for k in kinds},
            "all": level_spearman(
                [v for k in kinds for v in mean_rank[k][m]], [v for k in kinds for v in ref[k][reference]]
            ),
        }
        for m in methods
    }
    out["trend"] = {
        k: {m: level_spearman(mean_rank[k][m], list(range(len(mean_rank[k][m])))) for m in methods} for k in kinds
    }
    out["rank_drop"] = {k: {m: float(mean_rank[k][m][0] - mean_rank[k][m][-1]) for m in methods} for k in kinds}
    return out


def pauc_figures(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {operating point: {limit: normalised pAUC}}}`` of one copy's evaluation results
    (``results[condition][method]`` of :func:`aikd.evaluation.runner.evaluate`, one condition)."""
    if len(results) != 1:
        raise ValueError(f"expected the results of one condition, got {list(results)}")
    (per_method,) = results.values()
    return {
        m: {
            op: {lim: float(p["normalised"]) for lim, p in v["pauc"].items()} for op, v in r["operating_points"].items()
        }
        for m, r in per_method.items()
    }


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def bootstrap_by_kind(bootstrap: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One bootstrap section whose "conditions" are the graded copies, from each copy's own evaluation.

    Each copy is evaluated as one ``aligned`` condition (:func:`aikd.evaluation.runner.evaluate`), so its
    ``bootstrap["comparisons"]["aligned"]`` holds the method-minus-reference differences; keyed by kind they read
    like an evaluation's conditions and :func:`aikd.evaluation.report.bootstrap_markdown` tabulates them.

    Args:
        bootstrap: ``kind`` -> that copy's ``EvaluationResult.bootstrap``.
    """
    first = next(iter(bootstrap.values()), {})
    return {
        "n_boot": first.get("n_boot"),
        "level": first.get("level", 0.95),
        "comparisons": {k: next(iter((b.get("comparisons") or {}).values()), {}) for k, b in bootstrap.items()},
    }


def fidelity_markdown(
    figures: Mapping[str, Any],
    pauc: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]],
    meta: Mapping[str, Any] | None = None,
    min_spearman: float = 0.95,
    bootstrap: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The markdown report: mean rank per level, Spearman against the reference, pAUC per copy and, with
    ``bootstrap``, the paired-bootstrap interval of each method's pAUC minus the reference's on each copy.

    Args:
        figures: :func:`fidelity_figures`' output.
        pauc: ``pauc[kind]`` -> :func:`pauc_figures` of that copy.
        meta: lines for the header (run, graded set, comparator, ...).
        min_spearman: the fidelity criterion shown beside the Spearman figures.
        bootstrap: ``kind`` -> that copy's evaluation bootstrap section (see :func:`bootstrap_by_kind`).
    """
    ref = figures["reference"]
    methods = figures["methods"]
    op, lim = HEADLINE
    lines = ["# Degradation fidelity", ""]
    for key, value in (meta or {}).items():
        lines.append(f"- {key}: {value}")
    lines += [
        "",
        "Each face's quality is turned into its percentile rank within its copy (0 = lowest, 1 = highest; mean",
        "0.5); the tables give the mean rank of the faces of each level. A method sensitive to the degradation",
        "ranks stronger levels lower. Fidelity: Spearman correlation of a method's per-level mean ranks with those",
        f"of `{ref}` (criterion >= {min_spearman}). pAUC: normalised pAUC@{lim} of the EDC at starting error 0.10",
        "on each copy (lower is better; 1.0 = random discarding).",
        "",
    ]
    for kind in figures["kinds"]:
        lv = figures["levels"][kind]
        lines += [f"## {kind}: mean percentile rank per level", ""]
        head = [f"{k} ({s:g})" for k, s in enumerate(lv["strengths"])]
        lines.append("| method | " + " | ".join(head) + " | level 0 - last | trend |")
        lines.append("| --- |" + " ---: |" * (len(head) + 2))
        lines.append("| faces | " + " | ".join(str(n) for n in lv["n_images"]) + " | | |")
        for m in methods:
            row = [_f(v) for v in figures["mean_rank"][kind][m]]
            lines.append(
                f"| {m} | " + " | ".join(row) + f" | {_f(figures['rank_drop'][kind][m])} | "
                f"{_f(figures['trend'][kind][m], 2)} |"
            )
        lines.append("")
    kinds = figures["kinds"]
    lines += [f"## Fidelity to `{ref}` and pAUC", ""]
    lines.append(
        "| method | "
        + " | ".join(f"Spearman {k}" for k in kinds)
        + " | Spearman all | "
        + " | ".join(f"pAUC {k}" for k in kinds)
        + f" | pAUC / {ref} (mean) | fidelity |"
    )
    lines.append("| --- |" + " ---: |" * (2 * len(kinds) + 2) + " --- |")
    for m in methods:
        sp = figures["spearman"][m]
        pa = [pauc.get(k, {}).get(m, {}).get(op, {}).get(lim) for k in kinds]
        pr = [pauc.get(k, {}).get(ref, {}).get(op, {}).get(lim) for k in kinds]
        ratios = [a / b for a, b in zip(pa, pr) if a is not None and b]
        ratio = float(np.mean(ratios)) if ratios else float("nan")
        if m == ref:
            verdict = "(reference)"
        else:
            ok_rank = all(math.isfinite(sp[k]) and sp[k] >= min_spearman for k in [*kinds, "all"])
            ok_pauc = all(a is not None and b is not None and a <= b for a, b in zip(pa, pr))
            verdict = ("ranks follow" if ok_rank else "ranks differ") + (
                ", pAUC no worse" if ok_pauc else ", pAUC worse"
            )
        lines.append(
            f"| {m} | "
            + " | ".join(_f(sp[k]) for k in kinds)
            + f" | {_f(sp['all'])} | "
            + " | ".join(_f(v) for v in pa)
            + f" | {_f(ratio)} | {verdict} |"
        )
    lines.append("")
    if bootstrap:
        lines += bootstrap_markdown(bootstrap_by_kind(bootstrap), kinds, op, limit=float(lim))
    lines += ["![mean rank per level](fidelity.png)", ""]
    return "\n".join(lines)


def plot_fidelity(figures: Mapping[str, Any], path: str | Path) -> Path:
    """Mean rank vs level, one panel per kind, the reference (teacher) solid and thick, other methods dashed."""
    from matplotlib.figure import Figure

    kinds = figures["kinds"]
    fig = Figure(figsize=(5.0 * len(kinds), 4.0), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    ref = figures["reference"]
    for ax, kind in zip(axes, kinds):
        strengths = figures["levels"][kind]["strengths"]
        x = np.arange(len(strengths))
        for m in figures["methods"]:
            y = figures["mean_rank"][kind][m]
            style = {"lw": 2.5, "ls": "-", "marker": "o"} if m == ref else {"lw": 1.5, "ls": "--", "marker": "s"}
            ax.plot(x, y, label=m, **style)
        ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
        ax.set_xticks(x, [f"{k}\n({s:g})" for k, s in enumerate(strengths)])
        ax.set_xlabel(f"{kind} level (strength on the 112 px crop)")
        ax.set_ylabel("mean percentile rank of quality")
        ax.set_ylim(0, 1)
        ax.set_title(kind)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write_fidelity_report(
    out_dir: str | Path,
    figures: Mapping[str, Any],
    pauc: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    min_spearman: float = 0.95,
    bootstrap: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``fidelity.json`` (figures, pAUC, meta, the bootstrap sections per copy when given), ``report.md``
    and ``fidelity.png`` to ``out_dir``."""
    from aikd.io import write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": write_json(
            out / "fidelity.json",
            _finite_or_none(
                {
                    "meta": dict(meta or {}),
                    "criterion": {"min_spearman": min_spearman, "pauc": list(HEADLINE)},
                    **dict(figures),
                    "pauc_normalised": pauc,
                    **({"bootstrap": dict(bootstrap)} if bootstrap else {}),
                }
            ),
        ),  # fmt: skip
        "png": plot_fidelity(figures, out / "fidelity.png"),
    }
    paths["markdown"] = write_text(
        out / "report.md", fidelity_markdown(figures, pauc, meta, min_spearman, bootstrap=bootstrap)
    )
    return paths


def _finite_or_none(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as ``None`` (JSON has no NaN; a level without faces has no mean rank)."""
    if isinstance(obj, Mapping):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
