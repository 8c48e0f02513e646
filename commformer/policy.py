"""``CommFormerPolicy``: per-agent embedding -> gated learned graph -> graph attention -> policy/value heads.

    encoder=mlp:               obs (*B, N, D) --LN, Linear, activation--> h (*B, N, d)
    encoder=orchid/attention:  history (*B, L, N, D) --per agent, over time: HistoryEncoder--> h (*B, N, d)
    h (+ agent-index embedding)
    h --TemporalGate--> open (*B, N)          graph() (N, N) --gates, dead senders--> A_eff (*B, N, N)
    h --num_blocks x CommBlock(A_eff)--> LN --> policy head -> logits (*B, N, A), masked by action_mask
                                            \\-> value head (+ embedded global state) -> values (*B, N)

The PPO ratio stays exact (docs/DESIGN.md, "The PPO consistency rule"): the graph is the hard top-k of the logits,
a deterministic function of the parameters (Gumbel noise, if asked for, only touches its surrogate gradient), and
the temporal gates' decisions are either greedy (deterministic) or sampled while training and then recorded and
replayed (``gate_open``). The critic reads the trunk run with the greedy gate decisions (``greedy_values``), so the
baseline never depends on a sampled decision (commformer/gates.py says why).

History (``model.encoder`` orchid / attention, ``model.history`` = L): each agent's action is computed from
its own last L observations, encoded over time (commformer/history.py) *before* the agents communicate; the
graph attention then mixes the agents' encodings of the current step. The window ``history`` (*B, L, N, D) is
part of the observation (the team env builds it, envs/team.py): it holds steps t - L + 1 .. t, so nothing
after step t can reach the action at step t, and the learner recomputes from the very window the EnvRunner
used. ``obs`` is still passed (it fixes the batch shape, and the mlp encoder reads it).

The graph logits are the upper level of CommFormer's bi-level optimisation (``graph_parameters``); all
other parameters are the lower level (``model_parameters``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from commformer.config import ModelConfig
from commformer.early_exit import EarlyExits, ExitOutput, select_depth, team_exit_depth
from commformer.encoder import AgentEncoder
from commformer.gates import GateOutput, TemporalGate, gate_adjacency
from commformer.graph import CommGraph
from commformer.heads import PolicyHead, ValueHead
from commformer.layers.attention import CommBlock
from commformer.layers.moe import MoEHead, MoEOutput
from commformer.validate import require_shape

__all__ = ["Acted", "CommFormerPolicy", "PolicyOutput"]


@dataclass(frozen=True)
class PolicyOutput:
    """Everything one forward pass produces; ``*B`` are the caller's leading batch dims."""

    logits: Tensor
    """(*B, N, A) action logits; masked actions hold the dtype's finfo.min."""
    values: Tensor
    """(*B, N) per-agent value estimates."""
    adjacency: Tensor
    """(*B, N, N) effective straight-through adjacency (receiver x sender), forward value 0/1."""
    gate_open: Tensor
    """(*B, N) the gate decisions acted on (0/1, no gradient: replayed, sampled or greedy); all ones when gates are
    disabled, all zeros without communication."""
    gate_prob: Tensor
    """(*B, N) gate open probabilities; all ones when gates are disabled."""
    comm_cost: Tensor
    """Scalar communication-cost term ``cost_weight * mean(gate_prob over alive agents)``; 0 if disabled."""
    messages: Tensor
    """(*B,) number of off-diagonal edges actually used, float, no grad: after gates and dead senders, and
    counting only alive receivers (a dead agent's incoming edges carry nothing anyone acts on)."""
    aux_loss: Tensor
    """Scalar sum of the mixture-of-experts heads' auxiliary losses (balance + z); 0 without MoE heads."""
    moe: dict[str, MoEOutput] = field(default_factory=dict)
    """The MoE heads' outputs by head name (``policy``, ``value``), for losses and usage statistics."""
    exits: ExitOutput | None = None
    """Every early exit's logits and gates (``model.early_exit.enabled``), else None."""
    gate_logit: Tensor | None = None
    """(*B, N) gate logits with gradient (``commformer.gates.gate_log_prob`` of ``gate_open`` is the gates' share of
    each agent's log-prob); None without learned gates."""


