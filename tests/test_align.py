"""Alignment geometry: similarity fits, templates, warps, canvases, box crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import dot_image, random_landmarks

from aikd.geometry.align import (
    TEMPLATES,
    Canvas,
    Geometry,
    align,
    align_image,
    apply_affine,
    box_matrix,
    compose,
    crop_matrix,
    estimate_similarity,
    fit_residual,
    invert,
    register_template,
    template_points,
)


def _random_similarity(rng: np.random.Generator, b: int) -> torch.Tensor:
    a = rng.uniform(-np.pi, np.pi, b)
    s = rng.uniform(0.2, 5.0, b)
    t = rng.uniform(-100, 100, (b, 2))
    m = np.zeros((b, 2, 3))
    m[:, 0, 0] = s * np.cos(a)
    m[:, 0, 1] = -s * np.sin(a)
    m[:, 1, 0] = s * np.sin(a)
    m[:, 1, 1] = s * np.cos(a)
    m[:, :, 2] = t
    return torch.from_numpy(m)


def test_similarity_recovers_exact_transform() -> None:
    rng = np.random.default_rng(0)
    m = _random_similarity(rng, 16)
    src = torch.from_numpy(rng.uniform(0, 200, (16, 5, 2)))
    dst = apply_affine(m, src)
    est = estimate_similarity(src, dst)
    torch.testing.assert_close(est, m, atol=1e-8, rtol=1e-8)


def test_similarity_is_least_squares_optimum() -> None:
    rng = np.random.default_rng(1)
    src = torch.from_numpy(rng.uniform(0, 100, (1, 5, 2)))
    dst = torch.from_numpy(rng.uniform(0, 100, (1, 5, 2)))
    est = estimate_similarity(src, dst)[0].numpy()
    # Solve the same problem as a linear least-squares system in (a, b, tx, ty) and compare.
    s, d = src[0].numpy(), dst[0].numpy()
    rows = []
    for x, y in s:
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
    sol, *_ = np.linalg.lstsq(np.asarray(rows), d.reshape(-1), rcond=None)
    a, b, tx, ty = sol
    np.testing.assert_allclose(est, [[a, -b, tx], [b, a, ty]], atol=1e-9)


def test_similarity_weights_ignore_zero_weight_points() -> None:
    rng = np.random.default_rng(2)
    m = _random_similarity(rng, 1)
    src = torch.from_numpy(rng.uniform(0, 100, (1, 5, 2)))
    dst = apply_affine(m, src)
    dst[0, 4] += 50.0  # an outlier ...
    w = torch.tensor([[1.0, 1, 1, 1, 0]])  # ... with zero weight
    torch.testing.assert_close(estimate_similarity(src, dst, w), m, atol=1e-8, rtol=1e-8)


def test_template_points_scale_with_size_and_zoom() -> None:
    p112 = template_points(Geometry(size=112))
    np.testing.assert_allclose(p112, TEMPLATES["arcface"].array())
    p224 = template_points(Geometry(size=224))
    np.testing.assert_allclose(p224, (p112 + 0.5) * 2 - 0.5)
    centre = np.array([55.5, 55.5])
    pz = template_points(Geometry(size=112, zoom=0.5))
    np.testing.assert_allclose(pz, centre + 0.5 * (p112 - centre))


def test_geometry_validation_and_round_trip() -> None:
    with pytest.raises(KeyError, match="unknown alignment template"):
        Geometry(template="nope")
    with pytest.raises(ValueError):
        Geometry(size=0)
    g = Geometry(size=(112, 96), template="sphereface", zoom=1.1)
    assert Geometry.from_dict(g.to_dict()) == g
    with pytest.raises(ValueError, match="already exists"):
        register_template("arcface", np.zeros((5, 2)), 112, 112)


def test_kornia_warp_matches_opencv() -> None:
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur((rng.random((150, 130, 3)) * 255).astype(np.uint8), (0, 0), 2)
    lm = random_landmarks(rng, 1, size=130)[0]
    for geometry in (Geometry(size=112), Geometry(size=160), Geometry(size=112, template="box")):
        crop, m = align_image(img, lm, geometry)
        t = align(torch.from_numpy(img).permute(2, 0, 1)[None], torch.from_numpy(lm)[None], geometry)
        diff = np.abs(t[0].permute(1, 2, 0).numpy() * 255 - crop.astype(np.float64))
        assert diff[2:-2, 2:-2].max() <= 1.0  # rounding of OpenCV's uint8 output only


def test_aligned_landmarks_land_on_template() -> None:
    rng = np.random.default_rng(4)
    lm = random_landmarks(rng, 8)
    g = Geometry(size=112)
    m = crop_matrix(torch.from_numpy(lm), g)
    np.testing.assert_allclose(
        apply_affine(m, torch.from_numpy(lm)).numpy(), np.broadcast_to(template_points(g), lm.shape), atol=1e-6
    )
    assert fit_residual(torch.from_numpy(lm), g).max() < 1e-6
    noisy = torch.from_numpy(lm + rng.uniform(-3, 3, lm.shape))
    assert (fit_residual(noisy, g) > 0.1).all()


def test_dots_end_up_on_template_points() -> None:
    """Pixels, not just matrices: a white dot at each landmark appears at the template point of the crop."""
    rng = np.random.default_rng(5)
    lm = random_landmarks(rng, 1, size=200)[0]
    img = dot_image(lm, 200)
    crop, _ = align_image(img, lm, Geometry(size=112))
    gray = crop[..., 0].astype(np.float64)
    for p in template_points(Geometry(size=112)):
        x0, y0 = int(round(p[0])), int(round(p[1]))
        win = gray[y0 - 5 : y0 + 6, x0 - 5 : x0 + 6]
        ys, xs = np.mgrid[y0 - 5 : y0 + 6, x0 - 5 : x0 + 6]
        c = np.array([(xs * win).sum(), (ys * win).sum()]) / win.sum()
        assert np.linalg.norm(c - p) < 0.6


def test_compose_and_invert() -> None:
    rng = np.random.default_rng(6)
    a, b = _random_similarity(rng, 4), _random_similarity(rng, 4)
    pts = torch.from_numpy(rng.uniform(0, 50, (4, 5, 2)))
    torch.testing.assert_close(apply_affine(compose(a, b), pts), apply_affine(a, apply_affine(b, pts)))
    torch.testing.assert_close(apply_affine(invert(a), apply_affine(a, pts)), pts)


def test_box_crop_matches_template_on_upright_face_and_never_rotates() -> None:
    g = Geometry(size=112)
    upright = torch.from_numpy(template_points(g) * 1.7 + 20)[None]
    mt = crop_matrix(upright, g)
    mb = crop_matrix(upright, Geometry(size=112, template="box"))
    pts = apply_affine(mb, upright)[0].numpy()
    # Same framing within a few pixels as the template crop on an upright frontal face.
    assert np.abs(pts - apply_affine(mt, upright)[0].numpy()).max() < 3.0
    rolled = torch.from_numpy(random_landmarks(np.random.default_rng(7), 6, roll=30))
    mb = box_matrix(rolled, Geometry(size=112, template="box"))
    assert torch.all(mb[:, 0, 1] == 0) and torch.all(mb[:, 1, 0] == 0)
    assert torch.allclose(mb[:, 0, 0], mb[:, 1, 1])


def test_canvas_crop_equals_direct_crop() -> None:
    rng = np.random.default_rng(8)
    img = cv2.GaussianBlur((rng.random((220, 220, 3)) * 255).astype(np.uint8), (0, 0), 4)
    lm = random_landmarks(rng, 1, size=220)[0]
    cv = Canvas(size=256, face=Geometry(size=160))
    canvas, m = align_image(img, lm, cv)
    np.testing.assert_allclose(
        apply_affine(torch.from_numpy(m)[None], torch.from_numpy(lm)[None])[0].numpy(), cv.points(), atol=1e-6
    )
    for geometry in (Geometry(size=112), Geometry(size=112, template="box")):
        direct = align(torch.from_numpy(img).permute(2, 0, 1)[None], torch.from_numpy(lm)[None], geometry)
        via = align(
            torch.from_numpy(canvas).permute(2, 0, 1)[None],
            torch.from_numpy(lm)[None],
            geometry,
            source_from_canvas=invert(torch.from_numpy(m)[None]),
        )
        assert (direct - via).abs()[..., 4:-4, 4:-4].mean() < 0.01


def test_canvas_rejects_box_and_small_size() -> None:
    with pytest.raises(ValueError, match="template-aligned"):
        Canvas(face=Geometry(template="box"))
    with pytest.raises(ValueError, match="smaller"):
        Canvas(size=100, face=Geometry(size=112))
