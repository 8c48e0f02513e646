"""Games written in numpy that step B envs at once, and their two faces.

A `BatchedGame` holds B independent copies of one game as arrays with a leading B axis and advances all of them
with a handful of vector operations per step, so sampling stays far below the learner's cost (the grid tasks of
envs/grid.py). Each copy draws its randomness from its own `numpy.random.Generator`, so env b of a batch behaves
exactly as a batch of one seeded alike: the vectorised env is tested against B single envs.

The faces:

- `BatchedTeamEnv`: a gymnasium `VectorEnv` of B *team* envs (what training builds through the env table's
  `make_vector`, like SMAX's): the observation dict of `envs.team.TeamEnv` with a leading B axis, NEXT_STEP
  auto-reset (an env that ended is reset by the following `step`, whose reward for it is 0).
- `BatchedParallelEnv`: one copy as a PettingZoo `ParallelEnv` (B = 1), which `TeamEnv` wraps for rollouts,
  `evaluate`, rendering and PettingZoo's own API test. Its observations carry the action mask
  (``{"observation", "action_mask"}``). Every agent stays in ``env.agents`` until the episode ends (PettingZoo
  does not let an agent come back once it left); an agent the game holds inactive this step (``alive`` 0, e.g. a
  car not on the road) reports ``info["active"] = False``, which `TeamEnv` reads as dead for this step.

The team rules match `TeamEnv`'s: an inactive agent's row is zero and only its no-op (action 0) is available; the
team reward is the mean (or sum) of the agents' rewards over all N; `terminated` ends the episode for the team,
`truncated` is a time limit without a terminal.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from envs.team import NOOP_ACTION, check_team_args


@dataclass
class Observed:
    """What every agent of every env perceives now (arrays with a leading B axis)."""

    obs: np.ndarray
    """(B, N, D) float32."""
    action_mask: np.ndarray
    """(B, N, A) float32 in {0, 1}; each active agent has at least one available action."""
    alive: np.ndarray
    """(B, N) bool: the agent takes part in the game now."""
    state: np.ndarray
    """(B, S) float32, the global state (for centralised critics)."""
    facts: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-agent facts now, (B, N) bool arrays, for analysis rather than for the policy (e.g. ``saw_prey``: the
    agent holds information the others may lack), reported per agent by both faces."""


@dataclass
class Stepped:
    """The outcome of one step of the envs that were stepped."""

    rewards: np.ndarray
    """(B, N) float64 per-agent rewards (0 for envs that were not stepped)."""
    terminated: np.ndarray
    """(B,) bool: the episode reached a terminal state (success or failure)."""
    truncated: np.ndarray
    """(B,) bool: the time limit ended the episode without a terminal."""
    info: dict[str, np.ndarray] = field(default_factory=dict)
    """Team facts per env, (B,) arrays (e.g. ``won``), reported on every step."""


class BatchedGame(abc.ABC):
    """B copies of a game advanced together. Subclasses set the sizes and implement the three methods."""

    agent_prefix: ClassVar[str] = "agent"
    """Agent names are ``f"{agent_prefix}_{i}"``."""
    name: ClassVar[str] = "game"
    fact_names: ClassVar[tuple[str, ...]] = ()
    """The keys of ``Observed.facts`` this game reports (per-agent facts both faces pass on)."""
    n_agents: int
    n_actions: int
    obs_dim: int
    state_dim: int

    def __init__(self, num_envs: int) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r}; expected an integer >= 1")
        self.num_envs = num_envs
        self.rngs = [np.random.default_rng() for _ in range(num_envs)]

    def seed(self, seeds: Sequence[int | None]) -> None:
        """Restart env b's generator at ``seeds[b]`` (None draws a fresh one)."""
        if len(seeds) != self.num_envs:
            raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs; expected one per env")
        self.rngs = [np.random.default_rng(s) for s in seeds]

    @abc.abstractmethod
    def reset(self, rows: np.ndarray) -> None:
        """Start a new episode in every env b with ``rows[b]`` (bool (B,)), drawing from ``self.rngs[b]``."""

    @abc.abstractmethod
    def step(self, actions: np.ndarray, rows: np.ndarray) -> Stepped:
        """Advance the envs with ``rows[b]`` by one step with ``actions`` (int (B, N), valid for active agents;
        inactive agents' entries are ignored); the other envs do not move."""

    @abc.abstractmethod
    def observe(self) -> Observed:
        """What every env looks like now."""

    def render(self, b: int) -> np.ndarray:
        """An RGB picture (H, W, 3) uint8 of env b."""
        raise NotImplementedError(f"{type(self).__name__} cannot render")


