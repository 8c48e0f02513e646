"""``CommFormerPolicy``: the CommFormer actor-critic, a composition of four parts.

    obs (*B, N, D) [, history (*B, L, N, D)] --AgentEncoder--> h (B, N, d)          commformer/encoder.py
    h --CommTrunk: gates, graph, communication blocks, LN--> features (B, N, d)       commformer/trunk.py
    features [--ActionDecoder, given the earlier agents' actions--> decoded]          commformer/layers/decoder.py
    features or decoded --PolicyHead--> logits (*B, N, A), masked by action_mask      commformer/heads.py
                                   or, for Box actions, [mean | log_std] (*B, N, 2A)   commformer/distributions.py
    features (greedy gates) --ValueHead (+ embedded global state)--> values (*B, N)   commformer/heads.py
    the residual stream before each block --EarlyExits--> exit logits and gates       commformer/early_exit.py

B = prod(*B): the parts work on the flattened batch; the policy checks the inputs' shapes against the caller's batch
dims *B and restores them on the way out. ``forward`` is the full-depth pass of the learner (every part, every exit);
``act`` is the acting path of the EnvRunners (no value head, and with early exits the blocks a team no longer needs
are not run). With the autoregressive decoder, ``forward`` is teacher-forced on given actions and ``act`` chooses
them agent after agent. With Box actions (``continuous=True``) the head gives a diagonal Gaussian per agent and ``act``
returns the actions too: sampled (unbounded) or the mean; the team env clips them to the box.

The graph logits are the upper level of CommFormer's bi-level optimisation (``graph_parameters``); all
other parameters are the lower level (``model_parameters``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from commformer.config import ModelConfig
from commformer.distributions import gaussian_mean, gaussian_sample
from commformer.early_exit import EarlyExits, ExitOutput, select_depth
from commformer.encoder import AgentEncoder
from commformer.heads import PolicyHead, ValueHead
from commformer.layers.attention import Senders
from commformer.layers.decoder import ActionDecoder
from commformer.layers.moe import MoEHead, MoEOutput
from commformer.trunk import CommTrunk
from commformer.validate import require_shape

__all__ = ["Acted", "CommFormerPolicy", "PolicyOutput", "current_name"]


@dataclass(frozen=True)
class PolicyOutput:
    """Everything one forward pass produces; ``*B`` are the caller's leading batch dims."""

    logits: Tensor
    """(*B, N, W) the action distribution's inputs: W = A masked action logits (masked actions hold the dtype's
    finfo.min), or for Box actions W = 2A, ``[mean | log_std]`` (commformer/distributions.py)."""
    values: Tensor
    """(*B, N) per-agent value estimates."""
    senders: Senders
    """The effective straight-through adjacency (receiver x sender), entries (*B, N, K) in the layout the attention
    read (commformer/layers/attention.py), forward value 0/1; ``adjacency`` is the (*B, N, N) matrix."""
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

    @property
    def adjacency(self) -> Tensor:
        """(*B, N, N) the effective adjacency as a matrix (``senders.dense()``), with its gradient path; built when
        read, O(B N^2), so a large team's forward pass never builds it."""
        return self.senders.dense()


@dataclass(frozen=True)
class Acted:
    """What ``CommFormerPolicy.act`` returns; ``*B`` are the caller's leading batch dims."""

    logits: Tensor
    """(*B, N, W) distribution inputs of the head the team acted with (``PolicyOutput.logits``)."""
    depth: Tensor
    """(*B,) int64, the depth of that head (G = ``num_blocks`` for the final head)."""
    gate_open: Tensor
    """(*B, N) the gate decisions acted on (sampled with ``sample_gates``, else greedy)."""
    gate_logit: Tensor | None
    """(*B, N) gate logits, the behaviour policy of the decisions; None without learned gates."""
    actions: Tensor | None = None
    """(*B, N) int64, the actions the autoregressive decoder chose (agent i from ``logits[..., i, :]``, which were
    computed given the actions of agents 0..i-1); for Box actions (*B, N, A) float, the unbounded Gaussian sample
    (``sample_actions``) or the mean; None otherwise: the caller draws from ``logits``."""


@dataclass(frozen=True)
class _Inputs:
    """The optional inputs of one call, shapes checked, on the flat batch B = prod(*B)."""

    batch: torch.Size
    """*B, the caller's batch dims."""
    action_mask: Tensor | None
    """(B, N, A)."""
    alive: Tensor | None
    """(B, N)."""
    gate_open: Tensor | None
    """(B, N)."""
    exit_depth: Tensor | None
    """(B,)."""
    actions: Tensor | None = None
    """(B, N) int64."""


