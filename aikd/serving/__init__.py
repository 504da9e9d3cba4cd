"""Using a trained student: export (safetensors + ONNX + metadata), loading an export, and scoring photos.

Floor 7: ``aikd score`` (:mod:`aikd.app.score_cli`) needs only this package, the geometry and the detectors - not
Lightning or timm.
"""
