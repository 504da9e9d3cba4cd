"""Face detectors that give the 5 landmarks alignment needs (MTCNN, YuNet), and their onnxruntime plumbing.

Floor 2: detectors read images and return boxes + 5 points; they know nothing about datasets. The per-dataset
landmark cache that calls them lives in :mod:`aikd.data.landmarks`.
"""
