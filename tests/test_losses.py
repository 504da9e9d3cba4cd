"""Margin heads, CR-FIQA, RI, distillation and the OFIQ mapping against hand-computed examples
(aikd.training.margins, .fiqa_targets, .losses; aikd.models.calibration)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aikd.models.calibration import magface_ofiq_score
from aikd.training.fiqa_targets import (
    certainty_ratio,
    crfiqa_loss,
    index_diversion_loss,
    recognizability_index,
    ri_loss,
    ui_centre,
)
from aikd.training.losses import distillation_loss, pairwise_rank_loss
from aikd.training.margins import (
    MARGIN_HEADS,
    AdaFaceHead,
    ArcFaceHead,
    CosFaceHead,
    HeadOutput,
    MagFaceHead,
    create_margin_head,
    magface_margin,
    magface_regulariser,
)

S = 64.0


def unit(angle: float, norm: float = 1.0) -> list[float]:
    return [norm * math.cos(angle), norm * math.sin(angle)]


def fixed_head(head: nn.Module, centres: list[list[float]]) -> nn.Module:
    """Set a head's class centres (rows of W) to given 2-D vectors."""
    with torch.no_grad():
        head.weight.copy_(torch.tensor(centres))
    return head


# Class centres at 0, 90 and 180 degrees: cosines of an embedding at angle a are cos(a), sin(a), -cos(a).
CENTRES = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]


# ------------------------------------------------------------------------------------------------ CR-FIQA
TOY_COS = torch.tensor(
    [
        [0.8, 0.3, -0.2],  # y=0: CCS 0.8, NNCCS 0.3
        [0.1, 0.6, 0.4],  # y=1: CCS 0.6, NNCCS 0.4
        [-0.5, -0.1, 0.2],  # y=2: CCS 0.2, NNCCS -0.1 (all negatives below 0)
        [0.5, -0.3, 0.0],  # y=1: CCS -0.3, NNCCS 0.5
    ]
)
TOY_LABELS = torch.tensor([0, 1, 2, 1])


def test_certainty_ratio_paper_variant_by_hand():
    eps = 1e-9
    expected = torch.tensor([0.8 / (1.3 + eps), 0.6 / (1.4 + eps), 0.2 / (0.9 + eps), -0.3 / (1.5 + eps)])
    assert torch.allclose(certainty_ratio(TOY_COS, TOY_LABELS), expected, atol=1e-6)


def test_certainty_ratio_code_variant_and_its_guard():
    cr = certainty_ratio(TOY_COS, TOY_LABELS, variant="code", eps=1e-3)
    # CCS / NNCCS where NNCCS > eps; NNCCS = -0.1 is floored at eps, keeping the sign of CCS: 0.2 / 1e-3.
    expected = torch.tensor([0.8 / 0.3, 0.6 / 0.4, 0.2 / 1e-3, -0.3 / 0.5])
    assert torch.allclose(cr, expected, rtol=1e-5)
    assert torch.isfinite(certainty_ratio(TOY_COS, TOY_LABELS, variant="code")).all()