LEGACY_MODULES = {
    "obs_embed": "encoder.obs_embed",
    "history_encoder": "encoder.history_encoder",
    "agent_embed": "encoder.agent_embed",
    "state_embed": "value_head.state_embed",
    "graph": "trunk.graph",
    "gate": "trunk.gate",
    "blocks": "trunk.blocks",
    "norm": "trunk.norm",
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


class CommFormerPolicy(nn.Module):
    """CommFormer actor-critic over a team of ``n_agents`` agents (shared weights across agents).

    Args:
        config: the model config.
        n_agents: N, fixed for the whole run.
        obs_dim: D, per-agent observation size.
        n_actions: A, per-agent number of discrete actions, or of entries of a Box action.
        state_dim: S, size of the global state, or None when the environment has none.
        continuous: Box actions: a diagonal Gaussian head (``model.log_std``, ``model.log_std_init``).

    Raises:
        ValueError: a size < 1; continuous actions with the autoregressive decoder or early exits (both choose
            among discrete actions: the decoder embeds the chosen action, the exits distil categorical heads).
    """

    def __init__(
        self,
        config: ModelConfig,
        n_agents: int,
        obs_dim: int,
        n_actions: int,
        state_dim: int | None = None,
        *,
        continuous: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("n_agents", n_agents), ("obs_dim", obs_dim), ("n_actions", n_actions)):
            if value < 1:
                raise ValueError(f"{name}={value}; expected an integer >= 1")
        if state_dim is not None and state_dim < 1:
            raise ValueError(f"state_dim={state_dim}; expected None or an integer >= 1")
        if continuous and config.decoder != "none":
            raise ValueError(
                "continuous (Box) actions with model.decoder='autoregressive': the decoder embeds each agent's chosen "
                "discrete action; expected model.decoder='none' for an env with continuous actions"
            )
        if continuous and config.early_exit.enabled:
            raise ValueError(
                "continuous (Box) actions with model.early_exit.enabled=true: the exits distil categorical heads and "
                "measure calibration over discrete choices; expected model.early_exit.enabled=false for an env with "
                "continuous actions"
            )
        d, act = config.embed_dim, config.activation
        self.config = config
        self.continuous = continuous
        self.n_agents, self.obs_dim, self.n_actions = n_agents, obs_dim, n_actions
        self.dist_dim = 2 * n_actions if continuous else n_actions
        """W, the width of each agent's distribution inputs (``PolicyOutput.logits``)."""
        self.state_dim = state_dim if config.use_state else None
        # The parts are built in the order of their first random draws in earlier versions, so that a seed keeps
        # giving the same initial weights.
        self.encoder = AgentEncoder(config, n_agents, obs_dim)
        self.trunk = CommTrunk(config, n_agents)
        self.policy_head = PolicyHead(
            config.head,
            d,
            n_actions,
            act,
            config.moe,
            log_std=config.log_std if continuous else None,
            log_std_init=config.log_std_init,
        )
        self.value_head = ValueHead(config.value_head, d, self.state_dim, act, config.moe)
        # Built last, so that every other module draws the same initial weights with exits on or off.
        self.exits = (
            EarlyExits(d, n_actions, config.num_blocks, config.early_exit, act) if config.early_exit.enabled else None
        )
        self.decoder = (
            ActionDecoder(d, n_actions, config.decoder_blocks, config.num_heads, config.mlp_ratio, act)
            if config.decoder == "autoregressive"
            else None
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
        return [self.trunk.graph.logits]

    def gate_parameters(self) -> list[nn.Parameter]:
        """The early-exit gates' parameters (a subset of ``model_parameters``; none without exits)."""
        return list(self.exits.gates.parameters()) if self.exits is not None else []

    def model_parameters(self) -> list[nn.Parameter]:
        """Lower-level parameters: all but the graph logits (with ``graph_parameters``, a partition)."""
        graph = {id(p) for p in self.graph_parameters()}
        return [p for p in self.parameters() if id(p) not in graph]

    def forward(
        self,
        obs: Tensor,
        action_mask: Tensor | None = None,
        alive: Tensor | None = None,
        state: Tensor | None = None,
        history: Tensor | None = None,
        *,
        gumbel: bool = False,
        probes: bool = True,
        exit_depth: Tensor | None = None,
        gate_open: Tensor | None = None,
        sample_gates: bool = False,
        greedy_values: bool = False,
        actions: Tensor | None = None,
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
            probes: a gathered graph's gradient assesses a sample of the senders left out (``CommGraph.senders``);
                off where that gradient is not used (lower-level steps). The forward values do not change.
            exit_depth: optional (*B,) int depths recorded when the action was taken with early exits
                (``act``); ``logits`` then come from the head at that depth (the PPO consistency rule).
                Needs ``model.early_exit.enabled``.
            gate_open: optional (*B, N) gate decisions recorded when the action was taken (``act`` with
                ``sample_gates``): the logits are computed with them (the PPO consistency rule). Needs learned gates.
            sample_gates: without ``gate_open``, draw the gate decisions instead of taking the greedy ones.
            greedy_values: compute the values with the greedy gate decisions whatever the actor used
                (``CommTrunk.critic_features``): the critic must not depend on a sampled decision (the learner's
                forwards ask for this). Otherwise the values read the actor's own features.
            actions: (*B, N) int the team's actions; required with the autoregressive decoder, which computes agent
                i's logits given a_0..a_{i-1} (teacher forcing: the rollout's actions give the rollout's logits).

        Returns:
            ``PolicyOutput`` with shapes restored to ``*B``.
        """
        inputs = self._inputs(obs, action_mask, alive, state, gate_open, exit_depth, actions)
        h = self._embed(obs, history)
        connection = self.trunk.connect(
            h, inputs.alive, gate_open=inputs.gate_open, sample_gates=sample_gates, gumbel=gumbel, probes=probes
        )
        trunk = self.trunk(h, connection)
        features = trunk.features
        if self.decoder is not None:
            if inputs.actions is None:
                raise ValueError(
                    "actions is None but model.decoder='autoregressive' computes each agent's logits given the "
                    f"actions of the agents before it; expected actions (*B, {self.n_agents}) int"
                )
            # The decoder reads a dense (B, N, N) adjacency in either layout (its masks are dense: O(B N^2)).
            features = self.decoder(features, connection.adjacency.dense(), inputs.actions)  # (B, N, d)
        logits, policy_moe = self.policy_head(features, inputs.action_mask)  # (B, N, A)
        moe = {} if policy_moe is None else {"policy": policy_moe}
        exits = None
        if self.exits is not None:
            exits = self.exits.all_exits(trunk.stream, logits, inputs.action_mask, inputs.exit_depth)
            logits = select_depth(exits)  # the recorded path's logits (the final head's without a record)
        critic = self.trunk.critic_features(trunk) if greedy_values else trunk.features
        values, value_moe = self.value_head(critic, state if self.config.use_state else None)  # (B, N)
        if value_moe is not None:
            moe["value"] = value_moe
        aux_loss = sum((m.aux_loss for m in moe.values()), values.new_zeros(()))

        batch, n, gates = inputs.batch, self.n_agents, connection.gates
        gate_prob = gates.prob if gates is not None else connection.gate_open
        return PolicyOutput(
            logits=logits.reshape(*batch, n, self.dist_dim),
            values=values.reshape(*batch, n),
            senders=connection.adjacency.reshape(*batch),
            gate_open=connection.gate_open.reshape(*batch, n),
            gate_prob=gate_prob.reshape(*batch, n),
            comm_cost=connection.comm_cost,
            messages=connection.messages().reshape(batch),
            aux_loss=aux_loss,
            moe=moe,
            exits=None if exits is None else exits.reshape(batch),
            gate_logit=None if gates is None else gates.logit.reshape(*batch, n),
        )

    def values(
        self,
        obs: Tensor,
        alive: Tensor | None = None,
        state: Tensor | None = None,
        history: Tensor | None = None,
    ) -> Tensor:
        """The per-agent values (*B, N) alone, with the greedy gate decisions: ``forward(...).values`` without the
        policy head, the decoder (which would need actions) or the exits."""
        inputs = self._inputs(obs, None, alive, state)
        h = self._embed(obs, history)
        connection = self.trunk.connect(h, inputs.alive)
        values, _ = self.value_head(self.trunk(h, connection).features, state if self.config.use_state else None)
        return values.reshape(*inputs.batch, self.n_agents)

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
        sample_actions: bool = False,
    ) -> Acted:
        """The acting path: masked logits (*B, N, A), the depth they come from (*B,) and the gates, no value head.

        With exits (``early_exit`` and ``model.early_exit.enabled``) a team leaves at the first depth whose
        gates all say exit and the blocks beyond it are *not run* for that team (``EarlyExits.act``);
        ``force_depth`` makes every team exit at that depth, which is how ``exit_macs`` measures each exit's cost.
        Without exits this is the plain full-depth path (depth G for every team). ``sample_gates`` draws the temporal
        gates' decisions (training rollouts, which record them); otherwise they are greedy. ``state`` is accepted
        for a uniform signature and unused (only the critic reads it).

        With the autoregressive decoder the policy chooses the actions itself (``Acted.actions``), agent after agent
        (``ActionDecoder.decode``): drawn from each agent's logits with ``sample_actions``, else their argmax. With
        Box actions it chooses them too: an unbounded Gaussian sample with ``sample_actions``, else the mean.
        """
        del state
        inputs = self._inputs(obs, action_mask, alive)
        h = self._embed(obs, history)
        connection = self.trunk.connect(h, inputs.alive, sample_gates=sample_gates)
        chosen = None
        if self.exits is not None and early_exit:
            logits, depth = self.exits.act(h, connection, inputs.action_mask, self.trunk, self.policy_head, force_depth)
        else:
            features = self.trunk(h, connection).features
            if self.decoder is not None:
                adjacency = connection.adjacency.dense()  # (B, N, N): the decoder's masks are dense
                chosen, logits = self._decode(features, adjacency, inputs.action_mask, sample_actions)
            else:
                logits, _ = self.policy_head(features, inputs.action_mask)
                if self.continuous:
                    chosen = gaussian_sample(logits) if sample_actions else gaussian_mean(logits)
            depth = torch.full(h.shape[:1], len(self.trunk.blocks), dtype=torch.long, device=h.device)
        batch, n, gates = inputs.batch, self.n_agents, connection.gates
        return Acted(
            logits=logits.reshape(*batch, n, self.dist_dim),
            depth=depth.reshape(batch),
            gate_open=connection.gate_open.reshape(*batch, n),
            gate_logit=None if gates is None else gates.logit.reshape(*batch, n),
            actions=None if chosen is None else chosen.reshape(*batch, n, *chosen.shape[2:]),
        )

    def _decode(
        self, features: Tensor, adjacency: Tensor, action_mask: Tensor | None, sample: bool
    ) -> tuple[Tensor, Tensor]:
        """The decoder's actions (B, N) and the logits each agent chose from (B, N, A), on the flat batch."""
        assert self.decoder is not None

        def logits_of(decoded: Tensor) -> Tensor:
            return self.policy_head(decoded, action_mask)[0]

        def pick(logits: Tensor) -> Tensor:
            if not sample:
                return logits.argmax(-1)
            return torch.distributions.Categorical(logits=logits).sample()  # masked actions: probability 0

        return self.decoder.decode(features, adjacency, logits_of, pick)

    def _inputs(
        self,
        obs: Tensor,
        action_mask: Tensor | None,
        alive: Tensor | None,
        state: Tensor | None = None,
        gate_open: Tensor | None = None,
        exit_depth: Tensor | None = None,
        actions: Tensor | None = None,
    ) -> _Inputs:
        """Checks every input's shape against the batch dims *B of ``obs`` (errors name the input); the flat views."""
        n, d = self.n_agents, self.obs_dim
        if obs.dim() < 2 or obs.shape[-2:] != (n, d):
            raise ValueError(f"obs has shape {tuple(obs.shape)}; expected (*B, {n}, {d})")
        batch = obs.shape[:-2]
        flat = math.prod(batch)  # reshape(-1, ...) is ambiguous when a batch dim is 0

        def flatten(name: str, tensor: Tensor | None, *tail: int) -> Tensor | None:
            if tensor is None:
                return None
            require_shape(name, tensor.shape, (*batch, *tail))
            return tensor.reshape(flat, *tail)

        action_mask = flatten("action_mask", action_mask, n, self.n_actions)
        alive = flatten("alive", alive, n)
        if state is not None and self.state_dim is not None:
            require_shape("state", state.shape, (*batch, self.state_dim))
        gate_open = flatten("gate_open", gate_open, n)
        if exit_depth is not None and self.exits is None:
            raise ValueError("exit_depth was given but the policy has no early exits (model.early_exit.enabled)")
        if actions is not None and self.decoder is None:
            raise ValueError("actions were given but the policy has no decoder (model.decoder='autoregressive')")
        flat_actions = flatten("actions", actions, n)
        return _Inputs(batch, action_mask, alive, gate_open, flatten("exit_depth", exit_depth), flat_actions)

    def _embed(self, obs: Tensor, history: Tensor | None) -> Tensor:
        """The encoder's embeddings on the flat batch, (B, N, d)."""
        h = self.encoder(obs, history)  # (*B, N, d)
        return h.reshape(math.prod(h.shape[:-2]), self.n_agents, self.config.embed_dim)
