"""Running normalisation of value targets (the ValueNorm of MAPPO and CommFormer).

The value head regresses onto returns scaled to zero mean and unit variance, so one loss scale (and one Huber
threshold) fits environments whose returns are around -25 (MPE) or +20 (SMAC). The statistics are exponential
moving averages with a debiasing term, so the first updates are not pulled towards the zero initialisation.
They live in buffers: they are saved in checkpoints and move to the module's device with it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ValueNorm(nn.Module):
    """Tracks the mean and variance of scalar targets; maps between raw and normalised units.

    Args:
        beta: EMA decay per update (MAPPO uses 0.99999 per minibatch; per train batch 0.999 is comparable).
        epsilon: floor on the debiasing term and the variance, for numerical safety.
    """

    def __init__(self, beta: float = 0.999, epsilon: float = 1e-5) -> None:
        super().__init__()
        if not 0.0 < beta < 1.0:
            raise ValueError(f"ValueNorm beta={beta}; expected 0 < beta < 1")
        self.beta = beta
        self.epsilon = epsilon
        self.running_mean: Tensor
        self.running_mean_sq: Tensor
        self.debiasing_term: Tensor
        self.register_buffer("running_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("running_mean_sq", torch.zeros((), dtype=torch.float64))
        self.register_buffer("debiasing_term", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, targets: Tensor) -> None:
        """Folds a batch of raw targets (any shape) into the running statistics.

        Non-finite targets are left out (a batch of only such targets changes nothing): one NaN folded into the
        running mean would stay there for good, and every later loss and checkpoint would carry it.
        """
        targets = targets.detach().to(torch.float64)
        finite = torch.isfinite(targets)
        count = finite.sum()
        weight = (1.0 - self.beta) * (count > 0)  # 0 when nothing is finite: no update at all
        clean = torch.where(finite, targets, torch.zeros_like(targets))
        mean = clean.sum() / count.clamp(min=1)
        mean_sq = (clean**2).sum() / count.clamp(min=1)
        keep = 1.0 - weight
        self.running_mean.mul_(keep).add_(mean * weight)
        self.running_mean_sq.mul_(keep).add_(mean_sq * weight)
        self.debiasing_term.mul_(keep).add_(weight)

    def mean_var(self) -> tuple[Tensor, Tensor]:
        """The debiased mean and variance (0 and 1 before the first update); no host synchronisation."""
        started = self.debiasing_term > 0
        denom = self.debiasing_term.clamp(min=self.epsilon)
        mean = self.running_mean / denom
        var = (self.running_mean_sq / denom - mean**2).clamp(min=self.epsilon)
        zero, one = torch.zeros_like(mean), torch.ones_like(var)
        return torch.where(started, mean, zero), torch.where(started, var, one)

    def normalize(self, x: Tensor) -> Tensor:
        mean, var = self.mean_var()
        return ((x - mean.to(x.dtype)) / var.sqrt().to(x.dtype)).to(x.dtype)

    def denormalize(self, x: Tensor) -> Tensor:
        mean, var = self.mean_var()
        return (x * var.sqrt().to(x.dtype) + mean.to(x.dtype)).to(x.dtype)
