"""The degradation-fidelity set (``aikd make-graded``, :mod:`aikd.data.graded`) and its evaluation (``aikd
fidelity``, :mod:`aikd.evaluation.fidelity`): generation on a small generated CFP-layout folder, determinism, level
0 = the source, strength growing with the level, landmarks and protocol preserved; the rank analysis on synthetic
scores; both commands run as a user runs them, from a fresh working directory, on a small trained run."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from aikd.data.cfp import read_cfp, read_cfp_pairs
from aikd.data.graded import (
    KINDS,
    GradedSpec,
    assign_levels,
    check_graded,
    degrade_photo,
    face_scale,
    make_graded,
    read_manifest,
)
from aikd.data.index import DataError
from aikd.data.synthetic import CLEAN, SyntheticFaces
from aikd.evaluation.bootstrap import format_interval
from aikd.evaluation.compare import summarise_runs
from aikd.evaluation.fidelity import fidelity_figures, level_spearman, percentile_ranks, write_fidelity_report

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LM_HEADER = (
    "path,width,height,n_faces,score,box_x,box_y,box_w,box_h,left_eye_x,left_eye_y,right_eye_x,right_eye_y,"
    "nose_x,nose_y,mouth_left_x,mouth_left_y,mouth_right_x,mouth_right_y"
)


def write_fake_cfp(
    root: Path, identities: list[int], frontal: int = 4, profile: int = 2, seed: int = 0, missing: str | None = None
) -> Path:
    """A small folder in CFP's official layout (generated cartoon faces, not real ones): ``Data/Images``, the
    ``landmarks_mtcnn.csv`` columns, ``list_name.txt``, one fiducial file per face, and ``Protocol/`` numbered as
    CFP numbers it (frontal ``(id - 1) * frontal + k``), with one fold per identity pair. ``missing``: a face whose
    landmark row says no face was found."""
    gen = SyntheticFaces(seed=seed, min_size=224, max_size=256)  # faces about as large as CFP's
    data = root / "Data"
    rows, flist, plist = [LM_HEADER], [], []
    for cid in identities:
        for pose, n in (("frontal", frontal), ("profile", profile)):
            for k in range(1, n + 1):
                rel = f"Images/{cid:03d}/{pose}/{k:02d}.jpg"
                over = {**CLEAN, "yaw": 0.0 if pose == "frontal" else 28.0}
                img, lm, _ = gen.render(cid, k + (0 if pose == "frontal" else 100), over)
                (data / rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(data / rel), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                h, w = img.shape[:2]
                if rel == missing:
                    rows.append(f"{rel},{w},{h},0,0" + "," * 14)
                else:
                    pts = ",".join(f"{v:.1f}" for v in lm.reshape(-1))
                    rows.append(f"{rel},{w},{h},1,0.999,0,0,{w},{h},{pts}")
                fid = data / "Fiducials" / f"{cid:03d}" / pose / f"{k:02d}.txt"
                fid.parent.mkdir(parents=True, exist_ok=True)
                fid.write_text("\n".join(f"{lm[0, 0] + d:.3f},{lm[0, 1]:.3f}" for d in np.linspace(-2, 2, 30)) + "\n")
                (flist if pose == "frontal" else plist).append((cid, k, rel))
    (data / "landmarks_mtcnn.csv").write_text("\n".join(rows) + "\n")
    (data / "list_name.txt").write_text("\n".join(f"Person {i}" for i in range(1, max(identities) + 1)) + "\n")
    proto = root / "Protocol"
    number = {}
    for letter, items, per in (("F", flist, frontal), ("P", plist, profile)):
        lines = []
        for cid, k, rel in items:
            number[(letter, cid, k)] = (cid - 1) * per + k
            lines.append(f"{(cid - 1) * per + k} ../Data/{rel}")
        (proto / f"Pair_list_{letter}.txt").parent.mkdir(parents=True, exist_ok=True)
        (proto / f"Pair_list_{letter}.txt").write_text("\n".join(lines) + "\n")
    couples = list(zip(identities[0::2], identities[1::2]))
    for fold in range(1, 11):  # CFP has 10 folds; here one per couple of identities, the rest empty
        for protocol, second in (("FF", "F"), ("FP", "P")):
            d = proto / "Split" / protocol / f"{fold:02d}"
            d.mkdir(parents=True, exist_ok=True)
            same, diff = [], []
            if fold <= len(couples):
                a, b = couples[fold - 1]
                same = [f"{number[('F', c, 1)]},{number[(second, c, 2)]}" for c in (a, b)]
                diff = [f"{number[('F', a, 1)]},{number[(second, b, 2)]}"]
            (d / "same.txt").write_text("".join(f"{ln}\n" for ln in same))
            (d / "diff.txt").write_text("".join(f"{ln}\n" for ln in diff))
    return root


@pytest.fixture(scope="module")
def fake_cfp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Identities 1-2 (training) and 451-454 (test) in CFP's layout; one test face without landmarks."""
    root = tmp_path_factory.mktemp("data") / "cfp"
    return write_fake_cfp(root, [1, 2, 451, 452, 453, 454], missing="Images/452/profile/02.jpg")


