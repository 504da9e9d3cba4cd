"""Run a quality evaluation: comparison scores from an FR model on properly aligned faces, quality scores from
every method under every alignment condition, EDC/pAUC for each.

The protocol (docs/methods.md section 2, ISO/IEC 29794-5 style):

1. Every image used by the pair list is aligned once onto a canvas (streamed from disk).
2. The comparator (an FR backbone) embeds the *properly aligned* crop; comparison score = cosine similarity.
   These scores never change with the condition: misalignment only changes what the quality methods see.
3. For each condition (a misalignment preset, parameters drawn per image from ``(seed, image row)`` so every
   method sees exactly the same perturbation, whatever the batch), each method scores its own crop.
4. Pair quality = min of the two; EDC and pAUC per operating point (``aikd.evaluation.edc``).
5. Optionally, paired-bootstrap intervals of the differences between methods (``aikd.evaluation.bootstrap``).
6. Optionally, the same EDC/pAUC with the comparison scores of further FR models (``extra_comparators``): a quality
   method should not only look good with its own FR network. The quality scores are the same; only the comparison
   scores (and hence the errors) change. The primary comparator's results are not affected by them.

A condition is any :class:`~aikd.geometry.misalign.Misalignment`: a random preset, or a table of another detector's
landmarks (:class:`aikd.evaluation.detector.DetectorLandmarks`, the ``detector=<name>`` conditions).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aikd.data.dataset import face_loader
from aikd.data.index import FaceIndex
from aikd.data.pairs import PairList
from aikd.evaluation.bootstrap import compare_methods, default_comparisons
from aikd.evaluation.edc import EDCWarning, evaluate_quality, fr_summary, pair_quality
from aikd.geometry.align import Canvas, crop
from aikd.geometry.misalign import Misalignment, MisalignParams, NoMisalign, misalign
from aikd.geometry.preprocess import InputSpec

log = logging.getLogger(__name__)

__all__ = [
    "QualityMethod",
    "ModelQuality",
    "EmbeddingNormQuality",
    "AttributeQuality",
    "ScoreTable",
    "score_index",
    "evaluate",
    "EvaluationResult",
    "WarningSummary",
    "bootstrap_differences",
]


class QualityMethod:
    """A quality measure to evaluate.

    Image-based methods have an ``input_spec`` (their crop geometry and preprocessing) and score canonical faces;
    methods with ``input_spec = None`` score dataset rows directly (labels, metadata) and ignore the faces.
    """

    input_spec: InputSpec | None = None
    alignment_invariant: bool = False
    #: Methods built on an FR backbone may expose it: methods (and the comparator) sharing one backbone then
    #: run it once per crop, and ``from_features`` turns its embeddings into quality.
    backbone: nn.Module | None = None

    def __call__(self, faces: Tensor | None, rows: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def from_features(self, features: Tensor) -> Tensor:  # pragma: no cover - only with ``backbone``
        raise NotImplementedError

    def to(self, device: torch.device | str) -> QualityMethod:
        return self


class ModelQuality(QualityMethod):
    """Any module returning quality first: a :class:`~aikd.models.teacher.Teacher`, a
    :class:`~aikd.models.student.Student`, or a module whose output is ``(B,)`` quality or a tuple/NamedTuple
    starting with it."""

    def __init__(self, model: nn.Module, input_spec: InputSpec | None = None) -> None:
        from aikd.models.teacher import EmbeddingTeacher

        self.model = model.eval()
        self.input_spec = input_spec or model.input_spec
        if isinstance(model, EmbeddingTeacher) and model.frozen and input_spec is None:
            self.backbone = model.backbone

    def from_features(self, features: Tensor) -> Tensor:
        return self.model.head(features).quality.reshape(-1)

    def __call__(self, faces: Tensor | None, rows: Tensor) -> Tensor:
        out = self.model(faces)
        q = out[0] if isinstance(out, (tuple, list)) else out
        return q.reshape(-1)

    def to(self, device: torch.device | str) -> ModelQuality:
        self.model.to(device)
        return self


class EmbeddingNormQuality(QualityMethod):
    """L2 norm of an FR backbone's un-normalised embedding (the norm-based reference quality)."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone.eval()
        self.input_spec = backbone.input_spec

    def __call__(self, faces: Tensor | None, rows: Tensor) -> Tensor:
        return self.backbone(faces).norm(dim=-1)

    def from_features(self, features: Tensor) -> Tensor:
        return features.norm(dim=-1)

    def to(self, device: torch.device | str) -> EmbeddingNormQuality:
        self.backbone.to(device)
        return self


