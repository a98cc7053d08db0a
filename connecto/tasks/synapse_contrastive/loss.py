"""SimCLR's NT-Xent loss (normalised temperature-scaled cross entropy)."""

from __future__ import annotations

import torch


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent of N view pairs `z1`, `z2` (N, D): over the 2N views, each view's positive
    is the other view of its crop and its negatives are the 2N - 2 other views; the
    loss is the mean over the 2N views of the cross entropy of cosine similarities /
    `temperature`."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"expected two (N, D) tensors, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n = z1.shape[0]
    views = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    logits = views @ views.T / temperature
    # a view is not its own negative
    itself = torch.eye(2 * n, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(itself, -torch.inf)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(logits.device)
    return torch.nn.functional.cross_entropy(logits, positives)


def positive_accuracy(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """The fraction of the 2N views whose most similar other view is their positive."""
    n = z1.shape[0]
    views = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    similarity = views @ views.T
    similarity.fill_diagonal_(-torch.inf)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return float((similarity.argmax(dim=1).cpu() == positives).float().mean())


class NTXentLoss(torch.nn.Module):
    """NT-Xent of a batch of projections (2N, D) whose first N rows are the first views
    and last N rows the second views of the same crops (the training batch's layout)."""

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, projections: torch.Tensor) -> torch.Tensor:
        first, second = projections.chunk(2)
        return nt_xent(first, second, self.temperature)
