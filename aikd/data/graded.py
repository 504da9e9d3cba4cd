"""A degradation-fidelity set: a copy of CFP identities with graded, recorded blur and down-scaling.

Why: a student fine-tuned on clean, well-aligned faces can forget what its teacher knew about blur and low
resolution (degradations that CFP rarely contains). To measure that, the test identities are copied with synthetic
degradations of known strength; the fidelity evaluation (:mod:`aikd.evaluation.fidelity`, ``aikd fidelity``) then
checks that the student ranks the degraded faces as its teacher does.

What is degraded, and how strong a level is:

* The **source photo** is degraded, before alignment, so the usual pipeline (landmarks -> 5-point similarity ->
  crop) runs unchanged on the copy and the CFP landmarks stay valid: degradations keep the image size.
* A level's strength is defined **on the aligned 112 x 112 ArcFace crop**: blur sigma in crop pixels
  (:data:`BLUR_SIGMAS`) and effective crop resolution in pixels (:data:`RESOLUTIONS`: the face is represented
  by that many samples across the crop). It is converted to source pixels with the face's own scale, the scale
  of the least-squares similarity that maps its 5 landmarks onto the template (:func:`face_scale`), which is
  exactly the scale the alignment applies. (The inter-ocular distance alone would under-state the scale of
  profile faces, whose eyes are foreshortened; both are recorded in the manifest.) A level therefore means the
  same loss of detail on every face, whatever the photo's size.
* Blur: ``cv2.GaussianBlur`` with sigma ``sigma_crop * scale`` source pixels. Down-scaling: ``cv2.resize``
  down by area (``INTER_AREA``) to ``resolution / (112 * scale)`` of the photo's size, then back up bilinearly
  (``INTER_LINEAR``). A photo whose face is already smaller than the requested resolution is left as it is
  (``clamped`` in the manifest).
* Level 0 is the clean photo: its file is a byte-for-byte copy of the source.

Which face gets which level: the levels are spread evenly over the faces of each pose (frontal, profile), in
an order drawn from ``seed``, so every level holds the same number of faces (give or take one) and the same mix
of poses; a face has the same level in both kinds (blur and down-scaling are compared on the same faces).
Faces without landmarks (the CFP detector found none) cannot be scaled: they are copied unchanged with level
-1 and the evaluation leaves them out, as it does on CFP.

Layout written by :func:`make_graded` (``out`` must not exist, or be an earlier copy, see ``overwrite``)::

    out/graded.json                        the settings and counts; an identical file makes a rerun a no-op
    out/manifest.csv                       kind,path,identity,pose,level,strength,unit,scale,iod,source_param,clamped
    out/<kind>/cfp/Data/Images/<id>/{frontal,profile}/NN.jpg     degraded photos (JPEG, ``jpeg_quality``)
    out/<kind>/cfp/Data/landmarks_mtcnn.csv                      the source rows of these identities, verbatim
    out/<kind>/cfp/Data/list_name.txt, Data/Fiducials/<id>/...   copied
    out/<kind>/cfp/Protocol/Pair_list_{F,P}.txt, Split/{FF,FP}/NN/{same,diff}.txt   restricted to these identities

so each ``out/<kind>`` is a data root like ``$AIKD_DATA`` (``paths.data_dir=out/blur``) that the CFP reader
(:func:`aikd.data.cfp.read_cfp`) and the CFP pair protocols read unchanged. ``path`` in the manifest is the path
the CFP reader gives the face (``Images/451/frontal/01.jpg``, relative to ``<kind>/cfp/Data``).

The copy is deterministic (same settings -> same bytes) and atomic: it is written to a temporary folder beside
``out`` and renamed into place when complete.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from aikd.data.cfp import POSES, identity_range
from aikd.data.index import DataError, read_landmarks_csv
from aikd.io import current_umask

log = logging.getLogger(__name__)

__all__ = [
    "KINDS",
    "BLUR_SIGMAS",
    "RESOLUTIONS",
    "CROP_SIZE",
    "MANIFEST_COLUMNS",
    "GradedSpec",
    "face_scale",
    "degrade_photo",
    "assign_levels",
    "make_graded",
    "read_manifest",
    "check_graded",
    "level_counts",
]

#: The degradation kinds, one copy each.
KINDS: tuple[str, ...] = ("blur", "downscale")
#: Gaussian blur sigma per level, in pixels of the aligned 112 x 112 crop (level 0 = clean).
BLUR_SIGMAS: tuple[float, ...] = (0.0, 0.75, 1.5, 2.25, 3.0, 4.0)
#: Effective resolution of the aligned crop per level, in pixels across it (112 = clean).
RESOLUTIONS: tuple[float, ...] = (112.0, 56.0, 40.0, 28.0, 20.0, 14.0)
#: Side of the reference crop the strengths are defined on (ArcFace template).
CROP_SIZE = 112
#: Columns of ``manifest.csv``.
MANIFEST_COLUMNS = (
    "kind", "path", "identity", "pose", "level", "strength", "unit", "scale", "iod", "source_param", "clamped",
)  # fmt: skip
#: Version of the generator: part of ``graded.json``, so a changed algorithm is never mistaken for an old copy.
VERSION = 1
_UNITS = {"blur": "sigma_px_on_112_crop", "downscale": "resolution_px_on_112_crop"}
_SOURCE_PARAMS = {"blur": "sigma in source px", "downscale": "resize factor of the photo (1 = unchanged)"}


@dataclass
class GradedSpec:
    """Settings of a graded copy (everything that determines its bytes, written to ``graded.json``).

    Args:
        identities: inclusive ``(lo, hi)`` CFP identity numbers or an explicit list (default the test split).
        seed: seed of the level assignment.
        blur_sigmas: blur sigma per level on the 112 px aligned crop; the first must be 0 (clean).
        resolutions: effective aligned-crop resolution per level; the first must be 112 (clean). Same number of
            levels as ``blur_sigmas``.
        jpeg_quality: JPEG quality of the degraded photos (CFP's file names end in ``.jpg``; 95 keeps compression
            far below the mildest level; level 0 files are copies, not re-encoded).
        landmarks_file: the landmark CSV relative to the CFP root (copied restricted to ``identities``).
    """

    identities: list[int] = field(default_factory=lambda: [451, 500])
    seed: int = 0
    blur_sigmas: list[float] = field(default_factory=lambda: list(BLUR_SIGMAS))
    resolutions: list[float] = field(default_factory=lambda: list(RESOLUTIONS))
    jpeg_quality: int = 95
    landmarks_file: str = "Data/landmarks_mtcnn.csv"

    def __post_init__(self) -> None:
        self.identities = [int(i) for i in self.identities]
        self.blur_sigmas = [float(s) for s in self.blur_sigmas]
        self.resolutions = [float(r) for r in self.resolutions]
        problems = []
        if len(self.blur_sigmas) != len(self.resolutions) or len(self.blur_sigmas) < 2:
            problems.append(
                f"blur_sigmas ({len(self.blur_sigmas)}) and resolutions ({len(self.resolutions)}) need the same "
                "number of levels, at least 2 (level 0 clean + 1)"
            )
        if self.blur_sigmas and self.blur_sigmas[0] != 0:
            problems.append(f"blur_sigmas[0] must be 0 (level 0 is clean), got {self.blur_sigmas[0]}")
        if self.resolutions and self.resolutions[0] != CROP_SIZE:
            problems.append(f"resolutions[0] must be {CROP_SIZE} (level 0 is clean), got {self.resolutions[0]}")
        if any(b <= a for a, b in zip(self.blur_sigmas, self.blur_sigmas[1:])):
            problems.append(f"blur_sigmas must increase with the level, got {self.blur_sigmas}")
        if any(b >= a for a, b in zip(self.resolutions, self.resolutions[1:])) or min(self.resolutions) < 1:
            problems.append(f"resolutions must decrease with the level and stay >= 1, got {self.resolutions}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            problems.append(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if not self.identities:
            problems.append("identities is empty")
        if problems:
            raise ValueError("graded set: " + "; ".join(problems))

    @property
    def n_levels(self) -> int:
        return len(self.blur_sigmas)

    def strengths(self, kind: str) -> list[float]:
        """The per-level strengths of ``kind`` (crop units)."""
        if kind not in KINDS:
            raise ValueError(f"unknown degradation kind {kind!r}; choose from {KINDS}")
        return self.blur_sigmas if kind == "blur" else self.resolutions

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def face_scale(landmarks: np.ndarray) -> float:
    """Source pixels per pixel of the aligned 112 px ArcFace crop, for one face's ``(5, 2)`` landmarks.

    It is the inverse of the scale of the least-squares similarity the alignment fits (:mod:`aikd.geometry.align`),
    so a sigma of ``s`` crop pixels is ``s * face_scale`` source pixels. NaN when the landmarks are missing.
    """
    import torch

    from aikd.geometry.align import Geometry, template_matrix

    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (5, 2) or not np.isfinite(lm).all():
        return float("nan")
    m = template_matrix(torch.as_tensor(lm[None]), Geometry(size=CROP_SIZE))[0].numpy()
    crop_per_source = math.hypot(float(m[0, 0]), float(m[1, 0]))
    return 1.0 / max(crop_per_source, 1e-12)


def degrade_photo(image: np.ndarray, kind: str, strength: float, scale: float) -> tuple[np.ndarray, float, bool]:
    """Degrade a whole photo so that its aligned crop shows ``strength`` of ``kind`` (crop units).

    Args:
        image: ``H x W x C`` uint8 photo (any channel order: both operations act per channel).
        kind: ``"blur"`` (``strength`` = sigma on the 112 px crop) or ``"downscale"`` (``strength`` = effective
            resolution of the 112 px crop).
        strength: the level's strength; 0 blur or 112 resolution returns ``image`` unchanged.
        scale: source pixels per crop pixel (:func:`face_scale`).

    Returns:
        ``(photo, source_param, clamped)``: the degraded photo (same shape and dtype), the parameter applied in
        source pixels (blur sigma, or the resize factor of the photo), and whether the photo already had less
        detail than asked for (down-scaling a face smaller than the requested resolution: left unchanged).
    """
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"face scale must be a positive number, got {scale}")
    if kind == "blur":
        sigma = float(strength) * scale
        if sigma <= 0:
            return image, 0.0, False
        return (
            cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101),
            sigma,
            False,
        )
    if kind == "downscale":
        factor = float(strength) / (CROP_SIZE * scale)
        if strength >= CROP_SIZE:
            return image, 1.0, False
        if factor >= 1.0:  # the face is already smaller than the requested resolution
            return image, 1.0, True
        h, w = image.shape[:2]
        small = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        return out.reshape(image.shape), factor, False
    raise ValueError(f"unknown degradation kind {kind!r}; choose from {KINDS}")


def assign_levels(paths: Sequence[str], groups: Sequence[str], n_levels: int, seed: int) -> np.ndarray:
    """Spread ``n_levels`` levels evenly over the faces of each group, in an order drawn from ``seed``.

    Within a group the faces are sorted by path, shuffled with a generator seeded by ``(seed, group)`` and given
    levels ``0, 1, ..., n_levels - 1, 0, 1, ...`` in that order: each face's level is uniform over the levels, the
    counts per level differ by at most one within a group, and the draw depends neither on the order of
    ``paths`` nor on the other groups.
    """
    paths = list(paths)
    groups = list(groups)
    if len(paths) != len(groups):
        raise ValueError(f"{len(paths)} paths but {len(groups)} groups")
    levels = np.full(len(paths), -1, dtype=np.int64)
    for group in sorted(set(groups)):
        members = sorted((p, i) for i, (p, g) in enumerate(zip(paths, groups)) if g == group)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(group.encode())]))
        order = rng.permutation(len(members))
        for rank, j in enumerate(order):
            levels[members[j][1]] = rank % n_levels
    return levels


# ----------------------------------------------------------------------------------------------------------------
# Writing the copy
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class _Face:
    rel: str  # relative to Data/ (Images/451/frontal/01.jpg)
    cfp_id: int
    pose: str
    landmarks: np.ndarray


def _source_faces(root: Path, spec: GradedSpec) -> tuple[list[_Face], list[str], str]:
    """The selected faces, the landmark CSV's lines for them and its header line."""
    images = root / "Data" / "Images"
    if not images.is_dir():
        raise DataError(
            f"{root}: not a CFP root (no Data/Images); pass --source <folder holding Data/ and Protocol/> or set "
            "AIKD_DATA to the folder holding cfp/"
        )
    wanted = identity_range(spec.identities)
    lm_path = root / spec.landmarks_file
    table, _, issues = read_landmarks_csv(lm_path)
    for msg in issues[:5]:
        log.warning("%s", msg)
    faces: list[_Face] = []
    for id_dir in sorted(images.iterdir()):
        if not (id_dir.is_dir() and id_dir.name.isdigit()) or (wanted is not None and int(id_dir.name) not in wanted):
            continue
        for pose in POSES:
            for img in sorted((id_dir / pose).glob("*.jpg")):
                rel = img.relative_to(root / "Data").as_posix()
                lm = table.get(rel, np.full((5, 2), np.nan, np.float32))
                faces.append(_Face(rel, int(id_dir.name), pose, np.asarray(lm, np.float64)))
    if not faces:
        raise DataError(f"{images}: no images for CFP identities {spec.identities}")
    keep = {f.rel for f in faces}
    with open(lm_path, newline="") as fh:
        lines = fh.read().splitlines()
    header, rows = lines[0], [ln for ln in lines[1:] if ln.split(",", 1)[0].strip().replace("\\", "/") in keep]
    return faces, rows, header


