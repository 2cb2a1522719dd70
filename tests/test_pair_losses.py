"""Lifted structured loss and the in-batch pair loss against direct loop computations."""

import math

import pytest
import torch

from retrieval.losses import get_loss, in_batch_pair_loss, lifted_structure_loss


def _batch(seed=0, B=7, D=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])[:B]
    return x, labels


def _dist(a, b):
    return math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(a, b)))


def lifted_loop(x, y, alpha):
    B = len(y)
    terms = []
    for i in range(B):
        for j in range(i + 1, B):
            if y[i] != y[j]:
                continue
            s = sum(math.exp(alpha - _dist(x[i], x[k])) for k in range(B) if y[k] != y[i])
            s += sum(math.exp(alpha - _dist(x[j], x[l])) for l in range(B) if y[l] != y[j])  # noqa: E741
            J = math.log(s) + _dist(x[i], x[j])
            terms.append(max(0.0, J) ** 2)
    return sum(terms) / (2 * len(terms))


def pairs_loop(x, y, m):
    B, tot, n = len(y), 0.0, 0
    for i in range(B):
        for j in range(i + 1, B):
            d = _dist(x[i], x[j])
            tot += 0.5 * d * d if y[i] == y[j] else 0.5 * max(0.0, m - d) ** 2
            n += 1
    return tot / n


@pytest.mark.parametrize("alpha", [1.0, 0.3])
@pytest.mark.parametrize("seed", [0, 1])
def test_lifted_against_loop(alpha, seed):
    x, y = _batch(seed)
    got = lifted_structure_loss(x, y, margin=alpha)
    assert float(got) == pytest.approx(lifted_loop(x, y, alpha), rel=1e-5)
    assert get_loss("lifted", margin=alpha).kind == "labels"


def test_lifted_hinge_and_gradients():
    # well separated classes with a small margin: every J_ij < 0 → zero loss
    x = torch.tensor([[1.0, 0], [1.0, 0.01], [-1.0, 0], [-1.0, 0.01]])
    y = torch.tensor([0, 0, 1, 1])
    assert float(lifted_structure_loss(x, y, margin=0.1)) == 0.0
    x, y = _batch(2)
    x.requires_grad_(True)
    lifted_structure_loss(x, y).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    z = torch.randn(3, 4, requires_grad=True)  # no positive pair
    out = lifted_structure_loss(z, torch.tensor([0, 1, 2]))
    assert float(out.detach()) == 0.0 and out.requires_grad


@pytest.mark.parametrize("margin", [0.7, 1.5])
def test_pairs_against_loop(margin):
    x, y = _batch(3)
    assert float(in_batch_pair_loss(x, y, margin=margin)) == pytest.approx(pairs_loop(x, y, margin), rel=1e-5)
    x = x.clone().requires_grad_(True)
    in_batch_pair_loss(x, y).backward()  # identical points (distance 0) would have a finite gradient too
    assert torch.isfinite(x.grad).all()


def test_pair_losses_bad_shapes():
    x, y = _batch()
    for fn in (lifted_structure_loss, in_batch_pair_loss):
        with pytest.raises(ValueError, match="labels must be"):
            fn(x, y[:-1])
        with pytest.raises(ValueError, match=r"embeddings must be \(B, D\)"):
            fn(x[None], y)
