"""Losses of asymmetric retrieval (SSP, regression, ArcFace, HVS, LCE, AML) against independent
loop computations, and their properties and errors."""
import math

import numpy as np
import pytest
import torch

from retrieval.losses import (LOSSES, aml_loss, arcface_logits, arcface_loss, get_loss, hvs_loss, lce_loss,
                              regression_loss, ssp_loss, subspace_similarities)


def _unit(*shape, seed=0) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def _anchors(M=4, K=6, d=3, seed=1) -> torch.Tensor:
    return torch.randn(M, K, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _norm(v):
    return [a / math.sqrt(sum(b * b for b in v)) for a in v]


def _loop_ssp(query, gallery, anchors, scale):
    """Plain-Python SSP: per image and sub-space, softmax of scaled cosines, KL(gallery ‖ query)."""
    M, K, d = anchors.shape
    total = []
    for q, g in zip(query.tolist(), gallery.tolist()):
        per = 0.0
        for m in range(M):
            qs, gs = _norm(q[m * d:(m + 1) * d]), _norm(g[m * d:(m + 1) * d])
            a = [_norm(anchors[m, k].tolist()) for k in range(K)]
            zq = [scale * sum(x * y for x, y in zip(qs, ak)) for ak in a]
            zg = [scale * sum(x * y for x, y in zip(gs, ak)) for ak in a]
            pq = [math.exp(z) / sum(math.exp(w) for w in zq) for z in zq]
            pg = [math.exp(z) / sum(math.exp(w) for w in zg) for z in zg]
            per += sum(p * math.log(p / r) for p, r in zip(pg, pq))
        total.append(per / M)
    return total


def _ce(logits, y):
    m = max(logits)
    return -(logits[y] - m - math.log(sum(math.exp(v - m) for v in logits)))


def _loop_arcface_logits(e, W, y, s, margin):
    out = []
    for j, w in enumerate(W):
        c = sum(a * b for a, b in zip(_norm(e), _norm(w)))
        if j == y:
            theta = math.acos(max(-1.0, min(1.0, c)))
            c = math.cos(theta + margin) if theta + margin <= math.pi else c - margin * math.sin(margin)
        out.append(s * c)
    return out


# --------------------------------------------------------------------------- SSP
@pytest.mark.parametrize("scale", [1.0, 10.0, 30.0])
def test_ssp_matches_loop(scale):
    anchors = _anchors()
    q, g = _unit(5, 12, seed=2), _unit(5, 12, seed=3)
    got = ssp_loss(q, g, anchors, scale=scale, reduction="none")
    assert got.shape == (5,)
    assert got.tolist() == pytest.approx(_loop_ssp(q, g, anchors, scale), rel=1e-9, abs=1e-12)
    assert ssp_loss(q, g, anchors, scale=scale).item() == pytest.approx(float(np.mean(got.tolist())))
    assert ssp_loss(q, g, anchors, scale=scale, reduction="sum").item() == pytest.approx(sum(got.tolist()))


def test_ssp_zero_when_query_and_gallery_coincide():
    anchors, g = _anchors(), _unit(4, 12, seed=4)
    assert ssp_loss(g.clone(), g, anchors).item() == 0.0
    # the sub-vectors are normalised: scaling each sub-vector of the query changes nothing
    scales = torch.tensor([0.5, 2.0, 3.0, 0.1], dtype=torch.float64).repeat_interleave(3)
    assert ssp_loss(g * scales, g, anchors).item() == pytest.approx(0.0, abs=1e-12)
    assert ssp_loss(_unit(4, 12, seed=5), g, anchors).item() > 0


def test_ssp_gradient_flows_to_the_query_only():
    anchors = _anchors()
    q = _unit(3, 12, seed=6).requires_grad_()
    g = _unit(3, 12, seed=7).requires_grad_()
    ssp_loss(q, g, anchors).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert g.grad is None  # the gallery network is frozen: its assignment is a target


def test_ssp_uses_normalised_anchors_and_registry():
    anchors, q, g = _anchors(), _unit(3, 12, seed=8), _unit(3, 12, seed=9)
    unit = anchors / anchors.norm(dim=-1, keepdim=True)
    assert ssp_loss(q, g, anchors).item() == pytest.approx(ssp_loss(q, g, unit * 7.0).item())
    loss = get_loss("ssp", anchors=anchors, scale=5.0)
    assert LOSSES["ssp"] is ssp_loss and loss.kind == "pair" and loss.name == "ssp"
    assert loss(q, g).item() == pytest.approx(ssp_loss(q, g, anchors, scale=5.0).item())
    sims = subspace_similarities(q, anchors)
    assert sims.shape == (3, 4, 6) and float(sims.abs().max()) <= 1 + 1e-12


def test_ssp_errors():
    anchors = _anchors()
    with pytest.raises(ValueError, match=r"M=4 sub-spaces.*M·d = 12"):
        ssp_loss(_unit(2, 10), _unit(2, 10), anchors)
    with pytest.raises(ValueError, match=r"gallery descriptors .* query's shape"):
        ssp_loss(_unit(2, 12), _unit(3, 12), anchors)
    with pytest.raises(ValueError, match=r"anchors must be \(M, K, D/M\)"):
        ssp_loss(_unit(2, 12), _unit(2, 12), anchors[0])
    with pytest.raises(ValueError, match="query must be a torch.Tensor"):
        ssp_loss(np.zeros((2, 12)), _unit(2, 12), anchors)
    with pytest.raises(ValueError, match="reduction"):
        ssp_loss(_unit(2, 12), _unit(2, 12), anchors, reduction="max")


# --------------------------------------------------------------------------- regression
def test_regression_matches_loop():
    q, g = _unit(4, 5, seed=10), _unit(4, 5, seed=11)
    ref = [sum((a - b) ** 2 for a, b in zip(x, y)) for x, y in zip(q.tolist(), g.tolist())]
    assert regression_loss(q, g, reduction="none").tolist() == pytest.approx(ref)
    assert regression_loss(q, g).item() == pytest.approx(np.mean(ref))
    assert regression_loss(q, g, squared=False, reduction="sum").item() == pytest.approx(sum(math.sqrt(v) for v in ref))
    # unit vectors: ‖q − g‖² = 2 − 2 cos
    assert regression_loss(q, g, reduction="none").tolist() == pytest.approx((2 - 2 * (q * g).sum(1)).tolist())
    assert regression_loss(g, g).item() == 0.0
    assert get_loss("regression").kind == "pair"


# --------------------------------------------------------------------------- ArcFace, HVS, LCE
@pytest.mark.parametrize("margin", [0.0, 0.15, 0.5])
def test_arcface_logits_match_loop(margin):
    e, W = _unit(5, 4, seed=12), torch.randn(3, 4, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    # one embedding nearly opposite to its class weight: θ + m > π takes the fallback
    e[4] = -W[0] / W[0].norm()
    got = arcface_logits(e, W, y, scale=8.0, margin=margin)
    for b in range(5):
        assert got[b].tolist() == pytest.approx(_loop_arcface_logits(e[b].tolist(), W.tolist(), int(y[b]), 8.0, margin),
                                                abs=1e-6)
    ce = [_ce(_loop_arcface_logits(e[b].tolist(), W.tolist(), int(y[b]), 8.0, margin), int(y[b])) for b in range(5)]
    assert arcface_loss(e, y, W, scale=8.0, margin=margin).item() == pytest.approx(np.mean(ce), abs=1e-6)


def test_hvs_matches_loop_and_freezes_the_old_classifier():
    e = _unit(6, 8, seed=14).requires_grad_()
    W = torch.randn(4, 8, generator=torch.Generator().manual_seed(15), dtype=torch.float64, requires_grad=True)
    W_old = torch.randn(4, 8, generator=torch.Generator().manual_seed(16), dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    s = math.sqrt(8)
    ref = [_ce(_loop_arcface_logits(e[b].tolist(), W.tolist(), int(y[b]), s, 0.15), int(y[b]))
           + _ce(_loop_arcface_logits(e[b].tolist(), W_old.tolist(), int(y[b]), s, 0.15), int(y[b])) for b in range(6)]
    loss = hvs_loss(e, y, W, W_old)
    assert loss.item() == pytest.approx(np.mean(ref), abs=1e-6)
    loss.backward()
    assert W_old.grad is None and W.grad is not None and e.grad is not None
    assert get_loss("hvs", margin=0.3).kind == "labels"


def test_lce_matches_loop():
    e, t = _unit(5, 6, seed=17), _unit(5, 6, seed=18)
    g = torch.Generator().manual_seed(19)
    W, W_old, W_t = (torch.randn(3, 6, generator=g, dtype=torch.float64) for _ in range(3))
    y = torch.tensor([0, 1, 2, 2, 0])
    s = math.sqrt(6)
    weight_term = np.mean([math.sqrt(sum((a - b) ** 2 for a, b in zip(_norm(wt), _norm(wo))))
                           for wt, wo in zip(W_t.tolist(), W_old.tolist())])
    ref = [_ce(_loop_arcface_logits(e[b].tolist(), W.tolist(), int(y[b]), s, 0.15), int(y[b]))
           + 0.5 * _ce(_loop_arcface_logits(t[b].tolist(), W_old.tolist(), int(y[b]), s, 0.2), int(y[b]))
           + 10.0 * weight_term for b in range(5)]
    got = lce_loss(e, y, W, W_old, transformed=t, transformed_weight=W_t, reduction="none")
    assert got.tolist() == pytest.approx(ref, abs=1e-6)
    assert lce_loss(e, y, W, W_old, t, W_t).item() == pytest.approx(np.mean(ref), abs=1e-6)
    # aligned weights: the consistency term vanishes
    assert (lce_loss(e, y, W, W_old, t, 3 * W_old, consistency=1.0) - lce_loss(e, y, W, W_old, t, W_old, consistency=0.0)
            ).abs().item() < 1e-5


def test_label_loss_errors():
    e, W = _unit(3, 4), torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"labels must be in \[0, C\) with C = 2"):
        arcface_loss(e, torch.tensor([0, 1, 2]), W)
    with pytest.raises(ValueError, match=r"old_weight must be class weights \(C, D\) with D = 4"):
        hvs_loss(e, torch.tensor([0, 1, 1]), W, torch.randn(2, 5))
    with pytest.raises(ValueError, match="integer tensor"):
        arcface_loss(e, torch.tensor([0.0, 1.0, 1.0]), W)
    with pytest.raises(ValueError, match="transformed_weight"):
        lce_loss(e, torch.tensor([0, 1, 1]), W, W, e, torch.randn(3, 4))


# --------------------------------------------------------------------------- AML
def _loop_aml(q, g, margin, reg_weight):
    out = []
    for qt, gt in zip(q.tolist(), g.tolist()):
        anchor = qt[0]
        dist = lambda a, b: math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))  # noqa: E731
        c = 0.5 * dist(anchor, gt[1]) ** 2  # the positive, once
        c += sum(0.5 * max(0.0, margin - dist(anchor, n)) ** 2 for n in gt[2:])  # hinge on negatives only
        reg = np.mean([dist(a, b) for a, b in zip(qt, gt)])
        out.append(c + reg_weight * reg)
    return out