@pytest.fixture(scope="module")
def graded(fake_cfp: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("graded") / "cfp_graded"
    make_graded(fake_cfp, out, GradedSpec(identities=[451, 454], seed=3), progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------------------
# generation


def test_copy_layout_landmarks_and_protocol(fake_cfp: Path, graded: Path) -> None:
    doc = json.loads((graded / "graded.json").read_text())
    assert doc["identities"] == ["451", "452", "453", "454"] and doc["n_images"] == 24
    assert doc["n_without_landmarks"] == 1 and sum(doc["images_per_level"].values()) == 24
    assert (
        max(doc["images_per_level"][str(k)] for k in range(6)) - min(doc["images_per_level"][str(k)] for k in range(6))
        <= 2
    )  # spread evenly over the levels (per pose, so within one per pose)
    src_rows = (fake_cfp / "Data" / "landmarks_mtcnn.csv").read_text().splitlines()
    wanted = [r for r in src_rows[1:] if r.split("/")[1] in {"451", "452", "453", "454"}]
    for kind in KINDS:
        root = graded / kind / "cfp"
        rows = (root / "Data" / "landmarks_mtcnn.csv").read_text().splitlines()
        assert rows == [src_rows[0], *wanted]  # the source rows of these identities, verbatim
        assert not (root / "Data" / "Images" / "001").exists()  # training identities are not copied
        assert (root / "Data" / "list_name.txt").read_bytes() == (fake_cfp / "Data" / "list_name.txt").read_bytes()
        fid = "Fiducials/453/frontal/02.txt"
        assert (root / "Data" / fid).read_bytes() == (fake_cfp / "Data" / fid).read_bytes()
        # the CFP reader and the official protocols read the copy unchanged
        index = read_cfp(root, identities=None)
        assert len(index) == 24 and int((~index.has_landmarks).sum()) == 1
        ref = read_cfp(fake_cfp, identities=None)
        for protocol in ("FF", "FP"):
            pairs = read_cfp_pairs(root, index, protocol)
            ref_pairs = read_cfp_pairs(fake_cfp, ref, protocol)
            names = {(index.paths[a], index.paths[b], m) for a, b, m in zip(pairs.a, pairs.b, pairs.mated)}
            ref_names = {
                (ref.paths[a], ref.paths[b], m)
                for a, b, m in zip(ref_pairs.a, ref_pairs.b, ref_pairs.mated)
                if ref.attributes["cfp_id"][a] >= 451 and ref.attributes["cfp_id"][b] >= 451
            }
            assert names == ref_names and len(names) == 6  # folds of test identities kept whole, nothing else
        pair_list = (root / "Protocol" / "Pair_list_F.txt").read_text().splitlines()
        assert len(pair_list) == 16 and pair_list[0].startswith("1801 ")  # CFP's numbers unchanged


def test_levels_strengths_and_level0_is_the_source(fake_cfp: Path, graded: Path) -> None:
    manifest = read_manifest(graded)
    for kind in KINDS:
        rows = manifest[kind]
        assert len(rows) == 24
        for path, row in rows.items():
            src = (fake_cfp / "Data" / path).read_bytes()
            dst = (graded / kind / "cfp" / "Data" / path).read_bytes()
            if row["level"] <= 0:
                assert dst == src  # clean faces (and the one without landmarks) are byte copies
            else:
                assert dst != src
        assert rows["Images/452/profile/02.jpg"]["level"] == -1
    # the same face has the same level in both copies
    assert {p: r["level"] for p, r in manifest["blur"].items()} == {
        p: r["level"] for p, r in manifest["downscale"].items()
    }
    blur = sorted({(r["level"], r["strength"]) for r in manifest["blur"].values() if r["level"] >= 0})
    assert blur == list(enumerate([0.0, 0.75, 1.5, 2.25, 3.0, 4.0]))
    res = sorted({(r["level"], r["strength"]) for r in manifest["downscale"].values() if r["level"] >= 0})
    assert res == list(enumerate([112.0, 56.0, 40.0, 28.0, 20.0, 14.0]))
    # the source-pixel parameter is the crop strength times the face's own scale
    for row in manifest["blur"].values():
        if row["level"] > 0:
            assert float(row["source_param"]) == pytest.approx(row["strength"] * float(row["scale"]), rel=1e-4)


def test_same_seed_same_bytes_other_seed_other_levels(fake_cfp: Path, graded: Path, tmp_path: Path) -> None:
    again = make_graded(fake_cfp, tmp_path / "again", GradedSpec(identities=[451, 454], seed=3), progress=False)
    assert _files(tmp_path / "again") == _files(graded)
    assert "skipped" not in again
    # a rerun with the same settings is a no-op; other settings are refused unless --overwrite
    assert make_graded(fake_cfp, tmp_path / "again", GradedSpec(identities=[451, 454], seed=3), progress=False)[
        "skipped"
    ]
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_graded(fake_cfp, tmp_path / "again", GradedSpec(identities=[451, 454], seed=4), progress=False)
    make_graded(fake_cfp, tmp_path / "again", GradedSpec(identities=[451, 454], seed=4), overwrite=True, progress=False)
    other = read_manifest(tmp_path / "again")["blur"]
    assert {p: r["level"] for p, r in other.items()} != {
        p: r["level"] for p, r in read_manifest(graded)["blur"].items()
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left behind


def _laplacian_variance(img: np.ndarray, where: np.ndarray | None = None) -> float:
    lap = cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float64), cv2.CV_64F)
    return float(lap.var() if where is None else lap[where].var())


def _high_frequency_energy(img: np.ndarray, cut: float = 0.06) -> float:
    """Spectral energy above ``cut`` cycles/px in the centre of a crop (the border can hold the photo's edge)."""
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float64)[16:96, 16:96]
    f = np.abs(np.fft.fft2(g - g.mean())) ** 2
    fy, fx = np.fft.fftfreq(g.shape[0])[:, None], np.fft.fftfreq(g.shape[1])[None]
    return float(f[np.hypot(fy, fx) > cut].sum())


