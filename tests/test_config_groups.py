"""Every option of every config group composes into the real train config and instantiates.

Parametrised over the files in ``conf/``: a new option is tested without new test code. Heavy objects are kept
small with overrides (weights of pretrained backbones are not loaded; GPU-only trainer presets are instantiated
on the CPU with their other settings kept).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

import aikd.config  # noqa: F401  (resolvers)
from aikd.config import list_options

CONF = Path(__file__).resolve().parent.parent / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_options() -> None:
    groups = ("data", "teacher", "student", "misalign", "degrade", "model", "trainer", "logger", "callbacks", "paths")
    for group in groups:
        assert list_options(group), group
    for group in ("hydra", "experiment", "hparams_search", "evaluation"):
        assert (CONF / group).is_dir(), group


@pytest.mark.parametrize("option", _options("data"))
def test_data_options(compose_cfg: Callable[..., DictConfig], option: str) -> None:
    from aikd.data import FaceDataModule

    required = {"folder": ["data.root=/your/faces"]}  # mandatory keys (???) of an option
    dm = instantiate(compose_cfg(f"data={option}", *required.get(option, [])).data, _convert_="partial")
    assert isinstance(dm, FaceDataModule) and dm.sources["train"] is not None
    assert dm.canvas.size >= max(dm.canvas.face.hw)


@pytest.mark.parametrize("option", _options("misalign"))
def test_misalign_options(compose_cfg: Callable[..., DictConfig], option: str) -> None:
    from aikd.geometry.align import Geometry
    from aikd.geometry.misalign import Misalignment

    module = instantiate(compose_cfg(f"misalign={option}").misalign)
    assert isinstance(module, Misalignment)
    lm = torch.tensor([[[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]]]).repeat(4, 1, 1) + 40
    crops = module(torch.rand(4, 3, 200, 200), lm, Geometry(size=112), generator=torch.Generator().manual_seed(0))
    assert crops.shape == (4, 3, 112, 112)


@pytest.mark.parametrize("option", _options("degrade"))
def test_degrade_options(compose_cfg: Callable[..., DictConfig], option: str) -> None:
    """Every degradation composes with the online teacher (which degraded faces need), builds, and keeps a canvas'
    shape and dtype; ``none`` is no degradation at all."""
    import numpy as np

    from aikd.data.degrade import Degradation

    cfg = compose_cfg(f"degrade={option}", "stage.distill.teacher_mode=online")
    if cfg.degrade is None:
        assert option == "none"
        return
    degradation = instantiate(cfg.degrade)
    assert isinstance(degradation, Degradation) and degradation.seed == cfg.seed
    canvas = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    for row in range(4):
        out = degradation(canvas, row, epoch=0)
        assert out.shape == canvas.shape and out.dtype == np.uint8


@pytest.mark.parametrize("option", _options("teacher"))
def test_teacher_options(compose_cfg: Callable[..., DictConfig], option: str) -> None:
    from aikd.models.teacher import TEACHERS
    from aikd.training.teacher_fit import TeacherSpec

    cfg = compose_cfg(f"teacher={option}")
    if "???" in OmegaConf.to_yaml(cfg.teacher):  # official checkpoints, ONNX files, ensemble members
        with pytest.raises(MissingMandatoryValue):
            instantiate(cfg.teacher, _convert_="partial")
        return
    spec = instantiate(cfg.teacher, _convert_="partial")
    assert isinstance(spec, TeacherSpec) and spec.name in TEACHERS
    if spec.fit:
        assert isinstance(spec.fit["optimizer"]([torch.nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer)


@pytest.mark.parametrize("option", _options("student"))
def test_student_options(compose_cfg: Callable[..., DictConfig], option: str) -> None:
    from aikd.app.pipeline import build_student_from_config
    from aikd.models.student import Student
    from aikd.models.teacher import TEACHERS, create_teacher

    cfg = compose_cfg(f"student={option}", "student.backbone_weights=null")
    assert isinstance(cfg.student.from_teacher, bool)  # every student says whether it copies the teacher
    teacher = create_teacher("crfiqa", **TEACHERS.get("crfiqa").example_kwargs)
    student = build_student_from_config(cfg, teacher)
    if cfg.student.from_teacher:
        assert cfg.student.backbone is None  # the teacher's
        for a, b in zip(student.backbone.state_dict().values(), teacher.backbone.state_dict().values()):
            assert torch.equal(a, b)  # initialised from the teacher
    assert isinstance(student, Student)
    h, w = student.input_spec.size
    out = student.eval()(torch.rand(2, 3, h, w))
    assert out.quality.shape == (2,) and out.embedding.shape == (2, student.embedding_dim)


@pytest.mark.parametrize("option", _options("model"))
def test_model_options(compose_cfg: Callable[..., DictConfig], option: str) -> None:
    from aikd.geometry.misalign import NoMisalign
    from aikd.models.student import Student
    from aikd.training import DistillModule

    cfg = compose_cfg(f"model={option}")
    student = Student("timm/test_byobnet", backbone_kwargs={"input_size": 64, "embedding_dim": 16}, hidden=8)
    module = instantiate(cfg.model, student=student, misalign=NoMisalign(), student_config=student.config)
    assert isinstance(module, DistillModule)
    opt = module.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.Optimizer)


@pytest.mark.parametrize("option", _options("trainer"))
def test_trainer_options(compose_cfg: Callable[..., DictConfig], option: str) -> None:
    import pytorch_lightning as pl

    cfg = compose_cfg(f"trainer={option}")
    node = cfg.trainer
    cpu_overrides = {}
    if node.get("accelerator") == "gpu" and not torch.cuda.is_available():
        # GPU presets: check them on the CPU with everything else as configured.
        cpu_overrides = {
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "strategy": "auto",
            "sync_batchnorm": False,
        }
    trainer = instantiate(node, logger=False, **cpu_overrides)
    assert isinstance(trainer, pl.Trainer)
    assert trainer.max_epochs == node.max_epochs


@pytest.mark.parametrize("option", _options("callbacks"))
def test_callbacks_options(compose_cfg: Callable[..., DictConfig], option: str) -> None:
    import pytorch_lightning as pl

    cfg = compose_cfg(f"callbacks={option}")
    for name, node in (cfg.callbacks or {}).items():
        assert isinstance(instantiate(node), pl.Callback), name


@pytest.mark.parametrize("option", _options("logger"))
def test_logger_options(
    compose_cfg: Callable[..., DictConfig], option: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_cfg(f"logger={option}")
    for name, node in (cfg.logger or {}).items():
        if "_target_" in node:
            logger = instantiate(node)
            assert logger is not None, name


@pytest.mark.parametrize("option", _options("evaluation"))
def test_evaluation_options(compose_cfg: Callable[..., DictConfig], option: str) -> None:
    cfg = compose_cfg(f"evaluation={option}")
    ev = cfg.evaluation
    from aikd.evaluation.detector import DETECTOR_CONDITIONS

    assert set(ev.conditions) <= set(list_options("misalign")) | set(DETECTOR_CONDITIONS)
    assert ev.protocol in ("all_pairs", "cfp_ff", "cfp_fp", "lfw")
    for op in ev.operating_points:
        from aikd.evaluation import parse_operating_point

        parse_operating_point(op)


@pytest.mark.parametrize("option", _options("experiment"))
def test_experiments_compose_and_resolve(compose_cfg: Callable[..., DictConfig], option: str) -> None:
    from aikd.app.pipeline import STAGES

    cfg = compose_cfg(f"experiment={option}")
    for key, node in cfg.items():  # every interpolation resolves (the hydra node is only complete inside a run)
        if key != "hydra" and OmegaConf.is_config(node):
            OmegaConf.to_container(node, resolve=True)
    assert set(cfg.stages) <= set(STAGES)
    instantiate(cfg.misalign)
    instantiate(cfg.data, _convert_="partial")
    if "???" not in OmegaConf.to_yaml(cfg.teacher):
        instantiate(cfg.teacher, _convert_="partial")


def _plain(node: DictConfig) -> dict:
    return OmegaConf.to_container(node, resolve=False)


@pytest.mark.parametrize("group", ["data", "model", "student", "evaluation"])
def test_load_option_matches_hydra(compose_cfg: Callable[..., DictConfig], group: str) -> None:
    """``load_option`` (stages loading options outside the defaults list) resolves an option's ``defaults`` (shared
    bases in sub-folders, other options) exactly as Hydra composes them."""
    from aikd.config import load_option

    for option in _options(group):
        assert _plain(load_option(group, option)) == _plain(compose_cfg(f"{group}={option}")[group]), option


@pytest.mark.parametrize("group, base", [("data", "base/datamodule"), ("model", "base/distill")])
def test_options_share_their_base(compose_cfg: Callable[..., DictConfig], group: str, base: str) -> None:
    """Every option of the group composes onto the same base keys and holds only its deltas (nothing the base
    already says with the same value); the base itself is not an option."""
    from aikd.config import load_option

    sub, name = base.split("/")
    shared = load_option(f"{group}/{sub}", name)
    assert len(shared) > 3 and set(list_options(group)) == set(_options(group)) and sub not in list_options(group)
    for option in _options(group):
        assert set(shared) <= set(compose_cfg(f"{group}={option}")[group]), option
        own = OmegaConf.load(CONF / group / f"{option}.yaml")
        repeated = [k for k in own if k != "defaults" and k in shared and _plain(own)[k] == _plain(shared)[k]]
        assert not repeated, f"conf/{group}/{option}.yaml repeats {repeated} of conf/{group}/{base}.yaml"