class AttributeQuality(QualityMethod):
    """A per-image value from the dataset (e.g. ``pose == "frontal"``): an oracle-style reference that does not
    depend on the image pixels, hence not on alignment."""

    alignment_invariant = True

    def __init__(self, values: np.ndarray) -> None:
        self.values = torch.as_tensor(np.asarray(values, dtype=np.float64))

    def __call__(self, faces: Tensor | None, rows: Tensor) -> Tensor:
        return self.values[rows.cpu()].to(rows.device)


@dataclass
class ScoreTable:
    """Per-image outputs of one scoring pass over a face index.

    Attributes:
        rows: ``(M,)`` the index rows that were scored (images without landmarks or unreadable are absent).
        embeddings: ``(M, D)`` comparator embeddings of the aligned faces (``None`` without comparator).
        quality: ``quality[condition][method]`` -> ``(M,)`` scores, aligned with ``rows``.
        n_skipped: images that could not be read.
        extra_embeddings: ``name -> (M, D)`` embeddings of the aligned faces by each extra comparator.
    """

    rows: np.ndarray
    embeddings: np.ndarray | None
    quality: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    n_skipped: int = 0
    extra_embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    def position(self) -> dict[int, int]:
        return {int(r): i for i, r in enumerate(self.rows)}


@torch.inference_mode()
def score_index(
    index: FaceIndex,
    rows: Sequence[int] | np.ndarray,
    methods: Mapping[str, QualityMethod],
    conditions: Mapping[str, Misalignment],
    comparator: nn.Module | None = None,
    canvas: Canvas | None = None,
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    *,
    extra_comparators: Mapping[str, nn.Module] | None = None,
) -> ScoreTable:
    """Score ``rows`` of ``index`` with every method under every condition (and embed them with ``comparator``).

    Images are read and aligned once; each batch is cut into every (method geometry x condition) crop on the
    device. Methods whose ``alignment_invariant`` is True are scored once and copied to every condition.
    ``extra_comparators`` (name -> FR backbone) also embed the aligned faces (``ScoreTable.extra_embeddings``).
    """
    from tqdm.auto import tqdm

    canvas = canvas or Canvas()
    dev = torch.device(device)
    keys: dict[int, str] = {}

    def backbone_key(module: nn.Module) -> str:
        if id(module) not in keys:
            from aikd.models.teacher import module_fingerprint

            keys[id(module)] = module_fingerprint(module, {"type": type(module).__name__})
        return keys[id(module)]

    wanted = np.unique(np.asarray(rows, dtype=np.int64))  # each image once, in index order
    loader = face_loader(index, canvas, wanted, batch_size=batch_size, num_workers=num_workers)
    dropped = loader.dataset.n_dropped
    if dropped:
        log.warning("%d requested image(s) have no landmarks and are left out of the evaluation", dropped)
    for m in methods.values():
        m.to(dev)
    if comparator is not None:
        comparator.to(dev).eval()
    extras = dict(extra_comparators or {})
    for extra in extras.values():
        extra.to(dev).eval()
    out_rows: list[Tensor] = []
    embs: list[Tensor] = []
    extra_embs: dict[str, list[Tensor]] = {name: [] for name in extras}
    scores: dict[str, dict[str, list[Tensor]]] = {c: {m: [] for m in methods} for c in conditions}
    n_skipped = 0
    bar = tqdm(loader, desc="scoring", unit="batch", disable=not progress)
    for batch in bar:
        n_skipped += int(batch["n_skipped"])
        if len(batch["index"]) == 0:
            continue
        img = batch["image"].to(dev).float() / 255.0
        lm = batch["landmarks"].to(dev)
        mat = batch["canvas_from_source"].to(dev)
        r = batch["index"]
        out_rows.append(r)
        ident = MisalignParams.identity(len(r), device=dev)
        # (backbone weights, geometry, condition) -> features: equal backbones run once per crop
        feature_cache: dict[tuple[str, Any, str], Tensor] = {}
        if comparator is not None:
            geometry = comparator.input_spec.geometry
            crops = crop(img, lm, geometry, mat)
            clean_emb = comparator(crops).float()
            embs.append(clean_emb.cpu())
            if isinstance(comparator, nn.Module):
                feature_cache[(backbone_key(comparator), geometry, "clean")] = clean_emb
        for name, extra in extras.items():
            # kept out of the feature cache: the methods' features (hence the primary results) are the same with and
            # without extra comparators
            extra_embs[name].append(extra(crop(img, lm, extra.input_spec.geometry, mat)).float().cpu())
        invariant_cache: dict[str, Tensor] = {}
        for cname, cond in conditions.items():
            clean = isinstance(cond, NoMisalign)
            params = ident if clean else cond.sample_for_indices(lm, r, seed=seed)
            crops_by_geometry: dict[Any, Tensor] = {}
            for mname, method in methods.items():
                if method.alignment_invariant and mname in invariant_cache:
                    scores[cname][mname].append(invariant_cache[mname])
                    continue
                if method.backbone is not None and method.input_spec is not None:
                    g = method.input_spec.geometry
                    key = (backbone_key(method.backbone), g, "clean" if clean else cname)
                    if key not in feature_cache:
                        if g not in crops_by_geometry:
                            crops_by_geometry[g], _ = misalign(img, lm, g, params, mat)
                        feature_cache[key] = method.backbone(crops_by_geometry[g]).float()
                    scores[cname][mname].append(method.from_features(feature_cache[key]).float().cpu())
                    continue
                faces = None
                if method.input_spec is not None:
                    g = method.input_spec.geometry
                    if g not in crops_by_geometry:
                        crops_by_geometry[g], _ = misalign(img, lm, g, params, mat)
                    faces = crops_by_geometry[g]
                q = method(faces, r.to(dev)).float().cpu()
                if method.alignment_invariant:
                    invariant_cache[mname] = q
                scores[cname][mname].append(q)
    if not out_rows:
        raise RuntimeError("no image could be scored (all lacked landmarks or were unreadable)")
    return ScoreTable(
        rows=torch.cat(out_rows).numpy(),
        embeddings=torch.cat(embs).numpy() if embs else None,
        quality={c: {m: torch.cat(v).numpy() for m, v in ms.items()} for c, ms in scores.items()},
        n_skipped=n_skipped,
        extra_embeddings={name: torch.cat(v).numpy() for name, v in extra_embs.items()},
    )


