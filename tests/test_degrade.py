"""Photometric degradations for distillation (``conf/degrade``, :mod:`aikd.data.degrade`).

What must hold: ``degrade=none`` / ``p=0`` changes no pixel; a degraded canvas keeps shape, dtype and range and is
really degraded; draws are a pure function of ``(seed, epoch, row)``; only the distillation training loader
degrades (validation, evaluation and teacher training stay clean); a run that would pair degraded faces with
cached clean-face teacher scores is refused at start-up; and with ``variants`` the teacher's scores of the degraded
versions are cached and equal what the online teacher computes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from conftest import write_folder_dataset
from hydra.utils import instantiate
from omegaconf import DictConfig

import aikd.config  # noqa: F401  (resolvers)
from aikd.app.validate import ConfigError, validate_run
from aikd.data import FaceDataModule, FolderSource
from aikd.data.datamodule import EpochShuffleSampler
from aikd.data.degrade import Degradation, seed_transforms
from aikd.geometry.align import Canvas, Geometry

CONF = Path(__file__).resolve().parent.parent / "conf"
STAGES = ["prepare", "preview", "teacher", "distill", "evaluate", "export"]
CANVAS = Canvas(size=96, face=Geometry(size=64))


def _degrade_option(name: str = "realistic", **overrides) -> Degradation:
    """``conf/degrade/<name>.yaml`` (default realistic) as a run builds it (seed 0), with ``overrides`` of its
    arguments."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONF / "degrade" / f"{name}.yaml")
    node.seed = 0
    for k, v in overrides.items():
        node[k] = v
    return instantiate(node)


def _sharp_canvas(seed: int = 0, size: int = 176) -> np.ndarray:
    """A canvas with fine detail (checkerboard + noise), where blur and down-scaling must show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    board = (((yy // 4) + (xx // 4)) % 2 * 160 + 40).astype(np.float64)
    img = board[..., None] + rng.normal(0, 20, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _sharpness(img: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def _datamodule(root: Path, degrade: Degradation | None) -> FaceDataModule:
    dm = FaceDataModule(
        train=FolderSource(str(root), identities=(0, 2)),
        val=FolderSource(str(root), identities=(3, 3)),
        canvas=CANVAS,
        batch_size=4,
        num_workers=0,
        degrade=degrade,
    )
    dm.setup("fit")
    return dm


# --------------------------------------------------------------------------------------------------------------
# The degradation itself
# --------------------------------------------------------------------------------------------------------------


def test_p_zero_and_no_pipeline_leave_the_canvas_bit_identical() -> None:
    img = _sharp_canvas()
    for d in (_degrade_option(p=0.0), Degradation(None, p=1.0)):
        assert not d.active
        for row in range(20):
            out = d(img, row, epoch=row % 3)
            assert out is img and np.array_equal(out, _sharp_canvas())


def test_forced_degradation_keeps_shape_dtype_and_range_and_changes_pixels() -> None:
    img = _sharp_canvas(size=96)
    d = _degrade_option(p=1.0)
    changed = 0
    for row in range(40):
        out = d(img, row)
        assert out.shape == img.shape and out.dtype == np.uint8 and out.flags.c_contiguous
        changed += not np.array_equal(out, img)
    assert np.array_equal(img, _sharp_canvas(size=96))  # the input is never modified in place
    assert changed >= 30  # inside the pipeline each transform has its own probability; most faces get some


def _forced_step(kind: str, name: str = "realistic") -> Degradation:
    """The blur or down-scaling step of ``conf/degrade/<name>.yaml`` alone, applied to every face."""
    pipeline = _degrade_option(name).transform
    steps = {
        "blur": next(
            t for t in pipeline.transforms if isinstance(t, A.OneOf) and "Blur" in type(t.transforms[0]).__name__
        ),
        "downscale": next(t for t in pipeline.transforms if isinstance(t, A.Downscale)),
    }
    step = steps[kind]
    step.p = 1.0
    return Degradation(A.Compose([step]), p=1.0, seed=0)


@pytest.mark.parametrize("kind", ["blur", "downscale"])
def test_blur_and_downscaling_lower_sharpness(kind: str) -> None:
    """The realistic pipeline's blur and down-scaling steps, forced on, lower the Laplacian variance of every face."""
    d = _forced_step(kind)
    for row in range(10):
        img = _sharp_canvas(seed=row)
        assert _sharpness(d(img, row)) < 0.7 * _sharpness(img), (kind, row)


