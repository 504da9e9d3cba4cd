"""``data=celeba10k`` (CelebA 10k, landmarks detected and cached) and ``data=cfp_celeba`` (CFP 001-450 plus CelebA
10k for training, CFP 451-500 alone for validation), and the index concatenation behind ``data.extra_train``.

Composition and start-up validation run anywhere; loading real faces needs ``$AIKD_DATA`` (the ``celeba_root`` and
``cfp_root`` fixtures skip, saying why, when it is unset). The real folder is read-only: the loading tests detect
on a few copied images and check that nothing was written next to the data.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig

import aikd.config  # noqa: F401  (resolvers)
from aikd.app.validate import ConfigError, validate_run
from aikd.data import FaceDataModule, FaceIndex, FolderSource
from aikd.data.index import concat_indices
from aikd.io import cache_dir

CONF = Path(__file__).resolve().parent.parent / "conf"
STAGES = ["prepare", "preview", "teacher", "distill", "evaluate", "export"]


def _copy_faces(src: Path, dst: Path, n: int) -> Path:
    """The first identity folders of ``src`` holding at least ``n`` images, copied to ``dst`` (same layout)."""
    count = 0
    for ident in sorted(p for p in src.iterdir() if p.is_dir()):
        shutil.copytree(ident, dst / ident.name)
        count += len(list(ident.iterdir()))
        if count >= n:
            break
    return dst


def _listing(root: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(root).as_posix(), p.stat().st_mtime_ns) for p in root.rglob("*"))


# ------------------------------------------------------------------------------------------------ composition


def test_celeba10k_composes_from_aikd_data(compose_cfg: Callable[..., DictConfig], monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AIKD_DATA", str(tmp_path / "shared"))
    cfg = compose_cfg("data=celeba10k")
    assert cfg.data.root == str(tmp_path / "shared" / "celeba10k") and cfg.task_name == "celeba10k-demo"
    dm = instantiate(cfg.data, _convert_="partial")  # builds without touching the (absent) folder
    train, val = dm.sources["train"], dm.sources["val"]
    assert isinstance(dm, FaceDataModule) and isinstance(train, FolderSource) and isinstance(val, FolderSource)
    assert (train.split, val.split) == ("train", "val") and train.holdout == val.holdout == 0.1
    assert train.landmarks is None and train.detect_missing and train.detector == "mtcnn"
    assert dm.canvas.face.size == 160 and not dm.extra_train
    yunet = instantiate(compose_cfg("data=celeba10k", "data.detector=yunet").data, _convert_="partial")
    assert yunet.sources["train"].detector == yunet.sources["val"].detector == "yunet"


def test_cfp_celeba_composes_cfp_plus_celeba_for_training(
    compose_cfg: Callable[..., DictConfig], monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("AIKD_DATA", str(tmp_path / "shared"))
    dm = instantiate(compose_cfg("data=cfp_celeba").data, _convert_="partial")
    assert type(dm.sources["train"]).__name__ == "CFPSource" and list(dm.sources["train"].identities) == [1, 450]
    assert list(dm.sources["val"].identities) == [451, 500] and dm.sources["test"] is dm.sources["val"]
    (extra,) = dm.extra_train
    assert isinstance(extra, FolderSource) and extra.root == str(tmp_path / "shared" / "celeba10k")
    assert extra.split == "all" and extra.detect_missing and extra.landmarks is None and extra.detector == "mtcnn"


def test_teacher_extra_train_must_be_a_bool(compose_cfg: Callable[..., DictConfig]) -> None:
    assert validate_run(compose_cfg("teacher.fit.extra_train=true"), STAGES) == []
    with pytest.raises(ConfigError, match=r"teacher\.fit\.extra_train='yes' must be true .* or false"):
        validate_run(compose_cfg("teacher.fit.extra_train=yes"), STAGES)


def test_teacher_on_extra_faces_with_leave_one_out_centres_refuses_single_faces_at_start_up(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    """CelebA has thousands of identities with one face; a leave-one-out teacher cannot use them, and the run must
    say so before caching any features, naming the key to set."""
    empty = tmp_path / "nothing_here"
    empty.mkdir()  # the data is absent, so every variant fails; what matters is whether this reason is among them
    base = ("data=cfp_celeba", "teacher=crfiqa_sface", f"paths.data_dir={empty}")

    def problems(*overrides: str) -> str:
        with pytest.raises(ConfigError) as err:
            validate_run(compose_cfg(*base, *overrides), STAGES)
        return str(err.value)

    reason = r"data.extra_train[0].min_images_per_identity=1: set it to 2 or more"
    assert reason in problems("teacher.fit.extra_train=true")
    assert "min_images_per_identity" not in problems(
        "teacher.fit.extra_train=true", "data.extra_train.0.min_images_per_identity=3"
    )
    assert "min_images_per_identity" not in problems("teacher.fit.extra_train=false")
    assert "min_images_per_identity" not in problems("teacher.fit.extra_train=true", "teacher.fit.cr_centres=head")


def test_missing_data_names_aikd_data(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    """Without the data the run refuses to start, naming the key and the environment variable to set."""
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"data\.root=.*celeba10k: no such folder.*set the AIKD_DATA"):
        validate_run(compose_cfg("data=celeba10k", f"paths.data_dir={empty}"), STAGES)
    with pytest.raises(
        ConfigError, match=r"data\.extra_train\[0\]\.root=.*celeba10k: no such file or folder.*AIKD_DATA"
    ):
        validate_run(compose_cfg("data=cfp_celeba", f"paths.data_dir={empty}"), STAGES)


# ------------------------------------------------------------------------------------------------ concatenation


def _index(root: Path, paths: list[str], names: list[str], identity: list[int], **attributes) -> FaceIndex:
    lms = np.arange(len(paths) * 10, dtype=np.float32).reshape(-1, 5, 2)
    return FaceIndex(root, paths, np.asarray(identity), names, lms, {k: np.asarray(v) for k, v in attributes.items()})


def test_concat_indices_reroots_paths_and_keeps_identities_apart(tmp_path: Path) -> None:
    a = _index(tmp_path / "cfp" / "Data", ["Images/001/a.jpg", "Images/002/b.jpg"], ["001", "002"], [0, 1],
               pose=np.asarray(["frontal", "profile"], dtype=object), det_score=[0.9, 0.8])  # fmt: skip
    b = _index(tmp_path / "celeba10k", ["001/x.jpg", "003/y.jpg", "003/z.jpg"], ["001", "003"], [0, 1, 1],
               det_score=[0.7, 0.6, 0.5], n_faces=[1, 1, 2])  # fmt: skip
    both = concat_indices([a, b])
    assert both.root == tmp_path and len(both) == 5
    assert both.paths[0] == "cfp/Data/Images/001/a.jpg" and both.paths[2] == "celeba10k/001/x.jpg"
    assert [str(both.path(i)) for i in range(5)] == [str(a.path(i)) for i in range(2)] + [
        str(b.path(i)) for i in range(3)
    ]
    # "001" of CFP and "001" of CelebA are different people: 4 identities, not 3
    assert both.num_identities == 4 and len(set(both.identity[:2]) & set(both.identity[2:])) == 0
    assert both.identity[3] == both.identity[4]
    np.testing.assert_array_equal(both.landmarks, np.concatenate([a.landmarks, b.landmarks]))
    np.testing.assert_allclose(both.attributes["det_score"], [0.9, 0.8, 0.7, 0.6, 0.5])
    assert list(both.attributes["pose"]) == ["frontal", "profile", "", "", ""]  # text: filled with ""
    assert np.isnan(both.attributes["n_faces"][:2]).all() and list(both.attributes["n_faces"][2:]) == [1, 1, 2]
    # two parts of one dataset (same root) share the identities they have in common
    same = concat_indices([b.subset([0, 1]), b.subset([2])])
    assert same.root == b.root and same.paths == b.paths and same.num_identities == 2
    assert same.identity[1] == same.identity[2]
    assert concat_indices([a]) is a
    with pytest.raises(ValueError, match="at least one"):
        concat_indices([])


def test_extra_train_joins_the_training_split_only(folder_dataset: Path, tmp_path: Path) -> None:
    from conftest import write_folder_dataset

    other = write_folder_dataset(tmp_path / "other", identities=2, per_identity=3, seed=1)
    dm = FaceDataModule(
        train=FolderSource(str(folder_dataset)),
        val=FolderSource(str(folder_dataset), identities=(0, 0)),
        extra_train=[FolderSource(str(other))],
        num_workers=0,
    )
    dm.prepare_data()
    assert len(dm.index("train")) == 12 + 6 and dm.index("train").num_identities == 3 + 2
    assert len(dm.index("val")) == 4 and dm.index("val").root == folder_dataset
    faces = dm.dataset("train")
    assert len(faces) == 18 and faces[17]["image"].shape == (3, dm.canvas.size, dm.canvas.size)


def test_teachers_train_on_the_primary_split_unless_their_recipe_says_extra_train(
    folder_dataset: Path, tmp_path: Path
) -> None:
    """Extra faces (CelebA's: one to eight per identity) widen what the student sees; the teacher's classes,
    centres and calibration stay those of the primary data unless ``teacher.fit.extra_train: true``."""
    from conftest import write_folder_dataset

    from aikd.geometry.align import Canvas, Geometry
    from aikd.models.teacher import TEACHERS
    from aikd.training.cache import dataset_fingerprint
    from aikd.training.teacher_fit import TeacherSpec, obtain_teacher, training_index

    other = write_folder_dataset(tmp_path / "other", identities=2, per_identity=3, seed=1)
    dm = FaceDataModule(
        train=FolderSource(str(folder_dataset)),
        val=FolderSource(str(folder_dataset), identities=(0, 0)),
        extra_train=[FolderSource(str(other))],
        canvas=Canvas(size=120, face=Geometry(size=64)),
        num_workers=0,
    )
    dm.prepare_data()
    primary, full = dm.index("train", extra=False), dm.index("train")
    assert (len(primary), primary.num_identities, len(full), full.num_identities) == (12, 3, 18, 5)
    assert dm.index("val", extra=False) is dm.index("val")  # only the training split has extra faces
    build = dict(TEACHERS.get("crfiqa").example_kwargs)
    fit = {"head": {"name": "arcface", "s": 16.0, "m": 0.1}, "epochs": 1, "batch_size": 6}
    cache = tmp_path / "cache"
    for extra, index in ((False, primary), (True, full)):
        spec = TeacherSpec(name="crfiqa", build=build, fit={**fit, "extra_train": True} if extra else fit)
        assert training_index(spec, dm) is index
        spec.objective()  # extra_train is the training loop's key, not an option of the CR-FIQA objective
        teacher = obtain_teacher(spec, dm, tmp_path / f"run-{extra}", cache, {"accelerator": "cpu"}, seed=0)
        assert teacher.frozen
        trained_on = json.loads((tmp_path / f"run-{extra}" / "teacher.json").read_text())["trained_on"]
        assert trained_on["images"] == len(index) and trained_on["identities"] == index.num_identities
        assert (cache / "teachers" / f"{spec.fit_key(dataset_fingerprint(index), 0)}.safetensors").is_file()
    assert len(list((cache / "teachers").glob("*.safetensors"))) == 2
    # A teacher whose backbone trains reads images, not cached features: the same faces.
    seen: list[int] = []
    dataset = dm.dataset
    dm.dataset = lambda *a, **k: seen.append(len(out := dataset(*a, **k))) or out  # type: ignore[method-assign]
    spec = TeacherSpec(name="crfiqa", build={**build, "trainable_backbone": "all"}, fit=fit)
    obtain_teacher(spec, dm, tmp_path / "run-trainable", cache, {"accelerator": "cpu"}, seed=0)
    assert seen == [len(primary)]


# ------------------------------------------------------------------------------------------------ real faces


def test_celeba10k_faces_load_with_detected_landmarks(
    compose_cfg: Callable[..., DictConfig], celeba_root: Path, tmp_path: Path
) -> None:
    """A few real CelebA faces through data=celeba10k: MTCNN finds the faces, the landmarks are cached under the
    run's cache (not next to the images), and the canvases load."""
    before = _listing(celeba_root)
    faces = _copy_faces(celeba_root, tmp_path / "celeba", n=20)
    n_images = len(list(faces.rglob("*.jpg")))
    cfg = compose_cfg("data=celeba10k", f"data.root={faces}", "data.holdout=0.2", "data.num_workers=0")
    assert validate_run(cfg, STAGES) == []
    dm = instantiate(cfg.data, _convert_="partial")
    dm.prepare_data()
    train, val = dm.index("train"), dm.index("val")
    assert len(train) + len(val) == n_images >= 20
    assert not set(train.identity_names) & set(val.identity_names)
    for index in (train, val):
        found = index.has_landmarks
        assert found.mean() >= 0.9, index.issues  # 89x109 eye-aligned crops: MTCNN finds nearly every face
        lm = index.landmarks[found]
        assert ((lm[..., 0] > 0) & (lm[..., 0] < 89) & (lm[..., 1] > 0) & (lm[..., 1] < 109)).all()
        assert (lm[:, 0, 0] < lm[:, 1, 0]).all() and (lm[:, 2, 1] < lm[:, 3, 1]).all()  # eyes l/r, nose above mouth
        assert (index.attributes["det_score"][found] > 0.8).all()
    assert list(cache_dir("landmarks").glob("*.csv"))  # aikd's cache root ($AIKD_CACHE; a run's paths.cache_dir)
    assert sorted(p.name for p in faces.iterdir() if p.is_file()) == []  # nothing written next to the images
    item = dm.dataset("train")[0]
    assert item["image"].shape == (3, 256, 256) and item["landmarks"].shape == (5, 2)
    assert _listing(celeba_root) == before


def test_cfp_celeba_train_is_the_sum_and_val_is_cfp(
    compose_cfg: Callable[..., DictConfig], cfp_root: Path, celeba_root: Path, tmp_path: Path
) -> None:
    faces = _copy_faces(celeba_root, tmp_path / "celeba", n=10)
    cfg = compose_cfg("data=cfp_celeba", f"paths.data_dir={cfp_root.parent}", "data.num_workers=0")
    cfg.data.extra_train[0].root = str(faces)
    dm = instantiate(cfg.data, _convert_="partial")
    dm.prepare_data()
    cfp_train = dm.sources["train"].load()
    celeba = dm.extra_train[0].load()
    train, val = dm.index("train"), dm.index("val")
    assert len(train) == len(cfp_train) + len(celeba) and len(celeba) >= 10
    assert train.num_identities == cfp_train.num_identities + celeba.num_identities
    files = [str(train.path(i)) for i in range(len(train))]
    assert files == [str(cfp_train.path(i)) for i in range(len(cfp_train))] + [
        str(p) for p in map(celeba.path, range(len(celeba)))
    ]
    assert val.root == cfp_root / "Data" and all(p.startswith("Images/") for p in val.paths)  # CFP alone
    assert len(val) == len(dm.sources["val"].load()) and {int(i) for i in val.attributes["cfp_id"]} == set(
        range(451, 501)
    )
    assert dm.index("test").paths == val.paths  # test defaults to val: CFP alone too
    last = dm.dataset("train").get_row(len(train) - 1)  # a CelebA face, found through the common root
    assert last is not None and last["image"].shape == (3, 256, 256)
