"""Temporal gates: each agent decides, per step, whether to receive messages now.

The extended CommFormer paper (arXiv 2411.00382) lets every agent decide from its current observation
whether to receive shared information; its exact mechanism is not public, so this is our design.

The gate is a stochastic decision of the policy, trained like an action (as IC3Net's communication gate)::

    z_i    = w . h_i + b                    (b initialised to ``init_bias``, so gates start open)
    open_i ~ Bernoulli(sigmoid(z_i))        while training (``sample``), recorded by the EnvRunner
    open_i = 1[z_i > 0]                     when acting greedily (evaluation, export)

Why not a hard threshold with a straight-through gradient (the first design): a closed receiver keeps only its
self-loop, so its messages do not enter the forward pass and the task loss sends the gate exactly zero
gradient; the cost's gradient is positive everywhere, so a closed gate never reopened (on the ``signal`` task
with messages always needed, gates closed and the return fell to chance). A *sampled* gate sometimes opens where
it is usually closed, and the return of those steps is what tells the gate what opening buys.

The gradient is the score function, inside PPO: the learner replays the recorded decision and adds
``log p(open_i)`` (``gate_log_prob``) to agent i's action log-prob, so agent i's clipped ratio is that of its
joint decision (gate, action). Recorded and replayed, the decision keeps the PPO consistency rule exact. The
critic must not see the sampled decision: a value computed from messages the gate happened to take would be a
baseline that depends on the gate's own action, and would cancel the very advantage that trains it; the critic
reads the trunk run with the greedy decisions (``CommFormerPolicy.forward(greedy_values=True)``), both for GAE and
in the value loss.

The communication cost ``cost_weight * mean(p over alive agents)`` is the expected share of receivers that
listen; its gradient pushes every gate towards closing, against the task's score-function gradient where
messages pay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from commformer.config import GateConfig
from commformer.layers.attention import Senders

__all__ = [
    "GateOutput",
    "TemporalGate",
    "communication_cost",
    "gate_adjacency",
    "gate_log_prob",
    "gate_rows",
    "gate_senders",
]


@dataclass(frozen=True)
class GateOutput:
    """The gates of one forward pass; ``*B`` are the caller's batch dims."""

    open: Tensor
    """(*B, N) the decisions acted on, exactly 0.0 or 1.0, no gradient."""
    logit: Tensor
    """(*B, N) the gate logits z (``sigmoid(z)`` is the open probability), with gradient."""

    @property
    def prob(self) -> Tensor:
        """(*B, N) open probabilities ``sigmoid(logit)``."""
        return torch.sigmoid(self.logit)

    @property
    def greedy(self) -> Tensor:
        """(*B, N) the greedy decisions ``1[logit > 0]`` (0.0 / 1.0, no gradient)."""
        return (self.logit.detach() > 0).to(self.logit.dtype)


