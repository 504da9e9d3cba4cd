"""Teacher-score caches of frozen-backbone teachers come from cached backbone features (head only), with the
online teacher's values; the shared face loader keeps rows straight; evaluation and online distillation agree."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_folder_dataset

from aikd.data import FolderSource, read_folder
from aikd.data.dataset import face_loader
from aikd.data.index import FaceIndex
from aikd.geometry.align import Canvas, Geometry, crop
from aikd.models.teacher import EmbeddingTeacher, create_teacher
from aikd.training.cache import (
    feature_cache,
    head_only_scoring,
    open_feature_cache,
    open_teacher_score_cache,
    teacher_score_cache,
)

CANVAS = Canvas(size=96, face=Geometry(size=64))


def _teacher(seed: int, trainable_backbone: str = "none") -> EmbeddingTeacher:
    """A frozen CR-FIQA-style teacher on timm's tiny test network (as conf/teacher/demo.yaml, randomly initialised)."""
    torch.manual_seed(seed)
    teacher = create_teacher(
        "crfiqa",
        backbone="timm/test_byobnet",
        backbone_weights=None,
        backbone_kwargs={"input_size": 64, "embedding_dim": 32},
        projection_dim=16,
        trainable_backbone=trainable_backbone,
    )
    assert isinstance(teacher, EmbeddingTeacher)
    return teacher


@pytest.fixture
def index(tmp_path: Path) -> FaceIndex:
    root = write_folder_dataset(tmp_path / "faces", identities=3, per_identity=4, size=96)
    return FolderSource(str(root)).load()