@pytest.mark.parametrize("kind", ["blur", "downscale"])
def test_heavy_reaches_further_than_realistic(kind: str) -> None:
    """degrade=heavy's blur and down-scaling reach the graded set's strongest levels, which realistic never does:
    over the same forced draws its most degraded face is far less sharp, and on average it removes more detail."""
    sharp = {}
    for name in ("realistic", "heavy"):
        d = _forced_step(kind, name)
        sharp[name] = np.array([_sharpness(d(_sharp_canvas(seed=row), row)) for row in range(40)])
    assert sharp["heavy"].min() < 0.5 * sharp["realistic"].min(), kind
    assert np.median(sharp["heavy"]) < np.median(sharp["realistic"]), kind


def test_share_of_degraded_faces_follows_p() -> None:
    img = _sharp_canvas(size=64)
    d = _degrade_option(p=0.5)
    untouched = sum(d(img, row) is img for row in range(400))
    assert 160 <= untouched <= 240  # about half are skipped outright (binomial, sd 10)


def test_draws_are_a_function_of_seed_epoch_and_row() -> None:
    img = _sharp_canvas(size=64)
    d, again, other_seed = _degrade_option(p=1.0), _degrade_option(p=1.0), _degrade_option(p=1.0, seed=1)
    same = [np.array_equal(d(img, r, 2), again(img, r, 2)) for r in range(10)]
    assert all(same)
    # order of calls does not matter (each face reseeds the pipeline)
    backwards = {r: d(img, r, 2) for r in reversed(range(10))}
    assert all(np.array_equal(backwards[r], again(img, r, 2)) for r in range(10))
    assert sum(not np.array_equal(d(img, r, 0), d(img, r, 1)) for r in range(10)) >= 7  # new draw per epoch
    assert sum(not np.array_equal(d(img, r, 0), other_seed(img, r, 0)) for r in range(10)) >= 7


def test_transforms_of_a_pipeline_draw_independently() -> None:
    """``Compose.set_random_seed`` gives every child the same seed (so all would pass or fail their probability
    test together); :func:`seed_transforms` gives each its own."""
    pipeline = A.Compose([A.GaussianBlur(p=0.5), A.GaussNoise(p=0.5), A.ImageCompression(p=0.5)])
    seed_transforms(pipeline, np.random.SeedSequence(0))
    firsts = [t.py_random.random() for t in pipeline.transforms]
    assert len(set(firsts)) == 3


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"degrade.p must be in \[0, 1\]"):
        Degradation(None, p=1.5)
    d = Degradation(A.Compose([A.Resize(32, 32)]), p=1.0)
    with pytest.raises(ValueError, match="photometric transforms that keep size"):
        d(_sharp_canvas(size=64), 0)


# --------------------------------------------------------------------------------------------------------------
# In the data module: training split of distillation only, reproducible per epoch
# --------------------------------------------------------------------------------------------------------------


def test_degrade_none_gives_the_same_batches_as_no_degrade(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "faces", identities=4, per_identity=4, size=96)
    clean = next(iter(_datamodule(root, None).train_dataloader()))
    off = next(iter(_datamodule(root, _degrade_option(p=0.0)).train_dataloader()))
    assert torch.equal(clean["index"], off["index"]) and torch.equal(clean["image"], off["image"])


