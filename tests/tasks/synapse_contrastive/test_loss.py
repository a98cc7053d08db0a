"""NT-Xent against values written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from connecto.tasks.synapse_contrastive.loss import NTXentLoss, nt_xent, positive_accuracy


def test_identical_orthogonal_pairs_give_the_closed_form() -> None:
    """Two crops, each view equal to its pair, the crops orthogonal: every view has
    similarity 1 to its positive and 0 to its two negatives, so each of the four terms
    is -log(e^(1/t) / (e^(1/t) + 2 e^0)) = log(1 + 2 e^(-1/t))."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(nt_xent(z, z.clone(), 0.5)) == pytest.approx(math.log(1 + 2 * math.exp(-2)))


def _by_hand(z1: list[list[float]], z2: list[list[float]], t: float) -> float:
    """The formula, term by term in plain Python."""
    views = z1 + z2
    n = len(z1)
    unit = [[v / math.sqrt(sum(c * c for c in view)) for v in view] for view in views]

    def sim(i: int, k: int) -> float:
        return sum(a * b for a, b in zip(unit[i], unit[k], strict=True))

    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(sim(i, k) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(sim(i, positive) / t) / denominator)
    return total / (2 * n)


def test_nt_xent_matches_the_formula_on_a_tiny_case() -> None:
    z1 = [[1.0, 2.0], [-0.5, 1.5]]
    z2 = [[0.8, 2.5], [3.0, -1.0]]
    for t in (0.5, 0.1, 1.0):
        expected = _by_hand(z1, z2, t)
        assert float(nt_xent(torch.tensor(z1), torch.tensor(z2), t)) == pytest.approx(expected)
    # scale does not matter (cosine similarity), the order of the pairs does not either
    scaled = nt_xent(torch.tensor(z1) * 3, torch.tensor(z2) * 0.2, 0.5)
    assert float(scaled) == pytest.approx(_by_hand(z1, z2, 0.5), rel=1e-5)
    swapped = nt_xent(torch.tensor(z1[::-1]), torch.tensor(z2[::-1]), 0.5)
    assert float(swapped) == pytest.approx(_by_hand(z1, z2, 0.5), rel=1e-5)


def test_module_reads_the_batch_as_first_views_then_second_views() -> None:
    z1, z2 = torch.randn(3, 4), torch.randn(3, 4)
    projections = torch.cat([z1, z2]).requires_grad_()
    loss = NTXentLoss(temperature=0.2)(projections)
    assert loss.item() == pytest.approx(float(nt_xent(z1, z2, 0.2)))
    loss.backward()
    assert projections.grad is not None and torch.isfinite(projections.grad).all()
    # matching pairs far apart from the rest: every view finds its positive
    assert positive_accuracy(torch.eye(3), torch.eye(3) + 0.01) == 1.0
    with pytest.raises(ValueError):
        nt_xent(torch.randn(2, 3), torch.randn(3, 3))