@dataclass(frozen=True)
class Acted:
    """What ``CommFormerPolicy.act`` returns; ``*B`` are the caller's leading batch dims."""

    logits: Tensor
    """(*B, N, A) masked logits of the head the team acted with."""
    depth: Tensor
    """(*B,) int64, the depth of that head (G = ``num_blocks`` for the final head)."""
    gate_open: Tensor
    """(*B, N) the gate decisions acted on (sampled with ``sample_gates``, else greedy)."""
    gate_logit: Tensor | None
    """(*B, N) gate logits, the behaviour policy of the decisions; None without learned gates."""


@dataclass(frozen=True)
class _Trunk:
    """Everything before the first communication block (flat batch B = prod(*B))."""

    batch: torch.Size
    h: Tensor
    """(B, N, d) per-agent embeddings."""
    graph: Tensor
    """(N, N) straight-through graph."""
    adjacency: Tensor
    """(B, N, N) effective adjacency of the gate decisions acted on."""
    alive: Tensor | None
    """(B, N) or None."""
    gate_open: Tensor
    """(B, N) decisions acted on."""
    gates: GateOutput | None
    """The learned gates' output, None when gates are disabled or there is no communication."""
    comm_cost: Tensor


LEGACY_MODULES = {
    "obs_embed": "encoder.obs_embed",
    "history_encoder": "encoder.history_encoder",
    "agent_embed": "encoder.agent_embed",
    "state_embed": "value_head.state_embed",
}
"""Where each top-level module of the policy before its split into parts (format version 1 of commformer/export.py,
and the RLlib checkpoints of that time) now lives."""
LEGACY_HEAD_LAYERS = {"0": "mlp.hidden", "2": "mlp.out"}
"""The heads were an ``nn.Sequential`` (Linear, activation, Linear) or a ``MoEHead``; now they hold one of them as
``mlp`` (with named layers) or ``moe``."""


def current_name(name: str) -> str:
    """The current name of a parameter or buffer that a version-1 state dict holds under ``name`` (the identity on
    current names)."""
    first, _, rest = name.partition(".")
    if first in LEGACY_MODULES:
        return f"{LEGACY_MODULES[first]}.{rest}"
    layer, _, tail = rest.partition(".")
    if first not in ("policy_head", "value_head") or layer in ("mlp", "moe", "state_embed"):
        return name
    return f"{first}.{LEGACY_HEAD_LAYERS[layer]}.{tail}" if layer in LEGACY_HEAD_LAYERS else f"{first}.moe.{rest}"


def _rename_legacy_keys(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: object) -> None:
    """``load_state_dict`` pre-hook: renames a version-1 state dict's keys in place (``load_state_dict`` works on its
    own copy), so that old checkpoints and exported policies load. A version-1 dict is recognised by its graph
    logits at the top level; any other dict is left alone."""
    if f"{prefix}graph.logits" not in state_dict:
        return
    for key in [key for key in state_dict if key.startswith(prefix)]:
        new = prefix + current_name(key[len(prefix) :])
        if new != key:
            state_dict[new] = state_dict.pop(key)


def _count_messages(adjacency: Tensor, alive: Tensor | None) -> Tensor:
    """Off-diagonal edges into alive receivers, (B, N, N) -> (B,), without gradient."""
    n = adjacency.shape[-1]
    off_diagonal = 1.0 - torch.eye(n, dtype=adjacency.dtype, device=adjacency.device)
    used = adjacency.detach() * off_diagonal  # (B, N, N)
    if alive is not None:
        used = used * alive.to(used.dtype).unsqueeze(-1)  # a dead receiver acts on no message
    return used.sum(dim=(-2, -1))


