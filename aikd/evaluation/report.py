"""Reports of EDC results: one JSON with every figure, a Markdown table, and PNG plots.

The data structure is a nested dict, ``results[condition][method] = evaluate_quality(...)``: alignment conditions
(e.g. ``"aligned"``, ``"misaligned"``) x quality methods (e.g. ``"CR-FIQA"``, ``"AI-KD(CR-FIQA)"``), each holding
every operating point (``"start_err=0.10"``, ``"fmr=1e-3"``) with its pAUC per limit. It is plain JSON, so a report
can be rebuilt (tables, plots) from the JSON alone, without rerunning any model.

The JSON document written by :func:`write_results_json`::

    {"schema": "aikd.edc-report/1", "meta": {...}, "fr": fr_summary(...) or null, "results": results,
     ["bootstrap": {...}], ["extra_comparators": {name: {"fr": fr_summary(...), "results": results}}]}

``bootstrap`` (present when the evaluation bootstrapped, ``evaluation.bootstrap > 0``) holds paired-bootstrap
differences of the normalised pAUC between methods (:mod:`aikd.evaluation.bootstrap`): ``{"n_boot", "seed",
"level", ..., "comparisons": {condition: {"student - teacher:x": {"a", "b", "operating_points": {label: {limit:
{"difference", "low", "high", "p_a_better", "n_boot", "n_defined"}}}}}}}``.

``extra_comparators`` (present when the evaluation had ``evaluation.extra_comparators``) holds, per further FR model,
the same evaluation with that model's comparison scores: the quality scores are the primary evaluation's, only the
errors differ. ``fr`` and ``results`` (the top-level ones) are always the primary comparator's (``meta.comparator``).

Plots use matplotlib's object API (``matplotlib.figure.Figure``, rendered by the Agg canvas), never pyplot, so
they work headless and do not touch global state.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from aikd.evaluation.bootstrap import format_interval
from aikd.evaluation.edc import EDCCurve, limit_key, lower_bound_edc, parse_operating_point
from aikd.io import atomic_path, write_text

__all__ = [
    "SCHEMA",
    "build_report",
    "write_results_json",
    "dumps_report",
    "read_results_json",
    "markdown_table",
    "bootstrap_markdown",
    "write_markdown",
    "plot_edc_condition",
    "plot_det",
    "write_report",
]

SCHEMA = "aikd.edc-report/1"
Results = Mapping[str, Mapping[str, Mapping[str, Any]]]

_FIG_DPI = 110


# --------------------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------------------


def build_report(
    results: Results,
    *,
    fr: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    bootstrap: Mapping[str, Any] | None = None,
    extra_comparators: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON document: schema tag, free-form ``meta`` (data set, FR model, commit, ...), FR summary, results,
    the bootstrapped differences and the results with further comparators when there are any."""
    _check_results(results)
    doc = {"schema": SCHEMA, "meta": dict(meta or {}), "fr": None if fr is None else dict(fr), "results": results}
    if bootstrap is not None:
        doc["bootstrap"] = dict(bootstrap)
    if extra_comparators:
        for name, entry in extra_comparators.items():
            if not isinstance(entry, Mapping) or "results" not in entry:
                raise ValueError(f"extra_comparators[{name!r}] must be {{'results': ..., 'fr': ...}}")
            _check_results(entry["results"])
        doc["extra_comparators"] = {name: dict(entry) for name, entry in extra_comparators.items()}
    return _jsonable(doc)


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays to Python, NaN/inf to ``null`` (strict JSON has no NaN).

    ``null`` therefore means "undefined", e.g. the normalised pAUC when EDC(0) = 0.
    """
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_results_json(
    path: str | Path,
    results: Results,
    *,
    fr: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    bootstrap: Mapping[str, Any] | None = None,
    extra_comparators: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Atomically write every figure to ``path`` as strict JSON (undefined figures, NaN in Python, are ``null``).

    Indented for reading, except that lists of numbers (curve points) stay on one line each: one value per line
    would make a report with thousands of EDC steps per curve several times larger.
    """
    doc = build_report(results, fr=fr, meta=meta, bootstrap=bootstrap, extra_comparators=extra_comparators)
    return write_text(path, dumps_report(doc))


