"""aikd: alignment-robust face image quality assessment by knowledge distillation."""

__version__ = "0.1.0"

#: The ``"format"`` tag of an exported student's metadata (written by :mod:`aikd.serving.export`, required by
#: :mod:`aikd.serving.load`). It lives here rather than in :mod:`aikd.serving.export` so that ``aikd score`` can
#: recognise an export without importing the exporter (which pulls in timm and the other training dependencies, seconds
#: per start);
#: :mod:`aikd.serving.export` re-exports it. Bump the version when the metadata's meaning changes.
METADATA_FORMAT = "aikd-student-v1"

from aikd import _compat  # noqa: E402

_compat.install()  # old module paths (aikd.student, aikd.misalign, ...) import with a FutureWarning naming the new one
