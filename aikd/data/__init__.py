"""Face data: on-disk formats, pair protocols, the streaming dataset and the Lightning DataModule.

Names are imported lazily, so light commands (``aikd generate-faces``) do not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AlignedFaces": "aikd.data.dataset",
    "collate_faces": "aikd.data.dataset",
    "face_loader": "aikd.data.dataset",
    "FaceRows": "aikd.data.dataset",
    "read_image": "aikd.data.dataset",
    "FaceDataModule": "aikd.data.datamodule",
    "Degradation": "aikd.data.degrade",
    "DataError": "aikd.data.index",
    "FaceIndex": "aikd.data.index",
    "read_folder": "aikd.data.index",
    "read_landmarks_csv": "aikd.data.index",
    "write_landmarks_csv": "aikd.data.index",
    "PairList": "aikd.data.pairs",
    "all_pairs": "aikd.data.pairs",
    "read_lfw_pairs": "aikd.data.pairs",
    "read_lfw_people": "aikd.data.pairs",
    "CFPSource": "aikd.data.sources",
    "FaceSource": "aikd.data.sources",
    "FolderSource": "aikd.data.sources",
    "folder_datamodule": "aikd.data.folder",
    "SyntheticSource": "aikd.data.sources",
    "RecordIODataset": "aikd.data.recordio",
    "RecordIOSource": "aikd.data.recordio",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'aikd.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