@pytest.mark.parametrize("kind", KINDS)
def test_strength_is_monotone_in_the_level(fake_cfp: Path, kind: str) -> None:
    """Every level of one face, on its aligned crop: sharpness (Laplacian variance) and high-frequency energy fall
    strictly with the level."""
    from aikd.geometry.align import Geometry, align_image

    index = read_cfp(fake_cfp, identities=[451, 451])
    strengths = GradedSpec().strengths(kind)
    for i in range(len(index)):  # 4 frontal and 2 profile faces
        img = cv2.imread(str(index.path(i)))
        lm = index.landmarks[i]
        scale = face_scale(lm)
        if index.attributes["pose"][i] == "frontal":  # on a frontal face, IOD and the similarity fit agree
            assert 1 / scale == pytest.approx(35.2 / float(np.linalg.norm(lm[0] - lm[1])), rel=0.15)
        degraded = [degrade_photo(img, kind, s, scale) for s in strengths]
        assert not any(clamped for _, _, clamped in degraded)  # the faces are large enough for every level
        crops = [align_image(d, lm, Geometry(size=112))[0] for d, _, _ in degraded]
        lap = [_laplacian_variance(c) for c in crops]
        hf = [_high_frequency_energy(c) for c in crops]
        assert all(b < a for a, b in zip(lap, lap[1:])), (index.paths[i], lap)
        assert all(b < a for a, b in zip(hf, hf[1:])), (index.paths[i], hf)
        assert np.array_equal(degrade_photo(img, kind, strengths[0], scale)[0], img)