def dumps_report(doc: Mapping[str, Any]) -> str:
    """Serialise a report document: strict JSON, indented, but each list of numbers on one line.

    Lists are swapped for placeholder strings before indenting and the compact lists put back afterwards, so no
    string value (method names, free text) is ever touched.
    """
    arrays: list[str] = []
    token = f"@@aikd-array-{uuid.uuid4().hex}-"

    def mark(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: mark(v) for k, v in obj.items()}
        if isinstance(obj, list):
            if obj and all(_is_scalar(v) for v in obj):
                arrays.append(json.dumps(obj, allow_nan=False, separators=(", ", ": ")))
                return f"{token}{len(arrays) - 1}"
            return [mark(v) for v in obj]
        return obj

    text = json.dumps(mark(_jsonable(doc)), indent=2, allow_nan=False)
    text = re.sub(f'"{re.escape(token)}(\\d+)"', lambda m: arrays[int(m.group(1))], text)
    return text + "\n"


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (int, float, str)) and not isinstance(v, bool)


def read_results_json(path: str | Path) -> dict[str, Any]:
    """Read a document written by :func:`write_results_json` (checks the schema tag)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"EDC report {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"EDC report {path} is not valid JSON ({exc}); was the write interrupted?") from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path} is not an aikd EDC report: schema {found!r}, expected {SCHEMA!r}")
    return doc


def _check_results(results: Results) -> None:
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty dict: results[condition][method] = evaluate_quality(...)")
    for condition, methods in results.items():
        if not isinstance(methods, Mapping) or not methods:
            raise ValueError(f"results[{condition!r}] must be a non-empty dict of method -> evaluate_quality(...)")
        for method, entry in methods.items():
            if not isinstance(entry, Mapping) or "operating_points" not in entry:
                raise ValueError(
                    f"results[{condition!r}][{method!r}] is not an evaluate_quality() output (no 'operating_points')"
                )


# --------------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------------


def _ordered_keys(mappings: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for m in mappings:
        for k in m:
            seen.setdefault(k, None)
    return list(seen)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _cell(name: str) -> str:
    return str(name).replace("|", r"\|")


def _md_row(name: str, values: list[float | None], digits: int) -> str:
    defined = [v for v in values if v is not None and not math.isnan(v)]
    mean = float(np.mean(defined)) if defined else None
    cells = [_fmt(v, digits) for v in values]
    return f"| {_cell(name)} | " + " | ".join(cells) + f" | {_fmt(mean, digits)} |"


def _normalised(entry: Mapping[str, Any] | None, field: str, key: str) -> float | None:
    if entry is None or key not in entry.get(field, {}):
        return None
    return entry[field][key]["normalised"]


def _first_entry(methods: Mapping[str, Mapping[str, Any]], op_label: str) -> Mapping[str, Any] | None:
    for entry in methods.values():
        op_entry = entry["operating_points"].get(op_label)
        if op_entry is not None:
            return op_entry
    return None


def markdown_table(
    results: Results,
    *,
    limit: float = 0.20,
    operating_points: Sequence[str] | None = None,
    digits: int = 3,
    bootstrap: Mapping[str, Any] | None = None,
    comparator: str | None = None,
) -> str:
    """Markdown tables of the normalised pAUC at ``limit``: one table per operating point, methods x conditions.

    Each table adds the expected value of a random quality (1.0 by definition), the lower bound
    ``max(0, EDC(0) - d)``, the best achievable value (quality = comparison score), and per condition the
    threshold and the FNMR with nothing discarded, so a reader can judge a number without the code. The baselines
    are taken from the first method of each condition: all methods of a condition must share the mated pairs and
    their scores (only the quality differs), which is how the pipeline builds ``results``.
    A ``mean`` column averages each row over the conditions where it is defined.

    With ``bootstrap`` (the report's ``bootstrap`` section), each operating point's table is followed by the
    bootstrapped differences between methods (:func:`bootstrap_markdown`). ``comparator`` names the FR model in
    each table's heading (the extra comparators' tables; the primary comparator's headings name none).
    """
    _check_results(results)
    key = limit_key(limit)
    by = f", comparison scores: {comparator}" if comparator else ""
    conditions = list(results)
    methods = _ordered_keys([results[c] for c in conditions])
    ops = (
        list(operating_points)
        if operating_points
        else _ordered_keys([results[c][m]["operating_points"] for c in conditions for m in results[c]])
    )
    lines: list[str] = []
    for op_label in ops:
        op = parse_operating_point(op_label)
        lines.append(f"### Normalised pAUC@{limit:.2f}, operating point {op.description} (`{op_label}`){by}")
        lines.append("")
        lines.append(
            f"Area under the EDC (FNMR of the remaining mated pairs vs. fraction discarded, lowest quality first) "
            f"from 0 to {limit:.2f}, divided by {limit:.2f} x FNMR at zero discard. "
            f"Lower is better; 1.0 = no better than discarding at random."
        )
        lines.append("")
        lines.append("| method | " + " | ".join(_cell(c) for c in conditions) + " | mean |")
        lines.append("| --- | " + " | ".join("---:" for _ in conditions) + " | ---: |")
        for method in methods:
            entries = [results[c].get(method, {}).get("operating_points", {}).get(op_label) for c in conditions]
            lines.append(_md_row(method, [_normalised(e, "pauc", key) for e in entries], digits))
        # The baselines depend only on the mated scores and the threshold, shared by all methods of a condition.
        refs = [_first_entry(results[c], op_label) for c in conditions]
        lines.append(_md_row("*random quality (expected)*", [_normalised(e, "random", key) for e in refs], digits))
        lines.append(
            _md_row("*best achievable (quality = score)*", [_normalised(e, "oracle", key) for e in refs], digits)
        )
        lines.append(
            _md_row("*lower bound max(0, EDC(0) - d)*", [_normalised(e, "lower_bound", key) for e in refs], digits)
        )
        info = ["n/a" if e is None else f"{e['edc0']:.3f} (t = {e['threshold']:.4g})" for e in refs]
        lines.append("| *FNMR at zero discard (threshold)* | " + " | ".join(info) + " | |")
        lines.append("")
        if bootstrap:
            lines += bootstrap_markdown(bootstrap, conditions, op_label, limit=limit, digits=digits)
    return "\n".join(lines)


def bootstrap_markdown(
    bootstrap: Mapping[str, Any], conditions: Sequence[str], op_label: str, *, limit: float = 0.20, digits: int = 3
) -> list[str]:
    """Lines of a Markdown table of bootstrapped differences at one operating point and limit: one row per
    comparison (``student - teacher:x``), one column per condition, cells ``+0.012 [-0.004, +0.027]`` (difference
    on the full set and percentile interval); bold where the interval excludes 0. Empty when nothing was compared.
    """
    key = limit_key(limit)
    per_condition = bootstrap.get("comparisons") or {}
    names = _ordered_keys([per_condition.get(c, {}) for c in conditions])
    if not names:
        return []
    level = float(bootstrap.get("level", 0.95))
    lines = [
        f"Differences in normalised pAUC@{limit:.2f} at `{op_label}` (A - B: negative = A better), with the "
        f"{level:.0%} paired-bootstrap interval over {bootstrap.get('n_boot', '?')} resamples of the mated pairs "
        f"(threshold fixed on the full set; bold: the interval excludes 0). Pairs share images, so these intervals are "
        f"somewhat narrow, and they do not cover training randomness (compare runs: `aikd compare-runs`).",
        "",
        "| A - B | " + " | ".join(_cell(c) for c in conditions) + " |",
        "| --- | " + " | ".join("---:" for _ in conditions) + " |",
    ]
    for name in names:
        cells = []
        for c in conditions:
            entry = per_condition.get(c, {}).get(name, {}).get("operating_points", {}).get(op_label, {}).get(key)
            text = format_interval(entry, digits)
            low, high = (entry or {}).get("low"), (entry or {}).get("high")
            excludes = low is not None and high is not None and (low > 0 or high < 0)
            cells.append(f"**{text}**" if excludes else text)
        lines.append(f"| {_cell(name)} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def text_table(results: Results, *, limit: float = 0.20, digits: int = 3) -> str:
    """A plain-text summary for the terminal: per operating point, normalised pAUC@``limit`` of every method
    (rows) under every condition (columns) and the mean over conditions. Lower is better; 1.0 = random."""
    _check_results(results)
    key = limit_key(limit)
    conditions = list(results)
    methods = _ordered_keys([results[c] for c in conditions])
    ops = _ordered_keys([results[c][m]["operating_points"] for c in conditions for m in results[c]])
    width = max([len(m) for m in methods] + [len("method")])
    cols = [max(len(c), digits + 2) for c in conditions]
    lines = []
    for op_label in ops:
        lines.append(f"normalised pAUC@{limit:.2f} at {op_label} (lower is better; 1.0 = random discarding):")
        lines.append(
            "  " + "method".ljust(width) + "".join(f"  {c:>{w}}" for c, w in zip(conditions, cols)) + "    mean"
        )
        for method in methods:
            vals = [
                _normalised(results[c].get(method, {}).get("operating_points", {}).get(op_label), "pauc", key)
                for c in conditions
            ]
            cells = "".join(f"  {_fmt(v, digits):>{w}}" for v, w in zip(vals, cols))
            finite = [v for v in vals if v is not None and np.isfinite(v)]
            mean = _fmt(float(np.mean(finite)), digits) if finite else "n/a"
            lines.append("  " + method.ljust(width) + cells + f"  {mean:>6}")
    return "\n".join(lines)


def write_markdown(
    path: str | Path,
    results: Results,
    *,
    title: str = "Face image quality: Error-versus-Discard results",
    limits: Sequence[float] = (0.20,),
    fr: Mapping[str, Any] | None = None,
    images: Sequence[str | Path] = (),
    meta: Mapping[str, Any] | None = None,
    bootstrap: Mapping[str, Any] | None = None,
    extra_comparators: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Atomically write a Markdown report: what was compared, FR model summary, one table per limit and operating
    point (with the bootstrapped differences between methods, when ``bootstrap`` is given), then a section per extra
    comparator (``name -> {"results", "fr"}``: its FR summary and the same tables with its comparison scores), plots.

    ``meta`` may hold ``data``, ``split``, ``comparator`` (the FR model whose comparison scores define the errors)
    and ``methods`` (row name -> one-line description): a reader then knows what each row is without the config.
    """
    parts = [f"# {title}", ""]
    parts += _meta_markdown(meta or {})
    if fr is not None:
        parts += _fr_markdown(fr)
    for lim in limits:
        parts.append(markdown_table(results, limit=lim, bootstrap=bootstrap))
    for name, entry in (extra_comparators or {}).items():
        parts += _extra_comparator_markdown(name, entry, limits, str((meta or {}).get("comparator") or "the primary"))
    path = Path(path)
    for img in images:
        img = Path(img)
        rel = img.relative_to(path.parent) if img.is_relative_to(path.parent) else img
        parts += [f"![{img.stem}]({rel.as_posix()})", ""]
    return write_text(path, "\n".join(parts).rstrip() + "\n")


def _extra_comparator_markdown(name: str, entry: Mapping[str, Any], limits: Sequence[float], primary: str) -> list[str]:
    """The report section of one extra comparator: what it is, its FR summary, its tables."""
    lines = [
        f"## Comparator: {name}",
        "",
        f"The same quality scores, with comparison scores from **{name}** embeddings of the properly aligned faces "
        f"(cosine) instead of {primary}'s: a quality method should predict the errors of other FR models too, not "
        "only those of its own network. The tables above, the bootstrap intervals and the plots are the primary "
        f"comparator's ({primary}).",
        "",
    ]
    if entry.get("fr") is not None:
        lines += _fr_markdown(entry["fr"], title=f"### Face recognition model: {name}")
    for lim in limits:
        lines.append(markdown_table(entry["results"], limit=lim, comparator=name))
    return lines


def _meta_markdown(meta: Mapping[str, Any]) -> list[str]:
    lines = []
    if meta.get("comparator"):
        lines.append(
            f"Comparison scores: **{meta['comparator']}** embeddings of the properly aligned faces (cosine); they are "
            "the same under every condition, only the quality method's input is misaligned."
        )
    if meta.get("data"):
        lines.append(f"Faces: `{meta['data']}`, split `{meta.get('split', '?')}`.")
    if lines:
        lines.append("")
    methods = meta.get("methods")
    if isinstance(methods, Mapping) and methods:
        lines += ["Rows:", ""] + [f"- `{name}`: {text}" for name, text in methods.items()] + [""]
    notes = meta.get("condition_notes")
    if isinstance(notes, Mapping) and notes:
        lines += ["Conditions:", ""] + [f"- `{name}`: {text}" for name, text in notes.items()] + [""]
    return lines


def _fr_markdown(fr: Mapping[str, Any], title: str = "## Face recognition model") -> list[str]:
    lines = [
        title,
        "",
        f"{fr.get('n_mated', '?')} mated and {fr.get('n_nonmated', '?')} non-mated pairs; "
        f"equal error rate {_fmt(fr.get('eer'))}.",
        "",
        "| FMR | " + " | ".join(fr.get("fnmr_at_fmr", {})) + " |",
        "| --- | " + " | ".join("---:" for _ in fr.get("fnmr_at_fmr", {})) + " |",
        "| FNMR | " + " | ".join(_fmt(v) for v in fr.get("fnmr_at_fmr", {}).values()) + " |",
        "",
    ]
    return lines


# --------------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------------


def _save_png(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_FIG_DPI)
    return path


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "unnamed"


def plot_edc_condition(
    path: str | Path,
    condition_results: Mapping[str, Mapping[str, Any]],
    *,
    condition: str,
    operating_points: Sequence[str] | None = None,
    limit: float = 0.20,
    max_discard: float = 0.5,
    log_fnmr: bool = False,
) -> Path:
    """One PNG for one alignment condition: a panel per operating point, all methods overlaid.

    Each panel shows the step EDC of every method (legend: normalised pAUC at ``limit``), the expected curve of a
    random quality (flat at EDC(0)), the lower bound ``max(0, EDC(0) - d)``, and the pAUC range shaded.

    Args:
        path: output PNG.
        condition_results: ``results[condition]``, i.e. method -> :func:`evaluate_quality` output with curves.
        condition: name shown in the title.
        operating_points: which panels (default: all, in the order of the first method).
        limit: the pAUC limit quoted in the legend and shaded.
        max_discard: right end of the x axis.
        log_fnmr: log-scale FNMR axis (useful at low starting errors such as FMR 1e-4 operating points).
    """
    if not condition_results:
        raise ValueError(f"no methods to plot for condition {condition!r}")
    methods = list(condition_results)
    ops = (
        list(operating_points)
        if operating_points
        else _ordered_keys([condition_results[m]["operating_points"] for m in methods])
    )
    key = limit_key(limit)
    fig = Figure(figsize=(6.8 * len(ops), 5.6), layout="constrained")
    axes = fig.subplots(1, len(ops), squeeze=False)[0]
    colors = [f"C{i}" for i in range(10)]
    for ax, op_label in zip(axes, ops):
        op = parse_operating_point(op_label)
        ref = None
        for i, method in enumerate(methods):
            entry = condition_results[method]["operating_points"].get(op_label)
            if entry is None:
                continue
            if "curve" not in entry:
                raise ValueError(
                    f"{condition}/{method}/{op_label} has no curve points; run evaluate_quality(include_curve=True)"
                )
            ref = ref or entry
            curve = EDCCurve.from_dict(entry["curve"])
            x = np.append(curve.discard_fractions, 1.0)
            y = np.append(curve.fnmr, curve.fnmr[-1])
            norm = entry["pauc"].get(key, {}).get("normalised", math.nan)
            ax.step(
                x,
                y,
                where="post",
                color=colors[i % len(colors)],
                linewidth=1.8,
                label=f"{method}  (normalised pAUC@{limit:.2f} = {_fmt(norm)})",
            )
        if ref is None:
            ax.set_visible(False)
            continue
        e0 = float(ref["edc0"])
        ax.axhline(e0, color="0.45", linestyle="--", linewidth=1.2, label="random quality (expected), pAUC = 1")
        d = np.linspace(0.0, max_discard, 400)
        d = np.union1d(d, [min(e0, max_discard)])
        lb_label = "lower bound max(0, FNMR\u2080 \u2212 d)"
        if key in ref.get("lower_bound", {}):
            lb_label += f", pAUC = {ref['lower_bound'][key]['normalised']:.3f}"
        ax.plot(d, lower_bound_edc(e0, d), color="black", linestyle=":", linewidth=1.4, label=lb_label)
        ax.axvspan(0.0, limit, color="0.9", zorder=0, label=f"pAUC range [0, {limit:.2f}]")
        ax.set_xlim(0.0, max_discard)
        if log_fnmr:
            ax.set_yscale("log", nonpositive="mask")
            n = int(ref["curve"]["n_pairs"]) if "curve" in ref else 1000
            ax.set_ylim(max(0.5 / n, e0 * 1e-3), min(1.0, e0 * 2.0) if e0 > 0 else 1.0)
        else:
            ax.set_ylim(0.0, max(e0 * 1.25, 1e-3))
        ax.set_xlabel("fraction of mated pairs discarded (lowest pair quality first)")
        ax.set_ylabel("FNMR of the remaining mated pairs")
        ax.set_title(
            f"{op.description}: threshold {ref['threshold']:.4g}, FNMR\u2080 = {e0:.3f}\n"
            f"{ref['curve']['n_pairs'] if 'curve' in ref else '?'} mated pairs, threshold fixed on the full set",
            fontsize=10,
        )
        ax.grid(True, which="major", alpha=0.3)
        # Below the axes: inside, it would hide the curves' flat start and the random line at EDC(0).
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.suptitle(f"Error-versus-Discard Characteristic \u2014 condition: {condition}", fontsize=12)
    return _save_png(fig, path)


def plot_det(
    path: str | Path,
    *,
    mated_scores: Any | None = None,
    nonmated_scores: Any | None = None,
    fr: Mapping[str, Any] | None = None,
    title: str = "Face recognition model: DET curve",
    mark_fmrs: Sequence[float] = (1e-4, 1e-3, 1e-2),
) -> Path:
    """DET plot of the FR model (FNMR against FMR, both log-scaled), with FNMR marked at ``mark_fmrs``.

    Pass either the scores (the exact ROC is computed) or ``fr``, a :func:`aikd.evaluation.edc.fr_summary` dict
    (e.g. read back from a report JSON).
    """
    from aikd.evaluation.edc import fnmr_at_fmr, roc

    if mated_scores is not None and nonmated_scores is not None:
        curve = roc(mated_scores, nonmated_scores)
        fmr, fnmr, n_m, n_nm = curve.fmr, curve.fnmr, curve.n_mated, curve.n_nonmated
        marks = fnmr_at_fmr(mated_scores, nonmated_scores, [f for f in mark_fmrs if f * n_nm >= 1], strict=False)
    elif fr is not None:
        fmr, fnmr = np.asarray(fr["det"]["fmr"]), np.asarray(fr["det"]["fnmr"])
        n_m, n_nm = fr.get("n_mated", "?"), fr.get("n_nonmated", "?")
        marks = {float(k): v for k, v in fr.get("fnmr_at_fmr", {}).items()}
    else:
        raise ValueError("plot_det needs mated_scores and nonmated_scores, or fr=fr_summary(...)")
    fig = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax = fig.subplots()
    keep = (fmr > 0) & (fnmr > 0)
    ax.plot(fmr[keep], fnmr[keep], color="C0", linewidth=1.8, label="FR model")
    for i, (f, v) in enumerate(sorted(marks.items())):
        if v is None or math.isnan(v) or v <= 0:
            continue
        ax.plot([f], [v], marker="o", color=f"C{i + 1}", linestyle="none", label=f"FNMR = {v:.3f} at FMR {f:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FMR (fraction of non-mated pairs accepted)")
    ax.set_ylabel("FNMR (fraction of mated pairs rejected)")
    ax.set_title(f"{title}\n{n_m} mated, {n_nm} non-mated pairs; lower-left is better", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save_png(fig, path)


# --------------------------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------------------------


def write_report(
    out_dir: str | Path,
    results: Results,
    *,
    fr: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    title: str = "Face image quality: Error-versus-Discard results",
    limits: Sequence[float] = (0.20,),
    max_discard: float = 0.5,
    log_fnmr: bool = False,
    bootstrap: Mapping[str, Any] | None = None,
    extra_comparators: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``edc_<condition>.png`` per condition, ``det.png`` (if ``fr``) and ``report.md``.

    ``bootstrap``: the paired-bootstrap differences between methods (see the module docstring), written into both.
    ``extra_comparators``: ``name -> {"results", "fr"}`` with further FR models' comparison scores, written into both
    (plots are the primary comparator's).

    Returns:
        ``{"json": ..., "markdown": ..., "det": ..., "edc/<condition>": ...}`` paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {
        "json": write_results_json(
            out_dir / "results.json",
            results,
            fr=fr,
            meta=meta,
            bootstrap=bootstrap,
            extra_comparators=extra_comparators,
        )
    }
    images: list[Path] = []
    if fr is not None:
        paths["det"] = plot_det(out_dir / "det.png", fr=fr)
        images.append(paths["det"])
    used: set[str] = set()
    for condition, methods in results.items():
        name = _safe_name(condition)
        while name in used:
            name += "_"
        used.add(name)
        p = plot_edc_condition(
            out_dir / f"edc_{name}.png",
            methods,
            condition=condition,
            limit=limits[0],
            max_discard=max_discard,
            log_fnmr=log_fnmr,
        )
        paths[f"edc/{condition}"] = p
        images.append(p)
    paths["markdown"] = write_markdown(
        out_dir / "report.md",
        results,
        title=title,
        limits=limits,
        fr=fr,
        images=images,
        meta=meta,
        bootstrap=bootstrap,
        extra_comparators=extra_comparators,
    )
    return paths