def test_only_the_distillation_training_loader_degrades(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "faces", identities=4, per_identity=4, size=96)
    clean, degraded = _datamodule(root, None), _datamodule(root, _degrade_option(p=1.0))
    assert degraded.degrades and not clean.degrades
    # validation (and test/evaluation, which read the same way) are untouched
    for a, b in zip(clean.val_dataloader(), degraded.val_dataloader()):
        assert torch.equal(a["image"], b["image"])
    # teacher training reads dataset("train", augment=True): clean faces
    assert torch.equal(
        clean.dataset("train", augment=True)[0]["image"], degraded.dataset("train", augment=True)[0]["image"]
    )
    # the distillation training loader degrades; the same faces in the same order, other pixels
    a, b = next(iter(clean.train_dataloader())), next(iter(degraded.train_dataloader()))
    assert torch.equal(a["index"], b["index"]) and torch.equal(a["landmarks"], b["landmarks"])
    assert a["image"].shape == b["image"].shape and b["image"].dtype == torch.uint8
    assert not torch.equal(a["image"], b["image"])


def test_training_batches_are_reproducible_per_epoch_and_change_between_epochs(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "faces", identities=4, per_identity=4, size=96)

    def batches(epoch: int, workers: int = 0) -> dict[int, torch.Tensor]:
        dm = _datamodule(root, _degrade_option(p=1.0))
        dm.num_workers = workers
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)  # what Lightning does before every epoch
        return {int(i): img for b in loader for i, img in zip(b["index"], b["image"])}

    first = batches(1)
    assert first.keys() == batches(1, workers=1).keys()
    assert all(torch.equal(first[k], v) for k, v in batches(1, workers=1).items())  # any worker, same pixels
    later = batches(2)
    assert sum(not torch.equal(first[k], later[k]) for k in first) >= len(first) // 2


def test_epoch_tagging_sampler() -> None:
    plain, tagged = EpochShuffleSampler(6, seed=3), EpochShuffleSampler(6, seed=3, tag_epoch=True)
    for s in (plain, tagged):
        s.set_epoch(4)
    assert list(tagged) == [(4, i) for i in plain]


# --------------------------------------------------------------------------------------------------------------
# Configuration: composes, builds, and degraded faces need the online teacher
# --------------------------------------------------------------------------------------------------------------


def test_realistic_with_the_online_teacher_composes_builds_and_validates(
    compose_cfg: Callable[..., DictConfig],
) -> None:
    cfg = compose_cfg("degrade=realistic", "stage.distill.teacher_mode=online")
    d = instantiate(cfg.degrade)
    assert isinstance(d, Degradation) and d.active and d.seed == cfg.seed
    validate_run(cfg, STAGES)
    assert compose_cfg().degrade is None  # the default: degrade=none


