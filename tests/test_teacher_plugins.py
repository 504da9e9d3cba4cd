"""Behaviour of the bundled teacher plug-ins beyond the registry-wide contract (tests/test_teachers.py):
ONNX parity and failure modes, ensemble arithmetic, norm teachers, official-checkpoint teachers, teacher configs."""

from __future__ import annotations

import copy
import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue
from torch import nn

from aikd.geometry.preprocess import InputSpec
from aikd.models.backbones import create_backbone
from aikd.models.calibration import Calibration, magface_ofiq_score
from aikd.models.teacher import TEACHERS, Teacher, create_teacher, load_teacher, save_teacher
from aikd.training.margins import create_margin_head
from teachers.ensemble import calibration_centre_scale
from teachers.onnx import EXAMPLE_INPUT_SPEC, export_example_model

CONF = Path(__file__).resolve().parent.parent / "conf" / "teacher"


def _faces(size: int | tuple[int, int], n: int = 4, seed: int = 0) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _small(name: str, seed: int = 0, **overrides: object) -> Teacher:
    """A small frozen teacher built from the class's example arguments (with overrides)."""
    torch.manual_seed(seed)
    return create_teacher(name, **{**TEACHERS.get(name).example_kwargs, **overrides})


# ------------------------------------------------------------------------------------------------------ ONNX
@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return path, export_example_model(path)


def _onnx(path: Path, **kw: object) -> Teacher:
    return create_teacher("onnx", path=str(path), input_spec=EXAMPLE_INPUT_SPEC, **kw)


