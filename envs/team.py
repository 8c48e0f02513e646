"""`TeamEnv`: a whole PettingZoo team as one `gymnasium.Env` (docs/DESIGN.md, "One team, one RLlib
agent").

CommFormer attends across agents at each time step, so one observation must hold every agent of the team.
`TeamEnv` wraps any PettingZoo `ParallelEnv` and returns, per step:

- `obs`         float32 (N, D): agent i's flattened observation in row i, zero-padded to the largest
                observation; on a heterogeneous team (more than one (observation space, action space) pair) a
                one-hot of the agent's type is appended in the last T columns.
- `action_mask` float32 (N, A) in {0, 1}: the agent's own actions are 1 unless the raw env masks them (an
                observation dict with "action_mask", or `infos[agent]["action_mask"]`); padded actions are 0.
- `alive`       float32 (N,) in {0, 1}.
- `state`       float32 (S,), only with `use_state=True`: the raw env's `state()`, flattened.
- `history`     float32 (L, N, D), only with `history=L > 0`: the team's last L `obs` arrays, oldest first, the
                current step last (row L - 1 equals `obs`), zero rows before the episode's first step.

Decisions written down here (not in the architecture notes):

- Agent order is `possible_agents` of the raw env; N and the row of each agent never change.
- An agent is *dead* when it terminated, has no observation, or has left `env.agents` without being truncated;
  an agent still in `env.agents` whose info says `"active": False` is dead for that step (a car not on the road:
  PettingZoo does not let an agent that left come back, so such an agent stays and says it sits out).
  A dead agent's row is all zero (type one-hot included), `alive` is 0 and only action 0 (its no-op) is
  available. An agent that was *truncated* keeps its last observation and `alive` 1: on a time limit the final
  observation is the real next state, which the critic needs to bootstrap from.
- Team reward: "mean" is the sum of the agents' rewards divided by N (all agents, dead ones counting 0), so
  the scale of the return does not change as agents die; "sum" is the sum.
- The episode is `terminated` when every agent has terminated, or no agent is left and none was truncated;
  otherwise it is `truncated` as soon as any agent is truncated (a team cannot continue without one of its
  members, and PettingZoo time limits truncate all agents at once).
- Continuous actions (every agent with a float Box action space; a team mixing Box and Discrete agents is refused):
  `action_space` is a float32 Box (N, A) of the agents' bounds, A the largest flattened action (padded entries have
  bounds [0, 0] and `action_mask` 0 there: the mask then says which entries are an agent's own). `step` takes any
  finite (N, A) array and *clips* each agent's row to its box before the raw env sees it (the policy samples an
  unbounded Gaussian and keeps the log-prob of the unclipped sample: commformer/distributions.py); a dead agent is
  sent zeros clipped into its box. A non-finite action raises.
- Discrete actions: `action_space` is `MultiDiscrete([A] * N)`. An action that is padded (beyond the agent's own count)
  or masked out for a live agent raises; a dead agent's action is ignored (its no-op is sent if the raw env
  still lists it). So that random policies (including gymnasium's `check_env`) stay valid on heterogeneous or
  masked teams, `action_space.sample()` draws only from the actions available now (see `TeamActionSpace`).
- Non-finite observations, state or rewards do not crash the run: they are set to 0 and reported with
  `info["nonfinite_obs"]` / `info["nonfinite_state"]` / `info["nonfinite_reward"] = True`, for the
  fault-tolerance counters. A wrong shape is a bug in the raw env or in its declared space and raises.
- `info["agent_rewards"]` is float64 (N,). Scalar (bool or number) per-agent info values are passed through:
  a key on which all reporting agents agree is a team fact (e.g. `won`) and lands in `info[key]`; a key whose
  values differ between agents, or that would overwrite one of ours, is given per agent as a float64 (N,)
  array in `info["agent_info"][key]` (0 for agents that did not report it).

The history window is part of the observation on purpose (exact PPO ratios, no future, bounded memory:
envs/history.py); `reset` clears it.

Speed: `TeamEnv` sits on the training hot path. Buffers are preallocated and rows are only rewritten for
agents present in the step; the only per-step copies are the returned arrays (callers keep them, e.g. in
episodes). `benchmarks/env_speed.py` measures the overhead against the raw env.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from envs.history import HistoryWindow
from envs.team_spaces import (
    AgentSpec,
    RawEnv,
    TeamActionSpace,
    agent_spec,
    agent_types,
    flat_bounds,
    resolve_env,
)

TEAM_REWARDS = ("mean", "sum")
"""Valid values of `team_reward`."""


def check_team_args(team_reward: str, history: int) -> None:
    """The arguments every team env takes (TeamEnv, envs.smax.SMAXVectorEnv): a known team reward, a window >= 0.

    Raises:
        ValueError: naming the argument and what was expected.
    """
    if team_reward not in TEAM_REWARDS:
        raise ValueError(f"unknown team_reward {team_reward!r}; expected one of: {', '.join(TEAM_REWARDS)}")
    if isinstance(history, bool) or not isinstance(history, int | np.integer) or history < 0:
        raise ValueError(f"history={history!r}; expected an integer >= 0 (0: no history window)")


RESERVED_INFO_KEYS = frozenset({"agent_rewards", "agent_info", "nonfinite_obs", "nonfinite_state", "nonfinite_reward"})
"""Info keys TeamEnv writes itself; raw per-agent info with these names goes to `info["agent_info"]`."""

NOOP_ACTION = 0
"""The action a dead agent is given (SMAC convention: action 0 is the no-op)."""


def _is_scalar(value: Any) -> bool:
    return isinstance(value, bool | int | float | np.bool_ | np.number)


class TeamEnv(gymnasium.Env[dict[str, np.ndarray], np.ndarray]):
    """A PettingZoo ParallelEnv seen as one team: `obs (N, D)`, `action_mask (N, A)`, `alive (N,)`, [`state`].

    Args:
        env: a PettingZoo `ParallelEnv`, or a zero-argument factory that builds one. TeamEnv owns it and
            closes it in `close()`.
        team_reward: "mean" (default; sum over all N agents / N) or "sum" of the agents' rewards.
        use_state: add the raw env's global `state()` as `obs["state"]`; the raw env must define
            `state_space` and `state()` (mpe2 envs do).
        history: L > 0 adds `obs["history"]` (L, N, D), the last L team observations; 0 (default) adds none.

    Raises:
        ValueError: unknown `team_reward`, a negative or non-integer `history`, a raw env without agents,
            actions neither Discrete nor a float Box, a team mixing the two, a render mode the raw env does not
            declare, or `use_state` on an env without a
            state.
    """

    def __init__(
        self,
        env: RawEnv | Callable[[], RawEnv],
        *,
        team_reward: str = "mean",
        use_state: bool = False,
        history: int = 0,
    ) -> None:
        check_team_args(team_reward, history)
        self._env = resolve_env(env)
        self._team_sum = team_reward == "sum"
        self.team_reward = team_reward
        self.use_state = use_state
        self.history = int(history)
        """L, the steps in `obs["history"]`; 0 when there is none."""

        names = list(self._env.possible_agents)
        if not names:
            raise ValueError(f"raw env {self._env} has no possible_agents; a team needs at least one agent")
        type_ids = agent_types(self._env, names)
        self.specs: tuple[AgentSpec, ...] = tuple(
            agent_spec(self._env, name, i, type_ids[i]) for i, name in enumerate(names)
        )
        self.agents: tuple[str, ...] = tuple(names)
        """Agent names in row order (the raw env's `possible_agents`)."""
        kinds = {spec.continuous for spec in self.specs}
        if len(kinds) > 1:
            boxes = [s.name for s in self.specs if s.continuous]
            others = [s.name for s in self.specs if not s.continuous]
            raise ValueError(
                f"raw env {self._env} mixes continuous (Box) actions ({boxes}) with discrete ones ({others}); "
                "expected every agent's actions of one kind (many envs have an option for it, e.g. "
                "continuous_actions)"
            )
        self.continuous = kinds == {True}
        """Box actions: the team action is a float (N, A) array, clipped to each agent's box when stepping."""
        self.agent_types: tuple[int, ...] = tuple(type_ids)
        self.n_types = max(type_ids) + 1
        self.heterogeneous = self.n_types > 1
        self.n_agents = len(self.specs)
        self.obs_dim = max(s.obs_dim for s in self.specs) + (self.n_types if self.heterogeneous else 0)
        self.n_actions = max(s.n_actions for s in self.specs)
        self._index = {spec.name: spec.index for spec in self.specs}
        n, d, a = self.n_agents, self.obs_dim, self.n_actions

        # Templates: what a live agent's row looks like before its observation is written, and its own mask.
        self._obs_template = np.zeros((n, d), dtype=np.float32)
        self._mask_template = np.zeros((n, a), dtype=np.float32)
        obs_low = np.zeros((n, d), dtype=np.float32)
        obs_high = np.zeros((n, d), dtype=np.float32)
        for spec in self.specs:
            self._mask_template[spec.index, : spec.n_actions] = 1.0
            low, high = flat_bounds(spec.observation_space)
            obs_low[spec.index, : spec.obs_dim] = low
            obs_high[spec.index, : spec.obs_dim] = high
            if self.heterogeneous:
                self._obs_template[spec.index, d - self.n_types + spec.type_id] = 1.0
                obs_high[spec.index, d - self.n_types :] = 1.0
        # The mask row of a dead agent: its no-op only (discrete); its own entries, left as they are (continuous:
        # nothing is chosen among entries, and a dead agent's log-prob counts nowhere).
        self._dead_mask = self._mask_template.copy()
        if not self.continuous:
            self._dead_mask[:] = 0.0
            self._dead_mask[:, NOOP_ACTION] = 1.0
        self._action_low = np.zeros((n, a), dtype=np.float32)
        self._action_high = np.zeros((n, a), dtype=np.float32)
        for spec in self.specs:
            if spec.continuous:
                assert spec.action_low is not None and spec.action_high is not None
                self._action_low[spec.index, : spec.n_actions] = spec.action_low
                self._action_high[spec.index, : spec.n_actions] = spec.action_high
        # What a dead agent sends when the raw env still lists it: 0 clipped into its box.
        self._dead_action = np.clip(np.zeros((n, a), dtype=np.float32), self._action_low, self._action_high)

        # Preallocated buffers, rewritten in place each step and copied on return.
        self._obs = self._obs_template.copy()  # (N, D)
        self._mask = self._mask_template.copy()  # (N, A)
        self._alive = np.ones(n, dtype=np.float32)  # (N,)
        self._alive_flags = [True] * n  # the same as Python bools, for cheap branching
        self._dynamic_mask = [False] * n  # row i currently holds a raw-env mask rather than the template
        self._terminated = [False] * n
        self._action_counts = [spec.n_actions for spec in self.specs]
        self._needs_reset = True
        self._window = HistoryWindow(self.history, (n, d)) if self.history else None

        space_dict: dict[str, spaces.Space[Any]] = {
            "obs": spaces.Box(obs_low, obs_high, dtype=np.float32),
            "action_mask": spaces.Box(0.0, 1.0, shape=(n, a), dtype=np.float32),
            "alive": spaces.Box(0.0, 1.0, shape=(n,), dtype=np.float32),
        }
        self._state_dim = 0
        if use_state:
            state_space = getattr(self._env, "state_space", None)
            if state_space is None or not callable(getattr(self._env, "state", None)):
                raise ValueError(
                    f"use_state=True needs a raw env with state_space and state(); {self._env} has no state_space"
                )
            low, high = flat_bounds(state_space)
            self._state_dim = low.shape[0]
            space_dict["state"] = spaces.Box(low, high, dtype=np.float32)
        if self._window is not None:
            space_dict["history"] = self._window.space(obs_low, obs_high)
        self.observation_space: spaces.Dict = spaces.Dict(space_dict)
        self.action_space: TeamActionSpace | spaces.Box = (
            spaces.Box(self._action_low, self._action_high, dtype=np.float32)
            if self.continuous
            else TeamActionSpace(n, a, self._mask)
        )

        raw_metadata = getattr(self._env, "metadata", {}) or {}
        self.metadata = {
            "render_modes": list(raw_metadata.get("render_modes", [])),
            "render_fps": raw_metadata.get("render_fps", 4),
        }
        self.render_mode = getattr(self._env, "render_mode", None)
        if self.render_mode is not None and self.render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {self.render_mode!r} is not supported by {self._env}; "
                f"expected None or one of: {self.metadata['render_modes']}"
            )

    @property
    def raw_env(self) -> RawEnv:
        """The wrapped PettingZoo ParallelEnv."""
        return self._env

    # ------------------------------------------------------------------ gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset the raw env (passing `seed` and `options` on) and return the team observation and info."""
        super().reset(seed=seed)
        raw_obs, raw_infos = self._env.reset(seed=seed, options=options)
        self._obs[:] = self._obs_template
        self._mask[:] = self._mask_template
        self._alive[:] = 1.0
        n = self.n_agents
        self._alive_flags = [True] * n
        self._dynamic_mask = [False] * n
        self._terminated = [False] * n
        self._needs_reset = False
        if self._window is not None:
            self._window.clear()
        info: dict[str, Any] = {}
        self._write_agents(raw_obs, raw_infos or {}, {}, {}, info)
        self._pass_through_infos(raw_infos or {}, info)
        return self._observation(info), info

    def step(
        self, action: np.ndarray | Sequence[int]
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Step every live agent with its entry of `action` (ints (N,)); return the team transition."""
        if self._needs_reset:
            raise RuntimeError("TeamEnv.step() called before reset() or after the episode ended; call reset()")
        index = self._index
        alive = self._alive_flags
        raw_actions: dict[str, Any]
        if self.continuous:
            rows = self._box_actions(action)
            raw_actions = {name: rows[index[name]] for name in self._env.agents}
        else:
            actions = self._check_actions(action)
            raw_actions = {
                name: actions[index[name]] if alive[index[name]] else NOOP_ACTION for name in self._env.agents
            }
        raw_obs, raw_rewards, terminations, truncations, raw_infos = self._env.step(raw_actions)

        agent_rewards = np.zeros(self.n_agents, dtype=np.float64)
        try:
            for name, reward in raw_rewards.items():
                agent_rewards[index[name]] = reward
            for name, done in terminations.items():
                if done:
                    self._terminated[index[name]] = True
        except KeyError as err:
            raise ValueError(
                f"raw env {self._env} reported agent {err.args[0]!r}, which is not in possible_agents {self.agents}"
            ) from None
        any_truncated = any(truncations.values())
        none_left = not self._env.agents
        terminated = all(self._terminated) or (none_left and not any_truncated)
        truncated = not terminated and any_truncated
        self._needs_reset = terminated or truncated

        info: dict[str, Any] = {"agent_rewards": agent_rewards}
        if not math.isfinite(agent_rewards.sum()):  # NaN / inf would poison the returns and the value targets
            np.nan_to_num(agent_rewards, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            info["nonfinite_reward"] = True
        raw_infos = raw_infos or {}
        self._write_agents(raw_obs, raw_infos, terminations, truncations, info)
        self._pass_through_infos(raw_infos, info)
        total = float(agent_rewards.sum())
        reward = total if self._team_sum else total / self.n_agents
        return self._observation(info), reward, bool(terminated), bool(truncated), info

    def render(self) -> Any:
        """The raw env's `render()` (an rgb array with `render_mode="rgb_array"`)."""
        return self._env.render()

    def close(self) -> None:
        """Close the raw env."""
        self._env.close()

    # ------------------------------------------------------------------ internals

    def _check_actions(self, action: Any) -> list[int]:
        """Validate the team action against the current masks; return it as Python ints in agent order."""
        acts = np.asarray(action)
        if acts.shape != (self.n_agents,) or acts.dtype.kind not in "iu":
            raise ValueError(
                f"action must be an integer array of shape ({self.n_agents},), one per agent in the order "
                f"{list(self.agents)}; got {acts!r} (shape {acts.shape}, dtype {acts.dtype})"
            )
        values: list[int] = acts.tolist()
        # A Python loop beats a handful of numpy calls for teams of a few agents (the common case). A static
        # mask row is exactly the agent's own range, so only raw-env masks need a look at the buffer.
        alive, dynamic, counts = self._alive_flags, self._dynamic_mask, self._action_counts
        for i, act in enumerate(values):
            if alive[i] and (not 0 <= act < counts[i] or (dynamic[i] and self._mask[i, act] == 0)):
                self._raise_invalid_action(i, act)
        return values

    def _box_actions(self, action: Any) -> list[np.ndarray]:
        """Each agent's action for the raw env: its row clipped to its box, in the Box's shape and dtype (a dead
        agent's: zeros clipped into the box). Raises unless `action` is a finite (N, A) array."""
        acts = np.asarray(action)
        shape = (self.n_agents, self.n_actions)
        if acts.shape != shape or acts.dtype.kind not in "fiu":
            raise ValueError(
                f"action must be a real array of shape {shape}, one row per agent in the order {list(self.agents)} "
                f"(continuous actions); got shape {acts.shape}, dtype {acts.dtype}"
            )
        if not np.isfinite(acts).all():
            bad = sorted({self.specs[i].name for i in np.flatnonzero(~np.isfinite(acts).all(axis=1))})
            raise ValueError(f"action has non-finite entries for agents {bad}; expected finite continuous actions")
        clipped = np.clip(acts.astype(np.float32, copy=False), self._action_low, self._action_high)
        rows = []
        for spec in self.specs:
            row = clipped[spec.index] if self._alive_flags[spec.index] else self._dead_action[spec.index]
            rows.append(row[: spec.n_actions].reshape(spec.action_shape).astype(spec.action_dtype))
        return rows

    def _raise_invalid_action(self, i: int, act: int) -> None:
        spec = self.specs[i]
        if not 0 <= act < spec.n_actions:
            raise ValueError(
                f"action {act} for agent {spec.name!r} (row {i}) is outside its {spec.n_actions} actions; "
                f"expected 0..{spec.n_actions - 1}"
            )
        available = np.flatnonzero(self._mask[i]).tolist()
        raise ValueError(
            f"action {act} for agent {spec.name!r} (row {i}) is masked out; available actions: {available}"
        )

    def _write_agents(
        self,
        raw_obs: Mapping[str, Any],
        raw_infos: Mapping[str, Any],
        terminations: Mapping[str, Any],
        truncations: Mapping[str, Any],
        info: dict[str, Any],
    ) -> None:
        """Rewrite the rows of the obs/mask/alive buffers from one raw reset or step."""
        live = set(self._env.agents)
        for spec in self.specs:
            i, name = spec.index, spec.name
            obs: Any = raw_obs.get(name)
            agent_info = raw_infos.get(name)
            is_alive = (
                obs is not None
                and not terminations.get(name, False)
                and (name in live or bool(truncations.get(name, False)))
                and not (isinstance(agent_info, Mapping) and agent_info.get("active", True) is False)
            )
            if not is_alive:
                if self._alive_flags[i]:
                    self._obs[i] = 0.0
                    self._mask[i] = self._dead_mask[i]
                    self._alive[i] = 0.0
                    self._alive_flags[i] = False
                    self._dynamic_mask[i] = False
                continue
            if not self._alive_flags[i]:  # an agent that (re)joined: restore its type one-hot and mask
                self._obs[i] = self._obs_template[i]
                self._mask[i] = self._mask_template[i]
                self._alive[i] = 1.0
                self._alive_flags[i] = True
            mask = None
            if spec.mask_in_obs:
                mask = obs["action_mask"]
                obs = obs["observation"]
            elif agent_info:
                mask = agent_info.get("action_mask")
            self._write_obs_row(spec, obs)
            if mask is not None:
                self._write_mask_row(spec, mask)
            elif self._dynamic_mask[i]:
                self._mask[i] = self._mask_template[i]
                self._dynamic_mask[i] = False

        # One reduction for the whole team keeps the common (finite) case cheap: a NaN or inf anywhere makes
        # the float64 sum non-finite, and float32 values cannot overflow a float64 sum.
        if not math.isfinite(self._obs.sum(dtype=np.float64)):
            np.nan_to_num(self._obs, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            info["nonfinite_obs"] = True

    def _write_obs_row(self, spec: AgentSpec, obs: Any) -> None:
        if spec.box_obs:
            arr = obs if isinstance(obs, np.ndarray) else np.asarray(obs)
            if arr.shape != spec.obs_shape:
                raise ValueError(
                    f"raw env returned an observation of shape {arr.shape} for agent {spec.name!r}; expected "
                    f"{spec.obs_shape} from its observation space {spec.observation_space}"
                )
            self._obs[spec.index, : spec.obs_dim] = arr.reshape(-1)
        else:
            try:
                flat = spaces.flatten(spec.observation_space, obs)
            except (ValueError, TypeError, IndexError) as err:
                raise ValueError(
                    f"raw env returned observation {obs!r} for agent {spec.name!r}, which does not fit its "
                    f"observation space {spec.observation_space}: {err}"
                ) from err
            self._obs[spec.index, : spec.obs_dim] = np.asarray(flat)

    def _write_mask_row(self, spec: AgentSpec, mask: Any) -> None:
        arr = np.asarray(mask)
        if arr.shape != (spec.n_actions,):
            raise ValueError(
                f"raw env returned an action mask of shape {arr.shape} for agent {spec.name!r}; expected "
                f"({spec.n_actions},), one entry per action"
            )
        row = self._mask[spec.index]
        row[: spec.n_actions] = arr != 0
        if not row.any():
            raise ValueError(
                f"raw env masked every action of live agent {spec.name!r}; a live agent needs at least one"
            )
        self._dynamic_mask[spec.index] = True

    def _pass_through_infos(self, raw_infos: Mapping[str, Any], info: dict[str, Any]) -> None:
        """Copy scalar per-agent info values into the team info (rules in the module docstring)."""
        values: dict[str, dict[int, Any]] = {}
        for name, agent_info in raw_infos.items():
            if not agent_info or name not in self._index or not isinstance(agent_info, Mapping):
                continue
            i = self._index[name]
            for key, value in agent_info.items():
                if key not in ("action_mask", "active") and _is_scalar(value):
                    values.setdefault(key, {})[i] = value
        for key, by_agent in values.items():
            first = next(iter(by_agent.values()))
            if key not in RESERVED_INFO_KEYS and all(v == first for v in by_agent.values()):
                info[key] = first
                continue
            per_agent = np.zeros(self.n_agents, dtype=np.float64)
            for i, value in by_agent.items():
                per_agent[i] = value
            info.setdefault("agent_info", {})[key] = per_agent

    def _observation(self, info: dict[str, Any]) -> dict[str, np.ndarray]:
        """The returned observation of this reset or step (called exactly once each: it advances the history)."""
        out = {"obs": self._obs.copy(), "action_mask": self._mask.copy(), "alive": self._alive.copy()}
        if self._window is not None:
            out["history"] = self._window.push(self._obs)  # (L, N, D), oldest first
        if self.use_state:
            # np.array copies: the raw env may hand out its own buffer, and the caller keeps ours.
            state = np.array(self._env.state(), dtype=np.float32).reshape(-1)
            if state.shape != (self._state_dim,):
                raise ValueError(
                    f"raw env state() returned {state.shape[0]} values after flattening; its state_space "
                    f"promises {self._state_dim}"
                )
            if not math.isfinite(state.sum(dtype=np.float64)):
                np.nan_to_num(state, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
                info["nonfinite_state"] = True
            out["state"] = state
        return out
