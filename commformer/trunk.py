"""``CommTrunk``: the agents communicate. It owns the learned graph, the temporal gates, the communication blocks and
the final LayerNorm; it decides who listens to whom this step (``connect``) and runs the blocks (``forward``).

    h (B, N, d) --TemporalGate--> open (B, N)     graph.senders() (N, K) --gates, dead senders--> A_eff (B, N, K)
    h --num_blocks x CommBlock(A_eff)--> LN --> features (B, N, d)

K = N (the dense layout) or k + 1 (the gathered one, each receiver's self-loop and its k senders), as the graph
chose from N and k (commformer/layers/attention.py, ``gathers``); nothing here builds an (N, N) tensor per batch
element in the gathered layout.

The PPO ratio stays exact (docs/DESIGN.md, "The PPO consistency rule"): the graph is the hard top-k of the logits,
a deterministic function of the parameters (Gumbel noise, if asked for, only touches its surrogate gradient), and
the temporal gates' decisions are either greedy (deterministic) or sampled while training and then recorded and
replayed (``gate_open``). The critic reads the trunk run with the greedy gate decisions (``critic_features``), so the
baseline never depends on a sampled decision (commformer/gates.py says why).

Everything here works on a flat batch B (the policy flattens the caller's batch dims).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from commformer.config import ModelConfig
from commformer.gates import GateOutput, TemporalGate, gate_rows, gate_senders
from commformer.graph import CommGraph
from commformer.layers.attention import CommBlock, Senders

__all__ = ["CommTrunk", "Connection", "TrunkOutput"]


@dataclass(frozen=True)
class Connection:
    """Who listens to whom in one step: everything the blocks read besides the agents' embeddings."""

    graph: Senders
    """The straight-through graph, entries (N, K)."""
    adjacency: Senders
    """The effective adjacency (receiver x sender) of the gate decisions acted on, entries (B, N, K), forward value
    0/1; ``adjacency.dense()`` is the (B, N, N) matrix."""
    gate_open: Tensor
    """(B, N) the gate decisions acted on (replayed, sampled or greedy); all ones when gates are disabled, all zeros
    without communication."""
    gates: GateOutput | None
    """The learned gates' output; None when gates are disabled or there is no communication."""
    comm_cost: Tensor
    """Scalar communication-cost term of the gates (``TemporalGate.cost``); 0 without learned gates."""
    alive: Tensor | None
    """(B, N) 1 alive / 0 dead, or None."""

    def messages(self) -> Tensor:
        """(B,) off-diagonal edges into alive receivers, float, without gradient (a dead receiver acts on none)."""
        entries = self.adjacency.weight.detach()  # (B, N, K)
        used = entries * (1.0 - self.adjacency.self_loops())  # (B, N, K), off-diagonal entries only
        if self.alive is not None:
            used = used * self.alive.to(used.dtype).unsqueeze(-1)
        return used.sum(dim=(-2, -1))


Rerun = Literal["teams", "receivers"]
"""How ``CommTrunk.critic_features`` reruns the decisions that were not the greedy ones."""


@dataclass(frozen=True)
class TrunkOutput:
    """One run of the trunk."""

    features: Tensor
    """(B, N, d) the last block's output after the final LayerNorm: what the heads read."""
    stream: tuple[Tensor, ...]
    """G tensors (B, N, d): the residual stream before each block (``stream[0]`` is the embeddings), the early
    exits' inputs."""
    connection: Connection
    """The connection the blocks ran with."""