def check_team_actions(actions: Any, mask: np.ndarray, checked: np.ndarray, prefix: str) -> np.ndarray:
    """Validates (B, N) integer actions against the masks (B, N, A) where ``checked`` (B, N); returns them as int64.

    Raises:
        ValueError: a wrong shape or dtype, or an action that is out of range or not available for a checked agent,
            naming the env, the agent and the available actions.
    """
    acts = np.asarray(actions)
    b, n, a = mask.shape
    if acts.shape != (b, n) or acts.dtype.kind not in "iu":
        raise ValueError(
            f"actions must be an integer array of shape ({b}, {n}), one per env and agent; got shape {acts.shape}, "
            f"dtype {acts.dtype}"
        )
    in_range = (acts >= 0) & (acts < a)
    chosen = np.take_along_axis(mask, np.clip(acts, 0, a - 1)[..., None], axis=-1)[..., 0]  # (B, N)
    bad = checked & (~in_range | (chosen == 0))
    if bad.any():
        env, agent = (int(x) for x in np.argwhere(bad)[0])
        available = np.flatnonzero(mask[env, agent]).tolist()
        raise ValueError(
            f"action {int(acts[env, agent])} for agent {prefix}_{agent} of env {env} is not available; "
            f"available actions: {available}"
        )
    return acts.astype(np.int64)


class AvailableTeamActions(spaces.MultiDiscrete):
    """`MultiDiscrete` (B, N) whose unmasked `sample()` draws only the actions available now."""

    def __init__(self, available: np.ndarray) -> None:
        b, n, a = available.shape
        super().__init__(np.full((b, n), a, dtype=np.int64))
        self.available = available  # (B, N, A), replaced by the vector env after every reset / step

    def sample(self, mask: Any = None, probability: Any = None) -> np.ndarray:
        if mask is not None or probability is not None:
            return super().sample(mask=mask, probability=probability)
        scores = np.where(self.available > 0, self.np_random.random(self.available.shape), -1.0)  # (B, N, A)
        return scores.argmax(-1).astype(np.int64)