def test_onnx_teacher_reproduces_the_torch_model(onnx_model: tuple[Path, nn.Module]) -> None:
    path, model = onnx_model
    faces = _faces(32, n=5)
    with torch.no_grad():
        emb, q = model(InputSpec.from_dict(EXAMPLE_INPUT_SPEC).normalize(faces))  # what the file computes
    t = _onnx(path, quality_output="quality", embedding_output="embedding")
    out = t(faces)
    torch.testing.assert_close(out.quality, q.squeeze(1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.embedding, emb, atol=1e-5, rtol=1e-4)
    assert t.embedding_dim == 16 and t.config["input_name"] == "faces"
    # the input spec is applied: feeding raw faces to the model gives other scores
    assert not torch.allclose(model(faces)[1].squeeze(1), out.quality, atol=1e-3)
    # "norm": the L2 norm of an output (norm-based models); "negate": lower-is-better models; outputs by index
    norm = _onnx(path, quality_output="embedding", quality_transform="norm")
    torch.testing.assert_close(norm.score(faces), emb.norm(dim=1), atol=1e-5, rtol=1e-4)
    assert norm.embedding_dim is None and norm(faces).embedding is None
    neg = _onnx(path, quality_output=1, quality_transform="negate")
    torch.testing.assert_close(neg.score(faces), -q.squeeze(1), atol=1e-5, rtol=1e-4)
    assert neg.config["quality_output"] == "quality"  # recorded by name


def test_onnx_teacher_with_a_fixed_batch_of_one(tmp_path: Path) -> None:
    model = export_example_model(tmp_path / "b1.onnx", seed=3, dynamic_batch=False)
    faces = _faces(32, n=3)
    with torch.no_grad():
        _, q = model(InputSpec.from_dict(EXAMPLE_INPUT_SPEC).normalize(faces))
    t = _onnx(tmp_path / "b1.onnx", quality_output="quality")
    torch.testing.assert_close(t.score(faces), q.squeeze(1), atol=1e-5, rtol=1e-4)


def test_onnx_teacher_errors(onnx_model: tuple[Path, nn.Module], tmp_path: Path) -> None:
    path, _ = onnx_model
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        _onnx(tmp_path / "nope.onnx")
    wrong = {**EXAMPLE_INPUT_SPEC, "geometry": {"size": 48, "template": "arcface"}}
    with pytest.raises(ValueError, match=r"\(batch, 3, 48, 48\).*input_spec"):
        create_teacher("onnx", path=str(path), input_spec=wrong)
    with pytest.raises(ValueError, match=r"'score' is not an output.*\['embedding', 'quality'\]"):
        _onnx(path, quality_output="score")
    with pytest.raises(ValueError, match="embedding_output=5"):
        _onnx(path, embedding_output=5)
    with pytest.raises(ValueError, match="quality_transform='norm'"):
        _onnx(path, quality_output="embedding")  # 16 values per face cannot be a score as they are
    with pytest.raises(ValueError, match="quality_transform"):
        _onnx(path, quality_transform="sigmoid")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx.*onnxruntime cannot load"):
        _onnx(tmp_path / "junk.onnx")
    t = _onnx(path, quality_output="quality")
    with pytest.raises(ValueError, match=r"\(32, 32\)"):
        t(_faces(40))


def test_onnx_fingerprint_follows_the_file_content_not_its_place(tmp_path: Path) -> None:
    export_example_model(tmp_path / "a.onnx", seed=0)
    shutil.copy(tmp_path / "a.onnx", tmp_path / "copy.onnx")
    a = _onnx(tmp_path / "a.onnx", quality_output="quality")
    assert _onnx(tmp_path / "copy.onnx", quality_output="quality").fingerprint == a.fingerprint
    assert a.config["sha256"] and a.state_dict() == {}  # no torch parameters: the file is the weights
    saved = save_teacher(a, tmp_path / "a.safetensors")
    export_example_model(tmp_path / "a.onnx", seed=1)  # the file changes under the saved teacher
    b = _onnx(tmp_path / "a.onnx", quality_output="quality")
    assert b.fingerprint != a.fingerprint
    with pytest.raises(ValueError, match="ONNX file changed"):
        load_teacher(saved)
    # sessions do not pickle; a copy opens its own and scores the same
    faces = _faces(32)
    torch.testing.assert_close(copy.deepcopy(b).score(faces), b.score(faces))


# -------------------------------------------------------------------------------------------------- ensemble
def _calibrated_member_file(tmp_path: Path, name: str = "m", seed: int = 0, **overrides: object) -> Path:
    """A small crfiqa teacher with an ECDF calibration fitted on its own scores, saved as a teacher file."""
    t = _small("crfiqa", seed=seed, **overrides)
    t.calibration = Calibration.fit(t.score(_faces(t.input_spec.size, n=64, seed=seed + 100)).numpy(), kind="ecdf")
    return save_teacher(t, tmp_path / f"{name}.safetensors")


def test_ensemble_of_identical_members_equals_the_member(tmp_path: Path) -> None:
    f = _calibrated_member_file(tmp_path)
    member = create_teacher("crfiqa", weights=f)
    faces = _faces(member.input_spec.size, n=6, seed=5)
    rank = create_teacher("ensemble", members=[{"name": "crfiqa", "weights": str(f)}] * 2)
    expected = member.score_0_100(faces)
    assert float(expected.max() - expected.min()) > 1.0  # the faces are not all ranked alike
    torch.testing.assert_close(rank.score(faces), expected)
    assert rank.input_spec.geometry == member.input_spec.geometry and rank.embedding_dim is None
    z = create_teacher("ensemble", members=[{"name": "crfiqa", "weights": str(f)}] * 2, mode="zscore")
    centre, scale = calibration_centre_scale(member.calibration)
    torch.testing.assert_close(z.score(faces), (member.score(faces) - centre) / scale)


def test_ecdf_centre_scale_matches_the_logistic_fit() -> None:
    raw = np.random.default_rng(0).gamma(2.0, 1.5, size=500)
    logistic = Calibration.fit(raw, kind="logistic")
    got = calibration_centre_scale(Calibration.fit(raw, kind="ecdf"))
    np.testing.assert_allclose(got, (logistic.centre, logistic.scale), rtol=1e-9)
    assert calibration_centre_scale(logistic) == (logistic.centre, logistic.scale)


def test_ensemble_weights_modes_and_errors(tmp_path: Path) -> None:
    fa = _calibrated_member_file(tmp_path, "a", seed=0)
    fb = _calibrated_member_file(tmp_path, "b", seed=1, projection_dim=16)
    a, b = create_teacher("crfiqa", weights=fa), create_teacher("crfiqa", weights=fb)
    faces = _faces(a.input_spec.size, n=5, seed=9)
    members = [{"name": "crfiqa", "weights": str(fa)}, {"name": "crfiqa", "weights": str(fb)}]
    weighted = create_teacher("ensemble", members=members, member_weights=[3.0, 1.0])
    torch.testing.assert_close(weighted.score(faces), 0.75 * a.score_0_100(faces) + 0.25 * b.score_0_100(faces))
    equal = create_teacher("ensemble", members=members)
    torch.testing.assert_close(equal.score(faces), 0.5 * (a.score_0_100(faces) + b.score_0_100(faces)))
    assert weighted.fingerprint != equal.fingerprint
    # the member calibrations are part of what the ensemble computes, hence of its fingerprint
    recalibrated = [members[0], {**members[1], "calibration": Calibration.fit([0.0, 1.0, 5.0]).to_dict()}]
    assert create_teacher("ensemble", members=recalibrated).fingerprint != equal.fingerprint
    logistic = [members[0], {**members[1], "calibration": {"kind": "logistic", "centre": 0.0, "scale": 1.0}}]
    z = create_teacher("ensemble", members=logistic, mode="zscore")
    ca, sa = calibration_centre_scale(a.calibration)
    torch.testing.assert_close(z.score(faces), 0.5 * ((a.score(faces) - ca) / sa + b.score(faces)))

    with pytest.raises(ValueError, match=r"member 1 \('crfiqa'\) has a 'identity' calibration"):
        create_teacher("ensemble", members=[members[0], {"name": "crfiqa", **TEACHERS.get("crfiqa").example_kwargs}])
    with pytest.raises(ValueError, match="needs members calibrated with ecdf"):
        create_teacher("ensemble", members=logistic, mode="rank")
    with pytest.raises(ValueError, match="member_weights"):
        create_teacher("ensemble", members=members, member_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="mode"):
        create_teacher("ensemble", members=members, mode="median")
    with pytest.raises(ValueError, match="at least one member"):
        create_teacher("ensemble", members=[])
    with pytest.raises(ValueError, match="give one or the other"):
        create_teacher("ensemble", members=[{**members[0], "projection_dim": 8}])


def test_ensemble_rejects_members_with_different_geometries(tmp_path: Path) -> None:
    kw = dict(TEACHERS.get("crfiqa").example_kwargs)
    fa = _calibrated_member_file(tmp_path, "a")
    fb = _calibrated_member_file(tmp_path, "b", backbone_kwargs={**kw["backbone_kwargs"], "input_size": 80})
    members = [{"name": "crfiqa", "weights": str(fa)}, {"name": "crfiqa", "weights": str(fb)}]
    with pytest.raises(ValueError, match=r"share one input geometry.*\[64, 64\].*\[80, 80\]"):
        create_teacher("ensemble", members=members)


# ---------------------------------------------------------------------------------------------- norm teachers
def test_magface_quality_is_the_embedding_norm() -> None:
    t = _small("magface")
    faces = _faces(t.input_spec.size)
    out = t(faces)
    assert t.quality_head is None
    torch.testing.assert_close(out.quality, out.embedding.norm(dim=1))
    with torch.no_grad():  # cached-feature path gives the same score
        torch.testing.assert_close(t.head(t.backbone(faces)).quality, out.quality)
    assert t.calibration.kind == "identity"


def test_magface_ofiq_calibration_is_the_unrounded_ofiq_mapping() -> None:
    t = _small("magface", ofiq_calibration=True)
    assert (t.calibration.kind, t.calibration.centre, t.calibration.scale) == ("logistic", 23.0, 2.6)
    norms = torch.tensor([5.0, 20.0, 23.0, 24.3, 30.0, 60.0])
    cal = t.calibration(norms)
    torch.testing.assert_close(cal, 100.0 * torch.sigmoid((norms - 23.0) / 2.6))
    assert (cal - magface_ofiq_score(norms)).abs().max() <= 0.5  # OFIQ rounds to integers
    assert t.config["ofiq_calibration"] is True


# ------------------------------------------------------------------------------------- official checkpoints
class _MagFaceBuilder(nn.Module):
    """MagFace's training wrapper as saved: the iResNet as ``features`` and the MagLinear weight as ``fc``."""

    def __init__(self, features: nn.Module, classes: int = 5) -> None:
        super().__init__()
        self.features = features
        self.fc = nn.Module()
        self.fc.weight = nn.Parameter(torch.randn(512, classes))


class _AdaFaceTrainer(nn.Module):
    """AdaFace's LightningModule as saved: the IR net as ``model`` and the margin head as ``head``."""

    def __init__(self, model: nn.Module, classes: int = 5) -> None:
        super().__init__()
        self.model = model
        self.head = nn.Module()
        self.head.kernel = nn.Parameter(torch.randn(512, classes))
        self.head.register_buffer("batch_mean", torch.ones(1) * 20)
        self.head.register_buffer("batch_std", torch.ones(1) * 100)


def _perturb(model: nn.Module, seed: int) -> nn.Module:
    """Move every BatchNorm statistic off its default so that a checkpoint loaded wrongly shows up in outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Random iResNet-18 / IR-18 networks saved in the MagFace, CR-FIQA and AdaFace checkpoint formats."""
    d = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    mag = _perturb(create_backbone("iresnet18", preset="magface"), 1)
    res = _perturb(create_backbone("iresnet18", preset="crfiqa"), 2)
    ir = _perturb(create_backbone("ir_18"), 3)
    qs = nn.Linear(512, 1)
    builder = nn.DataParallel(_MagFaceBuilder(mag))
    torch.save({"epoch": 25, "arch": "iresnet18", "state_dict": builder.state_dict()}, d / "magface_epoch_00025.pth")
    torch.save({**res.state_dict(), "qs.weight": qs.weight.detach(), "qs.bias": qs.bias.detach()}, d / "1backbone.pth")
    torch.save({"epoch": 3, "state_dict": _AdaFaceTrainer(ir).state_dict()}, d / "adaface_ir18.ckpt")
    return {"mag": mag, "res": res, "ir": ir, "qs": qs.eval(), "dir": d}


def _round_trip(t: Teacher, tmp_path: Path, faces: torch.Tensor) -> None:
    """A saved official-checkpoint teacher reloads without the checkpoint and scores identically."""
    loaded = load_teacher(save_teacher(t, tmp_path / f"{t.name}.safetensors")).freeze()
    torch.testing.assert_close(loaded.score(faces), t.score(faces))
    assert loaded.input_spec == t.input_spec and loaded.fingerprint == t.fingerprint


def test_official_magface_teacher(official: dict, tmp_path: Path) -> None:
    t = create_teacher("magface", checkpoint=str(official["dir"] / "magface_epoch_00025.pth"), ofiq_calibration=True)
    assert t.config["arch"] == "iresnet18" and t.backbone.preset == "magface" and t.input_spec.colour == "BGR"
    faces = _faces(112, n=2)
    with torch.no_grad():
        ref = official["mag"](faces)
    q = t.score(faces)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q, ref.norm(dim=1), atol=1e-4, rtol=1e-5)
    assert t.calibration.kind == "logistic"
    _round_trip(t, tmp_path, faces)