def test_realistic_with_cached_teacher_scores_needs_variants(compose_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(ConfigError) as info:
        validate_run(compose_cfg("degrade=realistic", "stage.distill.teacher_mode=cache"), STAGES)
    text = str(info.value)
    for expected in (
        "degrade=realistic",
        "stage.distill.teacher_mode=cache",
        "set degrade.variants=4",
        "stage.distill.teacher_mode=online",
    ):
        assert expected in text, text
    # with a fixed number of degraded versions per face the cache can hold their scores
    validate_run(compose_cfg("degrade=realistic", "degrade.variants=4", "stage.distill.teacher_mode=cache"), STAGES)
    # ... on one process only
    with pytest.raises(ConfigError, match=r"degrade.variants and cached teacher scores runs on one process"):
        validate_run(compose_cfg("degrade=realistic", "degrade.variants=4", "trainer=ddp_cpu"), STAGES)
    # a number of versions below one is refused with the key
    with pytest.raises(ConfigError, match=r"degrade.variants must be a positive number"):
        validate_run(compose_cfg("degrade=realistic", "degrade.variants=0"), STAGES)
    # without the distill stage nothing is degraded, so nothing to refuse
    validate_run(compose_cfg("degrade=realistic", "stages=[prepare,preview]"), STAGES)


def test_a_broken_pipeline_is_refused_at_start_up(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("degrade=realistic", "stage.distill.teacher_mode=online", "degrade.p=2")
    with pytest.raises(ConfigError, match=r"degrade=realistic: the degradation pipeline cannot be built"):
        validate_run(cfg, STAGES)


def test_the_pipeline_hands_the_degradation_to_the_data_module(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    from aikd.app.pipeline import RunContext, build_datamodule

    root = write_folder_dataset(tmp_path / "faces", identities=4, per_identity=2, size=96)
    for option, expected in (("realistic", True), ("none", False)):
        cfg = compose_cfg(
            f"degrade={option}", "data=folder", f"data.root={root}", "data.detect_missing=false", "data.num_workers=0"
        )
        dm = build_datamodule(RunContext(cfg, tmp_path / "out"))
        assert dm.degrades is expected, option


class _Recording(Degradation):
    """A degradation that records which (row, epoch) it was asked for (loader in the main process)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, int]] = []

    def apply(self, image: np.ndarray, row: int, epoch: int = 0) -> tuple[np.ndarray, bool]:
        self.calls.append((int(row), int(epoch)))
        return super().apply(image, row, epoch)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_distillation_fit_degrades_each_face_once_per_epoch_with_the_online_teacher(tmp_path: Path) -> None:
    """Through Lightning: the trainer's set_epoch reaches the draws, and the online teacher scores degraded faces."""
    import pytorch_lightning as pl

    from aikd.geometry.misalign import LandmarkJitter
    from aikd.models.student import Student
    from aikd.models.teacher import TEACHERS, create_teacher
    from aikd.training import DistillModule

    root = write_folder_dataset(tmp_path / "faces", identities=4, per_identity=4, size=96)
    degradation = _Recording(_degrade_option().transform, p=1.0, seed=0)
    dm = _datamodule(root, degradation)
    torch.manual_seed(0)
    teacher = create_teacher("crfiqa", **TEACHERS.get("crfiqa").example_kwargs)
    student = Student("mobilefacenet", embedding_dim=teacher.embedding_dim, hidden=16)
    module = DistillModule(student, misalign=LandmarkJitter(2.0), student_config=student.config)
    module.attach_teacher(teacher, None)  # no caches: online
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=dm)
    n_train = len(dm.dataset("train"))
    used = n_train - n_train % dm.batch_size  # drop_last
    for epoch in (0, 1):
        rows = [r for r, e in degradation.calls if e == epoch]
        assert len(rows) == used and len(set(rows)) == used, (epoch, rows)
    # the teacher's targets are its scores of the degraded aligned crops, not of the clean ones
    batch = next(iter(dm.train_dataloader()))
    clean = next(iter(_datamodule(root, None).train_dataloader()))
    module.eval()
    q_degraded = module.on_after_batch_transfer(dict(batch), 0)["teacher_quality"]
    q_clean = module.on_after_batch_transfer(dict(clean), 0)["teacher_quality"]
    assert torch.equal(batch["index"], clean["index"]) and not torch.allclose(q_degraded, q_clean)


# --------------------------------------------------------------------------------------------------------------
# A fixed number of degraded versions per face: teacher scores cached, keyed by the degradation
# --------------------------------------------------------------------------------------------------------------


def test_variants_repeat_the_draws_every_n_epochs() -> None:
    img = _sharp_canvas(size=96)
    fresh, cyclic = _degrade_option(p=0.6), _degrade_option(p=0.6, variants=3)
    for row in range(12):
        outs = [cyclic(img, row, e) for e in range(6)]
        for e in range(3):
            assert np.array_equal(outs[e], outs[e + 3])  # epoch e and e + 3 show the same version
            assert np.array_equal(outs[e], fresh(img, row, e))  # the first cycle is the fresh draws' first epochs
            if not cyclic.applies(row, e):  # applies() tells what __call__ does: a face it rejects stays clean
                assert outs[e] is img
    share = np.mean([cyclic.applies(r, e) for r in range(300) for e in range(3)])
    assert 0.5 < share < 0.7  # p = 0.6
    changed = [not np.array_equal(cyclic(img, r, 0), img) for r in range(40) if cyclic.applies(r, 0)]
    assert np.mean(changed) > 0.7  # (a face drawn for degradation can still escape every transform's own p)


def test_fingerprint_names_what_decides_the_degraded_faces() -> None:
    base = _degrade_option(variants=4)
    assert base.fingerprint() == _degrade_option(variants=4).fingerprint()  # two builds of one config: one cache entry
    others = [_degrade_option(variants=2), _degrade_option(variants=4, p=0.3), _degrade_option(variants=4, seed=1)]
    others.append(Degradation(A.Compose([A.GaussianBlur(blur_limit=(3, 9), p=1.0)]), p=0.5, seed=0, variants=4))
    prints = {base.fingerprint(), *(d.fingerprint() for d in others)}
    assert len(prints) == 5


@pytest.mark.parametrize("reuse_features", [True, False], ids=["head-on-cached-features", "whole-teacher"])
def test_cached_scores_of_degraded_faces_equal_the_online_teachers(
    tmp_path: Path, reuse_features: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over several epochs of the degrading training loader, the cache gives for each face exactly what the online
    teacher computes on that batch; only degraded faces cost a teacher pass, and a second run computes nothing."""
    from aikd.models.teacher import TEACHERS, create_teacher
    from aikd.training.cache import (
        DegradedTeacherScores,
        canvas_batch,
        degraded_teacher_scores,
        head_only_scoring,
        teacher_score_cache,
        teacher_scores,
    )

    root = write_folder_dataset(tmp_path / "faces", identities=4, per_identity=4, size=96)
    degradation = _degrade_option(p=0.5, variants=2)
    dm = _datamodule(root, degradation)
    torch.manual_seed(0)
    teacher = create_teacher("crfiqa", **TEACHERS.get("crfiqa").example_kwargs).eval()
    assert head_only_scoring(teacher)  # so both paths are exercised by the parametrisation
    index = dm.index("train")
    cache_root = tmp_path / "cache" / "teacher_scores"
    clean = teacher_score_cache(teacher, index, dm.canvas, cache_root, batch_size=8, reuse_features=reuse_features)
    scores = degraded_teacher_scores(
        teacher, index, dm.canvas, cache_root, degradation, clean, batch_size=8, reuse_features=reuse_features
    )
    assert isinstance(scores, DegradedTeacherScores)
    n_degraded = sum(degradation.applies(r, v) for r in range(len(index)) for v in range(2))
    assert 0 < n_degraded < 2 * len(index) and int(scores.degraded.done.sum()) == n_degraded

    loader = dm.train_dataloader()
    seen_degraded = 0
    for epoch in range(4):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            assert torch.equal(batch["epoch"], torch.full_like(batch["index"], epoch))
            with torch.no_grad():
                online = teacher_scores(teacher, canvas_batch(batch, "cpu"))
            # the loader's own draw travels with the batch and is the one applies() makes
            drawn = [degradation.applies(int(r), epoch) for r in batch["index"]]
            assert batch["degraded"].dtype == torch.bool and batch["degraded"].tolist() == drawn
            q, e = scores.lookup(batch["index"], batch["epoch"], batch["degraded"])
            torch.testing.assert_close(q, online["quality"], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(e, online["embedding"], atol=2e-3, rtol=2e-3)  # stored as float16
            q2, _ = scores.lookup(batch["index"], batch["epoch"])  # drawn again when the batch does not say
            assert torch.equal(q2, q)
            seen_degraded += sum(drawn)
    assert seen_degraded > 0
    with pytest.raises(ValueError, match="need the epoch of each face"):
        scores.lookup(batch["index"])

    # resumable and reused: a second call finds every version scored and runs neither backbone nor teacher
    def refuse(*args, **kwargs):
        raise AssertionError("computed again")

    monkeypatch.setattr(teacher.backbone, "forward", refuse)
    monkeypatch.setattr(teacher, "forward", refuse)
    again = degraded_teacher_scores(
        teacher, index, dm.canvas, cache_root, degradation, clean, batch_size=8, reuse_features=reuse_features
    )
    assert again.degraded.directory == scores.degraded.directory
    # another degradation is another entry
    other = _degrade_option(p=0.5, variants=3)
    monkeypatch.undo()
    third = degraded_teacher_scores(teacher, index, dm.canvas, cache_root, other, clean, batch_size=8)
    assert third.degraded.directory != scores.degraded.directory and third.degraded.n == 3 * len(index)


def test_degraded_features_of_a_smaller_split_are_reused(tmp_path: Path) -> None:
    """A split that extends another one (recipes on identities 001-400, then the test run on 001-450) keeps the
    first split's rows, and so each of their degraded versions: those backbone features are copied from the first
    split's entry, bit for bit, and only the new faces' versions go through the backbone. The same faces under
    another degradation seed are degraded differently, so nothing is reused there."""
    from aikd.models.teacher import TEACHERS, create_teacher
    from aikd.training.cache import degraded_teacher_scores, row_keys, teacher_score_cache

    root = write_folder_dataset(tmp_path / "faces", identities=4, per_identity=3, size=96)
    part, full = FolderSource(str(root), identities=(0, 1)).load(), FolderSource(str(root)).load()
    assert np.array_equal(row_keys(full)[: len(part)], row_keys(part))  # the smaller split is a prefix
    torch.manual_seed(0)
    teacher = create_teacher("crfiqa", **TEACHERS.get("crfiqa").example_kwargs).eval()
    degradation = _degrade_option(p=0.5, variants=2)
    cache_root = tmp_path / "cache" / "teacher_scores"

    def degraded(index, degradation, root=cache_root):  # noqa: ANN001, ANN202
        clean = teacher_score_cache(teacher, index, CANVAS, root, batch_size=8, progress=False)
        return degraded_teacher_scores(teacher, index, CANVAS, root, degradation, clean, batch_size=8, progress=False)

    def versions(index, degradation):  # noqa: ANN001, ANN202
        return [(r, v) for v in range(2) for r in range(len(index)) if degradation.applies(r, v)]

    seen = []
    hook = teacher.backbone.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    try:
        first = degraded(part, degradation)
        seen.clear()
        second = degraded(full, degradation)
        new_faces = [(r, v) for r, v in versions(full, degradation) if r >= len(part)]
        assert 0 < sum(seen) == len(new_faces) + (len(full) - len(part))  # new versions + the new clean faces
        seen.clear()
        other_seed = _degrade_option(p=0.5, variants=2, seed=7)
        degraded(full, other_seed)
        assert sum(seen) == len(versions(full, other_seed))  # clean features cached; no degraded one reused
    finally:
        hook.remove()
    # what was copied is what the backbone would compute: the scores equal those of a cache filled from scratch
    alone = degraded(full, degradation, root=tmp_path / "alone" / "teacher_scores")
    slots = np.asarray([r * 2 + v for r, v in versions(full, degradation)])
    (q_reused,) = second.degraded.read(slots, "quality")
    (q_alone,) = alone.degraded.read(slots, "quality")
    torch.testing.assert_close(q_reused, q_alone, atol=1e-5, rtol=1e-5)
    part_slots = np.asarray([r * 2 + v for r, v in versions(part, degradation)])
    assert torch.equal(first.degraded.read(part_slots, "quality")[0], second.degraded.read(part_slots, "quality")[0])


def test_degraded_scores_need_variants(tmp_path: Path) -> None:
    from aikd.models.teacher import TEACHERS, create_teacher
    from aikd.training.cache import degraded_teacher_scores, teacher_score_cache

    root = write_folder_dataset(tmp_path / "faces", identities=4, per_identity=2, size=96)
    dm = _datamodule(root, _degrade_option(p=1.0))
    teacher = create_teacher("crfiqa", **TEACHERS.get("crfiqa").example_kwargs).eval()
    clean = teacher_score_cache(teacher, dm.index("train"), dm.canvas, tmp_path / "c")
    with pytest.raises(ValueError, match=r"degrade.variants is null.*set degrade.variants"):
        degraded_teacher_scores(teacher, dm.index("train"), dm.canvas, tmp_path / "c", dm.degrade, clean)