class CommTrunk(nn.Module):
    """Graph, gates, ``num_blocks`` communication blocks and the final LayerNorm of one policy.

    Args:
        config: the model config (``graph``, ``gates``, ``communicate``, ``num_blocks``, ...).
        n_agents: N.
    """

    def __init__(self, config: ModelConfig, n_agents: int) -> None:
        super().__init__()
        d = config.embed_dim
        self.communicate = config.communicate
        self.graph = CommGraph(n_agents, config.graph)
        self.gate = TemporalGate(d, config.gates) if config.gates.enabled else None
        self.blocks = nn.ModuleList(
            CommBlock(d, config.num_heads, config.mlp_ratio, config.activation) for _ in range(config.num_blocks)
        )
        # Pre-LN blocks leave the residual stream unnormalised: normalise once before the heads.
        self.norm = nn.LayerNorm(d)

    @property
    def learns_gates(self) -> bool:
        """Whether learned gates take the decisions now (``model.gates.enabled`` with communication): not in the graph's
        warm-up (``model.graph.warmup_fraction``), where every receiver hears every sender, its gate open too."""
        return self.gate is not None and self.communicate and not self.graph.hears_all

    def connect(
        self,
        h: Tensor,
        alive: Tensor | None = None,
        *,
        gate_open: Tensor | None = None,
        sample_gates: bool = False,
        gumbel: bool = False,
        probes: bool = True,
    ) -> Connection:
        """The gates' decisions and the effective adjacency for the embeddings h (B, N, d).

        Args:
            alive: optional (B, N), 1 alive / 0 dead; dead agents send nothing and do not count in the cost.
            gate_open: optional (B, N) recorded decisions to replay; needs learned gates.
            sample_gates: without ``gate_open``, draw the decisions instead of taking the greedy ones.
            gumbel: add Gumbel noise to the graph's surrogate gradient; the forward values do not change.
            probes: let a gathered graph draw senders to assess (``CommGraph.senders``); no forward value changes.
        """
        if gate_open is not None and not self.learns_gates:
            raise ValueError(
                "gate_open was given but no learned gates take the decisions: model.gates.enabled is false, or the "
                "graph is in its warm-up (model.graph.warmup_fraction), where every gate is open"
            )
        flat, n = h.shape[0], h.shape[1]
        gates = None
        if not self.communicate:
            # The no-communication ablation: every gate closed, so each agent attends to itself only.
            decisions = h.new_zeros(flat, n)
            comm_cost = h.new_zeros(())
        elif self.learns_gates:
            assert self.gate is not None
            gates = self.gate(h, gate_open, sample=sample_gates)  # (B, N) each
            decisions = gates.open
            comm_cost = self.gate.cost(gates.prob, alive)
        else:
            decisions = h.new_ones(flat, n)
            comm_cost = h.new_zeros(())
        graph = self.graph.senders(gumbel=gumbel, probes=probes).to(h.dtype)  # entries (N, K)
        adjacency = gate_senders(graph, decisions, alive)  # entries (B, N, K)
        return Connection(graph, adjacency, decisions, gates, comm_cost, alive)

    def forward(self, h: Tensor, connection: Connection) -> TrunkOutput:
        """Every block on the embeddings h (B, N, d) over the connection ``connect`` made for them, then the final
        LayerNorm."""
        features, stream = self._run(h, connection.adjacency)
        return TrunkOutput(features, stream, connection)

    def _run(self, h: Tensor, adjacency: Senders) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The features (B, N, d) and the residual stream before each block (G tensors (B, N, d)) for the
        embeddings h (B, N, d) over ``adjacency`` (entries (B, N, K))."""
        stream = []
        for block in self.blocks:
            stream.append(h)
            h = block(h, adjacency)
        return self.norm(h), tuple(stream)

    def critic_features(self, out: TrunkOutput, rerun: Rerun | None = None) -> Tensor:
        """The features (B, N, d) of the *greedy* gate decisions, for the value head.

        The GAE baseline must not depend on sampled gate decisions (commformer/gates.py): where they equal the greedy
        ones (for every alive agent of a team) the actor's features are the critic's too; the other teams' blocks
        are run again with the greedy decisions (``rerun="teams"``). Once the gates are confident, few teams differ.
        With one block in the dense layout only the receivers whose decision differs run again, each alone
        (``rerun="receivers"``, the default there): a receiver's features depend on its own decision only (every
        sender's key and value is its embedding), so the others' are the actor's (early in training ~1 agent in 8
        differs, in ~half of the teams of five). ``rerun`` picks one for a comparison (benchmarks/critic_rerun.py).
        """
        gates, alive = out.connection.gates, out.connection.alive
        if gates is None:
            return out.features
        greedy = gates.greedy  # (B, N)
        differ = gates.open != greedy
        if alive is not None:
            differ = differ & (alive > 0)  # a dead agent's gate changes nothing anyone acts on
        graph = out.connection.graph
        single = len(self.blocks) == 1 and graph.index is None and graph.weight.dim() == 2
        if rerun == "receivers" and not single:
            raise ValueError("rerun='receivers' needs one block in the dense layout")
        if rerun == "receivers" or (rerun is None and single):
            return self._rerun_receivers(out, greedy, differ)
        return self._rerun_teams(out, greedy, differ)

    def _rerun_teams(self, out: TrunkOutput, greedy: Tensor, differ: Tensor) -> Tensor:
        """``critic_features`` by teams: every block again for the teams with a differing decision."""
        rows = differ.any(-1).nonzero().squeeze(-1)  # (B',) teams whose sampled gates are not the greedy ones
        if rows.numel() == 0:
            return out.features
        alive = out.connection.alive
        alive = alive[rows] if alive is not None else None
        adjacency = gate_senders(out.connection.graph, greedy[rows], alive)  # entries (B', N, K)
        features, _ = self._run(out.stream[0][rows], adjacency)  # from those teams' embeddings
        return out.features.index_put((rows,), features)  # out of place: the features keep their autograd history

    def _rerun_receivers(self, out: TrunkOutput, greedy: Tensor, differ: Tensor) -> Tensor:
        """``critic_features`` by receivers (one block, dense layout): the differing receivers' rows alone."""
        teams, receivers = differ.nonzero(as_tuple=True)  # (R,) each: the receivers whose decision differs
        if teams.numel() == 0:
            return out.features
        graph, alive = out.connection.graph, out.connection.alive
        team_alive = None if alive is None else alive[teams]
        edges = gate_rows(graph.weight, receivers, greedy[teams, receivers], team_alive)  # (R, N)
        involved, team = teams.unique(return_inverse=True)  # each team's keys and values are formed once
        block = self.blocks[0]
        assert isinstance(block, CommBlock)
        rows = block.receiver_rows(out.stream[0][involved], team, receivers, edges, graph.held_product)
        return out.features.index_put((teams, receivers), self.norm(rows))  # out of place, as above