def test_certainty_ratio_is_detached_and_validates():
    cos = TOY_COS.clone().requires_grad_(True)
    target = certainty_ratio(cos, TOY_LABELS)
    assert not target.requires_grad
    with pytest.raises(ValueError, match="variant"):
        certainty_ratio(TOY_COS, TOY_LABELS, variant="released")
    with pytest.raises(ValueError, match="labels must lie in"):
        certainty_ratio(TOY_COS, torch.tensor([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        certainty_ratio(TOY_COS[:, :1], torch.zeros(4, dtype=torch.long))


def test_crfiqa_loss_by_hand_and_no_gradient_into_target():
    cos = TOY_COS[:3].clone().requires_grad_(True)
    labels = TOY_LABELS[:3]
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]], requires_grad=True)
    cr = torch.tensor([0.8 / 1.3, 0.6 / 1.4, 0.2 / 0.9])
    pred = (cr + torch.tensor([0.1, 1.0, 0.0])).requires_grad_(True)  # one quadratic, one linear, one exact
    out = crfiqa_loss(logits, cos, labels, pred, lam=10.0, beta=0.5)
    quality = (0.5 * 0.1**2 / 0.5 + (1.0 - 0.25) + 0.0) / 3
    ce = F.cross_entropy(logits.detach(), labels)
    assert out["quality"].item() == pytest.approx(quality, abs=1e-6)
    assert out["ce"].item() == pytest.approx(ce.item(), abs=1e-6)
    assert out["loss"].item() == pytest.approx(ce.item() + 10.0 * quality, abs=1e-5)
    assert torch.allclose(out["target"], cr, atol=1e-6)
    out["loss"].backward()
    assert cos.grad is None  # the target is a constant: nothing flows back into the cosines
    # d/dpred of lam * mean(SmoothL1): lam/3 * (d/beta for |d|<beta, sign(d) otherwise)
    assert torch.allclose(pred.grad, torch.tensor([10 / 3 * 0.1 / 0.5, 10 / 3 * 1.0, 0.0]), atol=1e-5)
    # (B, 1) predictions are accepted, mismatched ones refused
    assert crfiqa_loss(logits, cos, labels, pred.detach()[:, None])["loss"].item() == pytest.approx(out["loss"].item())
    with pytest.raises(ValueError, match="quality_pred"):
        crfiqa_loss(logits, cos, labels, pred.detach()[:2])


# --------------------------------------------------------------------------------------- ArcFace / CosFace
def test_arcface_and_cosface_target_logits_by_hand():
    a = 0.3
    emb = torch.tensor([unit(a, 5.0), unit(a, 0.2)])
    labels = torch.tensor([0, 1])
    cos_row = [math.cos(a), math.sin(a), -math.cos(a)]  # the same for both rows: norms do not matter
    arc = fixed_head(ArcFaceHead(2, 3, s=S, m=0.5), CENTRES)(emb, labels)
    expected = torch.tensor([cos_row, cos_row]) * S
    expected[0, 0] = S * math.cos(a + 0.5)
    expected[1, 1] = S * math.cos((math.pi / 2 - a) + 0.5)
    assert isinstance(arc, HeadOutput)
    assert torch.allclose(arc.logits, expected, atol=1e-4)
    assert torch.allclose(arc.cos, torch.tensor([cos_row, cos_row]), atol=1e-6)
    assert float(arc.extra_loss) == 0.0

    cosface = fixed_head(CosFaceHead(2, 3, s=S, m=0.35), CENTRES)(emb, labels)
    expected = torch.tensor([cos_row, cos_row]) * S
    expected[0, 0] = S * (math.cos(a) - 0.35)
    expected[1, 1] = S * (math.sin(a) - 0.35)
    assert torch.allclose(cosface.logits, expected, atol=1e-4)


def test_arcface_theta_plus_m_beyond_pi():
    m = 0.5
    theta = 2.9  # theta + m = 3.4 > pi; cos(2.9) = -0.971 < cos(pi - 0.5) = -0.878
    emb = torch.tensor([unit(theta)])
    label = torch.tensor([0])
    insight = fixed_head(ArcFaceHead(2, 3, s=S, m=m), CENTRES)(emb, label).logits[0, 0]
    assert insight.item() == pytest.approx(S * (math.cos(theta) - m * math.sin(m)), abs=1e-4)
    easy = fixed_head(ArcFaceHead(2, 3, s=S, m=m, easy_margin=True), CENTRES)(emb, label).logits[0, 0]
    assert easy.item() == pytest.approx(S * math.cos(theta), abs=1e-4)  # cos < 0: no margin

    # With the default guard the target logit never rises as theta grows over [0, pi]; plain cos(theta + m) does
    # past pi - m, and the easy margin jumps up at pi / 2 (where it drops the margin).
    thetas = torch.linspace(0.0, math.pi, 721)
    grid = torch.stack([torch.cos(thetas), torch.sin(thetas)], dim=1)
    labels = torch.zeros(len(thetas), dtype=torch.long)
    target = fixed_head(ArcFaceHead(2, 3, s=S, m=m), CENTRES)(grid, labels).logits[:, 0]
    assert (target[1:] - target[:-1] <= 1e-4).all()
    naive = torch.cos(thetas + m)
    assert (naive[1:] - naive[:-1] > 0).any()  # the failure the guard exists for
    easy = fixed_head(ArcFaceHead(2, 3, s=S, m=m, easy_margin=True), CENTRES)(grid, labels).logits[:, 0]
    after = torch.cos(thetas) <= 0  # (decided on the cosine: float32 pi / 2 is not exactly pi / 2)
    assert torch.allclose(easy[after], S * torch.cos(thetas[after]), atol=1e-4)
    assert torch.allclose(easy[~after], S * torch.cos(thetas[~after] + m), atol=1e-3)


