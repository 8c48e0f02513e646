"""Temporal gates: each agent decides, per step, whether to receive messages now.

The extended CommFormer paper (arXiv 2411.00382) lets every agent decide from its current observation
whether to receive shared information; its exact mechanism is not public, so this is our design:

    p_i   = sigmoid(w . h_i + b)               (b initialised to ``init_bias`` so gates start open)
    open_i = 1[w . h_i + b > 0] + (p_i - p_i.detach())

``open_i`` is exactly 0 or 1 in the forward pass (deterministic, so rollout and update see the same decision:
the PPO consistency rule, ARCHITECTURE.md section 3) and has the gradient of ``p_i`` (straight-through).
The decision is taken on the logit (``> 0``) rather than on ``p > 0.5``, which is the same in exact arithmetic
but immune to sigmoid rounding to exactly 0.5 near the threshold.

A closed gate leaves receiver i only its self-loop. The communication cost ``cost_weight * mean(p over alive
agents)`` pushes gates to close when messages do not pay for themselves; it uses ``p`` (smooth) rather than
the hard decision, which would have no gradient except through the straight-through path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from commformer.config import GateConfig

__all__ = ["TemporalGate", "communication_cost", "gate_adjacency"]


class TemporalGate(nn.Module):
    """Per-agent hard receive gate with a straight-through gradient."""

    def __init__(self, embed_dim: int, config: GateConfig) -> None:
        super().__init__()
        self.cost_weight = float(config.cost_weight)
        self.proj = nn.Linear(embed_dim, 1)
        # Zero weights make every gate start at p = sigmoid(init_bias) whatever the embedding, i.e. open for
        # init_bias > 0; the weights still receive gradient (d logit / d w = h).
        nn.init.zeros_(self.proj.weight)
        nn.init.constant_(self.proj.bias, float(config.init_bias))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Gate decisions from each agent's own embedding.

        Args:
            h: (..., N, d) agent embeddings.

        Returns:
            open: (..., N) straight-through decision, forward value exactly 0.0 or 1.0.
            prob: (..., N) open probability ``sigmoid(logit)``.
        """
        logit = self.proj(h).squeeze(-1)  # (..., N)
        prob = torch.sigmoid(logit)
        hard = (logit > 0).to(prob.dtype)
        return hard + (prob - prob.detach()), prob

    def cost(self, prob: Tensor, alive: Tensor | None = None) -> Tensor:
        """Communication cost ``cost_weight * mean(prob over alive agents)``; see ``communication_cost``."""
        return self.cost_weight * communication_cost(prob, alive)


def communication_cost(prob: Tensor, alive: Tensor | None = None) -> Tensor:
    """Mean open probability over alive agents, a scalar tensor (0 when no agent is alive).

    Args:
        prob: (..., N) gate open probabilities.
        alive: optional (..., N) 1 for alive agents, 0 for dead ones (dead agents' gates do not count).
    """
    weight = torch.ones_like(prob) if alive is None else alive.to(prob.dtype)
    # clamp: an empty batch, or one of only dead agents, costs 0 instead of 0/0.
    return (prob * weight).sum() / weight.sum().clamp(min=1.0)


def gate_adjacency(adjacency: Tensor, gate_open: Tensor, alive: Tensor | None = None) -> Tensor:
    """Apply receive gates and remove dead senders.

    ``A_eff[b, i, :] = open[b, i] * A[i, :] + (1 - open[b, i]) * I[i, :]`` (a closed gate keeps only the
    self-loop), then every column j of a dead sender (``alive[b, j] == 0``) is zeroed except its diagonal.
    Both are products, so straight-through gradients reach the graph logits and the gates; with 0/1 inputs
    the forward value stays exactly 0/1.

    Args:
        adjacency: (N, N) or (B, N, N) receiver-by-sender adjacency with a unit diagonal.
        gate_open: (B, N) gate decisions.
        alive: optional (B, N), 1 alive / 0 dead.

    Returns:
        (B, N, N) effective adjacency.
    """
    n = gate_open.shape[-1]
    if adjacency.shape[-2:] != (n, n):
        raise ValueError(f"adjacency has shape {tuple(adjacency.shape)}; expected (..., {n}, {n}) to match gates {n=}")
    eye = torch.eye(n, dtype=adjacency.dtype, device=adjacency.device)  # (N, N)
    gate = gate_open.to(adjacency.dtype).unsqueeze(-1)  # (B, N, 1): one gate per receiver row
    effective = gate * adjacency + (1.0 - gate) * eye  # (B, N, N)
    if alive is not None:
        sender_alive = alive.to(adjacency.dtype).unsqueeze(-2)  # (B, 1, N): one flag per sender column
        # max with I keeps every self-loop, including a dead agent's own.
        effective = effective * torch.maximum(sender_alive, eye)
    return effective