def test_degrade_photo_keeps_shape_and_follows_the_face_scale() -> None:
    rng = np.random.default_rng(0)
    img = (rng.random((90, 130, 3)) * 255).astype(np.uint8)
    out, factor, clamped = degrade_photo(img, "downscale", 28, scale=2.0)
    assert out.shape == img.shape and out.dtype == np.uint8 and factor == pytest.approx(28 / 224) and not clamped
    # a face already smaller than the requested resolution is left as it is, and says so
    same, factor, clamped = degrade_photo(img, "downscale", 56, scale=0.4)
    assert same is img and factor == 1.0 and clamped
    _, sigma, _ = degrade_photo(img, "blur", 1.5, scale=3.0)
    assert sigma == pytest.approx(4.5)
    with pytest.raises(ValueError, match="kind"):
        degrade_photo(img, "noise", 1, 1.0)


def test_assign_levels_balanced_order_free_and_seeded() -> None:
    paths = [f"Images/{i:03d}/{p}/{k:02d}.jpg" for i in range(1, 21) for p, n in (("frontal", 10), ("profile", 4))
             for k in range(1, n + 1)]  # fmt: skip
    poses = [p.split("/")[2] for p in paths]
    lv = assign_levels(paths, poses, 6, seed=0)
    for pose in ("frontal", "profile"):
        counts = np.bincount(lv[np.array(poses) == pose], minlength=6)
        assert counts.max() - counts.min() <= 1
    perm = np.random.default_rng(1).permutation(len(paths))
    shuffled = assign_levels([paths[i] for i in perm], [poses[i] for i in perm], 6, seed=0)
    assert np.array_equal(shuffled, lv[perm])  # a face's level does not depend on the listing order
    assert not np.array_equal(assign_levels(paths, poses, 6, seed=1), lv)


def test_bad_settings_and_sources_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="level 0 is clean"):
        GradedSpec(blur_sigmas=[0.5, 1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="same number of levels"):
        GradedSpec(resolutions=[112, 56])
    with pytest.raises(DataError, match="not a CFP root"):
        make_graded(tmp_path / "nowhere", tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="aikd make-graded --out"):
        check_graded(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "graded.json").write_text("{}")
    with pytest.raises(DataError, match="incomplete"):
        check_graded(tmp_path / "half")


# ----------------------------------------------------------------------------------------------------------------
# the fidelity analysis on synthetic scores


def _synthetic_scores(seed: int, n: int = 600, n_levels: int = 6) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, n_levels, n)
    base = rng.normal(size=n)
    return levels, {
        "teacher": base - 1.0 * levels + rng.normal(0, 0.3, n),
        "student": 3 * (base - 0.7 * levels) + 10 + rng.normal(0, 0.3, n),  # other scale, same ordering of levels
        "shuffled": base - 1.0 * rng.permutation(n_levels)[levels],  # as sensitive, but to the wrong levels
        "blind": base,  # insensitive
    }


def test_percentile_ranks() -> None:
    r = percentile_ranks(np.array([3.0, 1.0, 2.0, 2.0]))
    assert np.allclose(r, [0.875, 0.125, 0.5, 0.5]) and r.mean() == pytest.approx(0.5)
    assert np.allclose(percentile_ranks(np.exp([3.0, 1.0, 2.0])), percentile_ranks(np.array([3.0, 1.0, 2.0])))
    with pytest.raises(ValueError, match="finite"):
        percentile_ranks(np.array([1.0, np.nan]))


