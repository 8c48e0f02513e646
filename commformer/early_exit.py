"""JEI-DNN early exits for the CommFormer policy (Regol, Chataoui, Coates, ICLR 2024, arXiv 2310.09163).

Depth l counts the communication blocks an input has been through: exit l in 0..G-1 (G = ``model.num_blocks``)
reads the residual stream after the encoder (l = 0) or after block l; depth G is the policy's own final head::

    h_0 = encoder(obs) --IM_0, gate_0--> exit 0 ? --block 1--> h_1 --IM_1, gate_1--> exit 1 ? ... --> final head

Per exit: an inference module IM_l (LayerNorm, Linear, activation, Linear -> masked logits (B, N, A)) and a gate
g_l = sigmoid(Linear(u_l)), where u_l are four *detached* uncertainty features of IM_l's action distribution
(max probability, entropy, margin p1 - p2, entropy of the squared-renormalised distribution), so the gate loss
never reaches the heads or the backbone. All of it is batched torch with no host synchronisation; only the
decision to stop running blocks (``EarlyExits.act``, the acting path of ``CommFormerPolicy.act``) reads a boolean
back, as any data-dependent skip must.

Exit probabilities (product form): P_l = g_l * prod_{j<l} (1 - g_j) for l < G, and the final head takes the rest,
P_G = prod_j (1 - g_j); they are non-negative and sum to 1. The paper's test-time rule exits at the first l with
c_l = P_l / prod_{j<l} (1 - c_j) >= 1/2; with the product form c_l = g_l exactly, so the rule is "the first gate
>= ``threshold``" (0.5 in the paper and in its public code). A clipped form max(0, min(g_l, 1 - sum_{j<l} g_j))
is sometimes written instead; it is not a distribution whose c_l reduce to the gates, so we use the product.

Communication (decided): blocks mix the agents, so an agent that stopped would still have to compute the keys and
values the others attend to. The *team* exits together: at depth l the team stops when every alive agent's gate
says exit (``team_exit_depth``). No agent then acts on a shallower representation than its own gate accepts, and
the MACs of a team that exits at l are exactly those of the encoder, l blocks and IMs/gates 0..l, which
``exit_macs`` measures on the real modules with ``torch.utils.flop_counter.FlopCounterMode``.

Training (decided: distillation, not PPO, for the heads). Rollouts use the full depth by default, so the actions
in the batch were sampled from the final head; a PPO term on IM_l would be off-policy by an unknown ratio. The
final head is what PPO optimises; an exit is a cheap stand-in for it, and KL(pi_final || pi_l) measures exactly
what acting at l loses, per sample, without rewards. The same KL is the per-exit loss of the gates' surrogate
target l* = argmin_l [loss_l + lambda * C_l] (the earliest on ties), C_l the measured MACs to reach exit l over
those to reach the final head, loss_G = 0. Gate targets t_l = 1 for l >= l* (the paper's "exit subsequent"
scheme), binary cross-entropy with positives reweighted to balance the negatives. The heads read the backbone
detached unless ``backbone_grad``, so with exits the main policy trains exactly as without them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from commformer.config import EarlyExitConfig, ModelConfig
from commformer.functional import activation as make_activation
from commformer.functional import log_softmax, mask_logits
from commformer.heads import PolicyHead
from commformer.trunk import CommTrunk, Connection
from commformer.validate import require_int

__all__ = [
    "N_FEATURES",
    "EarlyExitConfig",
    "EarlyExits",
    "ExitMacs",
    "ExitOutput",
    "distill_kl",
    "ece",
    "exit_macs",
    "exit_probabilities",
    "first_exit",
    "gate_loss",
    "gate_targets",
    "select_depth",
    "surrogate_target",
    "team_exit_depth",
    "uncertainty_features",
]

N_FEATURES = 4
"""Uncertainty features per agent and exit: max probability, entropy, margin, entropy of p^2 / sum p^2."""


@dataclass(frozen=True)
class ExitOutput:
    """The exits of one full-depth forward pass (``*B`` the caller's batch dims, G = number of early exits)."""

    head_logits: Tensor
    """(*B, G, N, A) masked logits of IM_0..IM_{G-1}."""
    gate_logits: Tensor
    """(*B, N, G) gate pre-activations (sigmoid gives g_l); no gradient path to heads or backbone."""
    final_logits: Tensor
    """(*B, N, A) the final head's masked logits (full depth), the distillation target."""
    depth: Tensor
    """(*B,) int64, the depth whose logits ``PolicyOutput.logits`` holds (replayed or G)."""

    def reshape(self, batch: torch.Size) -> ExitOutput:
        """From the flat batch (B, ...) to the caller's batch dims (*B, ...)."""
        return ExitOutput(
            head_logits=self.head_logits.reshape(*batch, *self.head_logits.shape[1:]),
            gate_logits=self.gate_logits.reshape(*batch, *self.gate_logits.shape[1:]),
            final_logits=self.final_logits.reshape(*batch, *self.final_logits.shape[1:]),
            depth=self.depth.reshape(batch),
        )


def select_depth(exits: ExitOutput) -> Tensor:
    """Per sample, the logits (B, N, A) of the head at ``exits.depth``: an early head, or the final one at G."""
    every = torch.cat([exits.head_logits, exits.final_logits.unsqueeze(1)], dim=1)  # (B, G + 1, N, A)
    index = exits.depth.clamp(0, every.shape[1] - 1).view(-1, 1, 1, 1).expand(-1, 1, *every.shape[2:])
    return every.gather(1, index).squeeze(1)  # (B, N, A)


def uncertainty_features(logits: Tensor) -> Tensor:
    """Detached uncertainty features (..., A) logits -> (..., 4), in torch, no host synchronisation.

    Masked actions (logit finfo.min) have probability 0 and contribute 0 to the entropies.
    """
    p = torch.softmax(logits.detach(), dim=-1)
    entropy = -torch.xlogy(p, p).sum(-1)  # xlogy(0, 0) = 0: masked actions count for nothing
    if p.shape[-1] >= 2:
        top = p.topk(2, dim=-1).values
        p_max, margin = top[..., 0], top[..., 0] - top[..., 1]
    else:
        p_max = margin = p[..., 0]
    # p^2 / sum p^2 is sharper than p, so its entropy separates near-ties from confident rows. From p, not from
    # 2 * logits: twice a masked logit (finfo.min) overflows to -inf.
    q = p.square()
    q = q / q.sum(-1, keepdim=True)
    entropy_sq = -torch.xlogy(q, q).sum(-1)
    return torch.stack([p_max, entropy, margin, entropy_sq], dim=-1)


def exit_probabilities(gates: Tensor) -> Tensor:
    """Product-form exit probabilities (..., G) gates in [0, 1] -> (..., G + 1), the final head last."""
    stay = torch.cumprod(1.0 - gates, dim=-1)  # (..., G): prod_{j<=l} (1 - g_j)
    reach = torch.cat([torch.ones_like(gates[..., :1]), stay[..., :-1]], dim=-1)  # prod_{j<l} (1 - g_j)
    return torch.cat([gates * reach, stay[..., -1:]], dim=-1)


def first_exit(passed: Tensor) -> Tensor:
    """(..., G) bool "exit here" -> (...,) int64 index of the first True, G when there is none (no host sync)."""
    always = torch.ones_like(passed[..., :1])
    # argmax returns the first maximal index (documented), and the appended column guarantees a maximum.
    return torch.cat([passed, always], dim=-1).to(torch.uint8).argmax(dim=-1)


def team_exit_depth(gates: Tensor, alive: Tensor | None, threshold: float) -> Tensor:
    """The team's exit depth (B,) from per-agent gates (B, N, G): first l where every alive agent's g_l >= threshold.

    Dead agents do not vote, unless no agent is alive: then all vote (so a lambda-0 policy never exits early).
    """
    passed = gates >= threshold  # (B, N, G)
    if alive is not None:
        dead = alive == 0  # (B, N)
        abstain = dead & ~dead.all(dim=-1, keepdim=True)
        passed = passed | abstain.unsqueeze(-1)
    return first_exit(passed.all(dim=-2))  # (B, G) -> (B,)


def distill_kl(final_logits: Tensor, head_logits: Tensor) -> Tensor:
    """KL(pi_final || pi_l) per exit and agent: (B, N, A), (B, G, N, A) -> (B, G, N); the target is detached."""
    target_logp = log_softmax(final_logits.detach()).unsqueeze(1)  # (B, 1, N, A)
    logp = log_softmax(head_logits)
    # Masked actions: target p = 0 and both log-probs finfo.min-ish; 0 * finite keeps the sum finite.
    return (target_logp.exp() * (target_logp - logp)).sum(-1)


def surrogate_target(losses: Tensor, costs: Tensor, cost_weight: float) -> Tensor:
    """The paper's optimal exit l* = argmin_l [loss_l + lambda * C_l], earliest on ties.

    Args:
        losses: (B, G + 1) per-sample loss at each exit (the final head's included, last).
        costs: (G + 1,) relative compute to reach each exit (the final head's = 1).
    Returns (B,) int64.
    """
    objective = losses + cost_weight * costs.to(losses.dtype)
    return objective.argmin(dim=-1)  # argmin returns the first minimal index (documented)


def gate_targets(optimal: Tensor, n_gates: int) -> Tensor:
    """Targets t_l = 1 for l >= l* ("exit at l* or at any later gate"): (B,) int -> (B, G) float."""
    depth = torch.arange(n_gates, device=optimal.device)
    return (depth >= optimal.unsqueeze(-1)).float()


def gate_loss(gate_logits: Tensor, targets: Tensor, weight: Tensor) -> Tensor:
    """Binary cross-entropy of every agent's gates against the team's targets, positives reweighted.

    Args:
        gate_logits: (B, N, G).  targets: (B, G) 0/1 shared by the team.  weight: (B, N) 0/1 agents that count.
    The positive class is weighted by (#negatives / #positives) among counted entries (the paper's balancing),
    computed in torch (no host synchronisation); with no positive at all the weight is 1.
    """
    target = targets.unsqueeze(1).expand_as(gate_logits)  # (B, N, G)
    w = weight.unsqueeze(-1).expand_as(gate_logits).to(gate_logits.dtype)
    positives = (target * w).sum()
    negatives = ((1.0 - target) * w).sum()
    pos_weight = torch.where(positives > 0, negatives / positives.clamp(min=1.0), torch.ones_like(positives))
    bce = F.binary_cross_entropy_with_logits(gate_logits, target.to(gate_logits.dtype), reduction="none")
    # Only ever up-weight positives: when (nearly) every target is 1 (a large lambda), a ratio below 1 would
    # silence the very targets the gates must learn.
    balanced = bce * torch.where(target > 0, pos_weight.clamp(min=1.0), torch.ones_like(bce))
    return (balanced * w).sum() / w.sum().clamp(min=1.0)


class EarlyExits(nn.Module):
    """The G inference heads and gates of one policy (weights shared across agents, like the final head)."""

    def __init__(
        self, embed_dim: int, n_actions: int, n_exits: int, config: EarlyExitConfig, activation: str = "gelu"
    ) -> None:
        super().__init__()
        require_int("n_exits", n_exits, 1)
        self.n_exits, self.n_actions = n_exits, n_actions
        self.backbone_grad, self.threshold = config.backbone_grad, config.threshold
        heads, gates = [], []
        for _ in range(n_exits):
            logits_layer = nn.Linear(embed_dim, n_actions)
            gate = nn.Linear(N_FEATURES, 1)
            with torch.no_grad():
                logits_layer.weight.mul_(0.01)  # near-uniform start, as the final head
                logits_layer.bias.zero_()
                gate.weight.zero_()
                gate.bias.fill_(config.gate_init_bias)
            heads.append(
                nn.Sequential(
                    nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), make_activation(activation), logits_layer
                )
            )
            gates.append(gate)
        self.heads = nn.ModuleList(heads)
        self.gates = nn.ModuleList(gates)

    def head_logits(self, depth: int, h: Tensor, action_mask: Tensor | None) -> Tensor:
        """IM_depth's masked logits (B, N, A) from the residual stream h (B, N, d) after ``depth`` blocks."""
        x = h if self.backbone_grad else h.detach()
        return mask_logits(self.heads[depth](x), action_mask)

    def gate_logit(self, depth: int, logits: Tensor) -> Tensor:
        """Gate pre-activation (B, N) from IM_depth's logits (B, N, A), through detached features."""
        return self.gates[depth](uncertainty_features(logits).to(logits.dtype)).squeeze(-1)

    def all_exits(
        self, stream: Sequence[Tensor], final_logits: Tensor, mask: Tensor | None, depth: Tensor | None
    ) -> ExitOutput:
        """Every exit of a full-depth pass (flat batch B).

        Args:
            stream: G tensors (B, N, d), the residual stream before each block.
            final_logits: (B, N, A) the final head's masked logits.  mask: (B, N, A) or None.
            depth: (B,) recorded exit depths to replay, or None for the full depth G.
        """
        head_logits = torch.stack([self.head_logits(i, h, mask) for i, h in enumerate(stream)], dim=1)
        gate_logits = torch.stack([self.gate_logit(i, head_logits[:, i]) for i in range(len(stream))], dim=-1)
        if depth is None:
            depth = torch.full(final_logits.shape[:1], len(stream), dtype=torch.long, device=final_logits.device)
        return ExitOutput(head_logits, gate_logits, final_logits, depth.long())  # (B, G, N, A), (B, N, G), ...

    def act(
        self,
        h: Tensor,
        connection: Connection,
        action_mask: Tensor | None,
        trunk: CommTrunk,
        final_head: PolicyHead,
        force_depth: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Acting with early exits: masked logits (B, N, A) and the depth (B,) each team acted at.

        A team leaves at the first depth whose gates all say exit (``team_exit_depth``), and the blocks beyond it
        are *not run* for that team: the teams still going are gathered into a smaller batch before each block,
        which ``trunk``'s blocks run one at a time; the teams that reach depth G act with ``final_head`` on the
        normalised last block's output. ``force_depth`` makes every team exit at that depth (running the same
        modules a natural exit there runs): it is how ``exit_macs`` measures each exit's cost.

        Args:
            h: (B, N, d) the embeddings.  connection: ``trunk.connect``'s for h.  action_mask: (B, N, A) or None.
        """
        flat, n = h.shape[0], h.shape[1]
        adjacency, alive, mask = connection.adjacency, connection.alive, action_mask
        out = h.new_empty(flat, n, self.n_actions)
        depth = torch.full((flat,), len(trunk.blocks), dtype=torch.long, device=h.device)
        rows = torch.arange(flat, device=h.device)  # which original teams are still running
        for here, block in enumerate(trunk.blocks):
            logits = self.head_logits(here, h, mask)  # (b, N, A)
            gates = torch.sigmoid(self.gate_logit(here, logits))  # (b, N)
            if force_depth is None:
                leave = team_exit_depth(gates.unsqueeze(-1), alive, self.threshold) == 0  # (b,)
            else:
                leave = torch.full_like(rows, here == force_depth, dtype=torch.bool)
            leaving = int(leave.sum())  # the one host synchronisation per depth: how many teams stop here
            if leaving == rows.shape[0]:  # everyone: no copy into the batch, no block
                out[rows] = logits
                depth[rows] = here
                return out, depth
            if leaving:  # some: record them, and run the next block on the others only
                out[rows[leave]] = logits[leave]
                depth[rows[leave]] = here
                stay = ~leave
                rows, h, adjacency = rows[stay], h[stay], adjacency.rows(stay)
                mask = mask[stay] if mask is not None else None
                alive = alive[stay] if alive is not None else None
            h = block(h, adjacency)
        logits, _ = final_head(trunk.norm(h), mask)
        out[rows] = logits
        return out, depth


def ece(confidence: Tensor, correct: Tensor, bins: int = 10) -> float:
    """Expected calibration error: sum over equal-width confidence bins of |accuracy - confidence| * share."""
    if confidence.numel() == 0:
        return math.nan
    index = (confidence.clamp(0.0, 1.0) * bins).long().clamp(max=bins - 1)
    total = 0.0
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        if count:
            gap = correct[inside].float().mean() - confidence[inside].float().mean()
            total += abs(float(gap)) * count / confidence.numel()
    return total


@dataclass(frozen=True)
class ExitMacs:
    """Multiply-accumulates of one team decision (batch of one team), counted on the real modules."""

    per_exit: tuple[int, ...]
    """(G + 1,) MACs of acting at exit l: encoder, l blocks, IMs and gates 0..l; at G also the final head."""
    full_depth: int
    """MACs of the plain full-depth policy (encoder, G blocks, final head; no exit modules): the baseline."""
    n_agents: int
    """N: one team decision is N actions."""

    def relative(self) -> Tensor:
        """C_l = per_exit[l] / per_exit[G], the compute term of the surrogate target (float64, (G + 1,))."""
        costs = torch.tensor(self.per_exit, dtype=torch.float64)
        return costs / costs[-1]


def count_macs(fn: Callable[[], object]) -> int:
    """MACs of ``fn()`` by ``torch.utils.flop_counter`` (which counts 2 FLOPs per multiply-accumulate of the
    matmul / linear / bmm / einsum family; norms, activations and softmax are not counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


class _ActingPolicy(Protocol):
    """What ``exit_macs`` uses of a ``CommFormerPolicy``; a protocol, since commformer/policy.py imports this module."""

    n_agents: int
    obs_dim: int
    n_actions: int
    config: ModelConfig
    exits: EarlyExits | None

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def act(
        self,
        obs: Tensor,
        action_mask: Tensor,
        alive: Tensor,
        *,
        history: Tensor | None,
        early_exit: bool,
        force_depth: int | None,
    ) -> object: ...


def exit_macs(policy: _ActingPolicy) -> ExitMacs:
    """Counts, on ``policy``'s own modules, the MACs of acting at every exit and at full depth without exits.

    Each exit is measured by running ``policy.act`` with that exit forced, i.e. the very code path and modules a
    natural exit there executes. Costs do not depend on the inputs (attention over agents is dense), so zeros do.
    """
    n, d, a = policy.n_agents, policy.obs_dim, policy.n_actions
    param = next(policy.parameters())
    dtype, device = param.dtype, param.device
    obs = torch.zeros(1, n, d, dtype=dtype, device=device)
    mask = torch.ones(1, n, a, dtype=dtype, device=device)
    alive = torch.ones(1, n, dtype=dtype, device=device)
    length = policy.config.env_history
    history = torch.zeros(1, length, n, d, dtype=dtype, device=device) if length else None

    def run(early_exit: bool, force: int | None) -> Callable[[], object]:
        return lambda: policy.act(obs, mask, alive, history=history, early_exit=early_exit, force_depth=force)

    full = count_macs(run(False, None))
    if policy.exits is None:
        return ExitMacs(per_exit=(full,), full_depth=full, n_agents=n)
    per_exit = tuple(count_macs(run(True, depth)) for depth in range(policy.exits.n_exits + 1))
    return ExitMacs(per_exit=per_exit, full_depth=full, n_agents=n)
