"""What a run prints is worth reading: each cause warned once, no advertisements, quiet exporters, one line per
dataset, no worker-count warnings, and exported files readable like any other file."""

from __future__ import annotations

import logging
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_folder_dataset
from torch import nn

from aikd.data import FaceDataModule, FolderSource, SyntheticSource, all_pairs, read_folder
from aikd.evaluation import EDCWarning
from aikd.evaluation.runner import AttributeQuality, evaluate
from aikd.geometry.align import Canvas, Geometry
from aikd.geometry.misalign import LandmarkJitter, NoMisalign
from aikd.geometry.preprocess import InputSpec
from aikd.models.student import Student
from aikd.serving.export import export_student, quiet_exporters


class _PixelEmbedding(nn.Module):
    """A stand-in FR comparator: pooled pixels as the embedding (the evaluation only needs some scores)."""

    def __init__(self) -> None:
        super().__init__()
        self.input_spec = InputSpec(geometry=Geometry(size=64))

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(faces, 4).flatten(1)


def test_edc_warning_is_emitted_once_per_cause_and_names_the_config_key(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "faces", identities=4, per_identity=4)
    index = read_folder(root)
    pairs = all_pairs(index)
    assert pairs.n_nonmated < 1000  # too few for FMR 1e-3: every condition and method hits the same cause
    rng = np.random.default_rng(0)
    methods = {name: AttributeQuality(rng.random(len(index))) for name in ("a", "b")}
    conditions = {"aligned": NoMisalign(), "jitter": LandmarkJitter(3.0)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(
            index,
            pairs,
            methods,
            _PixelEmbedding(),
            conditions,
            canvas=Canvas(size=160, face=Geometry(size=96)),
            operating_points=("start_err=0.10", "fmr=1e-3"),
            limits=(0.2,),
            strict=False,
            progress=False,
        )
    fmr = [str(w.message) for w in caught if w.category is EDCWarning and "for FMR 0.001" in str(w.message)]
    assert len(fmr) == 1, fmr  # was one per condition and method (4 here, 18 in the demo)
    assert "evaluation.strict" in fmr[0] and "in 4 parts of this evaluation" in fmr[0]
    assert "strict=False to accept" not in fmr[0]  # it was already False: the message says what it means instead


def test_lightning_cloud_tips_are_filtered_and_other_messages_kept(tmp_path: Path) -> None:
    import lightning_utilities.core.rank_zero as rank_zero
    import pytorch_lightning as pl

    import aikd.training  # noqa: F401  (what every training run imports)

    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(level=logging.DEBUG)
    logger = rank_zero.log  # the logger Lightning's rank_zero_info writes to
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        pl.Trainer(accelerator="cpu", logger=False, default_root_dir=str(tmp_path), enable_progress_bar=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert any("GPU available" in m for m in messages)  # Lightning still speaks
    assert not any("litlogger" in m or "litmodels" in m for m in messages), messages


def test_quiet_exporters_hides_exporter_chatter_only() -> None:
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Collect()
    logger = logging.getLogger("onnxscript.optimizer._constant_folding")
    parent = logging.getLogger("onnxscript")
    parent.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet_exporters():
                logger.info("Skipping constant folding for node 'x'")
                logger.warning("a real problem")
                warnings.warn("trace detail", torch.jit.TracerWarning, stacklevel=1)
                warnings.warn("something else", UserWarning, stacklevel=1)
            logger.info("after the export")
    finally:
        logger.removeHandler(handler)
        parent.setLevel(logging.NOTSET)
    assert [r.getMessage() for r in records] == ["a real problem", "after the export"]  # level restored after
    assert [str(w.message) for w in caught] == ["something else"]


def _student() -> Student:
    torch.manual_seed(1)
    return Student(
        "timm/mobilenetv3_small_050",
        backbone_kwargs={"input_size": 64, "embedding_dim": 48},
        embedding_dim=32,
        hidden=32,
    ).eval()


def test_export_shows_no_tracer_warnings_and_files_are_world_readable(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = export_student(
                _student(), tmp_path / "export", formats=("onnx", "torchscript", "safetensors"), dynamo=False
            )
    finally:
        os.umask(old)
    noisy = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning) or "jit.trace" in str(w.message)]
    assert not noisy, [str(w.message) for w in noisy]
    modes = {fmt: stat.S_IMODE(Path(p).stat().st_mode) for fmt, p in out["files"].items()}
    modes["metadata"] = stat.S_IMODE(Path(out["metadata"]).stat().st_mode)
    assert modes == dict.fromkeys(("onnx", "torchscript", "safetensors", "metadata"), 0o644)  # 0o666 & ~umask
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == sorted(
        ["student.onnx", "student.torchscript.pt", "student.safetensors", "student.json"]
    )  # no temporary files left behind


def test_synthetic_data_prepared_by_train_and_val_is_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    common = {"root": str(tmp_path / "synthetic"), "n_identities": 2, "images_per_identity": 2, "seed": 0}
    dm = FaceDataModule(
        train=SyntheticSource(**common, identities=[0, 0]), val=SyntheticSource(**common, identities=[1, 1])
    )
    logger = "aikd.data.synthetic.generator"  # SyntheticFaces.write logs there
    with caplog.at_level(logging.INFO, logger=logger):
        dm.prepare_data()
    lines = [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.INFO]
    assert len(lines) == 1 and lines[0].startswith("wrote 4 synthetic face images"), lines


def test_num_workers_auto_and_capped_at_usable_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    source = FolderSource(str(write_folder_dataset(tmp_path / "faces")))
    with caplog.at_level(logging.INFO, logger="aikd.data.datamodule"):
        capped = FaceDataModule(train=source, num_workers=4)
    assert capped.num_workers == 2
    assert any("num_workers=4 capped at 2" in r.getMessage() for r in caplog.records)
    assert FaceDataModule(train=source, num_workers="auto").num_workers == 2
    assert FaceDataModule(train=source, num_workers=1).num_workers == 1
    assert FaceDataModule(train=source, num_workers=0).num_workers == 0
    with pytest.raises(ValueError, match="'auto'"):
        FaceDataModule(train=source, num_workers="many")


def test_data_configs_use_auto_workers() -> None:
    from aikd.config import load_option

    for name in ("synthetic", "cfp", "folder"):  # the shared data base sets it; an option could override it
        assert load_option("data", name).num_workers == "auto", name


def test_library_deprecation_notices_are_ignored_and_others_kept() -> None:
    import warnings

    import aikd.training.callbacks  # noqa: F401  (installs the filters)

    with warnings.catch_warnings(record=True) as seen:
        aikd.training.callbacks.silence_lightning_tips()  # catch_warnings reset the filters: install them again inside
        warnings.warn("'set_vital' is deprecated, please do not call", UserWarning, stacklevel=1)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=1)
        warnings.simplefilter("always", UserWarning)
        warnings.warn("a real problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a real problem"]
