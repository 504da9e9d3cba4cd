"""The application layer: the staged run pipeline, start-up validation, the ``aikd`` CLI and sweep helpers.

Top floor: the only code that reads the whole Hydra run config and wires the lower floors together.
"""
