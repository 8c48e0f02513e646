"""`MemoryEnv`: a tiny PettingZoo ParallelEnv that can only be solved by remembering `delay` steps back.

Each agent i privately draws a cue c_i in {0..K-1} at the start of the episode. An episode has delay + 1 steps,
t = 0 .. delay; agent i's observation at step t is [cue one-hot (K) | cue flag | respond flag]:

- t = 0:            the one-hot of c_i, cue flag 1;
- t = 1 .. delay-1: all zero;
- t = delay:        respond flag 1 (the cue part is zero).

The action at step t names a symbol. At t = delay each agent earns 1 if it names its own cue, else 0; every
other step earns 0. A policy that sees only the present guesses (1/K per agent and episode); one whose history
window covers delay + 1 steps can earn 1. The agents need no messages: this env tests memory, not
communication (`SignalEnv` is the communication test).

The episode *terminates* after the response (every agent at once): the task is over, so there is no future
reward for a critic to bootstrap, which a truncation (a time limit) would imply.

Used by the learning test of the history encoders (tests/learning/test_memory_learning.py), checked by
PettingZoo's own `parallel_api_test`. `state()` is the concatenation of the agents' current observations.
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
class MemoryOptions:
    """Options of the `memory` env (`env.options.*` in an experiment config)."""

    n_agents: int = 2
    """Number of agents N, each with its own cue."""
    n_symbols: int = 4
    """Number of cue values K; a memoryless policy earns 1/K."""
    delay: int = 64
    """Steps between the cue (step 0) and the response (step delay); an episode has delay + 1 steps."""

    def __post_init__(self) -> None:
        check_field_types(self)
        require_agents("n_agents", self.n_agents)
        require(self.n_symbols >= 2, "n_symbols", ">= 2", self.n_symbols)
        # delay 0 would show the cue and ask for it in the same step: nothing to remember.
        require(self.delay >= 1, "delay", ">= 1", self.delay)


class MemoryEnv(ParallelEnv):
    """N agents; each must name, `delay` steps later, the private cue it saw at step 0. See the module docstring."""

    metadata: ClassVar[dict[str, Any]] = {
        "name": "memory_v0",
        "render_modes": ["rgb_array"],
        "render_fps": 4,
        "is_parallelizable": True,
    }

    CELL = 16
    """Pixels per cell in `render()`."""

    def __init__(self, options: MemoryOptions | None = None, render_mode: str | None = None) -> None:
        self.options = options if options is not None else MemoryOptions()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} is not supported by memory; expected None or 'rgb_array'")
        self.render_mode = render_mode
        n, k = self.options.n_agents, self.options.n_symbols
        self.possible_agents = [f"agent_{i}" for i in range(n)]
        self.agents: list[str] = []
        self._obs_dim = k + 2
        # One space object per agent, returned as-is: PettingZoo requires the same object on every call.
        self._observation_spaces: dict[str, spaces.Space[Any]] = {
            a: spaces.Box(0.0, 1.0, shape=(self._obs_dim,), dtype=np.float32) for a in self.possible_agents
        }
        self._action_spaces: dict[str, spaces.Space[Any]] = {a: spaces.Discrete(k) for a in self.possible_agents}
        self.state_space = spaces.Box(0.0, 1.0, shape=(n * self._obs_dim,), dtype=np.float32)
        self._rng = np.random.default_rng()
        self._cues = np.zeros(n, dtype=np.int64)
        self._obs = np.zeros((n, self._obs_dim), dtype=np.float32)  # current observations, row per agent
        self._answers: np.ndarray | None = None  # (N,) the responses, for render()
        self._t = 0

    def observation_space(self, agent: str) -> spaces.Space[Any]:
        """Box(0, 1, (K + 2,)) float32: [cue one-hot | cue flag | respond flag]."""
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space[Any]:
        """Discrete(K): the symbol the agent names."""
        return self._action_spaces[agent]

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        """Start an episode with fresh cues; a `seed` reseeds the cue generator, `options` are ignored."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.agents = self.possible_agents[:]
        self._t = 0
        self._answers = None
        k = self.options.n_symbols
        self._cues = self._rng.integers(k, size=self.options.n_agents)
        self._obs[:] = 0.0
        self._obs[np.arange(self.options.n_agents), self._cues] = 1.0
        self._obs[:, k] = 1.0  # cue flag
        return self._observations(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> ParallelStep[np.ndarray]:
        """Score the response at step `delay` (0 elsewhere) and advance one step."""
        if not self.agents:
            raise RuntimeError("MemoryEnv.step() called before reset() or after the episode ended")
        n, k, delay = self.options.n_agents, self.options.n_symbols, self.options.delay
        chosen = np.zeros(n, dtype=np.int64)
        for i, agent in enumerate(self.possible_agents):
            if agent not in actions:
                raise ValueError(f"no action for live agent {agent!r}; actions were given for {sorted(actions)}")
            act = actions[agent]
            if isinstance(act, bool | np.bool_) or not isinstance(act, int | np.integer) or not 0 <= act < k:
                raise ValueError(f"action {act!r} for agent {agent!r} is invalid; expected an int in 0..{k - 1}")
            chosen[i] = act
        responding = self._t == delay
        correct = chosen == self._cues
        rewards = {a: float(responding and correct[i]) for i, a in enumerate(self.possible_agents)}
        if responding:
            self._answers = chosen
        self._t += 1
        self._obs[:] = 0.0
        if self._t == delay:
            self._obs[:, k + 1] = 1.0  # respond flag
        observations = self._observations()
        terminations = {a: responding for a in self.agents}
        truncations = {a: False for a in self.agents}
        infos: dict[str, dict[str, Any]] = {a: {} for a in self.agents}
        if responding:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        """The agents' current observations, concatenated: (N * (K + 2),) float32."""
        return self._obs.reshape(-1).copy()

    def render(self) -> np.ndarray | None:
        """rgb (N*cell, 2*K*cell, 3): left each agent's cue (bright while visible), right its response (green if
        right, red if wrong) once given."""
        if self.render_mode is None:
            return None
        n, k, c = self.options.n_agents, self.options.n_symbols, self.CELL
        image = np.full((n * c, 2 * k * c, 3), 64, dtype=np.uint8)
        for i in range(n):
            rows = slice(i * c + 1, (i + 1) * c - 1)
            cue = int(self._cues[i])
            image[rows, cue * c + 1 : (cue + 1) * c - 1] = 255 if self._t == 0 else 128
            if self._answers is not None:
                a = int(self._answers[i])
                color = (0, 200, 0) if a == cue else (200, 0, 0)
                image[rows, (k + a) * c + 1 : (k + a + 1) * c - 1] = color
        return image

    def close(self) -> None:
        """Nothing to release."""

    def _observations(self) -> dict[str, np.ndarray]:
        return {agent: self._obs[i].copy() for i, agent in enumerate(self.possible_agents) if agent in self.agents}