@pytest.mark.parametrize("name", ["arcface", "magface", "adaface"])
def test_sample_on_its_class_centre_has_exact_logit_and_finite_gradient(name):
    head = fixed_head(create_margin_head(name, 2, 3, s=S), CENTRES)
    emb = torch.tensor([[1.0, 0.0], [0.0, 20.0]], requires_grad=True)  # exactly on centres 0 and 1
    labels = torch.tensor([0, 1])
    out = head(emb, labels)
    if name == "arcface":
        assert torch.allclose(out.logits[:, :2].diagonal(), torch.full((2,), S * math.cos(0.5)), atol=1e-3)
    (F.cross_entropy(out.logits, labels) + out.extra_loss).backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("arcface", {"m": 0.0}),
        ("arcface", {"m": 0.0, "easy_margin": True}),
        ("cosface", {"m": 0.0}),
        ("adaface", {"m": 0.0}),
        ("magface", {"l_m": 0.0, "u_m": 0.0, "lambda_g": 0.0}),
    ],
)
def test_zero_margin_is_plain_scaled_softmax(name, kwargs):
    torch.manual_seed(0)
    head = create_margin_head(name, 16, 7, s=S, **kwargs)
    emb = torch.randn(12, 16) * 20
    labels = torch.randint(0, 7, (12,))
    out = head(emb, labels)
    plain = S * F.normalize(emb, dim=1) @ F.normalize(head.weight.detach(), dim=1).t()
    assert torch.allclose(out.logits, plain, atol=1e-3)
    assert F.cross_entropy(out.logits, labels).item() == pytest.approx(F.cross_entropy(plain, labels).item(), abs=1e-4)


# ----------------------------------------------------------------------------------------------- AdaFace
def test_adaface_z_and_ema_statistics_by_hand():
    norms = torch.tensor([10.0, 20.0, 30.0, 40.0])
    emb = torch.stack([norms, torch.zeros(4)], dim=1)  # norms are the first coordinate
    labels = torch.tensor([0, 1, 2, 0])
    mean, std = 25.0, math.sqrt((15**2 + 5**2 + 5**2 + 15**2) / 3)  # unbiased sample std

    full = AdaFaceHead(2, 3, t_alpha=1.0).train()  # t_alpha = 1: the statistics become the batch's own
    full(emb, labels)
    assert full.batch_mean.item() == pytest.approx(mean)
    assert full.batch_std.item() == pytest.approx(std, rel=1e-6)
    z = [max(-1.0, min(1.0, (n - mean) / (std + 1e-3) * 0.333)) for n in (10, 20, 30, 40)]
    assert torch.allclose(full.margin_scaler(norms), torch.tensor(z), atol=1e-6)

    ema = AdaFaceHead(2, 3).train()  # t_alpha = 0.01 from mean 20, std 100
    ema(emb, labels)
    assert ema.batch_mean.item() == pytest.approx(0.01 * 25 + 0.99 * 20)
    assert ema.batch_std.item() == pytest.approx(0.01 * std + 0.99 * 100, rel=1e-6)
    ema(emb, labels)
    assert ema.batch_mean.item() == pytest.approx(0.01 * 25 + 0.99 * (0.01 * 25 + 0.99 * 20))
    ema.eval()(emb, labels)  # evaluation never moves the statistics
    assert ema.batch_mean.item() == pytest.approx(0.01 * 25 + 0.99 * (0.01 * 25 + 0.99 * 20))
    assert torch.isfinite(AdaFaceHead(2, 3).train()(emb[:1], labels[:1]).logits).all()  # batch of one


