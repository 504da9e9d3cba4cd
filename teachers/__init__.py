"""Bundled teacher plug-ins. Importing this package registers them with :data:`aikd.models.teacher.TEACHERS`.

Adding a teacher: one file here (a :class:`aikd.models.teacher.Teacher` subclass decorated with
``@register_teacher("name")``, which also sets its ``name``; a teacher trained here declares its training objective
in the same file, ``objective = ...``, see ``ri.py``) and one ``conf/teacher/<name>.yaml``. Every module of this
package is imported here (files starting with ``_`` excepted), so a new file needs no import line; the
registry-wide tests (``tests/test_teachers.py``, ``tests/test_teacher_training.py``) then cover it automatically.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