@pytest.mark.parametrize("margin", [0.7, 1.5])
def test_aml_matches_loop(margin):
    q, g = _unit(4, 7, 6, seed=20), _unit(4, 7, 6, seed=21)
    got = aml_loss(q, g, margin=margin, reg_weight=0.5, reduction="none")
    assert got.tolist() == pytest.approx(_loop_aml(q, g, margin, 0.5), abs=1e-9)
    assert aml_loss(q, g, margin=margin).item() == pytest.approx(np.mean(_loop_aml(q, g, margin, 1.0)), abs=1e-9)


def test_aml_far_negatives_and_no_gradient_to_the_gallery():
    # query network = gallery network, negatives beyond the margin: only the positive term is left
    g = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]]], dtype=torch.float64)
    assert aml_loss(g.clone(), g, margin=0.7).item() == pytest.approx(0.5 * 0.8, abs=1e-5)  # ‖0‖ clamped to 1e-6
    q = g.clone().requires_grad_()
    gg = g.clone().requires_grad_()
    aml_loss(q, gg).backward()
    assert gg.grad is None and q.grad is not None
    with pytest.raises(ValueError, match=r"\(B, T, D\) tuples"):
        aml_loss(_unit(2, 4), _unit(2, 4))


def test_losses_run_in_float32_under_autocast():
    anchors, q, g = _anchors().float(), _unit(3, 12, seed=22).float(), _unit(3, 12, seed=23).float()
    W, y = torch.randn(4, 12), torch.tensor([0, 1, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ssp = ssp_loss(q.bfloat16(), g, anchors)
        logits = arcface_logits(q.bfloat16(), W, y, 8.0, 0.15)
    assert ssp.dtype == torch.float32 and logits.dtype == torch.float32
    assert ssp.item() == pytest.approx(ssp_loss(q.bfloat16().float(), g, anchors).item(), rel=1e-5)