@contextmanager
def count_backbone(teacher: EmbeddingTeacher) -> Iterator[dict[str, int]]:
    """Count the teacher backbone's forward calls and the faces it sees while inside."""
    seen = {"calls": 0, "faces": 0}

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen["calls"] += 1
        seen["faces"] += len(args[0])

    handle = teacher.backbone.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def online_scores(teacher: EmbeddingTeacher, index: FaceIndex) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Rows, quality and embedding of the full teacher (backbone included) on the clean crop of every face."""
    rows, quality, embedding = [], [], []
    for batch in face_loader(index, CANVAS, batch_size=5):
        img = batch["image"].float() / 255.0
        out = teacher(crop(img, batch["landmarks"], teacher.input_spec.geometry, batch["canvas_from_source"]))
        rows.append(batch["index"])
        quality.append(out.quality)
        embedding.append(out.embedding)
    return torch.cat(rows).numpy(), torch.cat(quality), torch.cat(embedding)


def assert_cache_equals_online(cache, teacher: EmbeddingTeacher, index: FaceIndex) -> None:
    rows, q_online, e_online = online_scores(teacher, index)
    q, e = cache.lookup(torch.as_tensor(rows))
    torch.testing.assert_close(q, q_online, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e, e_online, atol=2e-2, rtol=2e-3)  # float16 storage


def test_frozen_backbone_scores_come_from_cached_features(index: FaceIndex, tmp_path: Path) -> None:
    """The issue's must-show: with the features cached, filling the score cache runs the backbone over none of
    those faces, and stores what the online teacher says."""
    teacher = _teacher(0)
    assert head_only_scoring(teacher)
    root = tmp_path / "cache"
    # Teacher training caches the features of part of the faces (here: every other row) ...
    cached = np.arange(0, len(index), 2)
    features = feature_cache(teacher, index, CANVAS, root / "features", batch_size=5, rows=cached, progress=False)
    assert features.done.sum() == len(cached)
    # ... so filling the score cache runs the backbone over the other faces only, each once.
    with count_backbone(teacher) as seen:
        cache = teacher_score_cache(teacher, index, CANVAS, root / "teacher_scores", batch_size=5, progress=False)
    assert cache.complete
    assert seen["faces"] == len(index) - len(cached)
    assert_cache_equals_online(cache, teacher, index)
    # The same teacher on a fresh score cache root (same feature root), every feature cached now: zero backbone runs.
    with count_backbone(teacher) as seen:
        again = teacher_score_cache(
            teacher, index, CANVAS, tmp_path / "other", features_root=root / "features", progress=False
        )
        assert again.complete
    assert seen == {"calls": 0, "faces": 0}
    assert_cache_equals_online(again, teacher, index)


def test_second_head_on_the_same_backbone_reuses_the_feature_cache(index: FaceIndex, tmp_path: Path) -> None:
    first, second = _teacher(0), _teacher(1)
    second.backbone.load_state_dict(first.backbone.state_dict())  # same frozen backbone, another head
    second.invalidate_fingerprint()
    assert first.fingerprint != second.fingerprint
    assert first.backbone_fingerprint() == second.backbone_fingerprint()
    root = tmp_path / "cache" / "teacher_scores"
    teacher_score_cache(first, index, CANVAS, root, batch_size=5, progress=False)
    with count_backbone(second) as seen:
        cache = teacher_score_cache(second, index, CANVAS, root, batch_size=5, progress=False)
    assert seen["calls"] == 0 and cache.complete
    assert len(list(root.iterdir())) == 2 and len(list((root.parent / "features").iterdir())) == 1
    assert_cache_equals_online(cache, second, index)


def test_features_of_faces_cached_under_another_index_are_reused(tmp_path: Path) -> None:
    """A new split or extra training faces make a new feature entry; faces already cached under another entry of the
    same backbone, canvas and crop are copied (matched by resolved path, file and landmarks), not recomputed."""
    from aikd.data.index import concat_indices
    from aikd.training.cache import reuse_rows, row_keys

    teacher = _teacher(0)
    faces = write_folder_dataset(tmp_path / "faces", identities=3, per_identity=4, size=96)
    extra = write_folder_dataset(tmp_path / "extra", identities=2, per_identity=3, size=96, seed=1)
    part = FolderSource(str(faces), identities=(0, 1)).load()  # 8 faces: a training split
    joined = concat_indices([FolderSource(str(faces)).load(), FolderSource(str(extra)).load()])  # 12 + 6, new root
    keys_part, keys_joined = row_keys(part), row_keys(joined)
    assert len({k.tobytes() for k in keys_joined}) == len(joined)  # one key per face
    assert {k.tobytes() for k in keys_part} <= {k.tobytes() for k in keys_joined}  # same faces, other root spelling
    root = tmp_path / "features"
    first = feature_cache(teacher, part, CANVAS, root, batch_size=5, progress=False)
    with count_backbone(teacher) as seen:
        second = feature_cache(teacher, joined, CANVAS, root, batch_size=5, progress=False)
    assert second.complete and seen["faces"] == len(joined) - len(part)  # only the 10 faces not cached before
    direct = feature_cache(teacher, joined, Canvas(size=96, face=Geometry(size=64)), tmp_path / "alone", progress=False)
    (a,) = second.read(np.arange(len(joined)), "features")
    (b,) = direct.read(np.arange(len(joined)), "features")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    (c,) = first.read(np.arange(len(part)), "features")
    rows = [int(np.flatnonzero((keys_joined == k).all(1))[0]) for k in keys_part]
    assert torch.equal(a[rows], c)  # copied bit for bit
    # Another canvas changes every crop: nothing is reused.
    with count_backbone(teacher) as seen:
        feature_cache(teacher, part, Canvas(size=112, face=Geometry(size=64)), root, batch_size=5, progress=False)
    assert seen["faces"] == len(part)
    assert reuse_rows(second) == 0  # complete: nothing to do


def test_a_copy_of_the_data_keeps_its_caches_and_changed_bytes_do_not(index: FaceIndex, tmp_path: Path) -> None:
    """Caches are keyed by the files' content: a copy elsewhere with new modification times (a node's scratch disk, a
    re-provisioned volume) finds every cached feature; a file whose bytes change gets a new key, though its size
    and modification time stay the same."""
    import os
    import shutil

    from aikd.training.cache import dataset_fingerprint, row_keys

    teacher = _teacher(0)
    root = tmp_path / "features"
    feature_cache(teacher, index, CANVAS, root, batch_size=5, progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(index.root, copy, copy_function=shutil.copyfile)  # new files: new modification times
    first = Path(index.root) / index.paths[0]
    os.utime(copy / index.paths[0], ns=(0, first.stat().st_mtime_ns + 5 * 10**9))
    moved = FolderSource(str(copy)).load()
    assert dataset_fingerprint(moved) == dataset_fingerprint(index)
    assert np.array_equal(row_keys(moved), row_keys(index))
    with count_backbone(teacher) as seen:
        again = feature_cache(teacher, moved, CANVAS, root, batch_size=5, progress=False)
    assert again.complete and seen["faces"] == 0
    # One file's bytes change in place (same size, same modification time): its key and the data's key change.
    target = copy / index.paths[1]
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    from aikd.io import _content_key

    _content_key.cache_clear()  # a new process would not have seen the old bytes
    changed = FolderSource(str(copy)).load()
    assert dataset_fingerprint(changed) != dataset_fingerprint(index)
    differ = np.flatnonzero((row_keys(changed) != row_keys(index)).any(1))
    assert differ.tolist() == [1]


def test_trainable_backbone_teacher_is_scored_from_images(index: FaceIndex, tmp_path: Path) -> None:
    teacher = _teacher(0, trainable_backbone="all")
    assert not head_only_scoring(teacher)
    root = tmp_path / "cache" / "teacher_scores"
    with count_backbone(teacher) as seen:
        cache = teacher_score_cache(teacher, index, CANVAS, root, batch_size=5, progress=False)
    assert cache.complete and seen["faces"] == len(index)
    assert not (root.parent / "features").exists()  # its backbone is its own: no feature cache is written
    assert_cache_equals_online(cache, teacher, index)


def test_opting_out_scores_from_images(index: FaceIndex, tmp_path: Path) -> None:
    teacher = _teacher(0)
    root = tmp_path / "cache" / "teacher_scores"
    with count_backbone(teacher) as seen:
        cache = teacher_score_cache(teacher, index, CANVAS, root, batch_size=5, progress=False, reuse_features=False)
    assert cache.complete and seen["faces"] == len(index)
    assert open_feature_cache(teacher, index, CANVAS, root.parent / "features", create=False) is None
    assert_cache_equals_online(cache, teacher, index)


def test_distributed_fill_scores_cached_features_without_launching(index: FaceIndex, tmp_path: Path) -> None:
    """Under DDP the rows with cached features are scored by the head in the calling process: with every feature
    cached no worker process is started and the backbone does not run."""
    from aikd.training.distributed import distributed_teacher_score_caches

    teacher = _teacher(0)
    root = tmp_path / "cache"
    feature_cache(teacher, index, CANVAS, root / "features", batch_size=5, progress=False)
    ddp = {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}
    with count_backbone(teacher) as seen:
        caches = distributed_teacher_score_caches(teacher, {"train": index}, CANVAS, root / "teacher_scores", ddp)
    assert seen["calls"] == 0 and caches["train"].complete
    same = open_teacher_score_cache(teacher, index, CANVAS, root / "teacher_scores")
    assert same.directory == caches["train"].directory
    assert_cache_equals_online(caches["train"], teacher, index)


def test_evaluation_and_online_distillation_agree_with_the_cache(index: FaceIndex, tmp_path: Path) -> None:
    """The evaluation's shared-backbone path (score_index) and distillation's online targets give the teacher's
    cached (head-only) scores."""
    from aikd.evaluation.runner import ModelQuality, score_index
    from aikd.geometry.misalign import NoMisalign
    from aikd.models.student import Student
    from aikd.training import DistillModule

    teacher = _teacher(0)
    cache = teacher_score_cache(teacher, index, CANVAS, tmp_path / "cache" / "teacher_scores", progress=False)
    with count_backbone(teacher) as seen:
        table = score_index(
            index,
            np.arange(len(index)),
            {"t": ModelQuality(teacher)},
            {"aligned": NoMisalign()},
            canvas=CANVAS,
            batch_size=5,
            progress=False,
        )
    assert seen["faces"] == len(index)  # once per face, shared by the method's backbone and its head
    q_cache, _ = cache.lookup(torch.as_tensor(table.rows))
    np.testing.assert_allclose(table.quality["aligned"]["t"], q_cache.numpy(), atol=1e-5, rtol=1e-5)

    student = Student("timm/test_byobnet", backbone_kwargs={"input_size": 64, "embedding_dim": 16}, hidden=8)
    module = DistillModule(student, embedding_weight=0.0).attach_teacher(teacher)
    module._split = lambda: "val"  # no trainer attached: online targets (no cache for the split)
    batch = next(iter(face_loader(index, CANVAS, batch_size=6)))
    q_online, _ = module._teacher_targets(batch, batch["image"].float() / 255.0)
    q_cache, _ = cache.lookup(batch["index"])
    torch.testing.assert_close(q_online, q_cache, atol=1e-5, rtol=1e-5)


def test_face_loader_yields_the_requested_rows_in_order(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "faces", identities=2, per_identity=3, size=96)
    lm = root / "landmarks.csv"
    lines = lm.read_text().splitlines()
    lm.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # row 0 loses its landmarks
    index = read_folder(root)
    assert not index.has_landmarks[0]
    loader = face_loader(index, CANVAS, np.array([4, 0, 2, 5]), batch_size=2)
    assert loader.dataset.rows.tolist() == [4, 2, 5] and loader.dataset.n_dropped == 1
    batches = list(loader)
    assert torch.cat([b["index"] for b in batches]).tolist() == [4, 2, 5]
    assert batches[0]["image"].shape == (2, 3, 96, 96) and batches[0]["image"].dtype == torch.uint8
    assert {"landmarks", "canvas_from_source", "identity", "n_skipped"} <= set(batches[0])
    assert face_loader(index, CANVAS).dataset.rows.tolist() == list(range(1, len(index)))


_FILLER = """
import logging, sys, time
from pathlib import Path
import numpy as np
from aikd.data import FolderSource
from aikd.geometry.align import Canvas, Geometry
from aikd.training.cache import RowCache, fill_cache