def test_adaface_margin_at_z_minus_one_zero_plus_one():
    m, theta = 0.4, 1.0
    head = fixed_head(AdaFaceHead(2, 3, m=m, h=1.0, s=S), CENTRES).eval()
    with torch.no_grad():
        head.batch_mean.fill_(10.0)
        head.batch_std.fill_(5.0 - 1e-3)  # so that z = (norm - 10) / 5 exactly
    norms = [5.0, 10.0, 15.0, 100.0]  # z = -1, 0, +1 and +18 clipped to +1
    emb = torch.tensor([unit(theta, n) for n in norms])
    assert torch.allclose(head.margin_scaler(torch.tensor(norms)), torch.tensor([-1.0, 0.0, 1.0, 1.0]), atol=1e-6)
    logits = head(emb, torch.zeros(4, dtype=torch.long)).logits
    expected = [
        S * math.cos(theta + m),  # z = -1: ArcFace margin m, no additive margin
        S * (math.cos(theta) - m),  # z = 0: CosFace margin m
        S * (math.cos(theta - m) - 2 * m),  # z = +1: angle reduced by m, additive margin 2m
        S * (math.cos(theta - m) - 2 * m),
    ]
    assert torch.allclose(logits[:, 0], torch.tensor(expected), atol=1e-4)
    assert torch.allclose(logits[:, 1], S * torch.full((4,), math.sin(theta)), atol=1e-4)  # others untouched


# ----------------------------------------------------------------------------------------------- MagFace
def test_magface_margin_and_regulariser_by_hand():
    a = torch.tensor([10.0, 60.0, 110.0])
    assert torch.allclose(magface_margin(a), torch.tensor([0.45, 0.625, 0.8]))
    g = magface_regulariser(a)
    assert torch.allclose(g, torch.tensor([10 / 110**2 + 1 / 10, 60 / 110**2 + 1 / 60, 2 / 110]))

    # g'(a) = 1/u_a^2 - 1/a^2 vanishes at a = u_a (negative before, positive after): the minimum is at u_a.
    a = torch.tensor([50.0, 110.0, 150.0], requires_grad=True)
    magface_regulariser(a).sum().backward()
    assert a.grad[1].abs().item() < 1e-7
    assert a.grad[0].item() == pytest.approx(1 / 110**2 - 1 / 50**2) and a.grad[0] < 0 < a.grad[2]
    dense = torch.linspace(20.0, 400.0, 3801)
    assert dense[magface_regulariser(dense).argmin()].item() == pytest.approx(110.0, abs=0.1)


def test_magface_head_clamps_norm_for_margin_and_regulariser():
    theta = 0.7
    head = fixed_head(MagFaceHead(2, 3, s=S), CENTRES)
    norms = [5.0, 60.0, 500.0]  # clamped to a = 10, 60, 110
    out = head(torch.tensor([unit(theta, n) for n in norms]), torch.zeros(3, dtype=torch.long))
    margins = [0.45, 0.625, 0.8]
    assert torch.allclose(out.logits[:, 0], torch.tensor([S * math.cos(theta + mm) for mm in margins]), atol=1e-4)
    g = [10 / 110**2 + 1 / 10, 60 / 110**2 + 1 / 60, 2 / 110]
    assert out.extra_loss.item() == pytest.approx(35.0 * sum(g) / 3, rel=1e-5)


# ------------------------------------------------------------------------------------ registry parametrised
def test_registry_lists_the_four_heads_and_refuses_unknown():
    assert MARGIN_HEADS.list() == ["adaface", "arcface", "cosface", "magface"]
    with pytest.raises(KeyError, match="arcface"):
        create_margin_head("arcfase", 8, 4)