def test_fidelity_figures_on_synthetic_scores() -> None:
    quality, levels = {}, {}
    for seed, kind in enumerate(KINDS):
        levels[kind], quality[kind] = _synthetic_scores(seed)
    levels["blur"][:5] = -1  # faces outside the graded set are left out
    fig = fidelity_figures(quality, levels, "teacher", {k: GradedSpec().strengths(k) for k in KINDS})
    for kind in KINDS:
        ranks = fig["mean_rank"][kind]
        assert all(b < a for a, b in zip(ranks["teacher"], ranks["teacher"][1:]))
        assert fig["trend"][kind]["teacher"] == pytest.approx(-1.0) and fig["trend"][kind]["student"] == pytest.approx(
            -1
        )
        assert abs(fig["trend"][kind]["blind"]) < 0.9 and max(map(abs, np.diff(ranks["blind"]))) < 0.1
        assert fig["spearman"]["student"][kind] == pytest.approx(1.0)
        assert fig["spearman"]["shuffled"][kind] < 0.9
        assert fig["rank_drop"][kind]["teacher"] > 0.5
    assert fig["spearman"]["student"]["all"] == pytest.approx(1.0, abs=0.02)
    assert fig["spearman"]["shuffled"]["all"] < 0.9 and fig["spearman"]["teacher"]["all"] == pytest.approx(1.0)
    assert sum(fig["levels"]["blur"]["n_images"]) == 595
    assert level_spearman([1, 2, 3], [1, 1, 1]) != level_spearman([1, 2, 3], [1, 1, 1])  # NaN: constant
    with pytest.raises(KeyError, match="reference"):
        fidelity_figures(quality, levels, "nobody")


def _fidelity_report(out: Path, seed: int, student: dict[str, float], interval: tuple[float, float]) -> Path:
    """A run's fidelity report written by the real writer, from synthetic scores and the given pAUCs (teacher 0.70
    on both copies) and student - teacher intervals (one per copy, in the evaluation runner's bootstrap format)."""
    quality, levels = {}, {}
    for i, kind in enumerate(KINDS):
        levels[kind], q = _synthetic_scores(seed + i)
        quality[kind] = {"teacher:crfiqa": q["teacher"], "student": q["student"]}
    figures = fidelity_figures(quality, levels, "teacher:crfiqa", {k: GradedSpec().strengths(k) for k in KINDS})
    op = "start_err=0.10"
    pauc = {k: {"teacher:crfiqa": {op: {"0.2": 0.70}}, "student": {op: {"0.2": student[k]}}} for k in KINDS}
    boot = {
        k: {"n_boot": 200, "level": 0.95, "comparisons": {"aligned": {"student - teacher:crfiqa": {
            "a": "student", "b": "teacher:crfiqa", "operating_points": {op: {"0.2": {
                "difference": student[k] - 0.70, "low": interval[0], "high": interval[1], "p_a_better": 0.1,
                "n_boot": 200, "n_defined": 200}}}}}}}
        for k in KINDS
    }  # fmt: skip
    write_fidelity_report(out, figures, pauc, {"run": str(out.parent)}, bootstrap=boot)
    return out / "fidelity.json"