class CommFormerPolicy(nn.Module):
    """CommFormer actor-critic over a team of ``n_agents`` agents (shared weights across agents).

    Args:
        config: the model config.
        n_agents: N, fixed for the whole run.
        obs_dim: D, per-agent observation size.
        n_actions: A, per-agent number of discrete actions.
        state_dim: S, size of the global state, or None when the environment has none.
    """

    def __init__(
        self, config: ModelConfig, n_agents: int, obs_dim: int, n_actions: int, state_dim: int | None = None
    ) -> None:
        super().__init__()
        for name, value in (("n_agents", n_agents), ("obs_dim", obs_dim), ("n_actions", n_actions)):
            if value < 1:
                raise ValueError(f"{name}={value}; expected an integer >= 1")
        if state_dim is not None and state_dim < 1:
            raise ValueError(f"state_dim={state_dim}; expected None or an integer >= 1")
        d, act = config.embed_dim, config.activation
        self.config = config
        self.n_agents, self.obs_dim, self.n_actions = n_agents, obs_dim, n_actions
        self.state_dim = state_dim if config.use_state else None

        self.encoder = AgentEncoder(config, n_agents, obs_dim)
        self.graph = CommGraph(n_agents, config.graph)
        self.gate = TemporalGate(d, config.gates) if config.gates.enabled else None
        self.blocks = nn.ModuleList(
            CommBlock(d, config.num_heads, config.mlp_ratio, act) for _ in range(config.num_blocks)
        )
        # Pre-LN blocks leave the residual stream unnormalised: normalise once before the heads.
        self.norm = nn.LayerNorm(d)
        self.policy_head = PolicyHead(config.head, d, n_actions, act, config.moe)
        self.value_head = ValueHead(config.value_head, d, self.state_dim, act, config.moe)
        # Built last, so that every other module draws the same initial weights with exits on or off.
        self.exits = (
            EarlyExits(d, n_actions, config.num_blocks, config.early_exit, act) if config.early_exit.enabled else None
        )
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    def moe_heads(self) -> dict[str, MoEHead]:
        """The heads that are mixtures of experts, by name."""
        heads = {"policy": self.policy_head.moe, "value": self.value_head.moe}
        return {name: head for name, head in heads.items() if head is not None}

    @torch.no_grad()
    def set_moe_tau(self, value: float) -> None:
        """Sets the temperature of every MoE head (a buffer: it travels with the weights to the EnvRunners)."""
        for head in self.moe_heads().values():
            head.set_tau(value)

    def graph_parameters(self) -> list[nn.Parameter]:
        """Upper-level parameters of the bi-level optimisation: the graph logits only."""
        return [self.graph.logits]

    def gate_parameters(self) -> list[nn.Parameter]:
        """The early-exit gates' parameters (a subset of ``model_parameters``; none without exits)."""
        return list(self.exits.gates.parameters()) if self.exits is not None else []

    def model_parameters(self) -> list[nn.Parameter]:
        """Lower-level parameters: all but the graph logits (with ``graph_parameters``, a partition)."""
        graph = {id(p) for p in self.graph_parameters()}
        return [p for p in self.parameters() if id(p) not in graph]

    def _check(self, name: str, tensor: Tensor, tail: tuple[int, ...], batch: torch.Size) -> None:
        require_shape(name, tensor.shape, (*batch, *tail))

    def _trunk_input(
        self,
        obs: Tensor,
        action_mask: Tensor | None,
        alive: Tensor | None,
        state: Tensor | None,
        history: Tensor | None,
        *,
        gumbel: bool = False,
        gate_open: Tensor | None = None,
        sample_gates: bool = False,
    ) -> _Trunk:
        """Checks shapes; everything before the first communication block."""
        n, a = self.n_agents, self.n_actions
        if obs.dim() < 2 or obs.shape[-2:] != (n, self.obs_dim):
            raise ValueError(f"obs has shape {tuple(obs.shape)}; expected (*B, {n}, {self.obs_dim})")
        batch = obs.shape[:-2]
        flat = math.prod(batch)  # reshape(-1, ...) is ambiguous when a batch dim is 0
        if action_mask is not None:
            self._check("action_mask", action_mask, (n, a), batch)
        if alive is not None:
            self._check("alive", alive, (n,), batch)
            alive = alive.reshape(flat, n)  # (B, N)
        if state is not None and self.state_dim is not None:
            self._check("state", state, (self.state_dim,), batch)
        if gate_open is not None:
            if self.gate is None or not self.config.communicate:
                raise ValueError("gate_open was given but the policy has no learned gates (model.gates.enabled)")
            self._check("gate_open", gate_open, (n,), batch)
            gate_open = gate_open.reshape(flat, n)

        h = self.encoder(obs, history).reshape(flat, n, self.config.embed_dim)  # (B, N, d)

        gates = None
        if not self.config.communicate:
            # The no-communication ablation: every gate closed, so each agent attends to itself only.
            decisions = h.new_zeros(flat, n)
            comm_cost = h.new_zeros(())
        elif self.gate is not None:
            gates = self.gate(h, gate_open, sample=sample_gates)  # (B, N) each
            decisions = gates.open
            comm_cost = self.gate.cost(gates.prob, alive)
        else:
            decisions = h.new_ones(flat, n)
            comm_cost = h.new_zeros(())
        graph = self.graph(gumbel=gumbel).to(h.dtype)  # (N, N)
        adjacency = gate_adjacency(graph, decisions, alive)  # (B, N, N)
        return _Trunk(batch, h, graph, adjacency, alive, decisions, gates, comm_cost)

    def _critic_features(self, trunk: _Trunk, h: Tensor) -> Tensor:
        """The normalised last block's output (B, N, d) with the *greedy* gate decisions, for the value head.

        The GAE baseline must not depend on sampled gate decisions (commformer/gates.py): where they equal the greedy
        ones (for every alive agent of a team) the actor's features ``h`` are the critic's too; the other teams'
        blocks are run again with the greedy decisions. Once the gates are confident, few teams differ.
        """
        gates = trunk.gates
        if gates is None:
            return h
        greedy = gates.greedy  # (B, N)
        differ = gates.open != greedy
        if trunk.alive is not None:
            differ = differ & (trunk.alive > 0)  # a dead agent's gate changes nothing anyone acts on
        rows = differ.any(-1).nonzero().squeeze(-1)  # (B',) teams whose sampled gates are not the greedy ones
        if rows.numel() == 0:
            return h
        alive = trunk.alive[rows] if trunk.alive is not None else None
        adjacency = gate_adjacency(trunk.graph, greedy[rows], alive)  # (B', N, N)
        x = trunk.h[rows]
        for block in self.blocks:
            x = block(x, adjacency)
        return h.index_put((rows,), self.norm(x))  # out of place: h keeps its autograd history

    def forward(
        self,
        obs: Tensor,
        action_mask: Tensor | None = None,
        alive: Tensor | None = None,
        state: Tensor | None = None,
        history: Tensor | None = None,
        *,
        gumbel: bool = False,
        exit_depth: Tensor | None = None,
        gate_open: Tensor | None = None,
        sample_gates: bool = False,
        greedy_values: bool = False,
    ) -> PolicyOutput:
        """One full-depth forward pass over any leading batch dims ``*B`` (every block, head and exit runs).

        Args:
            obs: (*B, N, D) per-agent observations.
            action_mask: optional (*B, N, A), nonzero = available.
            alive: optional (*B, N), 1 alive / 0 dead; dead agents send nothing and do not count in the
                communication cost. Their own outputs are left as they are (losses mask them).
            state: (*B, S) global state; required when the policy was built with ``state_dim`` and
                ``config.use_state``, ignored when ``use_state`` is false.
            history: (*B, L, N, D) each agent's last L = ``config.history`` observations, oldest first, the
                current step last (the team env's ``obs["history"]``); required by the orchid / attention
                encoders, ignored by mlp.
            gumbel: add Gumbel noise to the graph's surrogate gradient (upper-level steps); the forward
                values do not change.
            exit_depth: optional (*B,) int depths recorded when the action was taken with early exits
                (``act``); ``logits`` then come from the head at that depth (the PPO consistency rule).
                Needs ``model.early_exit.enabled``.
            gate_open: optional (*B, N) gate decisions recorded when the action was taken (``act`` with
                ``sample_gates``): the logits are computed with them (the PPO consistency rule). Needs learned gates.
            sample_gates: without ``gate_open``, draw the gate decisions instead of taking the greedy ones.
            greedy_values: compute the values with the greedy gate decisions whatever the actor used
                (``_critic_features``): the critic must not depend on a sampled decision (the learner's forwards
                ask for this). Otherwise the values read the actor's own features.

        Returns:
            ``PolicyOutput`` with shapes restored to ``*B``.
        """
        n, a = self.n_agents, self.n_actions
        trunk = self._trunk_input(
            obs, action_mask, alive, state, history, gumbel=gumbel, gate_open=gate_open, sample_gates=sample_gates
        )
        batch, h, alive = trunk.batch, trunk.h, trunk.alive
        flat = h.shape[0]
        mask = action_mask.reshape(flat, n, a) if action_mask is not None else None

        stream = []  # the residual stream before each block: the early exits' inputs
        for block in self.blocks:
            stream.append(h)
            h = block(h, trunk.adjacency)
        h = self.norm(h)  # (B, N, d)
        logits, policy_moe = self.policy_head(h, mask)  # (B, N, A)
        moe: dict[str, MoEOutput] = {} if policy_moe is None else {"policy": policy_moe}
        exits = None
        if self.exits is not None:
            if exit_depth is not None:
                self._check("exit_depth", exit_depth, (), batch)
                exit_depth = exit_depth.reshape(h.shape[0])
            exits = self.exits.all_exits(stream, logits, mask, exit_depth)
            logits = select_depth(exits)  # the recorded path's logits (the final head's without a record)
        elif exit_depth is not None:
            raise ValueError("exit_depth was given but the policy has no early exits (model.early_exit.enabled)")

        critic = self._critic_features(trunk, h) if greedy_values else h
        values, value_moe = self.value_head(critic, state if self.config.use_state else None)  # (B, N)
        if value_moe is not None:
            moe["value"] = value_moe
        aux_loss = sum((m.aux_loss for m in moe.values()), h.new_zeros(()))

        messages = _count_messages(trunk.adjacency, alive)  # (B,)
        gates = trunk.gates
        return PolicyOutput(
            logits=logits.reshape(*batch, n, a),
            values=values.reshape(*batch, n),
            adjacency=trunk.adjacency.reshape(*batch, n, n),
            gate_open=trunk.gate_open.reshape(*batch, n),
            gate_prob=(gates.prob if gates is not None else trunk.gate_open).reshape(*batch, n),
            comm_cost=trunk.comm_cost,
            messages=messages.reshape(batch),
            aux_loss=aux_loss,
            moe=moe,
            exits=None if exits is None else exits.reshape(batch),
            gate_logit=None if gates is None else gates.logit.reshape(*batch, n),
        )

    @torch.no_grad()
    def act(
        self,
        obs: Tensor,
        action_mask: Tensor | None = None,
        alive: Tensor | None = None,
        state: Tensor | None = None,
        history: Tensor | None = None,
        *,
        early_exit: bool = True,
        force_depth: int | None = None,
        sample_gates: bool = False,
    ) -> Acted:
        """The acting path: masked logits (*B, N, A), the depth they come from (*B,) and the gates, no value head.

        With exits (``early_exit`` and ``model.early_exit.enabled``) a team leaves at the first depth whose
        gates all say exit (``team_exit_depth``) and the blocks beyond it are *not run* for that team: the
        teams still going are gathered into a smaller batch before each block. ``force_depth`` makes every
        team exit at that depth (running the same modules a natural exit there runs): it is how ``exit_macs``
        measures each exit's cost. Without exits this is the plain full-depth path (depth G for every team).
        ``sample_gates`` draws the temporal gates' decisions (training rollouts, which record them); otherwise
        they are greedy. ``state`` is accepted for a uniform signature and unused (only the critic reads it).
        """
        del state
        n, a = self.n_agents, self.n_actions
        trunk = self._trunk_input(obs, action_mask, alive, None, history, sample_gates=sample_gates)
        batch, h, adjacency, alive = trunk.batch, trunk.h, trunk.adjacency, trunk.alive
        logits, depth = self._act_blocks(h, adjacency, alive, action_mask, early_exit, force_depth)
        gate_logit = None if trunk.gates is None else trunk.gates.logit.reshape(*batch, n)
        return Acted(
            logits=logits.reshape(*batch, n, a),
            depth=depth.reshape(batch),
            gate_open=trunk.gate_open.reshape(*batch, n),
            gate_logit=gate_logit,
        )

    def _act_blocks(
        self,
        h: Tensor,
        adjacency: Tensor,
        alive: Tensor | None,
        action_mask: Tensor | None,
        early_exit: bool,
        force_depth: int | None,
    ) -> tuple[Tensor, Tensor]:
        """``act``'s blocks and heads on the flat batch: logits (B, N, A) and depths (B,)."""
        flat, n, a = h.shape[0], self.n_agents, self.n_actions
        mask = action_mask.reshape(flat, n, a) if action_mask is not None else None
        n_blocks = len(self.blocks)
        if self.exits is None or not early_exit:
            for block in self.blocks:
                h = block(h, adjacency)
            logits, _ = self.policy_head(self.norm(h), mask)
            return logits, torch.full((flat,), n_blocks, dtype=torch.long, device=h.device)

        threshold = self.config.early_exit.threshold
        out = h.new_empty(flat, n, a)
        depth = torch.full((flat,), n_blocks, dtype=torch.long, device=h.device)
        rows = torch.arange(flat, device=h.device)  # which original teams are still running
        for here, block in enumerate(self.blocks):
            logits = self.exits.head_logits(here, h, mask)  # (b, N, A)
            gates = torch.sigmoid(self.exits.gate_logit(here, logits))  # (b, N)
            if force_depth is None:
                leave = team_exit_depth(gates.unsqueeze(-1), alive, threshold) == 0  # (b,)
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
                rows, h, adjacency = rows[stay], h[stay], adjacency[stay]
                mask = mask[stay] if mask is not None else None
                alive = alive[stay] if alive is not None else None
            h = block(h, adjacency)
        logits, _ = self.policy_head(self.norm(h), mask)
        out[rows] = logits
        return out, depth