def _restrict_protocol(src: Path, dst: Path, identities: set[int]) -> dict[str, int]:
    """Copy CFP's ``Protocol/`` keeping only images of ``identities`` (their numbers unchanged) and the pairs
    whose two images are both kept. Returns the number of kept pairs per protocol."""
    kept_pairs: dict[str, int] = {}
    if not src.is_dir():
        log.warning("%s: no Protocol/ folder; the copy has none (cfp_ff / cfp_fp protocols will not work on it)", src)
        return kept_pairs
    numbers: dict[str, set[int]] = {}
    for letter in ("F", "P"):
        path = src / f"Pair_list_{letter}.txt"
        if not path.is_file():
            continue
        out, kept = [], set()
        for line in path.read_text().splitlines():
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                continue
            rel = parts[1].replace("\\", "/")
            segs = rel.split("/")
            if "Images" in segs and segs.index("Images") + 1 < len(segs):
                ident = segs[segs.index("Images") + 1]
                if ident.isdigit() and int(ident) in identities:
                    out.append(line)
                    kept.add(int(parts[0]))
        numbers[letter] = kept
        _write_lines(dst / path.name, out)
    for protocol, (first, second) in (("FF", ("F", "F")), ("FP", ("F", "P"))):
        split = src / "Split" / protocol
        if not split.is_dir() or first not in numbers or second not in numbers:
            continue
        n = 0
        for fold in sorted(p for p in split.iterdir() if p.is_dir()):
            for name in ("same.txt", "diff.txt"):
                path = fold / name
                if not path.is_file():
                    continue
                out = []
                for line in path.read_text().splitlines():
                    try:
                        i, j = (int(v) for v in line.split(","))
                    except ValueError:
                        continue
                    if i in numbers[first] and j in numbers[second]:
                        out.append(line)
                n += len(out)
                _write_lines(dst / "Split" / protocol / fold.name / name, out)
        kept_pairs[protocol] = n
    return kept_pairs


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    path.write_text(text + "\n" if text else "")


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV failure
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buf.tobytes()