logging.basicConfig(level=logging.INFO, format="%(message)s")
faces, entry, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
index = FolderSource(str(faces)).load()
cache = RowCache(entry, len(index), {"row": ((), np.float32)})

def compute(batch):
    (entry.parent / f"{name}.started").touch()  # holds the fill lock from here on
    deadline = time.monotonic() + 120
    while not (entry.parent / "release").exists() and time.monotonic() < deadline:  # until the test says
        time.sleep(0.05)
    with open(entry.parent / f"{name}.rows", "a") as f:
        f.write(f"{len(batch['index'])}\\n")
    return {"row": batch["index"].float()}

fill_cache(cache, index, Canvas(size=96, face=Geometry(size=64)), compute, batch_size=3, progress=False)
"""


def test_runs_started_together_fill_a_shared_entry_once(tmp_path: Path) -> None:
    """Two processes needing the same cache entry (a sweep's seeds started together on one node): the second waits
    for the first's fill lock, says so, and finds every row done; each row is computed once, and both processes
    end with the complete entry."""
    import subprocess
    import sys
    import time

    from aikd.training.cache import RowCache

    faces = write_folder_dataset(tmp_path / "faces", identities=3, per_identity=4, size=96)
    script, entry = tmp_path / "fill.py", tmp_path / "cache" / "entry"
    script.write_text(_FILLER)
    entry.parent.mkdir()

    def launch(name: str) -> subprocess.Popen:
        cmd = [sys.executable, str(script), str(faces), str(entry), name]
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 (closed with the process below)
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)

    def wait_for(what: Callable[[], bool], proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 120
        while not what():
            logs = [
                (tmp_path / f"{n}.log").read_text() for n in ("first", "second") if (tmp_path / f"{n}.log").exists()
            ]
            assert proc.poll() is None and time.monotonic() < deadline, logs
            time.sleep(0.05)

    procs = [launch("first")]
    try:
        wait_for((entry.parent / "first.started").exists, procs[0])  # computing its first batch, lock held
        procs.append(launch("second"))
        waiting = "waiting for it instead of computing its rows twice"
        wait_for(lambda: waiting in (tmp_path / "second.log").read_text(), procs[1])  # the second waits
        (entry.parent / "release").touch()  # now the first may finish
        assert [p.wait(timeout=300) for p in procs] == [0, 0], (tmp_path / "second.log").read_text()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    rows_first = sum(int(n) for n in (entry.parent / "first.rows").read_text().split())
    assert rows_first == 12 and not (entry.parent / "second.rows").exists()  # the second computed nothing
    cache = RowCache(entry, 12, {"row": ((), np.float32)})
    assert cache.complete and np.array_equal(np.asarray(cache.arrays["row"]), np.arange(12, dtype=np.float32))


def test_creating_an_array_another_process_made_keeps_its_rows(tmp_path: Path) -> None:
    """The array files of an entry are created with a link that fails when another process got there first: an
    entry being filled is never replaced by a blank one, and no temporary file is left behind."""
    from aikd.training.cache import RowCache, _create_once

    cache = RowCache(tmp_path / "entry", 5, {"x": ((2,), np.float32)})
    cache.write(np.array([1, 3]), x=np.ones((2, 2), np.float32))
    cache.flush()
    _create_once(cache.directory / "x.npy", np.float32, (5, 2))  # as a run that lost the race would
    _create_once(cache.directory / "done.npy", np.bool_, (5,))
    again = RowCache(tmp_path / "entry", 5, {"x": ((2,), np.float32)})
    assert again.done.tolist() == [False, True, False, True, False]
    assert np.asarray(again.arrays["x"])[[1, 3]].tolist() == [[1, 1], [1, 1]]
    assert sorted(p.name for p in cache.directory.iterdir()) == ["done.npy", "meta.json", "x.npy"]


def test_a_file_system_without_locks_fills_unlocked(
    index: FaceIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the OS refuses file locks (some network mounts), the entry is filled as before, with a warning; a
    soft lock file that outlived a crashed run would block every later one."""
    import filelock

    from aikd.training.cache import RowCache, fill_cache

    def refuse(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise NotImplementedError("FileSystem does not appear to support flock")

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)
    cache = RowCache(tmp_path / "entry", len(index), {"row": ((), np.float32)})
    with caplog.at_level("WARNING", logger="aikd.training.cache"):
        fill_cache(cache, index, CANVAS, lambda b: {"row": b["index"].float()}, batch_size=5, progress=False)
    assert cache.complete and np.array_equal(np.asarray(cache.arrays["row"]), np.arange(len(index), dtype=np.float32))
    assert "no file lock" in caplog.text and "filling without one" in caplog.text
