"""Quality targets of the FIQA teachers and the losses that regress them: CR-FIQA and the Recognizability Index.

* **CR-FIQA** (Boutros et al., CVPR 2023): :func:`certainty_ratio` (the regression target) and
  :func:`crfiqa_loss` (CE + lambda * SmoothL1).
* **Recognizability Index** (Chai et al., CVPR 2023): :func:`ui_centre`, :func:`recognizability_index`,
  :func:`index_diversion_loss` and :func:`ri_loss`. No official code exists; the forms chosen are documented on
  each function.

Both targets are built from the *plain* class cosines of a margin head (``HeadOutput.cos``,
:mod:`aikd.training.margins`) and are detached: they train the quality head, never the class centres.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from aikd.training.margins import _check_cos_labels

__all__ = [
    "certainty_ratio",
    "crfiqa_loss",
    "ui_centre",
    "recognizability_index",
    "index_diversion_loss",
    "ri_loss",
]


# --------------------------------------------------------------------------------------------------- CR-FIQA
def _ccs_nnccs(cos: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Class-centre similarity ``cos[i, y_i]`` and the nearest negative one ``max_{j != y_i} cos[i, j]``."""
    ccs = cos.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    positive = F.one_hot(labels.long(), cos.shape[1]).bool()
    nnccs = cos.masked_fill(positive, float("-inf")).amax(dim=1)
    return ccs, nnccs


@torch.no_grad()
def certainty_ratio(cos: Tensor, labels: Tensor, variant: str = "paper", eps: float = 1e-9) -> Tensor:
    """CR-FIQA's certainty ratio, the regression target of the quality head; detached, computed without grad.

    ``CCS_i = cos[i, y_i]`` (similarity to the own class centre), ``NNCCS_i = max_{j != y_i} cos[i, j]``
    (nearest negative class centre); ``cos`` must be the *plain* cosines (``HeadOutput.cos``), not margin
    logits.

    * ``"paper"`` (default, CVPR 2023 Eq.): ``CR = CCS / (NNCCS + 1 + eps)``. As ``NNCCS >= -1`` the
      denominator lies in ``[eps, 2 + eps]``: always positive, no guard needed.
    * ``"code"`` (the released ``train_cr_fiqa.py``): ``CR = CCS / NNCCS``. The "+1+eps" is missing there, so
      the ratio explodes or flips sign when ``NNCCS`` nears or drops below 0 (rare with ~10k identities,
      common with few classes). The released code sets the positive entry to ``-1e-12`` before the max, so its
      ``NNCCS`` is floored at ``-1e-12`` and a sample whose negatives are all negative gets ``CCS / -1e-12``.
      We guard with ``NNCCS.clamp_min(eps)`` instead: the target stays finite and keeps the sign of ``CCS``
      (it is ``CCS / eps``, i.e. huge, in that case - prefer ``"paper"`` unless reproducing the release).

    Args:
        cos: ``(B, C)`` plain cosines, ``C >= 2``.
        labels: ``(B,)`` class indices.
        variant: ``"paper"`` or ``"code"``.
        eps: see above.

    Returns:
        ``(B,)`` targets, ``requires_grad=False``.
    """
    _check_cos_labels(cos, labels)
    ccs, nnccs = _ccs_nnccs(cos.detach().float(), labels)
    if variant == "paper":
        return ccs / (nnccs + 1.0 + eps)
    if variant == "code":
        return ccs / nnccs.clamp_min(eps)
    raise ValueError(f"certainty_ratio variant must be 'paper' or 'code', got {variant!r}")


def _flat_pred(pred: Tensor, n: int, name: str) -> Tensor:
    if pred.numel() != n or (pred.ndim == 2 and pred.shape[1] != 1) or pred.ndim > 2:
        raise ValueError(f"{name} must be (B,) or (B, 1) with B={n}, got shape {tuple(pred.shape)}")
    return pred.reshape(n).float()


