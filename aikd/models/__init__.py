"""Networks and their contracts: the plug-in registry, the teacher contract, the student, FR backbones, calibration.

Floor 4. The teacher plug-ins themselves live in the top-level ``teachers/`` package (one file + one YAML each) and
register here through :func:`aikd.models.registry.register_teacher`; this package never imports them.
"""