@pytest.mark.parametrize("name", MARGIN_HEADS.list())
def test_every_head_gives_logits_finite_loss_and_gradients(name):
    torch.manual_seed(1)
    head = create_margin_head(name, 16, 6).train()
    emb = (torch.randn(10, 16) * 15).requires_grad_(True)
    labels = torch.randint(0, 6, (10,))
    out = head(emb, labels)
    assert out.logits.shape == (10, 6) and out.cos.shape == (10, 6) and out.extra_loss.ndim == 0
    loss = F.cross_entropy(out.logits, labels) + out.extra_loss
    assert torch.isfinite(loss)
    loss.backward()
    for grad in (head.weight.grad, emb.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="labels must lie in"):
        head(emb.detach(), torch.full((10,), 6))
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        head(emb.detach()[:, :8], labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # margin arithmetic stays in float32 under AMP
        assert head(emb.detach(), labels).logits.dtype == torch.float32


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation cost (a lot of it on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", MARGIN_HEADS.list())
def test_every_head_learns_four_separable_clusters(name, one_thread):
    torch.manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0], [0.0, -3.0]])
    labels = torch.arange(4).repeat_interleave(16)
    x = centres[labels] + 0.4 * torch.randn(64, 2)
    x_test = centres[labels] + 0.4 * torch.randn(64, 2)
    embed = nn.Linear(2, 8)
    head = create_margin_head(name, 8, 4)
    opt = torch.optim.Adam([*embed.parameters(), *head.parameters()], lr=0.05)
    for _ in range(100):
        out = head(embed(x), labels)
        loss = F.cross_entropy(out.logits, labels) + out.extra_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        accuracy = (head(embed(x_test), labels).cos.argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9


# ------------------------------------------------------------------------------------ Recognizability Index
def test_ui_centre_is_normalised_mean_of_normalised_embeddings():
    centre = ui_centre(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    assert torch.allclose(centre, torch.tensor([1.0, 1.0]) / math.sqrt(2))  # not the raw mean's (1, 0.5)
    with pytest.raises(ValueError, match="cancel"):
        ui_centre(torch.tensor([[1.0, 0.0], [-2.0, 0.0]]))
    with pytest.raises(ValueError, match="non-empty"):
        ui_centre(torch.zeros(0, 4))


def test_recognizability_index_by_hand():
    c_ui = torch.tensor([1.0, 0.0])
    emb = torch.tensor([[1.8, 2.4], [0.0, 2.0], [-1.0, 0.0]], requires_grad=True)  # cos to UI: 0.6, 0, -1
    free = recognizability_index(emb, c_ui)
    assert torch.allclose(free, torch.tensor([0.4, 1.0, 2.0]), atol=1e-6)
    assert not free.requires_grad
    cos = torch.tensor([[0.5, 0.2, -0.1], [0.1, 0.9, 0.3], [-0.2, 0.0, 0.4]])
    labels = torch.tensor([0, 1, 2])
    labelled = recognizability_index(emb, c_ui, cos=cos, labels=labels)
    expected = torch.tensor([0.4 * 0.5 / 1.2, 1.0 * 0.9 / 1.3, 2.0 * 0.4 / 1.0])
    assert torch.allclose(labelled, expected, atol=1e-6)
    with pytest.raises(ValueError, match="both cos and labels"):
        recognizability_index(emb, c_ui, cos=cos)


def test_index_diversion_hinge_by_hand():
    c_ui = torch.tensor([1.0, 0.0])
    # cosine distances to the UI centre: 0.1, 0.4, 1.0, 0.1
    emb = torch.tensor([unit(math.acos(0.9), 2.0), unit(math.acos(0.6)), unit(math.pi / 2), unit(math.acos(0.9))])
    emb.requires_grad_(True)
    pred_ri = torch.tensor([0.1, 0.2, 0.3, 5.0])  # batch mean 1.4: the first three are hard
    loss = index_diversion_loss(pred_ri, emb, c_ui, margin=0.5)
    assert loss.item() == pytest.approx((0.4 + 0.1 + 0.0 + 0.0) / 4, abs=1e-6)
    loss.backward()
    assert emb.grad[0].abs().sum() > 0 and emb.grad[1].abs().sum() > 0
    assert emb.grad[2].abs().sum() == 0  # hard but already far enough
    assert emb.grad[3].abs().sum() == 0  # close to UI but not hard
    with torch.no_grad():  # one descent step moves hard samples away from the UI centre
        moved = emb - 0.5 * emb.grad
    assert (F.normalize(moved[:2], dim=1) @ c_ui < F.normalize(emb[:2].detach(), dim=1) @ c_ui).all()
    # an explicit threshold: only pred_ri < 0.15 is hard
    assert index_diversion_loss(pred_ri, emb, c_ui, hard_threshold=0.15).item() == pytest.approx(0.4 / 4, abs=1e-6)
    far = torch.tensor([unit(math.pi / 2), unit(math.pi)])
    assert index_diversion_loss(torch.tensor([0.0, 1.0]), far, c_ui).item() == 0.0


def test_ri_loss_combines_regression_and_weighted_hinge():
    c_ui = torch.tensor([1.0, 0.0])
    emb = torch.tensor([unit(math.acos(0.9)), unit(math.pi / 2)])
    target = torch.tensor([0.6, 1.0])
    pred = torch.tensor([0.1, 2.0], requires_grad=True)  # |d| = 0.5 < 0.75 (quadratic), 1.0 (linear); sample 0 hard
    out = ri_loss(pred, target, emb, c_ui, beta=0.75, diversion_weight=2.0, margin=0.5)
    regression = (0.5 * 0.5**2 / 0.75 + (1.0 - 0.375)) / 2
    diversion = 0.4 / 2
    assert out["regression"].item() == pytest.approx(regression, abs=1e-6)
    assert out["diversion"].item() == pytest.approx(diversion, abs=1e-6)
    assert out["loss"].item() == pytest.approx(regression + 2.0 * diversion, abs=1e-6)


# ----------------------------------------------------------------------------------------------- distillation
def test_distillation_loss_by_hand_and_teacher_gets_no_gradient():
    q_s = torch.tensor([1.0, 2.0], requires_grad=True)
    q_t = torch.tensor([1.2, 0.5], requires_grad=True)  # a teacher someone forgot to freeze
    e_s = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    e_t = torch.tensor([[0.0, 3.0], [2.0, 2.0]], requires_grad=True)
    out = distillation_loss(q_s, q_t, e_s, e_t, beta=0.5, embedding_weight=0.5)
    quality = (0.5 * 0.2**2 / 0.5 + (1.5 - 0.25)) / 2  # |d| = 0.2 quadratic, 1.5 linear
    embedding = ((1 - 0.0) + (1 - 1.0)) / 2  # orthogonal pair, parallel pair
    assert out["quality"].item() == pytest.approx(quality, abs=1e-6)
    assert out["embedding"].item() == pytest.approx(embedding, abs=1e-6)
    assert out["loss"].item() == pytest.approx(quality + 0.5 * embedding, abs=1e-6)
    out["loss"].backward()
    assert q_t.grad is None and e_t.grad is None
    assert q_s.grad is not None and e_s.grad is not None and e_s.grad[0].abs().sum() > 0


def test_distillation_embedding_term_only_with_both_embeddings_and_positive_weight():
    q_s, q_t = torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 2.5])
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    quality_only = (0.0 + 0.5 * 0.5**2 / 0.5) / 2
    for kwargs in ({}, {"e_student": e}, {"e_teacher": e}, {"e_student": e, "e_teacher": -e, "embedding_weight": 0}):
        out = distillation_loss(q_s, q_t, **kwargs)
        assert out["loss"].item() == pytest.approx(quality_only) and out["embedding"].item() == 0.0
    with pytest.raises(ValueError, match="e_student and e_teacher"):
        distillation_loss(q_s, q_t, e, e[:, :1])