@dataclass
class EvaluationResult:
    """Everything one evaluation produced (``results[condition][method]`` as in :mod:`aikd.evaluation.report`)."""

    results: dict[str, dict[str, dict[str, Any]]]
    fr: dict[str, Any]
    mated_scores: np.ndarray
    nonmated_scores: np.ndarray
    n_pairs_dropped: int
    table: ScoreTable
    paths: dict[str, Path] = field(default_factory=dict)
    #: paired-bootstrap differences between methods (:func:`bootstrap_differences`), ``None`` when not bootstrapped
    bootstrap: dict[str, Any] | None = None
    #: the same evaluation with each extra comparator's comparison scores: ``name -> {"results", "fr"}``
    extra_comparators: dict[str, dict[str, Any]] = field(default_factory=dict)


class WarningSummary:
    """Collects one evaluation's :class:`~aikd.evaluation.edc.EDCWarning` warnings; emits each distinct one once.

    One evaluation computes the EDC figures of every method under every condition; a cause such as too few
    non-mated pairs for an FMR is the same for all of them, and was printed once per condition and method (18 times
    in the demo), hiding everything else. :meth:`collect` records the warnings of one part (e.g.
    ``"aligned/student"``); :meth:`emit` warns once per distinct message, saying in how many parts it arose. Other
    warnings raised meanwhile are passed on unchanged (once per place that raised them).
    """

    def __init__(self) -> None:
        self.edc: dict[str, list[str]] = {}
        self.other: list[warnings.WarningMessage] = []

    @contextlib.contextmanager
    def collect(self, part: str) -> Iterator[None]:
        """Record the warnings raised inside under the label ``part``."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EDCWarning)
            try:
                yield
            finally:
                for w in caught:
                    if issubclass(w.category, EDCWarning):
                        self.edc.setdefault(str(w.message), []).append(part)
                    else:
                        self.other.append(w)

    def emit(self) -> None:
        """Warn once per distinct cause (naming where it arose), then forget them."""
        seen: set[tuple[Any, ...]] = set()
        for w in self.other:
            key = (w.category, str(w.message), w.filename, w.lineno)
            if key not in seen:
                seen.add(key)
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        for message, parts in self.edc.items():
            where = sorted(set(parts), key=parts.index)
            if len(where) == 1:
                note = f"[in {where[0]}]"
            else:
                shown = ", ".join(where[:3]) + (", ..." if len(where) > 3 else "")
                note = f"[in {len(where)} parts of this evaluation: {shown}]"
            warnings.warn(f"{message} {note}", EDCWarning, stacklevel=3)
        self.edc, self.other = {}, []


def comparison_scores(embeddings: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Cosine similarity of embedding rows ``a`` and ``b`` (chunked: 240k pairs need no big temporaries)."""
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    out = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), chunk):
        out[s : s + chunk] = np.einsum("ij,ij->i", e[a[s : s + chunk]], e[b[s : s + chunk]])
    return out


