"""Face geometry: 5-point alignment and the one clean crop, misalignment, and the model input spec.

Floor 1 of the data flow (image -> **crop -> misalign** -> teacher/student -> loss -> EDC -> export/score). Everything
here is pure tensor/array maths on landmarks and images; it imports nothing else from aikd but :mod:`aikd.io`.

* :mod:`aikd.geometry.align` - templates, similarity fits, :func:`~aikd.geometry.align.crop` (the clean crop every
  stage uses) and the photo -> canvas -> crop path (:class:`~aikd.geometry.align.Canvas`).
* :mod:`aikd.geometry.misalign` - misalignment presets: random parameter sampling separate from the warp.
* :mod:`aikd.geometry.preprocess` - what a network expects (:class:`~aikd.geometry.preprocess.InputSpec`).
"""
