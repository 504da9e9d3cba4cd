"""Shared fixtures: small generated data that runs anywhere, and the real CFP data when $AIKD_DATA is set."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from aikd.geometry.align import Geometry, template_points

# One thread: tests are many small ops, where thread start-up and oversubscription (with loader workers or a
# busy machine) cost more than they save.
torch.set_num_threads(1)


CONF = Path(__file__).resolve().parent.parent / "conf"


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose the real run config (``train.yaml``) with overrides, as ``train.py`` would, with every output under
    ``tmp_path``; Hydra's global state is cleared before and after."""

    def _compose(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        paths = [
            f"paths.output_dir={tmp_path / 'out'}",
            f"paths.log_dir={tmp_path / 'logs'}",
            f"paths.cache_dir={tmp_path}",
        ]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[*paths, *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep aikd's cache inside the test session unless the caller pinned one (e.g. converted FaceNet weights)."""
    if "AIKD_TEST_CACHE" in os.environ:
        monkeypatch.setenv("AIKD_CACHE", os.environ["AIKD_TEST_CACHE"])
    else:
        monkeypatch.setenv("AIKD_CACHE", str(tmp_path_factory.getbasetemp() / "aikd-cache"))


@pytest.fixture(scope="session")
def cfp_root() -> Path:
    """CFP root from ``$AIKD_DATA/cfp``; tests using it are skipped (with the reason) when it is not set."""
    value = os.environ.get("AIKD_DATA")
    if not value:
        pytest.skip("AIKD_DATA is not set (point it at the shared data folder holding cfp/)")
    root = Path(value).expanduser() / "cfp"
    if not (root / "Data" / "Images").is_dir():
        pytest.skip(f"no CFP data at {root}")
    return root


@pytest.fixture(scope="session")
def celeba_root() -> Path:
    """CelebA 10k root from ``$AIKD_DATA/celeba10k``; tests using it are skipped (with the reason) when unset."""
    value = os.environ.get("AIKD_DATA")
    if not value:
        pytest.skip("AIKD_DATA is not set (point it at the shared data folder holding celeba10k/)")
    root = Path(value).expanduser() / "celeba10k"
    if not root.is_dir():
        pytest.skip(f"no CelebA 10k data at {root}")
    return root


def random_landmarks(rng: np.random.Generator, n: int, size: int = 200, roll: float = 20.0) -> np.ndarray:
    """Plausible 5-point landmarks: the ArcFace template scaled, rolled and placed in a ``size`` image."""
    base = template_points(Geometry(size=112)) - 55.5
    out = []
    for _ in range(n):
        a = np.deg2rad(rng.uniform(-roll, roll))
        s = rng.uniform(0.8, 1.4)
        r = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        t = rng.uniform(size * 0.4, size * 0.6, size=2)
        out.append(base @ r.T + t)
    return np.stack(out)


def dot_image(landmarks: np.ndarray, size: int = 200, radius: int = 3) -> np.ndarray:
    """Black RGB image with a white disc at each landmark (to see where landmarks end up after warps)."""
    img = np.zeros((size, size, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), radius * 16, (255, 255, 255), -1, cv2.LINE_AA, 4)
    return img


def write_folder_dataset(
    root: Path, identities: int = 3, per_identity: int = 4, seed: int = 0, size: int = 120
) -> Path:
    """A tiny dataset in the generic format: smooth random images with landmarks.csv."""
    rng = np.random.default_rng(seed)
    rows = [
        "path,"
        + ",".join(
            f"{p}_{c}" for p in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right") for c in ("x", "y")
        )
    ]
    for i in range(identities):
        d = root / f"id_{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_identity):
            img = cv2.GaussianBlur((rng.random((size, size, 3)) * 255).astype(np.uint8), (0, 0), 3)
            name = f"id_{i:02d}/img_{j}.png"
            cv2.imwrite(str(root / name), img)
            lm = random_landmarks(rng, 1, size=size, roll=10)[0] * 0.7 + size * 0.15
            rows.append(name + "," + ",".join(f"{v:.2f}" for v in lm.reshape(-1)))
    (root / "landmarks.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    return write_folder_dataset(tmp_path / "faces")