class BatchedTeamEnv(gymnasium.vector.VectorEnv):
    """B team envs of a `BatchedGame` as one gymnasium VectorEnv (module docstring).

    Args:
        game: the game, holding ``game.num_envs`` copies.
        team_reward, use_state, history: as `envs.team.TeamEnv`.

    Observations are dicts of arrays with a leading B axis: ``obs`` (B, N, D), ``action_mask`` (B, N, A),
    ``alive`` (B, N), [``state`` (B, S)], [``history`` (B, L, N, D)]; actions are ints (B, N). Info: the game's
    team facts (``won`` ...) and ``agent_rewards`` (B, N), with gymnasium's ``_key`` masks.
    """

    def __init__(self, game: BatchedGame, *, team_reward: str = "mean", use_state: bool = False, history: int = 0):
        check_team_args(team_reward, history)
        self.game = game
        self.fact_names = game.fact_names
        self.num_envs = b = game.num_envs
        self.use_state, self.history, self.team_reward = use_state, int(history), team_reward
        n, a, d = game.n_agents, game.n_actions, game.obs_dim
        self._scale = 1.0 if team_reward == "sum" else 1.0 / n
        single: dict[str, spaces.Space[Any]] = {
            "obs": spaces.Box(-np.inf, np.inf, shape=(n, d), dtype=np.float32),
            "action_mask": spaces.Box(0.0, 1.0, shape=(n, a), dtype=np.float32),
            "alive": spaces.Box(0.0, 1.0, shape=(n,), dtype=np.float32),
        }
        if use_state:
            single["state"] = spaces.Box(-np.inf, np.inf, shape=(game.state_dim,), dtype=np.float32)
        if self.history:
            single["history"] = spaces.Box(-np.inf, np.inf, shape=(self.history, n, d), dtype=np.float32)
        self.single_observation_space: spaces.Dict = spaces.Dict(single)
        self.single_action_space: spaces.MultiDiscrete = spaces.MultiDiscrete(np.full(n, a, dtype=np.int64))
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, b)
        self._mask = np.zeros((b, n, a), dtype=np.float32)
        self._mask[..., NOOP_ACTION] = 1.0
        self.action_space: AvailableTeamActions = AvailableTeamActions(self._mask)
        self.render_mode = None
        self.metadata = {"autoreset_mode": gymnasium.vector.AutoresetMode.NEXT_STEP, "render_modes": []}
        self._alive = np.zeros((b, n), dtype=bool)
        self._resetting = np.zeros(b, dtype=bool)  # NEXT_STEP: these envs reset on the next step()
        self._window = np.zeros((b, self.history, n, d), dtype=np.float32) if self.history else None
        self._started = False

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every env; env b's generator restarts at ``seed + b`` (or ``seed[b]``); None continues it."""
        if seed is not None:
            seeds = list(seed) if isinstance(seed, list | tuple) else [seed + b for b in range(self.num_envs)]
            self.game.seed(seeds)
        everywhere = np.ones(self.num_envs, dtype=bool)
        self.game.reset(everywhere)
        self._resetting[:] = False
        self._started = True
        zeros = np.zeros((self.num_envs, self.game.n_agents), dtype=np.float64)
        stepped = Stepped(zeros, ~everywhere, ~everywhere)
        obs, _, _, _, info = self._team(stepped, everywhere)
        return obs, info

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One step of every env (a fresh episode for those that ended on the previous step)."""
        if not self._started:
            raise RuntimeError(f"{type(self).__name__}.step() called before reset(); call reset()")
        resetting = self._resetting.copy()
        acts = check_team_actions(actions, self._mask, ~resetting[:, None] & self._alive, self.game.agent_prefix)
        stepped = self.game.step(acts, ~resetting)
        if resetting.any():
            self.game.reset(resetting)
        obs, reward, terminated, truncated, info = self._team(stepped, resetting)
        self._resetting = terminated | truncated
        return obs, reward, terminated, truncated, info

    def _team(
        self, stepped: Stepped, resetting: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The team transition (rules in the module docstring) from the game's view after this step."""
        seen = self.game.observe()
        terminated = stepped.terminated & ~resetting
        alive = seen.alive & ~terminated[:, None]  # (B, N): a terminal state ends the whole team (as TeamEnv's)
        zero = np.float32(0.0)  # keeps np.where's result float32 for float32 inputs: no second copy
        obs = np.where(alive[..., None], seen.obs, zero).astype(np.float32, copy=False)  # (B, N, D)
        mask = np.where(alive[..., None], seen.action_mask, zero).astype(np.float32, copy=False)  # (B, N, A)
        mask[..., NOOP_ACTION] = np.where(alive, mask[..., NOOP_ACTION], 1.0)
        self._mask, self._alive = mask, alive
        self.action_space.available = mask
        out = {"obs": obs, "action_mask": mask, "alive": alive.astype(np.float32)}
        if self.use_state:
            out["state"] = seen.state.astype(np.float32, copy=True)
        if self._window is not None:
            window = self._window
            window[:, :-1] = window[:, 1:]
            window[resetting, :-1] = 0.0  # a new episode: nothing before its first step
            window[:, -1] = obs
            out["history"] = window.copy()
        stepped_rows = ~resetting
        reward = np.where(stepped_rows, stepped.rewards.sum(-1) * self._scale, 0.0)
        truncated = stepped.truncated & ~stepped.terminated & stepped_rows
        everywhere = np.ones(self.num_envs, dtype=bool)
        info: dict[str, Any] = {}
        for key, value in stepped.info.items():
            info[key], info[f"_{key}"] = value, everywhere
        for key, value in seen.facts.items():  # per-agent facts, (B, N)
            info[key], info[f"_{key}"] = value.astype(np.float64), everywhere
        if stepped_rows.any():  # a reset's info has no rewards (as TeamEnv's)
            info["agent_rewards"], info["_agent_rewards"] = stepped.rewards.astype(np.float64), stepped_rows
        return out, reward, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        self._started = False


