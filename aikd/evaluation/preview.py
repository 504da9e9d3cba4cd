"""Pictures people look at: alignment / misalignment previews.

A preview grid shows, per face: the source image with its 5 landmarks, the aligned crop with the template
points, and one crop per misalignment preset. In every crop green crosses mark where the model expects the
facial points (the template) and red dots where they really are, so a misalignment is visible at a glance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from aikd.geometry.align import Canvas, Geometry, align_image, template_points
from aikd.geometry.misalign import Misalignment, NoMisalign, misalign
from aikd.io import atomic_path

__all__ = ["alignment_preview", "save_figure"]


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:  # noqa: ANN001 - matplotlib Figure
    """Save a matplotlib figure atomically as PNG and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def alignment_preview(
    images: Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray],
    presets: Mapping[str, Misalignment],
    geometry: Geometry | None = None,
    titles: Sequence[str] | None = None,
    seed: int = 0,
    canvas: Canvas | None = None,
):  # noqa: ANN201 - returns a matplotlib Figure
    """Grid figure: rows are faces; columns source, aligned crop, then each misalignment preset.

    Args:
        images: RGB uint8 source images.
        landmarks: ``(5, 2)`` source landmarks per image.
        presets: name -> misalignment module (parameters drawn with ``sample_for_indices(seed)``, so the
            preview shows exactly what evaluation under that preset uses).
        geometry: crop geometry of the model (default ArcFace 112x112).
        titles: optional row labels.
        seed: evaluation seed.
        canvas: canvas used in between (default: face at the crop size with a 60% border).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    geometry = geometry or Geometry(size=112)
    h, w = geometry.hw
    canvas = canvas or Canvas(size=int(max(h, w) * 1.6), face=geometry)
    tmpl = template_points(geometry)
    columns = ["source + 5 points", "aligned", *presets]
    fig, axes = plt.subplots(len(images), len(columns), figsize=(1.9 * len(columns), 2.0 * len(images)), squeeze=False)
    for r, (img, lm) in enumerate(zip(images, landmarks)):
        lm = np.asarray(lm, dtype=np.float64)
        canv, m = align_image(img, lm, canvas)
        t_img = torch.from_numpy(canv).permute(2, 0, 1)[None]
        t_lm = torch.from_numpy(lm).float()[None]
        t_m = torch.from_numpy(m).float()[None]
        ax = axes[r, 0]
        ax.imshow(img)
        ax.scatter(
            lm[:, 0],
            lm[:, 1],
            s=14,
            c=["#ff3030", "#ff3030", "#ffd000", "#30a0ff", "#30a0ff"],
            edgecolors="k",
            linewidths=0.5,
        )
        ax.set_ylabel(titles[r] if titles else f"face {r}", fontsize=8)
        ax.set_title(
            f"{columns[0]}\n{img.shape[1]}x{img.shape[0]}" if r == 0 else f"{img.shape[1]}x{img.shape[0]}", fontsize=8
        )
        for c, (name, module) in enumerate([("aligned", NoMisalign()), *presets.items()], start=1):
            params = module.sample_for_indices(t_lm, [r], seed=seed)
            crop, crop_lm = misalign(t_img, t_lm, geometry, params, t_m)
            ax = axes[r, c]
            ax.imshow(crop[0].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.scatter(tmpl[:, 0], tmpl[:, 1], marker="+", s=40, c="#00ff60", linewidths=1.2)
            ax.scatter(crop_lm[0, :, 0], crop_lm[0, :, 1], s=8, c="#ff3030", edgecolors="none")
            err = float((crop_lm[0].numpy() - tmpl).__abs__().max())
            ax.set_title((f"{name}\n" if r == 0 else "") + f"max off {err:.1f}px", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"Alignment preview ({geometry.template} {w}x{h}): green + = template points, red = true landmarks", fontsize=9
    )
    fig.tight_layout()
    return fig