def test_fidelity_report_intervals_and_compare_runs_over_seeds(tmp_path: Path, capsys) -> None:
    """The report tabulates student - teacher with its interval per copy (bold when it excludes 0), and
    ``aikd compare-runs --fidelity`` gives mean +- sd over runs with each run's interval, as for the evaluation."""
    from aikd.app.cli import main

    runs = [tmp_path / "r1", tmp_path / "r2"]
    _fidelity_report(runs[0] / "fidelity", 0, {"blur": 0.74, "downscale": 0.78}, (0.01, 0.07))
    _fidelity_report(runs[1] / "fidelity", 5, {"blur": 0.70, "downscale": 0.74}, (-0.03, 0.03))
    report = (runs[0] / "fidelity" / "report.md").read_text()
    assert "| A - B | blur | downscale |" in report
    assert "| student - teacher:crfiqa | **+0.040 [+0.010, +0.070]** | **+0.080 [+0.010, +0.070]** |" in report
    assert "| student - teacher:crfiqa | +0.000 [-0.030, +0.030] |" in (runs[1] / "fidelity" / "report.md").read_text()

    summary = summarise_runs(runs, fidelity=True)
    assert summary["conditions"] == list(KINDS) and summary["fidelity"] is True
    diff = summary["differences"]["start_err=0.10"]["student - teacher:crfiqa"]
    assert diff["blur"]["values"] == pytest.approx([0.04, 0.0]) and diff["downscale"]["mean"] == pytest.approx(0.06)
    assert diff["blur"]["intervals"][1]["low"] == -0.03
    # the files themselves are read as fidelity reports without the flag; the evaluation of a run is not them
    by_file = summarise_runs([r / "fidelity" / "fidelity.json" for r in runs])
    assert by_file["pauc"] == summary["pauc"]
    assert main(["compare-runs", "--fidelity", *map(str, runs)]) == 0
    text = capsys.readouterr().out
    assert "Degradation fidelity reports (`aikd fidelity`)" in text
    assert "| blur | +0.020 ± 0.028 | +0.040 [+0.010, +0.070] | +0.000 [-0.030, +0.030] |" in text
    # a seed sweep's directory stands for its jobs (README: aikd compare-runs --fidelity .../multiruns/<time>)
    sweep = tmp_path / "multiruns" / "2026-12-03_16-45-25"
    for job, run in zip(("0_x", "1_x"), runs):
        shutil.copytree(run, sweep / job)
        (sweep / job / "results.json").write_text("{}")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    assert summarise_runs([sweep], fidelity=True)["pauc"] == summary["pauc"]
    (tmp_path / "r3").mkdir()
    assert main(["compare-runs", "--fidelity", str(runs[0]), str(tmp_path / "r3")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "r3" / "fidelity" / "fidelity.json") in err and "aikd fidelity" in err
    assert main(["compare-runs", "--fidelity", "--comparator", "facenet", str(runs[0])]) == 2
    assert "leave out --comparator" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# the commands, as a user runs them (README "Degradation fidelity")

#: A run at a test's size on the generated CFP-layout folder: the demo teacher, 2 teacher epochs, 1 distillation
#: epoch, only the stages a finished run needs for `aikd fidelity` (teacher.json, export/).
SMALL_CFP_RUN = [
    "data=cfp", "data.train.identities=[1,2]", "data.val.identities=[451,454]", "data.num_workers=0", "teacher=demo",
    "teacher.fit.epochs=2", "trainer.max_epochs=1", "stages=[prepare,teacher,distill,export]",
    "stage.export.formats=[safetensors]",
]  # fmt: skip


@pytest.fixture(scope="module")
def user_env(fake_cfp: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "AIKD_TEST"))}
    env["AIKD_CACHE"] = os.environ.get("AIKD_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "aikd-cache")
    env.update(AIKD_DATA=str(fake_cfp.parent), PYTHONUNBUFFERED="1", MPLBACKEND="Agg", OMP_NUM_THREADS="2")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _shell(command: str, cwd: Path, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess:
    """Run a command line as typed in a shell (``$AIKD_DATA`` expands; ``aikd`` is the installed one)."""
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, f"{command} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def small_run(user_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("run-cwd")
    run_dir = cwd / "logs" / "cfp-crfiqa" / "runs" / "small"
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *SMALL_CFP_RUN, f"paths.log_dir={cwd / 'logs'}",
         f"hydra.run.dir={run_dir}"], cwd=cwd, env=user_env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (run_dir / "teacher.json").is_file() and (run_dir / "export" / "student.safetensors").is_file()
    return run_dir


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Degradation fidelity") :]
    block = section[section.index("```bash") + 7 : section.index("```", section.index("```bash") + 7)]
    return [line.split("  #")[0].strip() for line in block.strip().splitlines() if line.strip()]


def test_readme_commands_make_the_set_and_evaluate_a_run(
    small_run: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    make, fidelity, compare = _readme_commands()
    assert make == "aikd make-graded --out $AIKD_DATA/cfp_graded"
    assert fidelity == "aikd fidelity logs/cfp_crfiqa_facenet/runs/<time> --graded $AIKD_DATA/cfp_graded"
    runs = "logs/cfp_crfiqa_facenet/runs/<time1> logs/cfp_crfiqa_facenet/runs/<time2>"
    assert compare == f"aikd compare-runs --fidelity {runs}"
    listing = (REPO / "README.md").read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    assert f"\n{make}\n{fidelity}\n{compare}\n" in listing  # the "Command line" list shows the same commands
    cwd = tmp_path / "fresh"
    cwd.mkdir()
    graded = Path(user_env["AIKD_DATA"]) / "cfp_graded"
    try:
        proc = _shell(make, cwd, user_env)
        assert "24 images of 4 identities" in proc.stdout and "-1 |" in proc.stdout
        assert check_graded(graded)["images_per_level"]["0"] >= 3
        proc = _shell(fidelity.replace("logs/cfp_crfiqa_facenet/runs/<time>", str(small_run)), cwd, user_env)
    finally:
        shutil.rmtree(graded, ignore_errors=True)  # the data folder is shared by this module's tests
    out = small_run / "fidelity"
    assert (
        "Spearman of per-level mean ranks with teacher:crfiqa" in proc.stdout and str(out / "report.md") in proc.stdout
    )
    doc = json.loads((out / "fidelity.json").read_text())
    assert doc["reference"] == "teacher:crfiqa" and doc["methods"] == ["teacher:crfiqa", "student"]
    for kind in KINDS:
        assert sum(doc["levels"][kind]["n_images"]) == 23  # the face without landmarks is left out
        assert len(doc["mean_rank"][kind]["student"]) == 6
        assert doc["spearman"]["teacher:crfiqa"][kind] == pytest.approx(1.0)
        assert -1 <= doc["spearman"]["student"][kind] <= 1
        pauc = doc["pauc_normalised"][kind]["student"]["start_err=0.10"]["0.2"]
        assert 0 < pauc < 2
        # the run's evaluation.bootstrap (1000) gives the paired interval of student - teacher on each copy
        boot = doc["bootstrap"][kind]
        assert boot["n_boot"] == 1000
        diff = boot["comparisons"]["aligned"]["student - teacher:crfiqa"]["operating_points"]["start_err=0.10"]["0.2"]
        teacher_pauc = doc["pauc_normalised"][kind]["teacher:crfiqa"]["start_err=0.10"]["0.2"]
        assert diff["difference"] == pytest.approx(pauc - teacher_pauc, abs=1e-9)
        assert diff["low"] <= diff["high"] and 0 < diff["n_defined"] <= 1000
        assert (out / kind / "report.md").is_file()  # the evaluation runner's own report of each copy
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 46 and set(rows[0]) == {"kind", "path", "level", "teacher:crfiqa", "student"}
    report = (out / "report.md").read_text()
    assert "## blur: mean percentile rank per level" in report and "| student |" in report
    assert "paired-bootstrap interval over 1000 resamples" in report and "| student - teacher:crfiqa |" in report
    assert "pAUC minus teacher:crfiqa's, with the 95% paired-bootstrap interval" in proc.stdout
    assert (out / "fidelity.png").stat().st_size > 10_000
    # the same run twice, as two seeds would be: sd 0, each run's interval beside the mean
    proc = _shell(compare.replace(runs, f"{small_run} {small_run}"), cwd, user_env)
    boot = doc["bootstrap"]["blur"]["comparisons"]["aligned"]["student - teacher:crfiqa"]
    interval = format_interval(boot["operating_points"]["start_err=0.10"]["0.2"])
    assert "Degradation fidelity reports (`aikd fidelity`)" in proc.stdout
    assert re.search(rf"\| blur \| [+-]\d\.\d{{3}} ± 0\.000 \| \**{re.escape(interval)}\** \|", proc.stdout)


def test_fidelity_errors_name_the_path_and_the_fix(small_run: Path, graded: Path, tmp_path: Path, capsys) -> None:
    from aikd.app.cli import main

    assert main(["fidelity", str(small_run), "--graded", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "aikd make-graded --out" in err
    assert main(["fidelity", str(tmp_path / "norun"), "--graded", str(graded)]) == 2
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["fidelity", str(tmp_path / "empty"), "--graded", str(graded)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(small_run, unfinished, ignore=shutil.ignore_patterns("export", "checkpoints", "fidelity"))
    assert main(["fidelity", str(unfinished), "--graded", str(graded)]) == 2
    err = capsys.readouterr().err
    assert "no student" in err and f"hydra.run.dir={unfinished}" in err
    assert main(["fidelity", str(small_run), "--graded", str(graded), "--bootstrap", "-1"]) == 2
    assert "--bootstrap must be 0 (off) or a number of resamples, got -1" in capsys.readouterr().err
    assert main(["make-graded", "--out", str(graded), "--seed", "9", "--source", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_make_graded_cli_refuses_without_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from aikd.app.cli import main

    monkeypatch.delenv("AIKD_DATA", raising=False)
    assert main(["make-graded", "--out", str(tmp_path / "g")]) == 2
    assert "AIKD_DATA" in capsys.readouterr().err
    monkeypatch.setenv("AIKD_DATA", str(tmp_path))
    assert main(["make-graded", "--out", str(tmp_path / "g")]) == 2
    assert "not a CFP root" in capsys.readouterr().err and not (tmp_path / "g").exists()


def test_make_graded_cli_copies_the_identities_asked_for(fake_cfp: Path, tmp_path: Path) -> None:
    """``--identities 1 2``: a graded copy of training identities, for choosing recipes away from the test split."""
    from aikd.app.cli import main

    out = tmp_path / "g401"
    assert main(["make-graded", "--out", str(out), "--source", str(fake_cfp), "--identities", "1", "2",
                 "--no-progress"]) == 0  # fmt: skip
    doc = check_graded(out)
    assert doc["spec"]["identities"] == [1, 2] and doc["identities"] == ["001", "002"]
    for kind in KINDS:
        images = out / kind / "cfp" / "Data" / "Images"
        assert sorted(p.name for p in images.iterdir()) == ["001", "002"]
    assert {row["identity"] for rows in read_manifest(out).values() for row in rows.values()} == {
        "001",
        "002",
    }


@pytest.mark.data
def test_real_cfp_copy_levels_mean_the_same_on_every_face(cfp_root: Path, tmp_path: Path) -> None:
    """CFP 496-500 (70 real photos of very different sizes): balanced levels, level 0 byte copies, each copied photo
    is its source at its level's strength, and on every tenth face's aligned crop every level is less sharp than the
    one before, in both kinds."""
    from aikd.geometry.align import Geometry, align_image

    doc = make_graded(cfp_root, tmp_path / "g", GradedSpec(identities=[496, 500]), progress=False)
    assert doc["n_images"] == 70 and sum(doc["images_per_level"].values()) == 70 and not any(doc["clamped"].values())
    manifest = read_manifest(tmp_path / "g")
    index = read_cfp(cfp_root, identities=[496, 500])
    for kind in KINDS:
        strengths = GradedSpec().strengths(kind)
        for n, i in enumerate(np.flatnonzero(index.has_landmarks)):
            row = manifest[kind][index.paths[i]]
            copied = tmp_path / "g" / kind / "cfp" / "Data" / index.paths[i]
            src = cv2.imread(str(index.path(i)))
            scale = face_scale(index.landmarks[i])
            if row["level"] == 0:
                assert copied.read_bytes() == index.path(i).read_bytes()
            else:  # the copy is the source degraded at its level (up to JPEG quality 95)
                expected = degrade_photo(src, kind, row["strength"], scale)[0]
                assert np.abs(cv2.imread(str(copied)).astype(float) - expected).mean() < 1.5
            if n % 10 == 0:
                # the photo's own edge can lie inside the crop: measure only where the crop shows the photo
                inside = align_image(np.full_like(src, 255), index.landmarks[i], Geometry(112))[0][..., 0] == 255
                inside = cv2.erode(inside.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
                crops = [align_image(degrade_photo(src, kind, s, scale)[0], index.landmarks[i], Geometry(112))[0]
                         for s in strengths]  # fmt: skip
                sharp = [_laplacian_variance(c, inside) for c in crops]
                assert all(b < a for a, b in zip(sharp, sharp[1:])), (kind, index.paths[i], sharp)
