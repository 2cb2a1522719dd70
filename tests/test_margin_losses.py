"""ArcFace / CosFace margin softmax (retrieval.losses; Deng et al. CVPR 2019, Wang et al. CVPR 2018),
as used to train Token (Wu et al., AAAI 2022)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from retrieval.losses import LOSSES, arcface_logits, arcface_loss, cosface_logits, cosface_loss, get_loss
from retrieval.models.token import MarginHead


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(6, 16, generator=g)
    weight = torch.randn(5, 16, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    cos = F.normalize(emb, dim=-1) @ F.normalize(weight, dim=-1).T
    return emb, weight, labels, cos


@pytest.mark.parametrize("logits", [arcface_logits, cosface_logits])
def test_margin_zero_is_scaled_softmax(batch, logits):
    emb, weight, labels, cos = batch
    out = logits(emb, weight, labels, 7.0, 0.0)
    assert out.shape == (6, 5)
    assert torch.allclose(out, 7.0 * cos, atol=1e-5)


@pytest.mark.parametrize("loss", [arcface_loss, cosface_loss])
def test_margin_zero_loss_is_cross_entropy_of_scaled_cosines(batch, loss):
    emb, weight, labels, cos = batch
    assert torch.allclose(loss(emb, labels, weight, scale=5.0, margin=0.0), F.cross_entropy(5.0 * cos, labels),
                          atol=1e-5)


def test_arcface_moves_the_target_angle_by_exactly_the_margin(batch):
    emb, weight, labels, cos = batch
    s, m = 4.0, 0.2
    out = arcface_logits(emb, weight, labels, s, m)
    theta = torch.acos(cos.gather(1, labels[:, None]).clamp(-1, 1)).squeeze(1)
    assert bool((theta + m < math.pi).all())
    theta_m = torch.acos((out.gather(1, labels[:, None]) / s).clamp(-1, 1)).squeeze(1)
    assert torch.allclose(theta_m - theta, torch.full_like(theta, m), atol=1e-4)
    other = torch.ones_like(cos, dtype=torch.bool).scatter(1, labels[:, None], False)
    assert torch.allclose(out[other], s * cos[other], atol=1e-5)      # non-target logits untouched


def test_cosface_moves_the_target_cosine_by_exactly_the_margin(batch):
    emb, weight, labels, cos = batch
    out = cosface_logits(emb, weight, labels, 3.0, 0.35)
    diff = 3.0 * cos - out
    expected = torch.zeros_like(cos).scatter(1, labels[:, None], 3.0 * 0.35)
    assert torch.allclose(diff, expected, atol=1e-5)


def test_margin_raises_the_loss_and_gradients_are_finite_at_the_poles():
    weight = torch.eye(3, 4)
    emb = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]], requires_grad=True)   # cos θ_y = +1 and −1
    labels = torch.tensor([0, 0])
    for fn in (arcface_loss, cosface_loss):
        with_m = fn(emb, labels, weight, scale=8.0, margin=0.3)
        without = fn(emb, labels, weight, scale=8.0, margin=0.0)
        assert with_m > without
        (g,) = torch.autograd.grad(with_m, emb)
        assert torch.isfinite(g).all()


def test_registry_and_errors(batch):
    emb, weight, labels, _ = batch
    assert LOSSES["cosface"].kind == "labels" and LOSSES["arcface"].kind == "labels"
    loss = get_loss("cosface", scale=10.0, margin=0.1)
    assert loss.kind == "labels" and torch.isfinite(loss(emb, labels, weight=weight))
    with pytest.raises(ValueError, match="labels"):
        cosface_logits(emb, weight, torch.tensor([0, 1, 2, 3, 4, 5]), 1.0, 0.1)      # class 5 of C = 5
    with pytest.raises(ValueError, match="weight"):
        cosface_logits(emb, weight[:, :8], labels, 1.0, 0.1)
    with pytest.raises(ValueError, match="reduction"):
        cosface_loss(emb, labels, weight, reduction="avg")


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_head_uses_the_loss_functions(batch, kind):
    emb, _, labels, _ = batch
    head = MarginHead(16, 5, scale=4.0, margin=0.2, kind=kind)
    fn = arcface_logits if kind == "arcface" else cosface_logits
    assert torch.allclose(head(emb, labels), fn(emb, head.weight, labels, 4.0, 0.2))
    with pytest.raises(ValueError, match="loss="):
        MarginHead(16, 5, 4.0, 0.2, kind="sphereface")