class TemporalGate(nn.Module):
    """Per-agent receive gate: a Bernoulli decision from the agent's own embedding (module docstring)."""

    def __init__(self, embed_dim: int, config: GateConfig) -> None:
        super().__init__()
        self.cost_weight = float(config.cost_weight)
        self.target = config.target_open_rate
        self.budget_lr = float(config.budget_lr)
        self.budget: Tensor | None
        if self.target is not None:
            # The budget's adapted cost weight (``adapt``): state, saved with the weights so that a resumed run goes on
            # from it. Only the learner's loss reads it.
            self.register_buffer("budget", torch.tensor(self.cost_weight))
        else:
            self.budget = None
        self.proj = nn.Linear(embed_dim, 1)
        # Zero weights make every gate start at p = sigmoid(init_bias) whatever the embedding, i.e. open for
        # init_bias > 0; the weights still receive gradient (d logit / d w = h).
        nn.init.zeros_(self.proj.weight)
        nn.init.constant_(self.proj.bias, float(config.init_bias))

    def forward(
        self,
        h: Tensor,
        decision: Tensor | None = None,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> GateOutput:
        """Gate decisions from each agent's own embedding.

        Args:
            h: (..., N, d) agent embeddings.
            decision: optional (..., N) recorded decisions (0/1) to replay; they are what the output holds.
            sample: without a record, draw each decision from Bernoulli(sigmoid(z)); otherwise greedy (z > 0).
            generator: optional RNG for the draw.

        The greedy decision is taken on the logit (``> 0``) rather than on ``p > 0.5``, which is the same in exact
        arithmetic but immune to sigmoid rounding to exactly 0.5 near the threshold.
        """
        logit = self.proj(h).squeeze(-1)  # (..., N)
        if decision is not None:
            if decision.shape != logit.shape:
                raise ValueError(
                    f"recorded gate decisions have shape {tuple(decision.shape)}; expected {tuple(logit.shape)}"
                )
            chosen = decision.to(logit.dtype)
        elif sample:
            prob = torch.sigmoid(logit.detach())
            chosen = (torch.rand(prob.shape, dtype=prob.dtype, device=prob.device, generator=generator) < prob).to(
                logit.dtype
            )
        else:
            chosen = (logit.detach() > 0).to(logit.dtype)
        return GateOutput(open=chosen, logit=logit)

    @property
    def weight(self) -> float:
        """The cost's weight now: ``cost_weight``, or the budget's adapted one (``model.gates.target_open_rate``)."""
        return self.cost_weight if self.budget is None else float(self.budget)

    def cost(self, prob: Tensor, alive: Tensor | None = None) -> Tensor:
        """Communication cost ``weight * mean(prob over alive agents)``; see ``communication_cost``."""
        # A copy of the budget: the product keeps its factor for the backward, and `adapt` moves the buffer before it.
        weight = self.cost_weight if self.budget is None else self.budget.to(prob.dtype, copy=True)
        return weight * communication_cost(prob, alive)

    @torch.no_grad()
    def adapt(self, rate: float) -> None:
        """One step of the budget (``model.gates.target_open_rate``): ``weight += budget_lr * (rate - target)``,
        floored at 0, for the open rate ``rate`` the gates just had; nothing without a budget."""
        if self.budget is not None and self.target is not None:
            self.budget.add_(self.budget_lr * (rate - self.target)).clamp_(min=0.0)


def gate_log_prob(logit: Tensor, decision: Tensor) -> Tensor:
    """``log p(decision)`` under Bernoulli(sigmoid(logit)), elementwise: the gate's share of an agent's log-prob.

    Written with ``logsigmoid`` (log p(open) = logsigmoid(z), log p(closed) = logsigmoid(-z)), which stays
    finite where ``log(sigmoid(z))`` would underflow to -inf.
    """
    return torch.where(decision > 0, F.logsigmoid(logit), F.logsigmoid(-logit))


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
    Both are products, so the straight-through gradient of the graph reaches its logits through the rows of open
    gates; with 0/1 inputs the forward value stays exactly 0/1.

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


def gate_rows(adjacency: Tensor, receivers: Tensor, gate_open: Tensor, alive: Tensor | None = None) -> Tensor:
    """Single rows of ``gate_adjacency``: row ``receivers[r]`` of team r's effective adjacency, without the others.

    Args:
        adjacency: (N, N) the graph (dense layout), unit diagonal.
        receivers: (R,) int.
        gate_open: (R,) each receiver's gate decision.
        alive: optional (R, N), the alive flags of each receiver's team.

    Returns:
        (R, N) effective entries over the senders.
    """
    own = F.one_hot(receivers, adjacency.shape[-1]).to(adjacency.dtype)  # (R, N): the receivers' rows of I
    gate = gate_open.to(adjacency.dtype).unsqueeze(-1)  # (R, 1)
    effective = gate * adjacency[receivers] + (1.0 - gate) * own
    if alive is not None:
        effective = effective * torch.maximum(alive.to(adjacency.dtype), own)
    return effective


def gate_senders(graph: Senders, gate_open: Tensor, alive: Tensor | None = None) -> Senders:
    """``gate_adjacency`` on an adjacency in either layout (commformer/layers/attention.py).

    The dense layout is ``gate_adjacency`` itself. The gathered layout applies the same products to the listed
    entries only, ``I[i, :]`` and ``alive[b, :]`` gathered at the listed senders: O(B N K) instead of O(B N^2), and the
    listed entries equal those of ``gate_adjacency`` on the dense matrix (every unlisted entry is 0 in both).

    Args:
        graph: the graph, entries (N, N) or (N, K) (or batched), with every self-loop listed at entry 1.
        gate_open: (B, N) gate decisions.
        alive: optional (B, N), 1 alive / 0 dead.

    Returns:
        The effective adjacency, entries (B, N, N) or (B, N, K).
    """
    if graph.index is None:
        return replace(graph, weight=gate_adjacency(graph.weight, gate_open, alive))
    n = gate_open.shape[-1]
    if graph.weight.shape[-2] != n:
        raise ValueError(f"graph has entries {tuple(graph.weight.shape)}; expected (..., {n}, K) to match gates {n=}")
    own = graph.self_loops()  # (N, K)
    gate = gate_open.to(graph.weight.dtype).unsqueeze(-1)  # (B, N, 1)
    effective = gate * graph.weight + (1.0 - gate) * own  # (B, N, K)
    if alive is not None:
        sender_alive = alive.to(graph.weight.dtype)[:, graph.index]  # (B, N, K): each listed sender's flag
        effective = effective * torch.maximum(sender_alive, own)
    # A probe is never the receiver itself: a closed gate or a dead sender zeroes its gradient path, as any entry's.
    probes = None if graph.probes is None else gate_senders(graph.probes, gate_open, alive)
    return replace(graph, weight=effective, probes=probes)
