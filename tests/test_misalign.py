"""Misalignment properties: identity at zero strength, bounds, same_on_batch, determinism, landmarks follow pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import dot_image, random_landmarks
from hypothesis import given, settings
from hypothesis import strategies as st

from aikd.geometry.align import TEMPLATES, Canvas, Geometry, align_image, crop, template_points
from aikd.geometry.misalign import (
    BoxCrop,
    Compose,
    DetectorShift,
    LandmarkJitter,
    MisalignParams,
    NoMisalign,
    OneOf,
    RandomAffine,
    TemplateSwitch,
    inter_ocular,
    misalign,
    misalign_matrix,
)

G = Geometry(size=112)


def _batch(n: int = 6, seed: int = 0, size: int = 200):
    """Canvases of dot images plus landmarks and canvas transforms (like a DataModule batch)."""
    rng = np.random.default_rng(seed)
    lms = random_landmarks(rng, n, size=size)
    canvas = Canvas(size=224, face=Geometry(size=112))
    imgs, mats = [], []
    for lm in lms:
        c, m = align_image(dot_image(lm, size), lm, canvas)
        imgs.append(torch.from_numpy(c).permute(2, 0, 1))
        mats.append(torch.from_numpy(m))
    return torch.stack(imgs), torch.from_numpy(lms).float(), torch.stack(mats).float()


def _clean(images, lms, mats):
    return misalign(images, lms, G, MisalignParams.identity(len(lms)), mats)


ZERO_STRENGTH = [
    NoMisalign(),
    LandmarkJitter(pixels=0.0),
    LandmarkJitter(iod_fraction=0.0),
    RandomAffine(degrees=0, scale=(1, 1), translate=0),
    LandmarkJitter(pixels=6.0, p=0.0),
    RandomAffine(p=0.0),
    BoxCrop(p=0.0),
    TemplateSwitch(p=0.0),
    DetectorShift(radius=0.0, point_spread=0.0),
    DetectorShift(offset=(-0.05, 0.02), p=0.0),
    Compose([LandmarkJitter(0.0), RandomAffine(0, (1, 1), 0)]),
    OneOf([LandmarkJitter(0.0), RandomAffine(0, (1, 1), 0)]),
]


@pytest.mark.parametrize("module", ZERO_STRENGTH, ids=lambda m: repr(m).replace("\n", ""))
def test_zero_strength_is_identity(module) -> None:
    images, lms, mats = _batch()
    clean, clean_lm = _clean(images, lms, mats)
    out = module(images, lms, G, mats, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, clean, atol=1e-5, rtol=0)
    clean_m = misalign_matrix(lms, G, MisalignParams.identity(len(lms)))
    torch.testing.assert_close(misalign_matrix(lms, G, module.last_params), clean_m)
    np.testing.assert_allclose(clean_lm.numpy(), np.broadcast_to(template_points(G), clean_lm.shape), atol=1e-3)


@settings(max_examples=25, deadline=None)
@given(pixels=st.floats(0.0, 20.0), seed=st.integers(0, 2**31 - 1))
def test_jitter_within_bounds_in_source_pixels(pixels: float, seed: int) -> None:
    lms = torch.from_numpy(random_landmarks(np.random.default_rng(seed), 32)).float()
    p = LandmarkJitter(pixels=pixels).sample(lms, torch.Generator().manual_seed(seed))
    assert p.jitter.abs().max() <= pixels + 1e-6
    if pixels > 1:  # it really perturbs, on both axes and signs
        assert p.jitter.min() < 0 < p.jitter.max()
    assert torch.all(p.angle == 0) and torch.all(p.scale == 1) and not p.box.any()


@settings(max_examples=20, deadline=None)
@given(frac=st.floats(0.01, 0.3), seed=st.integers(0, 2**31 - 1))
def test_iod_relative_jitter_scales_with_face(frac: float, seed: int) -> None:
    lms = torch.from_numpy(random_landmarks(np.random.default_rng(seed), 16)).float()
    big = lms * 10  # the same faces on 10x larger images
    g = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    j = LandmarkJitter(iod_fraction=frac)
    small_p, big_p = j.sample(lms, g()), j.sample(big, g())
    assert (small_p.jitter.abs().amax(dim=(1, 2)) <= frac * inter_ocular(lms) + 1e-4).all()
    torch.testing.assert_close(big_p.jitter, small_p.jitter * 10, rtol=1e-4, atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(
    degrees=st.floats(0, 45),
    lo=st.floats(0.5, 1.0),
    hi=st.floats(1.0, 1.5),
    tr=st.floats(0, 0.2),
    seed=st.integers(0, 10**6),
)
def test_affine_within_bounds(degrees: float, lo: float, hi: float, tr: float, seed: int) -> None:
    lms = torch.from_numpy(random_landmarks(np.random.default_rng(seed), 64)).float()
    p = RandomAffine(degrees, (lo, hi), tr).sample(lms, torch.Generator().manual_seed(seed))
    assert p.angle.abs().max() <= degrees + 1e-5
    assert p.scale.min() >= lo - 1e-6 and p.scale.max() <= hi + 1e-6
    assert p.shift.abs().max() <= tr + 1e-6


def test_affine_moves_landmarks_as_parametrised() -> None:
    """A pure shift of +10% moves every true landmark by 11.2 px right in a 112 px crop; rotation keeps the centre."""
    images, lms, mats = _batch(2)
    params = MisalignParams.identity(2)
    params.shift[:, 0] = 0.1
    _, lm_out = misalign(images, lms, G, params, mats)
    np.testing.assert_allclose(lm_out.numpy() - template_points(G), np.broadcast_to([11.2, 0.0], (2, 5, 2)), atol=1e-3)
    params = MisalignParams.identity(2)
    params.angle[:] = 90.0
    _, lm_out = misalign(images, lms, G, params, mats)
    c = np.array([55.5, 55.5])
    rel_in, rel_out = template_points(G) - c, lm_out[0].numpy() - c
    np.testing.assert_allclose(np.linalg.norm(rel_out, axis=1), np.linalg.norm(rel_in, axis=1), atol=1e-3)


@pytest.mark.parametrize(
    "module",
    [
        LandmarkJitter(6.0),
        RandomAffine(15, (0.8, 1.2), 0.1),
        BoxCrop(),
        TemplateSwitch(),
        DetectorShift(offset=(-0.035, -0.035), radius=0.05),
        OneOf([LandmarkJitter(6.0), RandomAffine(), BoxCrop(), TemplateSwitch()]),
    ],
    ids=["jitter", "affine", "box", "template", "detector", "mixed"],
)
def test_landmarks_move_with_the_image(module) -> None:
    """The true landmarks returned by misalign sit on the white dots drawn at the source landmarks."""
    images, lms, mats = _batch(4, seed=3)
    params = module.sample(lms, torch.Generator().manual_seed(1))
    crops, lm_out = misalign(images, lms, G, params, mats)
    gray = crops[:, 0].numpy()
    for b in range(len(lms)):
        for x, y in lm_out[b].numpy():
            x0, y0 = int(round(x)), int(round(y))
            if not (6 <= x0 < 106 and 6 <= y0 < 106):
                continue
            win = gray[b, y0 - 5 : y0 + 6, x0 - 5 : x0 + 6]
            ys, xs = np.mgrid[y0 - 5 : y0 + 6, x0 - 5 : x0 + 6]
            assert win.sum() > 1.0, "no dot where the landmark should be"
            c = np.array([(xs * win).sum(), (ys * win).sum()]) / win.sum()
            assert np.linalg.norm(c - (x, y)) < 1.0


@settings(max_examples=20, deadline=None)
@given(
    dx=st.floats(-0.1, 0.1),
    dy=st.floats(-0.1, 0.1),
    radius=st.floats(0, 0.1),
    spread=st.floats(0, 0.05),
    seed=st.integers(0, 2**31 - 1),
)
def test_detector_shift_moves_points_together_within_bounds(
    dx: float, dy: float, radius: float, spread: float, seed: int
) -> None:
    lms = torch.from_numpy(random_landmarks(np.random.default_rng(seed), 32)).float()
    p = DetectorShift((dx, dy), radius, spread).sample(lms, torch.Generator().manual_seed(seed))
    iod = inter_ocular(lms).view(-1, 1, 1)
    rel = p.jitter / iod
    common = rel.mean(dim=1)  # the shared part; per-point parts are what is left
    assert ((common - torch.tensor([dx, dy])).norm(dim=1) <= radius + spread * 2**0.5 + 1e-4).all()
    assert ((rel - common.unsqueeze(1)).abs() <= 2 * spread + 1e-4).all()
    assert torch.all(p.angle == 0) and torch.all(p.scale == 1) and not p.box.any()


def test_detector_shift_mean_offset_is_the_configured_one() -> None:
    lms = torch.from_numpy(random_landmarks(np.random.default_rng(0), 4000)).float()
    p = DetectorShift((-0.035, -0.035), radius=0.05).sample(lms, torch.Generator().manual_seed(0))
    mean = (p.jitter / inter_ocular(lms).view(-1, 1, 1)).mean(dim=(0, 1))
    torch.testing.assert_close(mean, torch.tensor([-0.035, -0.035]), atol=3e-3, rtol=0)


def test_misaligned_crops_differ_from_clean() -> None:
    images, lms, mats = _batch(8)
    clean, _ = _clean(images, lms, mats)
    for module in (LandmarkJitter(6.0), RandomAffine(), BoxCrop(), TemplateSwitch(), DetectorShift((0.05, 0.0))):
        out = module(images, lms, G, mats, generator=torch.Generator().manual_seed(0))
        assert (out - clean).abs().mean() > 1e-3, module


def test_same_on_batch() -> None:
    lms = torch.from_numpy(random_landmarks(np.random.default_rng(0), 8)).float()
    for module in (
        LandmarkJitter(5.0),
        RandomAffine(),
        TemplateSwitch(),
        DetectorShift(),
        OneOf([RandomAffine(), TemplateSwitch()]),
    ):
        p = module.sample(lms, torch.Generator().manual_seed(0), same_on_batch=True)
        for t in p.tensors().values():
            assert torch.equal(t, t[:1].expand_as(t)), module
        q = module.sample(lms, torch.Generator().manual_seed(0), same_on_batch=False)
        assert any(not torch.equal(t, t[:1].expand_as(t)) for t in q.tensors().values()), module


def test_sample_for_indices_is_batch_independent() -> None:
    lms = torch.from_numpy(random_landmarks(np.random.default_rng(0), 10)).float()
    module = OneOf([LandmarkJitter(3.0), RandomAffine(), BoxCrop(), TemplateSwitch()])
    idx = torch.arange(100, 110)
    full = module.sample_for_indices(lms, idx, seed=7)
    perm = torch.tensor([3, 1, 7])
    part = module.sample_for_indices(lms[perm], idx[perm], seed=7)
    m_full = misalign_matrix(lms, G, full)[perm]
    torch.testing.assert_close(misalign_matrix(lms[perm], G, part), m_full)
    other = module.sample_for_indices(lms, idx, seed=8)
    assert not torch.allclose(misalign_matrix(lms, G, other), misalign_matrix(lms, G, full))


def test_oneof_uses_every_component_and_respects_weights() -> None:
    lms = torch.from_numpy(random_landmarks(np.random.default_rng(0), 400)).float()
    p = OneOf([BoxCrop(), TemplateSwitch()], weights=[3, 1]).sample(lms, torch.Generator().manual_seed(0))
    frac_box = p.box.float().mean().item()
    assert 0.68 < frac_box < 0.82
    assert ((p.template >= 0) == ~p.box).all()


def test_compose_combines_components() -> None:
    lms = torch.from_numpy(random_landmarks(np.random.default_rng(0), 16)).float()
    p = Compose([LandmarkJitter(3.0), RandomAffine(10, (0.9, 1.1), 0.05), TemplateSwitch()]).sample(
        lms, torch.Generator().manual_seed(0)
    )
    assert p.jitter.abs().max() > 0 and p.angle.abs().max() > 0 and (p.template >= 0).all()


def test_box_crop_has_no_rotation_even_on_rolled_faces() -> None:
    lms = torch.from_numpy(random_landmarks(np.random.default_rng(1), 8, roll=30)).float()
    m = misalign_matrix(lms, G, BoxCrop().sample(lms))
    assert torch.allclose(m[:, 0, 1], torch.zeros(8, dtype=m.dtype), atol=1e-9)


def test_template_switch_lands_on_other_template() -> None:
    images, lms, mats = _batch(3)
    sw = TemplateSwitch([("arcface", 0.8)])
    _, lm_out = misalign(images, lms, G, sw.sample(lms), mats)
    expected = template_points(Geometry(size=112, zoom=0.8))
    np.testing.assert_allclose(lm_out.numpy(), np.broadcast_to(expected, lm_out.shape), atol=1e-3)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        LandmarkJitter(-1)
    with pytest.raises(ValueError):
        RandomAffine(scale=(1.2, 0.8))
    with pytest.raises(ValueError):
        NoMisalign(p=1.5)
    with pytest.raises(KeyError):
        TemplateSwitch([("nope", 1.0)])
    with pytest.raises(ValueError):
        OneOf([BoxCrop()], weights=[-1])


@pytest.mark.parametrize("template", [*sorted(TEMPLATES), "box"])
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    size=st.sampled_from([64, 112, (112, 96)]),
    zoom=st.floats(0.7, 1.3),
    canvas_size=st.sampled_from([128, 176, 256]),
    on_canvas=st.booleans(),
)
def test_crop_is_misalign_with_identity_params(
    template: str, seed: int, size: int | tuple[int, int], zoom: float, canvas_size: int, on_canvas: bool
) -> None:
    """``crop`` is the clean crop ``misalign`` cuts with identity parameters: random pixels, faces and canvases."""
    rng = np.random.default_rng(seed)
    geometry = Geometry(size=size, template=template, zoom=zoom)
    lms = torch.from_numpy(random_landmarks(rng, 3, size=300, roll=40.0)).float()
    face = Geometry(size=int(rng.integers(64, 129)), template=str(rng.choice(sorted(TEMPLATES))))
    canvas = Canvas(size=canvas_size, face=face)
    side = canvas_size if on_canvas else 300
    images = torch.from_numpy(rng.integers(0, 256, (3, 3, side, side), dtype=np.uint8))
    mats = torch.from_numpy(np.stack([canvas.matrix(lm) for lm in lms.numpy()])).float() if on_canvas else None
    expected, _ = misalign(images, lms, geometry, MisalignParams.identity(3), mats)
    got = crop(images, lms, geometry, mats)
    assert got.shape == expected.shape == (3, 3, *geometry.hw)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