def bootstrap_differences(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    pair_qualities: Mapping[str, Mapping[str, np.ndarray]],
    mated_scores: np.ndarray,
    comparisons: Sequence[tuple[str, str]],
    limits: Sequence[float],
    *,
    n_boot: int,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Paired-bootstrap differences of the normalised pAUC for ``comparisons`` under every condition.

    The thresholds are those the evaluation fixed on the full set (``results[condition][method]`` records them; all
    methods of a condition share them) and stay fixed on every resample; the mated pairs are resampled, with the
    same resamples for every method and condition (:mod:`aikd.evaluation.bootstrap`).

    Args:
        results: ``results[condition][method]`` from :func:`~aikd.evaluation.edc.evaluate_quality`.
        pair_qualities: ``[condition][method]`` -> pair quality of each mated pair, aligned with ``mated_scores``.
        mated_scores: comparison scores of the mated pairs.
        comparisons: ``(A, B)`` method names; the difference reported is ``pAUC(A) - pAUC(B)``.
        limits: pAUC limits.
        n_boot: resamples.
        seed: seed of the resampling.
        level: coverage of the percentile intervals.

    Returns:
        The report's ``bootstrap`` section: ``{"n_boot", "seed", "level", "resampled", "n_pairs", "threshold",
        "wall_s", "comparisons": {condition: compare_methods(...)}}``.
    """
    t0 = time.perf_counter()
    per_condition: dict[str, Any] = {}
    for cname, methods in results.items():
        first = next(iter(methods.values()))
        thresholds = {op: float(v["threshold"]) for op, v in first["operating_points"].items()}
        per_condition[cname] = compare_methods(
            mated_scores,
            pair_qualities[cname],
            thresholds,
            [(a, b) for a, b in comparisons if a in methods and b in methods],
            limits,
            n_boot=n_boot,
            seed=seed,
            level=level,
        )
    wall = time.perf_counter() - t0
    log.info(
        "paired bootstrap: %d resamples of %d mated pairs, %d comparison(s) x %d condition(s) in %.1f s",
        n_boot,
        len(mated_scores),
        len(comparisons),
        len(results),
        wall,
    )
    return {
        "n_boot": int(n_boot),
        "seed": int(seed),
        "level": float(level),
        "resampled": "mated pairs",
        "n_pairs": int(len(mated_scores)),
        "threshold": "fixed on the full set at each operating point, as in the evaluation",
        "wall_s": round(wall, 2),
        "comparisons": per_condition,
    }


def evaluate(
    index: FaceIndex,
    pairs: PairList,
    methods: Mapping[str, QualityMethod],
    comparator: nn.Module,
    conditions: Mapping[str, Misalignment] | None = None,
    canvas: Canvas | None = None,
    operating_points: Sequence[str] = ("start_err=0.10", "fmr=1e-3"),
    limits: Sequence[float] = (0.20, 0.30),
    seed: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    strict: bool = False,
    random_draws: int = 0,
    out_dir: str | Path | None = None,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_report: Callable[[dict[str, Path]], None] | None = None,
    bootstrap: int = 0,
    comparisons: Sequence[tuple[str, str]] | None = None,
    extra_comparators: Mapping[str, nn.Module] | None = None,
) -> EvaluationResult:
    """Full evaluation of quality ``methods`` on ``pairs`` of ``index``.

    Args:
        index: the faces (e.g. CFP test identities).
        pairs: comparison pairs over ``index``.
        methods: name -> :class:`QualityMethod`.
        comparator: FR backbone giving comparison scores on aligned crops.
        conditions: name -> misalignment (default: only ``{"aligned": NoMisalign()}``).
        canvas: canvas for the streamed faces.
        operating_points: e.g. ``"start_err=0.10"``, ``"fmr=1e-3"``.
        limits: pAUC discard limits.
        seed: misalignment seed (per image).
        strict: raise when an FMR operating point has fewer non-mated pairs than 1/FMR (else warn).
        random_draws: also report the spread of random qualities (0 = off).
        out_dir: if given, write ``results.json``, ``report.md``, EDC and DET plots there.
        meta: extra metadata for the JSON.
        bootstrap: resamples of the paired bootstrap of the differences between methods (0 = off); the intervals
            go into ``EvaluationResult.bootstrap`` and the report (:func:`bootstrap_differences`).
        comparisons: ``(A, B)`` method pairs to bootstrap; default
            :func:`~aikd.evaluation.bootstrap.default_comparisons` (the student against every other method).
        extra_comparators: name -> further FR backbones: the same quality scores are also evaluated with their
            comparison scores (``EvaluationResult.extra_comparators``, a section per comparator in the report). The
            primary ``comparator``'s results, and the bootstrap, are unchanged by them.
    """
    conditions = dict(conditions or {"aligned": NoMisalign()})
    extra_comparators = dict(extra_comparators or {})
    table = score_index(
        index,
        pairs.images(),
        methods,
        conditions,
        comparator,
        canvas,
        seed,
        batch_size,
        num_workers,
        device,
        progress,
        extra_comparators=extra_comparators,
    )
    pos = table.position()
    keep = np.array([int(a) in pos and int(b) in pos for a, b in zip(pairs.a, pairs.b)], dtype=bool)
    n_dropped = int((~keep).sum())
    if n_dropped:
        log.warning("%d of %d pairs dropped: an image had no landmarks or could not be read", n_dropped, len(pairs))
    ia = np.array([pos[int(a)] for a in pairs.a[keep]], dtype=np.int64)
    ib = np.array([pos[int(b)] for b in pairs.b[keep]], dtype=np.int64)
    mated = pairs.mated[keep]
    assert table.embeddings is not None
    s = comparison_scores(table.embeddings, ia, ib)
    mated_scores, nonmated_scores = s[mated], s[~mated]
    summary = WarningSummary()  # one warning per cause, not one per condition and method
    with summary.collect("the FR summary"):
        fr = fr_summary(mated_scores, nonmated_scores)

    def edc_results(mated_s: np.ndarray, nonmated_s: np.ndarray, part: str) -> dict[str, dict[str, dict[str, Any]]]:
        """``results[condition][method]`` with these comparison scores (``part`` prefixes the warnings' places)."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for cname in conditions:
            out[cname] = {}
            for mname in methods:
                q = table.quality[cname][mname]
                with summary.collect(f"{part}{cname}/{mname}"):
                    out[cname][mname] = evaluate_quality(
                        mated_s,
                        nonmated_s,
                        q[ia[mated]],
                        q[ib[mated]],
                        operating_points=tuple(operating_points),
                        limits=tuple(limits),
                        strict=strict,
                        random_draws=random_draws,
                        seed=seed,
                    )
        return out

    results = edc_results(mated_scores, nonmated_scores, "")
    pair_qualities = {
        cname: {mname: pair_quality(q[ia[mated]], q[ib[mated]]) for mname, q in table.quality[cname].items()}
        for cname in conditions
    }
    other: dict[str, dict[str, Any]] = {}
    for name in extra_comparators:  # the same qualities, another FR model's comparison scores
        s_x = comparison_scores(table.extra_embeddings[name], ia, ib)
        with summary.collect(f"the FR summary (comparator {name})"):
            fr_x = fr_summary(s_x[mated], s_x[~mated])
        other[name] = {"results": edc_results(s_x[mated], s_x[~mated], f"comparator {name}: "), "fr": fr_x}
    summary.emit()
    res = EvaluationResult(results, fr, mated_scores, nonmated_scores, n_dropped, table, extra_comparators=other)
    pairs_to_compare = default_comparisons(list(methods)) if comparisons is None else list(comparisons)
    if bootstrap > 0 and pairs_to_compare:
        res.bootstrap = bootstrap_differences(
            results, pair_qualities, mated_scores, pairs_to_compare, limits, n_boot=int(bootstrap), seed=seed
        )
    if out_dir is not None:
        from aikd.evaluation.report import write_report

        info = {
            "pairs": pairs.name,
            "n_pairs_used": int(keep.sum()),
            "n_pairs_dropped": n_dropped,
            "n_images": len(table.rows),
            "seed": seed,
            "conditions": list(conditions),
            "methods": list(methods),
            **({"extra_comparators": list(extra_comparators)} if extra_comparators else {}),
            **dict(meta or {}),
        }
        with summary.collect("the report"):
            res.paths = write_report(
                out_dir,
                results,
                fr=fr,
                meta=info,
                limits=tuple(limits),
                bootstrap=res.bootstrap,
                extra_comparators=res.extra_comparators or None,
            )
        summary.emit()
        if on_report is not None:
            on_report(res.paths)
    return res