def _spec_document(spec: GradedSpec, source: Path) -> dict[str, Any]:
    return {
        "generator": "aikd.data.graded",
        "version": VERSION,
        "spec": spec.to_dict(),
        "kinds": {
            k: {"unit": _UNITS[k], "strengths": spec.strengths(k), "source_param": _SOURCE_PARAMS[k]} for k in KINDS
        },
        "source": {"name": source.name},
    }


def make_graded(
    source: str | Path, out: str | Path, spec: GradedSpec | None = None, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Write the graded copy of ``source`` (a CFP root) to ``out``; see the module docs for what it holds.

    Args:
        source: CFP root (the folder holding ``Data/`` and ``Protocol/``).
        out: output folder (created; must not exist unless it holds an earlier copy, see ``overwrite``).
        spec: the settings (default :class:`GradedSpec`).
        overwrite: replace an existing copy made with other settings (a copy with the same settings is kept: a
            rerun is a no-op).
        progress: show a progress bar.

    Returns:
        ``graded.json``'s content plus ``"skipped": True`` when an identical copy was already there.

    Raises:
        DataError: ``source`` is not a CFP root, or holds none of the identities.
        FileExistsError: ``out`` exists and is not an identical copy (and ``overwrite`` is False).
    """
    from tqdm.auto import tqdm

    spec = spec or GradedSpec()
    source = Path(source).expanduser()
    out = Path(out).expanduser()
    doc = _spec_document(spec, source)
    meta_path = out / "graded.json"
    if out.exists():
        old = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        if old is not None and {k: old.get(k) for k in doc} == doc and (out / "manifest.csv").is_file():
            log.info("%s: already holds this graded copy (same settings); nothing to do", out)
            return {**old, "skipped": True}
        if not overwrite:
            what = "a graded copy made with other settings" if old is not None else "something else"
            raise FileExistsError(
                f"{out} exists and holds {what}; pass --overwrite to replace it, or choose another --out"
            )
        if old is None and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a graded copy (no graded.json): refusing to replace it")
    faces, lm_rows, lm_header = _source_faces(source, spec)
    ids = sorted({f.cfp_id for f in faces})
    usable = [i for i, f in enumerate(faces) if np.isfinite(f.landmarks).all()]
    levels = np.full(len(faces), -1, dtype=np.int64)
    levels[usable] = assign_levels(
        [faces[i].rel for i in usable], [faces[i].pose for i in usable], spec.n_levels, spec.seed
    )
    scales = [face_scale(f.landmarks) for f in faces]
    iods = [float(np.linalg.norm(f.landmarks[0] - f.landmarks[1])) for f in faces]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        manifest: list[list[str]] = []
        bar = tqdm(total=len(faces) * len(KINDS), desc="graded copy", unit="img", disable=not progress)
        for kind in KINDS:
            data = tmp / kind / "cfp" / "Data"
            strengths = spec.strengths(kind)
            for face, level, scale, iod in zip(faces, levels, scales, iods):
                src, dst = source / "Data" / face.rel, data / face.rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                strength, param, clamped = float("nan"), float("nan"), False
                if level <= 0:  # clean, or no landmarks to scale the degradation by: the source's own bytes
                    shutil.copyfile(src, dst)
                    if level == 0:
                        strength, param = strengths[0], (0.0 if kind == "blur" else 1.0)
                else:
                    image = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
                    if image is None:
                        raise DataError(f"{src}: OpenCV cannot read this image")
                    strength = strengths[level]
                    degraded, param, clamped = degrade_photo(image, kind, strength, scale)
                    dst.write_bytes(_encode_jpeg(degraded, spec.jpeg_quality))
                manifest.append([
                    kind, face.rel, f"{face.cfp_id:03d}", face.pose, str(int(level)), _num(strength), _UNITS[kind],
                    _num(scale), _num(iod), _num(param), str(int(clamped)),
                ])  # fmt: skip
                bar.update(1)
            _write_lines(data / Path(spec.landmarks_file).relative_to("Data"), [lm_header, *lm_rows])
            for extra in ("list_name.txt",):
                if (source / "Data" / extra).is_file():
                    shutil.copyfile(source / "Data" / extra, data / extra)
            for cid in ids:
                fid = source / "Data" / "Fiducials" / f"{cid:03d}"
                if fid.is_dir():
                    shutil.copytree(fid, data / "Fiducials" / fid.name)
            pairs = _restrict_protocol(source / "Protocol", tmp / kind / "cfp" / "Protocol", set(ids))
        bar.close()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(manifest)
        (tmp / "manifest.csv").write_text(buf.getvalue())
        counts = level_counts(levels, spec.n_levels)
        doc = {
            **doc,
            "identities": [f"{i:03d}" for i in ids],
            "n_images": len(faces),
            "n_without_landmarks": int((levels < 0).sum()),
            "images_per_level": counts,
            "clamped": {k: int(sum(r[-1] == "1" for r in manifest if r[0] == k)) for k in KINDS},
            "protocol_pairs": pairs,
        }
        (tmp / "graded.json").write_text(json.dumps(doc, indent=2) + "\n")
        os.chmod(tmp, 0o777 & ~current_umask())
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("graded copy: %s (%d images x %d kinds)", out, len(faces), len(KINDS))
    return doc


def _num(x: float) -> str:
    return "" if not np.isfinite(x) else f"{x:.6g}"


def level_counts(levels: np.ndarray, n_levels: int) -> dict[str, int]:
    """Images per level (``"-1"``: without landmarks, not degraded)."""
    levels = np.asarray(levels)
    out = {str(k): int((levels == k).sum()) for k in range(n_levels)}
    if (levels < 0).any():
        out["-1"] = int((levels < 0).sum())
    return out


# ----------------------------------------------------------------------------------------------------------------
# Reading it back
# ----------------------------------------------------------------------------------------------------------------


def check_graded(root: str | Path) -> dict[str, Any]:
    """Check that ``root`` is a complete graded copy; return its ``graded.json``.

    Raises:
        DataError: naming the missing file and the command that makes the copy.
    """
    root = Path(root).expanduser()
    fix = f"make it with: aikd make-graded --out {root}"
    if not root.is_dir():
        raise DataError(f"graded set not found: {root} does not exist; {fix}")
    meta = root / "graded.json"
    if not meta.is_file():
        raise DataError(f"{root} is not a graded set (no graded.json; an interrupted copy leaves none); {fix}")
    doc = json.loads(meta.read_text())
    missing = [p for p in ("manifest.csv", *(f"{k}/cfp/Data/Images" for k in KINDS)) if not (root / p).exists()]
    if missing:
        raise DataError(f"{root}: incomplete graded set, missing {missing}; remake it with: aikd make-graded "
                        f"--out {root} --overwrite")  # fmt: skip
    return doc


def read_manifest(root: str | Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``manifest[kind][path]`` -> the row (``level`` as int, ``strength`` as float) of a graded copy."""
    root = Path(root).expanduser()
    check_graded(root)
    out: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KINDS}
    with open(root / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            row = dict(row)
            row["level"] = int(row["level"])
            row["strength"] = float(row["strength"]) if row["strength"] else float("nan")
            out.setdefault(row["kind"], {})[row["path"]] = row
    return out
