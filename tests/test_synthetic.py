"""Synthetic faces: determinism, landmark exactness, alignment, graded degradations, on-disk format, reruns."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from aikd.app.generate_faces import main_generate
from aikd.data.synthetic import (
    BROKEN_FILES,
    CLEAN,
    DEGRADATIONS,
    FRONTAL,
    LANDMARK_COLUMNS,
    META_COLUMNS,
    PARAM_NAMES,
    SyntheticFaces,
    degrade,
    image_name,
)
from aikd.geometry.align import Geometry, align_image, fit_residual, template_points

GEN = SyntheticFaces(n_identities=3, images_per_identity=2, seed=0)
LARGE = {"size": 256, "scale": 0.9}  # large faces for pixel-level checks (iod ~ 54 px)


def _lum(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64).mean(axis=2)


def _at(lum: np.ndarray, pt: np.ndarray) -> float:
    return float(lum[int(round(pt[1])), int(round(pt[0]))])


def _upright(lm: np.ndarray) -> np.ndarray:
    """Landmarks rotated so the eye line is horizontal (undoes roll)."""
    d = lm[1] - lm[0]
    a = -math.atan2(d[1], d[0])
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (lm - lm[:2].mean(0)) @ r.T


def _laplacian_var(img: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


# ---------------------------------------------------------------------------------------------- determinism


def test_render_is_a_pure_function_of_seed_identity_index() -> None:
    img, lm, meta = GEN.render(2, 5)
    GEN.render(0, 0)  # other renders in between change nothing
    other_counts = SyntheticFaces(n_identities=50, images_per_identity=40, seed=0)
    for again in (GEN.render(2, 5), other_counts.render(2, 5)):
        assert np.array_equal(again[0], img)
        assert np.array_equal(again[1], lm)
        assert again[2] == meta
    img1, lm1, meta1 = SyntheticFaces(seed=1).render(2, 5)
    assert img1.shape != img.shape or not np.array_equal(img1, img)
    assert not np.allclose(lm1, lm)
    assert GEN.identity(2) != SyntheticFaces(seed=1).identity(2)
    assert GEN.identity(2) != GEN.identity(3)


def test_overrides_replace_only_the_named_parameters() -> None:
    base = GEN.image_params(1, 2)
    forced = GEN.image_params(1, 2, {"blur": 0.5, "yaw": 0.0})
    assert forced["blur"] == 0.5 and forced["yaw"] == 0.0
    assert {k: v for k, v in forced.items() if k not in ("blur", "yaw")} == {
        k: v for k, v in base.items() if k not in ("blur", "yaw")
    }
    assert set(base) == set(PARAM_NAMES)
    with pytest.raises(KeyError, match="unknown image parameter"):
        GEN.image_params(0, 0, {"blurr": 1.0})
    with pytest.raises(ValueError, match="outside"):
        GEN.image_params(0, 0, {"noise": 1.5})


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one identity"):
        SyntheticFaces(n_identities=0)
    with pytest.raises(ValueError, match="min_size"):
        SyntheticFaces(min_size=200, max_size=100)
    with pytest.raises(ValueError, match="fraction"):
        SyntheticFaces(degradation=1.5)
    with pytest.raises(ValueError, match="non-negative"):
        GEN.render(-1, 0)


# ----------------------------------------------------------------------------------------------- geometry


def test_images_vary_in_size_and_landmarks_are_ordered_and_inside() -> None:
    gen = SyntheticFaces(min_size=96, max_size=224, seed=4)
    sizes = set()
    for i in range(4):
        for j in range(5):
            img, lm, meta = gen.render(i, j)
            size = meta["size"]
            sizes.add(size)
            assert img.shape == (size, size, 3) and img.dtype == np.uint8
            assert 96 <= size <= 224
            assert lm.shape == (5, 2) and lm.dtype == np.float64
            assert (lm >= 0).all() and (lm <= size - 1).all()
            assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]  # image-left before image-right after roll
            up = _upright(lm)
            eyes_y, nose_y, mouth_y = up[:2, 1].mean(), up[2, 1], up[3:, 1].mean()
            assert eyes_y < nose_y < mouth_y
            assert abs(meta["roll"]) <= gen.max_roll and abs(meta["yaw"]) <= gen.max_yaw
    assert len(sizes) > 10


def test_eye_landmarks_are_the_drawn_pupil_centres() -> None:
    gen = SyntheticFaces(seed=3)
    for i in range(12):
        img, lm, meta = gen.render(i, 0, {**CLEAN, **LARGE})
        lum = _lum(img)
        radius = 0.035 * meta["iod"] + 1.0  # inside every identity's pupil + its anti-aliased rim
        for eye in lm[:2]:
            cx, cy = (int(round(v)) for v in eye)
            r = int(math.ceil(radius)) + 1
            yy, xx = np.mgrid[cy - r : cy + r + 1, cx - r : cx + r + 1]
            win = lum[cy - r : cy + r + 1, cx - r : cx + r + 1]
            inside = np.hypot(xx - eye[0], yy - eye[1]) <= radius
            w = np.clip(win[inside].max() - win, 0, None) * inside
            centroid = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
            assert np.linalg.norm(centroid - eye) < 0.5, (i, centroid, eye)


def test_landmark_pixels_show_the_features() -> None:
    gen = SyntheticFaces(seed=5)
    for i in range(10):
        img, lm, meta = gen.render(i, 1, {**CLEAN, "size": 200, "scale": 0.8})
        lum = _lum(img)
        cheek = _at(lum, lm[0] + 0.38 * (lm[3] - lm[0]))  # below the eye, above any beard
        for eye, corner in ((0, 3), (1, 4)):
            assert _at(lum, lm[eye]) < 0.8 * _at(lum, lm[eye] + 0.38 * (lm[corner] - lm[eye]))  # pupil vs skin
        for a, b in ((3, 4), (4, 3)):
            assert _at(lum, lm[a] + 0.12 * (lm[b] - lm[a])) < 0.95 * cheek  # lips start at the corner
        # the mouth line crosses the perpendicular through the corners' midpoint (smiles bend it down)
        chord = lm[4] - lm[3]
        normal = np.array([-chord[1], chord[0]]) / np.linalg.norm(chord)
        mid = (lm[3] + lm[4]) / 2
        across = [_at(lum, mid + t * normal) for t in np.linspace(-0.1, 0.1, 9) * meta["iod"]]
        assert min(across) < 0.8 * cheek


def test_landmarks_follow_roll_exactly_and_yaw_shifts_the_nose() -> None:
    gen = SyntheticFaces(seed=2)
    _, lm0, _ = gen.render(1, 3, {**CLEAN, "roll": 0.0, "yaw": 0.0})
    _, lm1, _ = gen.render(1, 3, {**CLEAN, "roll": 15.0, "yaw": 0.0})
    d0 = np.linalg.norm(lm0[:, None] - lm0[None], axis=-1)
    d1 = np.linalg.norm(lm1[:, None] - lm1[None], axis=-1)
    assert np.allclose(d0, d1, atol=1e-9)  # roll is rigid
    a0 = math.degrees(math.atan2(*(lm0[1] - lm0[0])[::-1]))
    a1 = math.degrees(math.atan2(*(lm1[1] - lm1[0])[::-1]))
    assert a1 - a0 == pytest.approx(15.0, abs=1e-6)
    assert abs(a0) < 1e-6 or abs(lm0[0, 1] - lm0[1, 1]) < 0.2 * abs(lm0[1, 0] - lm0[0, 0])
    residuals = []
    for yaw in (-25.0, 0.0, 25.0):
        _, lm, _ = gen.render(1, 3, {**CLEAN, "roll": 0.0, "yaw": yaw})
        eye_mid = lm[:2].mean(0)
        offset = (lm[2, 0] - eye_mid[0]) / np.linalg.norm(lm[1] - lm[0])
        if yaw:
            assert math.copysign(1, offset) == math.copysign(1, yaw) and abs(offset) > 0.1  # nose turns with the head
        else:
            assert abs(offset) < 1e-9
        residuals.append(fit_residual(torch.from_numpy(lm)[None], Geometry(size=112)).item())
    assert residuals[0] > residuals[1] and residuals[2] > residuals[1]


def test_alignment_puts_frontal_eyes_on_the_template() -> None:
    gen = SyntheticFaces(seed=7)
    geometry = Geometry(size=112)
    tpl = template_points(geometry)
    residuals = []
    for i in range(16):
        img, lm, _ = gen.render(i, 0, {**CLEAN, **FRONTAL, **LARGE, "roll": float(i * 2 - 16)})
        crop, m = align_image(img, lm, geometry)
        mapped = lm @ m[:, :2].T + m[:, 2]
        residuals.append(np.linalg.norm(mapped - tpl, axis=1).mean())
        lum = _lum(crop)
        cheek = tpl[0] + 0.38 * (tpl[3] - tpl[0])
        for eye in mapped[:2]:
            assert _at(lum, eye) < 0.85 * _at(lum, cheek)
    assert np.mean(residuals) < 1.5 and np.max(residuals) < 3.0, residuals


# ------------------------------------------------------------------------------------------- degradations


@pytest.mark.parametrize("name", ["blur", "downscale"])
def test_blur_and_downscale_remove_detail_in_order_of_level(name: str) -> None:
    img_clean, _, _ = GEN.render(1, 1, {**CLEAN, "size": 200})
    sharpness = [_laplacian_var(GEN.render(1, 1, {**CLEAN, "size": 200, name: lv})[0]) for lv in (0.1, 0.25, 0.5)]
    assert _laplacian_var(img_clean) > sharpness[0] > sharpness[1] > sharpness[2]
    assert sharpness[2] < 0.2 * _laplacian_var(img_clean)


def test_noise_grows_in_proportion_to_its_level() -> None:
    clean = GEN.render(0, 3, {**CLEAN, "size": 160})[0].astype(np.float64)
    sd = {lv: (GEN.render(0, 3, {**CLEAN, "size": 160, "noise": lv})[0] - clean).std() for lv in (0.1, 0.2, 0.4)}
    assert sd[0.1] == pytest.approx(6.0, rel=0.15)  # sigma = 60 * level grey levels (a little clipping)
    assert sd[0.2] / sd[0.1] == pytest.approx(2.0, rel=0.1)
    assert sd[0.4] / sd[0.2] == pytest.approx(2.0, rel=0.12)


def test_occlusion_and_jpeg_worsen_with_level() -> None:
    clean = GEN.render(2, 0, {**CLEAN, "size": 160})[0].astype(np.float64)
    covered, psnr = [], []
    for lv in (0.2, 0.5, 1.0):
        occ = GEN.render(2, 0, {**CLEAN, "size": 160, "occlusion": lv})[0].astype(np.float64)
        covered.append((np.abs(occ - clean).max(axis=2) > 10).mean())
        jpg = GEN.render(2, 0, {**CLEAN, "size": 160, "jpeg": lv})[0].astype(np.float64)
        psnr.append(10 * np.log10(255**2 / ((jpg - clean) ** 2).mean()))
    assert 0 < covered[0] < covered[1] < covered[2]
    assert psnr[0] > psnr[1] > psnr[2]


def test_degrade_is_relative_to_the_face_size() -> None:
    rng = np.random.default_rng(0)
    img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    assert np.array_equal(degrade(img, {}, iod=20.0), img)
    small_face = _laplacian_var(degrade(img, {"blur": 0.3}, iod=10.0))
    large_face = _laplacian_var(degrade(img, {"blur": 0.3}, iod=40.0))
    assert large_face < small_face  # the same level blurs more pixels when the face is bigger


def test_severity_and_degraded_fraction() -> None:
    gen = SyntheticFaces(degradation=0.35, seed=9)
    params = [gen.image_params(i, j) for i in range(20) for j in range(30)]
    sev = np.array([SyntheticFaces.severity(p) for p in params])
    levels = np.array([[p[d] for d in DEGRADATIONS] for p in params])
    assert ((levels >= 0) & (levels <= 1)).all()
    assert np.allclose(sev, 1 - np.prod(1 - levels, axis=1))
    assert 0.28 < (sev > 0).mean() < 0.42  # the requested fraction is degraded, the rest clean
    assert (sev >= 0.5).mean() > 0.05  # and there is a heavy tail
    assert SyntheticFaces.severity(CLEAN) == 0.0
    none = SyntheticFaces(degradation=0.0)
    assert all(SyntheticFaces.severity(none.image_params(0, j)) == 0 for j in range(50))


# -------------------------------------------------------------------------------------------------- disk


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_format_matches_the_images(tmp_path: Path) -> None:
    gen = SyntheticFaces(n_identities=3, images_per_identity=2, seed=0)
    root = gen.write(tmp_path / "faces", progress=False)
    header, rows = _read_csv(root / "landmarks.csv")
    assert tuple(header) == LANDMARK_COLUMNS
    meta_header, meta_rows = _read_csv(root / "meta.csv")
    assert tuple(meta_header) == META_COLUMNS
    expected = [image_name(i, j) for i in range(3) for j in range(2)]
    assert [r[0] for r in rows] == expected == [r[0] for r in meta_rows]
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == expected
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["id_0000", "id_0001", "id_0002"]
    for row, meta_row in zip(rows, meta_rows):
        assert all(re.fullmatch(r"-?\d+\.\d\d", v) for v in row[1:])
        i, j = int(row[0][3:7]), int(row[0][8:12])
        img, lm, meta = gen.render(i, j)
        on_disk = cv2.imread(str(root / row[0]), cv2.IMREAD_COLOR)[..., ::-1]
        assert np.array_equal(on_disk, img)  # PNG is lossless: the file is the rendered image
        assert np.allclose(np.array(row[1:], dtype=float), lm.reshape(-1), atol=0.005 + 1e-9)
        record = dict(zip(META_COLUMNS, meta_row))
        assert record["identity"] == f"id_{i:04d}" and int(record["seed"]) == 0
        assert int(record["size"]) == on_disk.shape[0] == on_disk.shape[1]
        for name in (*DEGRADATIONS, "severity", "yaw", "roll", "scale", "illumination"):
            assert float(record[name]) == pytest.approx(meta[name], abs=0.006)
    spec = json.loads((root / "generator.json").read_text())
    assert spec["version"] >= 1 and spec["params"]["seed"] == 0 and spec["params"]["n_identities"] == 3
    assert not (root / ".incomplete").exists()


def test_written_dataset_reads_back_with_the_folder_loader(tmp_path: Path) -> None:
    from aikd.data.index import read_folder

    root = SyntheticFaces(n_identities=2, images_per_identity=3, seed=1).write(tmp_path / "faces", progress=False)
    index = read_folder(root)
    assert len(index.paths) == 6 and not index.issues
    assert np.isfinite(index.landmarks).all()


def test_write_is_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    a = _snapshot(SyntheticFaces(n_identities=2, images_per_identity=2, seed=3).write(tmp_path / "a", progress=False))
    b = _snapshot(SyntheticFaces(n_identities=2, images_per_identity=2, seed=3).write(tmp_path / "b", progress=False))
    c = _snapshot(SyntheticFaces(n_identities=2, images_per_identity=2, seed=4).write(tmp_path / "c", progress=False))
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith(".png"))


def test_workers_write_the_same_bytes(tmp_path: Path) -> None:
    serial = SyntheticFaces(n_identities=2, images_per_identity=2, seed=5).write(tmp_path / "s", progress=False)
    parallel = SyntheticFaces(n_identities=2, images_per_identity=2, seed=5, workers=2)
    assert _snapshot(serial) == _snapshot(parallel.write(tmp_path / "p", progress=False))


def test_rerun_is_skipped_and_stale_data_is_only_replaced_on_request(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    gen = SyntheticFaces(n_identities=3, images_per_identity=1, seed=0)
    gen.write(root, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert gen.is_current(root)
    gen.write(root, progress=False)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps  # nothing rewritten

    other = SyntheticFaces(n_identities=2, images_per_identity=1, seed=1)
    assert not other.is_current(root)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        other.write(root, progress=False)
    assert gen.is_current(root)  # refused without touching anything
    other.write(root, overwrite=True, progress=False)
    assert other.is_current(root)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["id_0000", "id_0001"]  # stale id_0002 gone

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="refusing"):
        gen.write(foreign, overwrite=True, progress=False)
    assert (foreign / "holiday.jpg").read_bytes() == b"not ours"


def test_interrupted_write_is_redone(tmp_path: Path) -> None:
    root = tmp_path / "faces"
    (root / "id_0000").mkdir(parents=True)
    (root / "id_0000" / "0000.png").write_bytes(b"half written")
    (root / ".incomplete").write_text("{}")
    gen = SyntheticFaces(n_identities=1, images_per_identity=1)
    gen.write(root, progress=False)
    assert gen.is_current(root) and not (root / ".incomplete").exists()
    assert cv2.imread(str(root / "id_0000" / "0000.png")) is not None


def test_broken_files_are_exactly_the_documented_ones(tmp_path: Path) -> None:
    clean_root = SyntheticFaces(n_identities=2, images_per_identity=2).write(tmp_path / "clean", progress=False)
    assert not list(clean_root.rglob("broken*"))
    root = SyntheticFaces(n_identities=2, images_per_identity=2, broken=True).write(tmp_path / "b", progress=False)
    _, rows = _read_csv(root / "landmarks.csv")
    by_path = {r[0]: r[1:] for r in rows}
    _, meta_rows = _read_csv(root / "meta.csv")
    assert {r[0] for r in meta_rows} == set(by_path)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("broken*")) == sorted(BROKEN_FILES)
    bad = set()
    for rel, fields in by_path.items():
        decodes = cv2.imread(str(root / rel)) is not None
        try:
            values = [float(v) for v in fields]
            ok = len(values) == 10
        except ValueError:
            ok = False
        if not decodes or not ok:
            bad.add(rel)
    assert bad == set(BROKEN_FILES)
    assert cv2.imread(str(root / "id_0000/broken_corrupt.png")) is None
    assert by_path["id_0000/broken_malformed.png"][0] == "x12.5"
    assert by_path["id_0000/broken_nolandmarks.png"] == [""] * 10
    assert all(re.fullmatch(r"-?\d+\.\d\d", v) for v in by_path["id_0000/broken_corrupt.png"])


def test_cli_writes_then_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "faces"
    assert main_generate([str(root), "--identities", "2", "--images", "2", "--seed", "3", "--quiet"]) == 0
    assert len(list(root.rglob("*.png"))) == 4
    assert json.loads((root / "generator.json").read_text())["params"]["seed"] == 3
    assert main_generate([str(root), "--identities", "2", "--images", "2", "--seed", "3"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main_generate([str(root), "--identities", "2", "--images", "2", "--seed", "4", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().out
    assert main_generate([str(root), "--images", "1", "--identities", "1", "--broken", "--overwrite", "--quiet"]) == 0
    assert (root / "id_0000/broken_corrupt.png").is_file()
