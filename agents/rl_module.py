"""The RLlib face of `CommFormerPolicy`: one RLModule drives the whole team (docs/DESIGN.md,
"One team, one RLlib agent").

Observations arrive as the team env's Dict (`obs` (B, N, D), `action_mask` (B, N, A), `alive` (B, N), where
the env has one `state` (B, S), and for the orchid / attention encoders `history` (B, L, N, D)); actions leave
as one MultiDiscrete vector of N entries. The action distribution inputs are the masked per-agent logits
flattened to (B, N * A), so RLlib's MultiCategorical samples every agent's action and stores the joint
log-prob; the learner views them back as (B, N, A) for per-agent PPO ratios.

Everything that shapes pi(a|s) here is either a deterministic function of the observation and the parameters (the
top-k graph, the history window, which is part of the observation) or recorded and replayed: an exploring
EnvRunner samples the temporal gates' decisions (commformer/gates.py) and returns them, with the logits they were
drawn from, as `GATE_OPEN` and `GATE_LOGIT`; `_forward_train` computes the logits with the recorded decisions. So
the EnvRunner's forward and the Learner's recomputation agree exactly (the PPO consistency rule, docs/DESIGN.md).
A greedy EnvRunner (`explore=False`, evaluation) takes the greedy gate decisions and records none.

Early exits (`model.early_exit.rollout`): the EnvRunner acts with `CommFormerPolicy.act`, which stops running
blocks once the team exits, and returns the exit depth of every step as `EXIT_DEPTH`; RLlib keeps every forward
output as an extra model output of the episode, so the depth reaches the train batch, and `_forward_train`
replays it (the logits come from the head the action was sampled from). The gates keep learning between
rollouts, so a depth is recorded, not recomputed. By default rollouts run the full depth and no depth is stored.

The autoregressive decoder (`model.decoder`): the policy chooses the team's actions itself, agent after agent, so
the acting forwards return `ACTIONS` and their joint log-prob `ACTION_LOGP` beside the logits each agent chose from
(RLlib's GetActions and our EnvRunner take module-chosen actions as they are), and `_forward_train` recomputes the
logits teacher-forced on the batch's `ACTIONS`: agent i's logits given the recorded actions of agents 0..i-1, the
very logits it was sampled from.

Continuous actions (a team env whose action space is a float Box (N, A)): the policy head gives each agent a diagonal
Gaussian (commformer/distributions.py) and the acting forwards choose the actions themselves, as the decoder does:
an unbounded sample with its log-prob when exploring, the mean otherwise (the env clips either to the box). The
distribution inputs leave as (B, 2 N A), all the agents' means first, then all their log-stds: the layout of RLlib's
`TorchDiagGaussian`, which is the module's action distribution class, so RLlib's own connectors read them right.
`team_dist_inputs` turns them back into (B, N, 2A) for the learner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian, TorchMultiCategorical
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.utils.annotations import override
from torch import Tensor

from commformer.config import ModelConfig
from commformer.distributions import categorical_log_prob, gaussian_log_prob, split_gaussian
from commformer.policy import CommFormerPolicy, PolicyOutput
from commformer.typed import from_mapping
from commformer.value_norm import ValueNorm

# Keys of `_forward_train`'s output read by the learner.
VALUES_NORMALIZED = "values_normalized"
POLICY_OUTPUT = "commformer_policy_output"
EXIT_DEPTH = "commformer_exit_depth"
"""(B,) int: the depth each step's action was taken at (rollouts with `model.early_exit.rollout`)."""
GATE_OPEN = "commformer_gate_open"
"""(B, N) float 0/1: the temporal gates' decisions sampled by an exploring EnvRunner (replayed by the learner)."""
GATE_LOGIT = "commformer_gate_logit"
"""(B, N) float: the gate logits those decisions were drawn with (the behaviour policy of the gates)."""


@dataclass(frozen=True)
class TeamDims:
    """The sizes a CommFormerPolicy is built with, read off a team env's spaces."""

    n_agents: int
    obs_dim: int
    n_actions: int
    state_dim: int | None
    history: int = 0
    """L of the `history` entry (L, N, D); 0 when the observation has none."""
    action_kind: str = "discrete"
    """`discrete` (A actions per agent) or `continuous` (a real vector of A entries per agent, a float Box)."""

    @property
    def continuous(self) -> bool:
        return self.action_kind == "continuous"