def test_pairwise_rank_loss_prefers_the_teachers_order_and_ignores_units() -> None:
    t = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.4])
    same, reversed_ = 3.0 * t, -3.0 * t
    swapped = same[[1, 0, 2, 3, 4]]  # one pair out of order
    assert pairwise_rank_loss(same, t) < pairwise_rank_loss(swapped, t) < pairwise_rank_loss(reversed_, t)
    base = pairwise_rank_loss(same, t).item()
    # shifts and positive rescalings of either side change nothing: the term is about order only
    assert pairwise_rank_loss(same + 7.0, t).item() == pytest.approx(base, abs=1e-6)
    assert pairwise_rank_loss(1e-4 * same, t).item() == pytest.approx(base, abs=1e-5)
    assert pairwise_rank_loss(same, 1e-4 * t).item() == pytest.approx(base, abs=1e-5)
    assert pairwise_rank_loss(same, t + 3.0).item() == pytest.approx(base, abs=1e-5)
    # bounded gradients however close together the teacher's scores lie
    s = same.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(pairwise_rank_loss(s, 1e-6 * t), s)
    assert torch.isfinite(grad).all() and grad.abs().max() < 10
    # a pair the teacher ties contributes nothing; one face or all ties: 0 (and a gradient of zeros, not NaN)
    assert pairwise_rank_loss(torch.tensor([1.0, -1.0]), torch.tensor([0.3, 0.3])).item() == 0.0
    one = torch.tensor([0.2], requires_grad=True)
    out = pairwise_rank_loss(one, torch.tensor([0.4]))
    out.backward()
    assert out.item() == 0.0 and one.grad is not None and torch.all(one.grad == 0)


