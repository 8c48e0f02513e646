"""`SignalEnv`: a tiny PettingZoo ParallelEnv that can only be solved by communicating.

Each step every agent i privately sees a fresh random symbol s_i in {0..K-1} (one-hot in its observation) and
must output the symbol of its source agent, s_{(i+offset) mod N}. Reward per agent: 1 if right, else 0.
Without messages an agent can only guess (expected reward 1/K); a team whose communication graph carries the
edge (i+offset) -> i for every i earns 1. Symbols are drawn independently each step, so memory does not help
either. Episodes end by truncation after `episode_len` steps.

The default offset is -1 (the previous agent) on purpose: `CommGraph` starts from the ring i <- i+1, ..., i+k,
in which i-1 is the last sender any receiver would pick, so with k=1 a team can only succeed by moving its
graph. offset=+1 makes the initial graph already right.

Used by the fast learning tests (STYLE.md): small, deterministic under `reset(seed=...)`, and checked by
PettingZoo's own `parallel_api_test`.

Observation of agent i: float32 one-hot of s_i (K values), followed by a one-hot of i (N values) when
`agent_id=True`. There is no step counter: the task is the same at every step, so it would only add noise.
`state()` is the one-hot of all symbols, (N*K,), for centralised critics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from envs.options import check_field_types, require, require_agents
from envs.parallel import ParallelStep


@dataclass(frozen=True)
class SignalOptions:
    """Options of the `signal` env (`env.options.*` in an experiment config)."""

    n_agents: int = 3
    """Number of agents N; agent i must report the symbol of agent (i + offset) mod N."""
    offset: int = -1
    """Whose symbol agent i must name: agent (i + offset) mod N; must not be a multiple of N."""
    n_symbols: int = 4
    """Number of symbols K; guessing earns 1/K per agent and step."""
    episode_len: int = 8
    """Steps per episode, after which all agents are truncated."""
    agent_id: bool = False
    """Append a one-hot of the agent's index to its observation."""

    def __post_init__(self) -> None:
        check_field_types(self)
        # With one agent the target is its own symbol: nothing to communicate.
        require_agents("n_agents", self.n_agents, least=2)
        require(self.n_symbols >= 2, "n_symbols", ">= 2", self.n_symbols)
        require(self.offset % self.n_agents != 0, "offset", "not a multiple of n_agents", self.offset)
        require(self.episode_len >= 1, "episode_len", ">= 1", self.episode_len)


class SignalEnv(ParallelEnv):
    """N agents; agent i must name the private symbol of agent (i + offset) mod N. See the module docstring."""

    metadata: ClassVar[dict[str, Any]] = {
        "name": "signal_v0",
        "render_modes": ["rgb_array"],
        "render_fps": 2,
        "is_parallelizable": True,
    }

    CELL = 16
    """Pixels per cell in `render()`."""

    def __init__(self, options: SignalOptions | None = None, render_mode: str | None = None) -> None:
        self.options = options if options is not None else SignalOptions()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} is not supported by signal; expected None or 'rgb_array'")
        self.render_mode = render_mode
        n, k = self.options.n_agents, self.options.n_symbols
        self.possible_agents = [f"agent_{i}" for i in range(n)]
        self.agents: list[str] = []
        self._obs_dim = k + (n if self.options.agent_id else 0)
        # One space object per agent, returned as-is: PettingZoo requires the same object on every call.
        self._observation_spaces: dict[str, spaces.Space[Any]] = {
            a: spaces.Box(0.0, 1.0, shape=(self._obs_dim,), dtype=np.float32) for a in self.possible_agents
        }
        self._action_spaces: dict[str, spaces.Space[Any]] = {a: spaces.Discrete(k) for a in self.possible_agents}
        self.state_space = spaces.Box(0.0, 1.0, shape=(n * k,), dtype=np.float32)
        self._neighbour = (np.arange(n) + self.options.offset) % n  # whose symbol agent i must name
        self._rng = np.random.default_rng()
        self._symbols = np.zeros(n, dtype=np.int64)
        self._last_actions: np.ndarray | None = None  # (N,), for render()
        self._last_targets = np.zeros(n, dtype=np.int64)
        self._t = 0

    def observation_space(self, agent: str) -> spaces.Space[Any]:
        """Box(0, 1, (K [+ N],)) float32."""
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space[Any]:
        """Discrete(K): the symbol the agent names."""
        return self._action_spaces[agent]

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        """Start an episode; a `seed` reseeds the symbol generator, `options` are ignored."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.agents = self.possible_agents[:]
        self._t = 0
        self._last_actions = None
        self._draw_symbols()
        return self._observations(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> ParallelStep[np.ndarray]:
        """Score every agent's named symbol against its neighbour's, then draw new symbols."""
        if not self.agents:
            raise RuntimeError("SignalEnv.step() called before reset() or after the episode ended")
        n, k = self.options.n_agents, self.options.n_symbols
        chosen = np.zeros(n, dtype=np.int64)
        for i, agent in enumerate(self.possible_agents):
            if agent not in actions:
                raise ValueError(f"no action for live agent {agent!r}; actions were given for {sorted(actions)}")
            act = actions[agent]
            if isinstance(act, bool | np.bool_) or not isinstance(act, int | np.integer) or not 0 <= act < k:
                raise ValueError(f"action {act!r} for agent {agent!r} is invalid; expected an int in 0..{k - 1}")
            chosen[i] = act
        targets = self._symbols[self._neighbour]  # targets[i] = s_{(i+offset) mod N}
        rewards = {a: float(chosen[i] == targets[i]) for i, a in enumerate(self.possible_agents)}
        self._last_actions = chosen
        self._last_targets = targets
        self._t += 1
        done = self._t >= self.options.episode_len
        self._draw_symbols()
        observations = self._observations()
        terminations = {a: False for a in self.agents}
        truncations = {a: done for a in self.agents}
        infos: dict[str, dict[str, Any]] = {a: {} for a in self.agents}
        if done:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        """One-hot of every agent's current symbol, (N*K,) float32."""
        n, k = self.options.n_agents, self.options.n_symbols
        state = np.zeros((n, k), dtype=np.float32)
        state[np.arange(n), self._symbols] = 1.0
        return state.reshape(-1)

    def render(self) -> np.ndarray | None:
        """rgb (N*cell, 2*K*cell, 3): left each agent's symbol, right its last answer (green if right)."""
        if self.render_mode is None:
            return None
        n, k, c = self.options.n_agents, self.options.n_symbols, self.CELL
        image = np.full((n * c, 2 * k * c, 3), 64, dtype=np.uint8)
        for i in range(n):
            rows = slice(i * c + 1, (i + 1) * c - 1)
            s = int(self._symbols[i])
            image[rows, s * c + 1 : (s + 1) * c - 1] = 255
            if self._last_actions is not None:
                a = int(self._last_actions[i])
                color = (0, 200, 0) if a == int(self._last_targets[i]) else (200, 0, 0)
                image[rows, (k + a) * c + 1 : (k + a + 1) * c - 1] = color
        return image

    def close(self) -> None:
        """Nothing to release."""

    def _draw_symbols(self) -> None:
        self._symbols = self._rng.integers(self.options.n_symbols, size=self.options.n_agents)

    def _observations(self) -> dict[str, np.ndarray]:
        k = self.options.n_symbols
        obs = {}
        for i, agent in enumerate(self.agents):
            o = np.zeros(self._obs_dim, dtype=np.float32)
            o[self._symbols[i]] = 1.0
            if self.options.agent_id:
                o[k + i] = 1.0
            obs[agent] = o
        return obs