ACTION_KINDS = ("discrete", "continuous")


def team_dims(observation_space: gym.Space | None, action_space: gym.Space | None) -> TeamDims:
    """Reads N, D, A, S, L and the kind of actions off the team env's spaces, refusing spaces that are not a team
    env's."""
    if not isinstance(observation_space, gym.spaces.Dict) or "obs" not in observation_space.spaces:
        raise ValueError(
            f"CommFormerRLModule expects the team env's Dict observation space with an 'obs' entry, "
            f"got {observation_space}"
        )
    n_agents, obs_dim = observation_space["obs"].shape or (0, 0)
    continuous = isinstance(action_space, gym.spaces.Box)
    if continuous:
        assert isinstance(action_space, gym.spaces.Box)
        shape = action_space.shape or ()
        if len(shape) != 2 or shape[0] != n_agents or not np.issubdtype(action_space.dtype, np.floating):
            raise ValueError(
                f"CommFormerRLModule expects continuous team actions as a float Box ({n_agents}, A), got {action_space}"
            )
        n_actions = int(shape[1])
    elif isinstance(action_space, gym.spaces.MultiDiscrete) and len(set(action_space.nvec.tolist())) == 1:
        n_actions = int(action_space.nvec[0])
    else:
        raise ValueError(
            f"CommFormerRLModule expects MultiDiscrete([A] * N) actions or a float Box (N, A), got {action_space}"
        )
    state_space = observation_space.spaces.get("state")
    history_space = observation_space.spaces.get("history")
    return TeamDims(
        n_agents=int(n_agents),
        obs_dim=int(obs_dim),
        n_actions=n_actions,
        state_dim=int(state_space.shape[0]) if state_space is not None and state_space.shape else None,
        history=int(history_space.shape[0]) if history_space is not None and history_space.shape else 0,
        action_kind="continuous" if continuous else "discrete",
    )


def flat_dist_inputs(inputs: Tensor, continuous: bool) -> Tensor:
    """The policy's distribution inputs (B, N, W) as the module outputs them, (B, N * W): per agent for logits;
    for a Gaussian all means, then all log-stds (RLlib's TorchDiagGaussian layout)."""
    if not continuous:
        return inputs.flatten(-2)
    mean, log_std = split_gaussian(inputs)
    return torch.cat([mean.flatten(-2), log_std.flatten(-2)], dim=-1)


def team_dist_inputs(flat: Tensor, n_agents: int, n_actions: int, continuous: bool) -> Tensor:
    """The inverse of `flat_dist_inputs`: (B, N * W) -> (B, N, W)."""
    if not continuous:
        return flat.view(-1, n_agents, n_actions)
    mean, log_std = flat.view(-1, 2, n_agents, n_actions).unbind(1)
    return torch.cat([mean, log_std], dim=-1)


def build_policy(config: ModelConfig, dims: TeamDims) -> CommFormerPolicy:
    """The policy for a team of these sizes (the critic reads the state only if the model is told to).

    Raises:
        ValueError: the env's history window does not have the length the model reads (`model.env_history`).
    """
    if dims.history != config.env_history:
        raise ValueError(
            f"the env's observation has a history window of {dims.history} steps but model.encoder="
            f"{config.encoder!r} with model.history={config.history} reads {config.env_history}; expected an env "
            f"built with history={config.env_history} (agents/build.py derives it from the model config)"
        )
    return CommFormerPolicy(
        config,
        n_agents=dims.n_agents,
        obs_dim=dims.obs_dim,
        n_actions=dims.n_actions,
        state_dim=dims.state_dim if config.use_state else None,
        continuous=dims.continuous,
    )