def test_pairwise_rank_loss_by_hand_and_in_the_distillation_loss() -> None:
    s = torch.tensor([0.0, 1.0, 0.5], requires_grad=True)
    t = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    sd = s.detach().std().item()
    pairs = [(0, 1), (0, 2), (1, 2)]  # (i, j), t_i < t_j each: loss softplus(-(s_j - s_i) / sd), weight t_j - t_i
    expected = sum((t[j] - t[i]).item() * math.log1p(math.exp(-(s[j] - s[i]).item() / sd)) for i, j in pairs)
    expected /= sum((t[j] - t[i]).item() for i, j in pairs)
    assert pairwise_rank_loss(s, t).item() == pytest.approx(expected, abs=1e-6)
    out = distillation_loss(s, t, beta=0.5, rank_weight=2.0)
    assert out["rank"].item() == pytest.approx(expected, abs=1e-6)
    assert out["loss"].item() == pytest.approx(out["quality"].item() + 2.0 * expected, abs=1e-6)
    out["loss"].backward()
    assert t.grad is None and s.grad is not None
    # s_2 is ranked below s_1 although the teacher ranks it highest: the ranking term alone pushes it up, s_1 down
    (grad,) = torch.autograd.grad(pairwise_rank_loss(s, t), s)
    assert grad[2] < 0 < grad[1]
    assert distillation_loss(s, t)["rank"].item() == 0.0  # off by default (AI-KD's loss)


# ------------------------------------------------------------------------------------------------ OFIQ mapping
def test_magface_ofiq_score():
    assert magface_ofiq_score(23.0) == 50.0  # sigmoid(0) = 1/2
    assert magface_ofiq_score(23.0 + 2.6 * math.log(3.0)) == 75.0  # sigmoid(ln 3) = 3/4
    assert magface_ofiq_score(0.0) == 0.0 and magface_ofiq_score(200.0) == 100.0
    assert magface_ofiq_score(23.0 + 2.6 * math.log(0.126 / 0.874)) == 13.0  # 12.6 rounds up
    arr = magface_ofiq_score(np.array([23.0, 30.0]))
    assert isinstance(arr, np.ndarray) and arr[1] == round(100 / (1 + math.exp(-7 / 2.6)))
    t = magface_ofiq_score(torch.tensor([23.0, 30.0]))
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(arr).float())
