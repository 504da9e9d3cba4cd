"""Deterministic synthetic "faces": a stand-in for real face images in the demo and in tests.

**This is not a face model.** The images are cartoon-like faces drawn with OpenCV polygons (ellipses, curves,
flat colours with simple shading). They exist so that the whole pipeline - alignment, teacher training,
distillation, evaluation - can run on a fresh machine in minutes without downloading any data, and so that tests
have data with *exactly known* landmarks and *exactly known* degradations. Figures measured on them say nothing
about real faces; use real data (e.g. CFP through ``$AIKD_DATA``) for anything you report.

What the generator models, and why:

* **Identities** (:class:`Identity`): face width and jaw shape, skin tone, eye spacing/size/tilt/colour, brow
  shape, nose length/width, mouth position/width, lips, ears, hair colour and style, glasses, beard. These are
  drawn once per identity from ``(seed, identity)``, so a small CNN has identity to learn, and most of it sits in
  fine geometry (spacing, shapes) that degradations destroy.
* **Per-image nuisance** (the ``params`` of :meth:`SyntheticFaces.image_params`): roll, yaw (rendered by
  projecting a curved head surface, so features shift and compress horizontally while the outline stays),
  scale, position in the image, image size, illumination (directional gradient, brightness, contrast, white
  balance), expression (smile, open mouth, raised brows, eye openness) and a cluttered background. Alignment
  therefore has real work to do.
* **Graded degradations** with recorded levels in ``[0, 1]``: Gaussian blur, sensor noise, down-scaling (down
  then back up), occlusion (sunglasses bar, random patch or lower-face mask) and JPEG compression. A fraction
  ``degradation`` of images is degraded; the others are clean. Levels are relative to the face's size (blur and
  down-scaling are given in inter-ocular distances), so a level means the same loss of identity information at
  every image size. ``severity = 1 - prod(1 - level)`` combines them.
* **Exact landmarks**: the 5 points (image-left eye centre, image-right eye centre, nose tip, image-left and
  image-right mouth corner) are projected with the very function that projects the drawn polygons, in pixel
  coordinates with pixel centres at integers (the :mod:`aikd.geometry.align` convention). Drawing is super-sampled
  (``_SUPERSAMPLE`` x) and box-filtered down, which keeps anti-aliased shapes centred on their geometry to
  a few hundredths of a pixel.

Every image is a pure function of ``(seed, identity, index)``: :meth:`SyntheticFaces.render` can be called in any
order, from any process, and gives the same bytes. Independent random streams are used for the per-image
parameters, the background and the sensor noise, so overriding one parameter (e.g. forcing ``blur=0.5`` in a
test) leaves everything else about the image unchanged.

On disk (:meth:`SyntheticFaces.write`) the generator writes the generic folder format the real-data loader reads::

    root/id_0007/0003.png        one folder per identity, zero-padded
    root/landmarks.csv           path,left_eye_x,left_eye_y,...,mouth_right_y  (2 decimals; '/' separators)
    root/meta.csv                path,identity,seed,size,yaw,roll,scale,illumination,blur,noise,downscale,
                                 occlusion,severity,jpeg
    root/generator.json          generator parameters + version; an identical file makes a rerun a no-op

The package is split by concern, data flowing one way: :mod:`~aikd.data.synthetic.identity` (who: per-identity
parameters and the random streams) -> :mod:`~aikd.data.synthetic.render` (head geometry, pose projection,
drawing, lighting) -> :mod:`~aikd.data.synthetic.degrade` (occluders and graded degradations) ->
:mod:`~aikd.data.synthetic.generator` (:class:`SyntheticFaces`: per-image parameters, rendering, writing to
disk). The ``aikd generate-faces`` command lives in :mod:`aikd.app.generate_faces`. This package re-exports the
public names, so ``from aikd.data.synthetic import SyntheticFaces`` keeps working.
"""

from __future__ import annotations

from aikd.data.synthetic.degrade import CLEAN, DEGRADATIONS, degrade
from aikd.data.synthetic.generator import (
    BROKEN_FILES,
    FRONTAL,
    LANDMARK_COLUMNS,
    META_COLUMNS,
    PARAM_NAMES,
    VERSION,
    SyntheticFaces,
)
from aikd.data.synthetic.identity import Identity, identity_name, image_name

__all__ = [
    "VERSION",
    "LANDMARK_COLUMNS",
    "META_COLUMNS",
    "DEGRADATIONS",
    "PARAM_NAMES",
    "CLEAN",
    "FRONTAL",
    "BROKEN_FILES",
    "Identity",
    "SyntheticFaces",
    "identity_name",
    "image_name",
    "degrade",
]
