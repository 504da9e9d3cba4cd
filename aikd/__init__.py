"""aikd: alignment-robust face image quality assessment by knowledge distillation."""

__version__ = "0.1.0"

#: The ``"format"`` tag of an exported student's metadata (written by :mod:`aikd.export`, required by
#: :mod:`aikd.score`). It lives here rather than in :mod:`aikd.export` so that ``aikd score`` can recognise an export
#: without importing the exporter (which pulls in timm and the other training dependencies, seconds per start);
#: :mod:`aikd.export` re-exports it. Bump the version when the metadata's meaning changes.
METADATA_FORMAT = "aikd-student-v1"