def crfiqa_loss(
    logits: Tensor,
    cos: Tensor,
    labels: Tensor,
    quality_pred: Tensor,
    lam: float = 10.0,
    beta: float = 0.5,
    variant: str = "paper",
) -> dict[str, Tensor]:
    """CR-FIQA objective: ``CE(logits, labels) + lam * SmoothL1_beta(CR, quality_pred)``.

    The target CR comes from :func:`certainty_ratio` on the plain cosines and is detached: the quality term
    trains the quality head (and the backbone through it) but never pulls the class centres or the cosines
    toward a prediction.

    Args:
        logits: ``(B, C)`` margin logits (``HeadOutput.logits``).
        cos: ``(B, C)`` plain cosines (``HeadOutput.cos``).
        labels: ``(B,)`` class indices.
        quality_pred: ``(B,)`` or ``(B, 1)`` quality-head output.
        lam: weight of the quality term (10 in the paper). beta: SmoothL1 transition point (0.5).
        variant: CR formula, see :func:`certainty_ratio`.

    Returns:
        ``dict(loss, ce, quality, target)``; ``target`` is the detached ``(B,)`` CR.
    """
    target = certainty_ratio(cos, labels, variant=variant)
    pred = _flat_pred(quality_pred, labels.shape[0], "quality_pred")
    ce = F.cross_entropy(logits.float(), labels.long())
    quality = F.smooth_l1_loss(pred, target, beta=beta)
    return {"loss": ce + lam * quality, "ce": ce, "quality": quality, "target": target}


# ------------------------------------------------------------------------------------- Recognizability Index
@torch.no_grad()
def ui_centre(embeddings: Tensor) -> Tensor:
    """Centre of the unrecognisable-identity (UI) cluster: the normalised mean of normalised embeddings.

    Each embedding is normalised *before* averaging: RI works in cosine geometry, and raw norms differ by image
    quality, so an un-normalised mean would be dominated by the few highest-norm images.

    Args:
        embeddings: ``(N, D)`` embeddings of images the FR model cannot recognise (heavily degraded faces).

    Returns:
        ``(D,)`` unit vector (detached).
    """
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"ui_centre needs a non-empty (N, D) batch of UI embeddings, got {tuple(embeddings.shape)}")
    mean = F.normalize(embeddings.detach().float(), dim=1).mean(dim=0)
    if not float(mean.norm()) > 1e-6:
        raise ValueError("the UI embeddings cancel out (their normalised mean is ~0); no centre direction exists")
    return F.normalize(mean, dim=0)


def _ui_distance(embeddings: Tensor, centre: Tensor) -> Tensor:
    """``1 - cos(x_i, c_UI)`` per sample, differentiable in ``embeddings`` (the centre is treated as constant)."""
    if centre.ndim != 1 or embeddings.ndim != 2 or embeddings.shape[1] != centre.shape[0]:
        raise ValueError(
            f"embeddings (B, D) and ui_centre (D,) must agree, got {tuple(embeddings.shape)} and {tuple(centre.shape)}"
        )
    c = F.normalize(centre.detach().float(), dim=0)
    return 1.0 - F.normalize(embeddings.float(), dim=1) @ c


@torch.no_grad()
def recognizability_index(
    emb: Tensor, ui_centre: Tensor, cos: Tensor | None = None, labels: Tensor | None = None, eps: float = 1e-9
) -> Tensor:
    """Recognizability Index (Chai et al., CVPR 2023), as a detached regression target.

    The paper's RI rises with the distance of an embedding from the UI centre and with its margin between the
    positive class prototype and the nearest negative one. Without official code we use the documented form::

        RI_i = (1 - cos(x_i, c_UI)) * CCS_i / (NNCCS_i + 1 + eps)    # with class cosines and labels
        RI_i = (1 - cos(x_i, c_UI))                                   # label-free

    i.e. the UI distance (in ``[0, 2]``) times CR-FIQA's certainty ratio (paper form, always a positive
    denominator). The label-free form serves images without identity labels (e.g. scoring new data).

    Args:
        emb: ``(B, D)`` embeddings. ui_centre: ``(D,)`` from :func:`ui_centre`.
        cos: optional ``(B, C)`` plain class cosines; labels: optional ``(B,)`` - give both or neither.
        eps: see above.

    Returns:
        ``(B,)`` RI, ``requires_grad=False``.
    """
    distance = _ui_distance(emb.detach(), ui_centre)
    if (cos is None) != (labels is None):
        raise ValueError("recognizability_index needs both cos and labels for the labelled form, or neither")
    if cos is None:
        return distance
    if cos.shape[0] != emb.shape[0]:
        raise ValueError(f"cos has {cos.shape[0]} rows but emb has {emb.shape[0]}")
    return distance * certainty_ratio(cos, labels, variant="paper", eps=eps)