def test_official_crfiqa_teacher(official: dict, tmp_path: Path) -> None:
    t = create_teacher("crfiqa", checkpoint=str(official["dir"] / "1backbone.pth"))
    faces = _faces(112, n=2, seed=1)
    with torch.no_grad():
        ref = official["qs"](official["res"](faces)).squeeze(1)
    q = t.score(faces)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q, ref, atol=1e-4, rtol=1e-5)
    _round_trip(t, tmp_path, faces)


def test_official_adaface_teacher_takes_bgr_through_the_backbone_spec(official: dict, tmp_path: Path) -> None:
    t = create_teacher("adaface", checkpoint=str(official["dir"] / "adaface_ir18.ckpt"), arch="ir_18")
    assert t.input_spec.colour == "BGR" and t.input_spec.geometry.hw == (112, 112)
    faces = _faces(112, n=2, seed=2)
    with torch.no_grad():  # by hand: flip RGB -> BGR, scale to [-1, 1], run the network, take the norm
        bgr = official["ir"].forward_features((faces.flip(1) - 0.5) / 0.5).norm(dim=1)
        rgb = official["ir"].forward_features((faces - 0.5) / 0.5).norm(dim=1)
    q = t.score(faces)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q, bgr, atol=1e-4, rtol=1e-5)
    assert (q - rgb).abs().max() > 1e-3  # the channel order matters, so the test above can tell
    _round_trip(t, tmp_path, faces)