class CommFormerRLModule(TorchRLModule, ValueFunctionAPI):
    """CommFormer team policy + per-agent critic, with value targets normalised by a running `ValueNorm`.

    `model_config` holds `{"model": <ModelConfig as plain data>}`; it is converted back to the typed config here
    (the only untyped dict allowed past the config boundary: docs/DESIGN.md, "Configuration").
    """

    @override(TorchRLModule)
    def setup(self) -> None:
        dims = team_dims(self.observation_space, self.action_space)
        self.n_agents, self.n_actions = dims.n_agents, dims.n_actions
        self.continuous = dims.continuous
        model_config = self.model_config if isinstance(self.model_config, dict) else {}
        self.model_cfg: ModelConfig = from_mapping(ModelConfig, model_config.get("model"), "model")
        self.policy = build_policy(self.model_cfg, dims)
        # Whether the next `_forward_train` is an upper-level step with Gumbel noise in the graph's surrogate
        # gradient (`model.graph.gumbel`), and whether it is an upper-level step at all (a gathered graph then draws
        # senders to assess, `model.graph.probes`); the learner sets both before every gradient step. Neither
        # changes an output.
        self.graph_noise = False
        self.graph_step = True
        self.value_norm = ValueNorm()
        if self.continuous:
            self.action_dist_cls = TorchDiagGaussian
        else:
            lens = [self.n_actions] * self.n_agents
            self.action_dist_cls = TorchMultiCategorical.get_partial_dist_cls(input_lens=lens)  # type: ignore[misc]

    def policy_output(
        self,
        batch: dict[str, Any],
        exit_depth: Tensor | None = None,
        gate_open: Tensor | None = None,
        gumbel: bool = False,
        probes: bool = True,
        greedy_values: bool = False,
        actions: Tensor | None = None,
    ) -> PolicyOutput:
        obs = batch[Columns.OBS]
        state = obs.get("state") if self.model_cfg.use_state else None
        history = obs.get("history") if self.model_cfg.env_history else None
        return self.policy(
            obs["obs"],
            action_mask=obs["action_mask"],
            alive=obs["alive"],
            state=state,
            history=history,
            exit_depth=exit_depth,
            gate_open=gate_open,
            gumbel=gumbel,
            probes=probes,
            greedy_values=greedy_values,
            actions=actions,
        )

    @property
    def samples_gates(self) -> bool:
        """Whether exploring rollouts draw the temporal gates' decisions (learned gates that are used)."""
        return self.policy.trunk.learns_gates

    @property
    def acts_with_exits(self) -> bool:
        """Whether the EnvRunners act with early exits (and record the depths)."""
        return self.model_cfg.early_exit.enabled and self.model_cfg.early_exit.rollout

    @property
    def decodes(self) -> bool:
        """Whether the policy chooses the actions itself, agent after agent (`model.decoder=autoregressive`)."""
        return self.policy.decoder is not None

    def dist_inputs(self, flat: Tensor) -> Tensor:
        """A batch's `ACTION_DIST_INPUTS` (B, N * W) as the policy's (B, N, W) (`team_dist_inputs`)."""
        return team_dist_inputs(flat, self.n_agents, self.n_actions, self.continuous)

    @override(TorchRLModule)
    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._act(batch, explore=False)

    @override(TorchRLModule)
    def _forward_inference(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._act(batch, explore=False)

    @override(TorchRLModule)
    def _forward_exploration(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._act(batch, explore=True)

    def _act(self, batch: dict[str, Any], explore: bool) -> dict[str, Any]:
        """The acting path: only what the action needs (no value head, state embedding or exit bookkeeping); when
        exploring, the sampled gate decisions with their logits, and the decoder's actions are drawn (greedy
        otherwise)."""
        obs = batch[Columns.OBS]
        history = obs.get("history") if self.model_cfg.env_history else None
        exits = self.acts_with_exits
        sample_gates = explore and self.samples_gates
        acted = self.policy.act(
            obs["obs"],
            obs["action_mask"],
            obs["alive"],
            history=history,
            early_exit=exits,
            sample_gates=sample_gates,
            sample_actions=explore,
        )
        out = {Columns.ACTION_DIST_INPUTS: flat_dist_inputs(acted.logits, self.continuous)}  # (B, N * W)
        if acted.actions is not None:  # the decoder or the Gaussian chose them; the joint log-prob sums the agents'
            out[Columns.ACTIONS] = acted.actions  # (B, N) int, or (B, N, A) float
            if self.continuous:  # padded entries of smaller boxes do not count (the mask marks each agent's own)
                logp = gaussian_log_prob(acted.logits, acted.actions, obs["action_mask"])  # (B, N)
            else:
                logp = categorical_log_prob(acted.logits, acted.actions)  # (B, N)
            out[Columns.ACTION_LOGP] = logp.sum(-1)
        if exits:
            out[EXIT_DEPTH] = acted.depth  # (B,)
        if sample_gates:
            assert acted.gate_logit is not None
            out[GATE_OPEN] = acted.gate_open  # (B, N)
            out[GATE_LOGIT] = acted.gate_logit  # (B, N)
        return out

    @override(TorchRLModule)
    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        exit_depth = batch.get(EXIT_DEPTH) if self.acts_with_exits else None
        # The critic reads the greedy gates' trunk here too: trained on the features of the sampled decisions instead,
        # it disagreed with the baseline GAE uses, and the signal task's graph stopped learning (docs/DESIGN.md).
        out = self.policy_output(
            batch,
            exit_depth=exit_depth,
            gate_open=self._recorded_gates(batch),
            gumbel=self.graph_noise,
            probes=self.graph_step,
            greedy_values=True,
            actions=batch[Columns.ACTIONS] if self.decodes else None,  # teacher forcing on the rollout's actions
        )
        return {
            Columns.ACTION_DIST_INPUTS: flat_dist_inputs(out.logits, self.continuous),  # (B, N * W), recorded path
            VALUES_NORMALIZED: out.values,  # (B, N), in ValueNorm units
            POLICY_OUTPUT: out,
        }

    @override(ValueFunctionAPI)
    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> Tensor:
        """Team value in raw return units, (B,): the mean of the alive agents' value estimates.

        All agents share the team reward, so each agent's value head regresses the same target; RLlib's GAE
        connector needs one value per time step, and the mean over alive agents is the lower-variance estimate.
        """
        obs = batch[Columns.OBS]
        values = self.policy.values(
            obs["obs"],
            obs["alive"],
            state=obs.get("state") if self.model_cfg.use_state else None,
            history=obs.get("history") if self.model_cfg.env_history else None,
        )
        return self._team_value(values, batch)

    def values_and_logits(
        self,
        batch: dict[str, Any],
        exit_depth: Tensor | None = None,
        gate_open: Tensor | None = None,
        actions: Tensor | None = None,
    ) -> tuple[Tensor, PolicyOutput]:
        """One forward: the team values of `compute_values` (B,) and the policy output along the recorded
        `exit_depth` and gate decisions `gate_open` (B, N), whose logits (and gate logits) are those of decoupled
        PPO's proximal policy (agents/learner.py); with the decoder, teacher-forced on `actions` (B, N). The values are
        the greedy gates' (the GAE baseline must not depend on a sampled gate decision), whatever `gate_open` holds."""
        out = self.policy_output(
            batch,
            exit_depth=exit_depth if self.acts_with_exits else None,
            gate_open=gate_open if self.samples_gates else None,
            greedy_values=True,
            actions=actions if self.decodes else None,
        )
        return self._team_value(out.values, batch), out

    def _recorded_gates(self, batch: dict[str, Any]) -> Tensor | None:
        """The gate decisions an exploring EnvRunner recorded for this batch (None: greedy gates were used)."""
        return batch.get(GATE_OPEN) if self.samples_gates else None

    def _team_value(self, values: Tensor, batch: dict[str, Any]) -> Tensor:
        """The mean of the alive agents' values (B, N) -> (B,), in raw return units."""
        alive = batch[Columns.OBS]["alive"].to(values.dtype)  # (B, N)
        team = (values * alive).sum(-1) / alive.sum(-1).clamp(min=1.0)  # (B,)
        return self.value_norm.denormalize(team)

    @override(TorchRLModule)
    def set_state(self, state: dict[str, Any]) -> None:
        """RLlib's `set_state` turns the saved float64 scalars into float32 tensors; the ValueNorm statistics are
        float64 and are loaded again as saved, so a restored run continues from exactly the saved statistics."""
        super().set_state(state)
        exact = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in state.items() if k.startswith("value_norm.")}
        if exact:
            self.load_state_dict(exact, strict=False)

    @torch.no_grad()
    def graph_snapshot(self) -> dict[str, Tensor]:
        """The learned graph for logging: hard adjacency (N, N) and sender probabilities (N, N)."""
        return {"adjacency": self.policy.trunk.graph.hard().cpu(), "probs": self.policy.trunk.graph.probs().cpu()}