class BatchedParallelEnv(ParallelEnv):
    """One copy of a `BatchedGame` (``num_envs == 1``) as a PettingZoo ParallelEnv (module docstring)."""

    metadata: dict[str, Any] = {"name": "batched", "render_modes": ["rgb_array"], "is_parallelizable": True}  # noqa: RUF012

    def __init__(self, game: BatchedGame, render_mode: str | None = None) -> None:
        if game.num_envs != 1:
            raise ValueError(f"BatchedParallelEnv plays one env; got a game of num_envs={game.num_envs}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {render_mode!r} is not supported by {game.name}; expected None or 'rgb_array'"
            )
        self.game, self.render_mode = game, render_mode
        self.fact_names = game.fact_names
        self.metadata = {**self.metadata, "name": game.name}
        self.possible_agents = [f"{game.agent_prefix}_{i}" for i in range(game.n_agents)]
        self.agents: list[str] = []
        self._observation_space = spaces.Dict(
            {
                "observation": spaces.Box(-np.inf, np.inf, shape=(game.obs_dim,), dtype=np.float32),
                "action_mask": spaces.Box(0, 1, shape=(game.n_actions,), dtype=np.int8),
            }
        )
        self._action_space: spaces.Space[Any] = spaces.Discrete(game.n_actions)
        self.state_space = spaces.Box(-np.inf, np.inf, shape=(game.state_dim,), dtype=np.float32)
        self._seen: Observed | None = None
        self._over = True

    def observation_space(self, agent: str) -> spaces.Space[Any]:
        """{"observation": Box (D,) float32, "action_mask": (A,) int8}."""
        return self._observation_space

    def action_space(self, agent: str) -> spaces.Space[Any]:
        return self._action_space

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, Any]]]:
        """A new episode; ``seed`` restarts the generator (None continues it)."""
        if seed is not None:
            self.game.seed([seed])
        self.game.reset(np.ones(1, dtype=bool))
        self._over = False
        self._seen = self.game.observe()
        self.agents = list(self.possible_agents)
        return self._observations(self.agents), self._infos(self.agents, {})

    def step(
        self, actions: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, float], dict[str, bool], dict[str, bool], dict[str, Any]]:
        """One step; every agent needs an action (an inactive agent's is ignored). The episode's end ends every
        agent."""
        if self._over or self._seen is None:
            raise RuntimeError(f"{self.game.name}.step() called before reset() or after the episode ended")
        team = np.full((1, self.game.n_agents), NOOP_ACTION, dtype=np.int64)
        for agent in self.agents:
            if agent not in actions:
                raise ValueError(f"no action for agent {agent!r}; actions were given for {sorted(actions)}")
            i = int(agent.rsplit("_", 1)[1])
            if self._seen.alive[0, i]:
                team[0, i] = int(actions[agent])
        check_team_actions(team, self._seen.action_mask, self._seen.alive, self.game.agent_prefix)
        stepped = self.game.step(team, np.ones(1, dtype=bool))
        self._seen = self.game.observe()
        terminated = bool(stepped.terminated[0])
        truncated = bool(stepped.truncated[0]) and not terminated
        self._over = terminated or truncated
        live = self.agents
        facts = {key: value[0].item() for key, value in stepped.info.items()}
        rewards = {a: float(stepped.rewards[0, int(a.rsplit("_", 1)[1])]) for a in live}
        observations, infos = self._observations(live), self._infos(live, facts)
        if self._over:
            self.agents = []
        return observations, rewards, dict.fromkeys(live, terminated), dict.fromkeys(live, truncated), infos

    def state(self) -> np.ndarray:
        """The game's global state (S,) float32."""
        assert self._seen is not None, "state() before reset()"
        return self._seen.state[0].astype(np.float32)

    def render(self) -> np.ndarray | None:
        return None if self.render_mode is None else self.game.render(0)

    def close(self) -> None:
        self._seen = None

    def _infos(self, agents: list[str], facts: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The team facts for every agent, and whether the game holds it active now."""
        seen = self._seen
        assert seen is not None
        out = {}
        for a in agents:
            i = int(a.rsplit("_", 1)[1])
            own = {key: bool(value[0, i]) for key, value in seen.facts.items()}
            out[a] = {**facts, **own, "active": bool(seen.alive[0, i])}
        return out

    def _observations(self, agents: list[str]) -> dict[str, dict[str, np.ndarray]]:
        """Each agent's observation and mask; an inactive agent sees zeros and has only its no-op."""
        assert self._seen is not None
        out = {}
        for a in agents:
            i = int(a.rsplit("_", 1)[1])
            if self._seen.alive[0, i]:
                obs, mask = self._seen.obs[0, i].astype(np.float32), self._seen.action_mask[0, i].astype(np.int8)
            else:
                obs, mask = np.zeros(self.game.obs_dim, dtype=np.float32), np.zeros(self.game.n_actions, np.int8)
                mask[NOOP_ACTION] = 1
            out[a] = {"observation": obs, "action_mask": mask}
        return out