def index_diversion_loss(
    pred_ri: Tensor,
    embeddings: Tensor,
    ui_centre: Tensor,
    margin: float = 0.5,
    hard_threshold: float | None = None,
) -> Tensor:
    """Index-diversion hinge: push hard-to-recognise embeddings away from the UI centre until far enough.

    The paper (Chai et al., CVPR 2023) describes the index diversion loss as pushing "the hard-to-recognize face
    embedding with low RI away from unrecognizable faces cluster to boost the RI"; its exact equation is not
    restated here, so this is our documented form::

        hard_i  = pred_ri_i < tau                  (tau = hard_threshold, default: batch mean of pred_ri)
        d_i     = 1 - cos(x_i, c_UI)               (differentiable in x_i; c_UI constant)
        L_ID    = (1 / B) * sum_i hard_i * max(0, margin - d_i)

    Choices and why:

    * The hinge acts on the **embedding's distance to the UI centre**, not on ``pred_ri`` itself: a hinge on
      the prediction would only bias the RI regressor against its own target, whereas the paper's aim is to
      move the embedding (and so raise the true RI). Samples already at cosine distance ``>= margin`` cost
      nothing, so easy samples and sufficiently diverted hard ones are left alone.
    * **Hard** samples are selected by the *predicted* RI (detached; selection is not differentiable), the
      quality the model itself assigns; the default threshold is the batch mean, scale-free for both the
      labelled and the label-free RI.
    * ``margin = 0.5`` asks hard samples to reach ``cos(x, c_UI) <= 0.5`` (60 degrees); the UI centre lies
      near the mean embedding direction, so requiring orthogonality (``margin = 1``) would be excessive.
    * Averaged over the whole batch (non-hard samples contribute 0), so the term's scale does not jump with
      the number of hard samples in a batch.

    Args:
        pred_ri: ``(B,)`` or ``(B, 1)`` predicted RI. embeddings: ``(B, D)``. ui_centre: ``(D,)``.
        margin: required cosine distance from the UI centre. hard_threshold: ``tau`` (``None``: batch mean).

    Returns:
        Scalar loss.
    """
    pred = _flat_pred(pred_ri, embeddings.shape[0], "pred_ri").detach()
    tau = pred.mean() if hard_threshold is None else torch.as_tensor(hard_threshold, dtype=pred.dtype)
    hard = (pred < tau).float()
    hinge = F.relu(margin - _ui_distance(embeddings, ui_centre))
    return (hard * hinge).mean()


def ri_loss(
    pred_ri: Tensor,
    target_ri: Tensor,
    embeddings: Tensor,
    ui_centre: Tensor,
    beta: float = 0.75,
    diversion_weight: float = 1.0,
    margin: float = 0.5,
    hard_threshold: float | None = None,
) -> dict[str, Tensor]:
    """RI teacher objective: ``SmoothL1_beta(pred_ri, RI) + diversion_weight * L_ID``.

    Args:
        pred_ri: ``(B,)`` or ``(B, 1)`` RI-head output. target_ri: ``(B,)`` from :func:`recognizability_index`
            (detached here in any case). embeddings: ``(B, D)`` backbone embeddings (get the diversion
            gradient). ui_centre: ``(D,)``.
        beta: SmoothL1 transition point (0.75). diversion_weight, margin, hard_threshold: see
            :func:`index_diversion_loss`.

    Returns:
        ``dict(loss, regression, diversion)``.
    """
    n = embeddings.shape[0]
    pred = _flat_pred(pred_ri, n, "pred_ri")
    target = _flat_pred(target_ri, n, "target_ri").detach()
    regression = F.smooth_l1_loss(pred, target, beta=beta)
    diversion = index_diversion_loss(pred, embeddings, ui_centre, margin=margin, hard_threshold=hard_threshold)
    return {"loss": regression + diversion_weight * diversion, "regression": regression, "diversion": diversion}
