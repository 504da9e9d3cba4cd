"""``aikd score`` cuts the crops training and evaluation cut: the same pixels, hence the same scores.

Training, evaluation and the caches align each photo onto a canvas (:meth:`aikd.geometry.align.Canvas.cut`: area
prefilter when the photo is shrunk more than 2x, then a warp) and cut the model's crop from the canvas on the batch
(:func:`aikd.geometry.align.crop`). ``aikd score`` used to warp the photo straight to the model's crop in one step,
without the prefilter. Measured once on that old path, for a 64 px arcface crop through the default canvas (256 px, face
at 160 px), against the evaluation runner's crop: CFP ``Images/490/frontal/10.jpg`` (2210 x 1906 px, inter-ocular
distance 717 px) differed by 3.87/255 on average (112/255 at worst), the 1500 px generated face below by 1.58/255
(125/255 at worst); through the synthetic configs' canvas (176 px, face at 112 px) 4.67/255 and 2.27/255. A
student was scored on pixels it was never trained or evaluated on, worst on large photos: the test student's raw
score moved by 8e-4 (CFP) and 6.5e-3 (generated), against a spread of 2e-2 over nine different faces. Both now
go through :func:`aikd.geometry.align.crop_photo`, and the crops are equal (0.0 difference in both cases).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from aikd.data.dataset import AlignedFaces, collate_faces, read_image
from aikd.data.index import FaceIndex
from aikd.data.synthetic import SyntheticFaces
from aikd.evaluation.runner import ModelQuality, score_index
from aikd.geometry.align import Canvas, Geometry, align_image, crop, crop_photo
from aikd.geometry.misalign import NoMisalign
from aikd.models.calibration import Calibration
from aikd.models.student import Student
from aikd.serving.export import export_student
from aikd.serving.load import DEFAULT_CANVAS, QualityModel, load_quality_model
from aikd.serving.score import score_images

#: Not the scorer's default canvas: the export has to carry it for the crops to agree.
TRAINING_CANVAS = Canvas(size=176, face=Geometry(size=112))


@pytest.fixture(scope="module")
def student() -> Student:
    """A tiny student whose raw scores move with the pixels (face batch-norm statistics, a steep quality head)."""
    torch.manual_seed(0)
    student = Student("timm/mobilenetv3_small_050", backbone_kwargs={"input_size": 64, "embedding_dim": 32},
                      embedding_dim=32, hidden=16)  # fmt: skip
    gen = SyntheticFaces(n_identities=3, images_per_identity=3, seed=5, degradation=0.5)
    crops = [crop_photo(*gen.render(i, j)[:2], student.input_spec.geometry, TRAINING_CANVAS) for i in range(3)
             for j in range(3)]  # fmt: skip
    x = torch.from_numpy(np.stack(crops))
    with torch.no_grad():
        student.train()
        for _ in range(10):
            student(x)
        student.eval()
        student.quality_head[-1].weight.mul_(30.0)
        raw = student(x).quality
    student.calibration = Calibration.fit(raw.numpy(), kind="logistic")
    student.canvas = TRAINING_CANVAS  # what distillation records from its data module
    return student


@pytest.fixture(scope="module")
def model(student: Student, tmp_path_factory: pytest.TempPathFactory) -> QualityModel:
    out = tmp_path_factory.mktemp("export")
    export_student(student, out, formats=("safetensors",))
    return load_quality_model(out, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def generated_photo(tmp_path_factory: pytest.TempPathFactory) -> tuple[FaceIndex, int]:
    """A 1500 px generated photo (runs anywhere): the face is shrunk about 5x onto the canvas."""
    root = tmp_path_factory.mktemp("photo")
    image, landmarks, _ = SyntheticFaces(n_identities=1, images_per_identity=1, seed=5, min_size=1500,
                                         max_size=1500).render(0, 0)  # fmt: skip
    cv2.imwrite(str(root / "face.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return FaceIndex(root, ["face.png"], [0], ["face"], landmarks[None]), 0


@pytest.fixture(scope="module")
def cfp_photo(cfp_root: Path) -> tuple[FaceIndex, int]:
    """A large CFP photo (2210 x 1906 px, inter-ocular distance 717 px) from the CFP index evaluation reads."""
    from aikd.data.cfp import read_cfp

    index = read_cfp(cfp_root, identities=(490, 490), poses=("frontal",), check_fiducials=False)
    return index, index.paths.index("Images/490/frontal/10.jpg")


def test_export_records_the_training_canvas(model: QualityModel, tmp_path: Path) -> None:
    assert model.canvas == TRAINING_CANVAS
    assert model.metadata["input"]["canvas"] == TRAINING_CANVAS.to_dict()
    # an export from before the canvas was recorded falls back to the documented default
    meta_path = next(model.source.parent.glob("*.json"))
    meta = json.loads(meta_path.read_text())
    del meta["input"]["canvas"]
    old = tmp_path / "old"
    old.mkdir()
    (old / "student.json").write_text(json.dumps(meta))
    (old / "student.safetensors").symlink_to(model.source)
    assert load_quality_model(old / "student.json", backend="torch", device="cpu").canvas == DEFAULT_CANVAS
    assert Canvas(size=256, face=Geometry(size=160)) == DEFAULT_CANVAS  # FaceDataModule's default, cfp.yaml's


@pytest.mark.parametrize("photo", ["generated_photo", pytest.param("cfp_photo", marks=pytest.mark.data)])
def test_scored_crop_and_score_equal_the_evaluation_runners(
    photo: str, request: pytest.FixtureRequest, student: Student, model: QualityModel
) -> None:
    index, row = request.getfixturevalue(photo)
    path, landmarks = index.paths[row], index.landmarks[row]
    image = read_image(str(index.root / path))
    assert max(image.shape[:2]) >= 1500  # large: the canvas shrinks it more than 2x, so the prefilter is used
    geometry = model.geometry

    # the evaluation runner's crop: the data pipeline's canvas, then the clean crop on the batch
    batch = collate_faces([AlignedFaces(index, model.canvas).load(row)])
    expected = crop(batch["image"].float() / 255, batch["landmarks"], geometry, batch["canvas_from_source"])[0]
    # aikd score's crop (what its `prepare` step hands the model in landmarks and detect mode)
    got = crop_photo(image, landmarks, geometry, model.canvas)
    assert got.shape == (3, *geometry.hw) and got.dtype == np.float32
    assert np.abs(got - expected.numpy()).mean() < 0.01 / 255
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=0)
    # the one-warp crop aikd score used to cut is off by more than a grey level on such photos (see the docstring)
    old = align_image(image, landmarks, geometry)[0].astype(np.float32).transpose(2, 0, 1) / 255
    assert np.abs(old - expected.numpy()).mean() > 1 / 255

    # the scores: aikd score's path against the evaluation runner's
    rows = score_images([path], model, root=index.root, landmarks={path: landmarks}, workers=1)
    assert rows[0]["status"] == "ok", rows
    table = score_index(index, [row], {"student": ModelQuality(student)}, {"aligned": NoMisalign()},
                        canvas=model.canvas, device="cpu", progress=False)  # fmt: skip
    assert list(table.rows) == [row]
    evaluated = float(table.quality["aligned"]["student"][0])
    assert abs(rows[0]["quality_raw"] - evaluated) < 1e-4
    with torch.no_grad():  # the old crop's score is off by more than that (8e-4 on CFP, 6.5e-3 generated)
        assert abs(float(student(torch.from_numpy(old[None])).quality[0]) - evaluated) > 2e-4
