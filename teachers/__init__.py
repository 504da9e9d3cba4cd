"""Bundled teacher plug-ins. Importing this package registers them with :data:`aikd.teacher.TEACHERS`.

Adding a teacher: one file here (a :class:`aikd.teacher.Teacher` subclass decorated with
``@register_teacher("name")``, which also sets its ``name``; a teacher trained here declares its training objective
in the same file, ``objective = ...``, see ``ri.py``), one import line below, and one ``conf/teacher/<name>.yaml``.
The registry-wide tests (``tests/test_teachers.py``, ``tests/test_teacher_training.py``) then cover it
automatically.
"""

from teachers import adaface, crfiqa, ensemble, magface, onnx, ri  # noqa: F401
