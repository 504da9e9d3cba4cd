"""Using a trained student: export (safetensors + ONNX + metadata), loading an export, and scoring photos.

Floor 7: ``aikd score`` needs only this package, the geometry and the detectors - not Lightning or timm.
"""