def test_official_loaders_reject_the_wrong_format(official: dict) -> None:
    with pytest.raises(ValueError, match="not a MagFace checkpoint"):
        create_teacher("magface", checkpoint=str(official["dir"] / "adaface_ir18.ckpt"))
    with pytest.raises(ValueError, match="not an AdaFace checkpoint"):
        create_teacher("adaface", checkpoint=str(official["dir"] / "1backbone.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_teacher("magface", checkpoint=str(official["dir"] / "missing.pth"))


# ----------------------------------------------------------------------------------------------- configs
def _config_files() -> list[Path]:
    return sorted(CONF.glob("*.yaml"))


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: p.stem)
def test_teacher_configs_name_real_teachers_arguments_and_objectives(path: Path) -> None:
    from hydra.utils import instantiate

    from aikd.config import load_option
    from aikd.training.teacher_fit import FIT_KEYS, TeacherSpec

    cfg = OmegaConf.create({"teacher": load_option("teacher", path.stem)})  # resolves in-group defaults
    t = cfg.teacher
    assert t._target_ == "aikd.training.teacher_fit.TeacherSpec"
    factory = TEACHERS.get(t.name)
    params = inspect.signature(factory).parameters
    unknown = [k for k in t.build if k not in params]
    assert not unknown, f"{path.name}: build keys {unknown} are not arguments of teacher '{t.name}'"
    if t.get("fit"):
        objective = TeacherSpec(name=t.name, fit=dict(t.fit)).objective_class()  # the teacher's own, or fit's
        unread = set(t.fit) - set(FIT_KEYS) - set(objective.option_names())
        assert not unread, f"{path.name}: fit keys {unread} are neither training-loop keys nor options of the objective"
        head = OmegaConf.to_container(t.fit.head)
        create_margin_head(head.pop("name"), 8, 3, **head)  # the head accepts every setting given
    mandatory = "???" in path.read_text()
    if path.stem.endswith("_official") or path.stem in ("onnx", "ensemble"):
        assert mandatory, f"{path.name}: the model / teacher files must be mandatory values (???)"
    if mandatory:  # composing such a config without the value fails naming the key
        with pytest.raises(MissingMandatoryValue, match=r"teacher\.build\."):
            instantiate(t, _convert_="partial")
    else:
        spec = instantiate(t, _convert_="partial")
        assert spec.name == t.name and spec.build == OmegaConf.to_container(t.build, resolve=True)
        if spec.fit:
            assert isinstance(spec.fit["optimizer"]([nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer)
    if path.stem in ("crfiqa", "magface", "adaface", "ri"):  # one data/optimiser recipe for the FaceNet teachers
        assert (t.fit.batch_size, t.fit.optimizer.lr) == (256, 1e-3)
        assert t.build.backbone == "facenet" and t.build.trainable_backbone == "none"


def test_ensemble_config_members_are_mandatory_teacher_files() -> None:
    cfg = OmegaConf.load(CONF / "ensemble.yaml")
    assert cfg.build.mode in ("rank", "zscore") and len(cfg.build.members) >= 2
    assert all(OmegaConf.is_missing(m, "weights") and m.name in TEACHERS for m in cfg.build.members)
