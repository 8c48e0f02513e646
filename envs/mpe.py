"""Factories of the mpe2 environments (MPE, moved out of PettingZoo), always with discrete actions.

Each factory takes its frozen options dataclass and a render mode and returns the raw PettingZoo ParallelEnv;
`envs.registry` names them and `TeamEnv` wraps them. Facts of the pinned mpe2 used here (tests/envs/test_mpe.py
checks the sizes against the installed package):

- simple_spread_v3: N agents and N landmarks, obs (6N,) per agent, Discrete(5); reward per agent =
  global * (1 - local_ratio) + local * local_ratio; episodes end by truncation at max_cycles.
- simple_reference_v3: 2 agents, obs (21,), Discrete(50) (5 moves x 10 messages).
- simple_speaker_listener_v4: heterogeneous, speaker obs (3,) / Discrete(3), listener obs (11,) / Discrete(5).

mpe2's `state()` is the concatenation of every agent's observation, recomputed from the world at a cost
(docs/BENCHMARKS.md, "Figures behind code choices"). The factories wrap the env in `JointObsState`, which concatenates
the observations the last `reset` / `step` returned instead (the same values; tests/envs/test_mpe.py compares them at
every step).

mpe2 is imported inside the factories: importing it imports pygame, which processes that never build an MPE
env (the signal env's learning tests, other envs) need not pay for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.options import check_field_types, require, require_agents


class JointObsState:
    """A ParallelEnv whose `state()` is the concatenation, in `possible_agents` order, of the float32 observations
    the last `reset` / `step` returned: what mpe2's own `state()` computes again from the world.

    Everything else is the wrapped env's (attributes are forwarded).
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self._last: dict[str, np.ndarray] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        obs, infos = self.env.reset(seed=seed, options=options)
        self._last = dict(obs)
        return obs, infos

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        result = self.env.step(actions)
        self._last.update(result[0])
        return result

    def state(self) -> np.ndarray:
        return np.concatenate([np.asarray(self._last[a], dtype=np.float32).ravel() for a in self.env.possible_agents])


@dataclass(frozen=True)
class SpreadOptions:
    """Options of `mpe_spread` (mpe2 simple_spread_v3)."""

    n_agents: int = 3
    """Number of agents, and of landmarks."""
    local_ratio: float = 0.5
    """Weight of the agent's own (collision) reward; the shared landmark reward gets 1 - local_ratio."""
    max_cycles: int = 25
    """Steps per episode (truncation)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        require_agents("n_agents", self.n_agents)
        require(0.0 <= self.local_ratio <= 1.0, "local_ratio", "in [0, 1]", self.local_ratio)
        require(self.max_cycles >= 1, "max_cycles", ">= 1", self.max_cycles)


@dataclass(frozen=True)
class ReferenceOptions:
    """Options of `mpe_reference` (mpe2 simple_reference_v3, 2 agents)."""

    local_ratio: float = 0.5
    """Weight of the agent's own reward; the team's average reward gets 1 - local_ratio."""
    max_cycles: int = 25
    """Steps per episode (truncation)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        require(0.0 <= self.local_ratio <= 1.0, "local_ratio", "in [0, 1]", self.local_ratio)
        require(self.max_cycles >= 1, "max_cycles", ">= 1", self.max_cycles)


@dataclass(frozen=True)
class SpeakerListenerOptions:
    """Options of `mpe_speaker_listener` (mpe2 simple_speaker_listener_v4: a speaker and a listener)."""

    max_cycles: int = 25
    """Steps per episode (truncation)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        require(self.max_cycles >= 1, "max_cycles", ">= 1", self.max_cycles)


def simple_spread(options: SpreadOptions, render_mode: str | None = None) -> Any:
    """mpe2 simple_spread_v3 as a ParallelEnv with discrete actions."""
    from mpe2 import simple_spread_v3

    return JointObsState(
        simple_spread_v3.parallel_env(
            N=options.n_agents,
            local_ratio=options.local_ratio,
            max_cycles=options.max_cycles,
            continuous_actions=False,
            render_mode=render_mode,
        )
    )


def simple_reference(options: ReferenceOptions, render_mode: str | None = None) -> Any:
    """mpe2 simple_reference_v3 as a ParallelEnv with discrete actions."""
    from mpe2 import simple_reference_v3

    return JointObsState(
        simple_reference_v3.parallel_env(
            local_ratio=options.local_ratio,
            max_cycles=options.max_cycles,
            continuous_actions=False,
            render_mode=render_mode,
        )
    )


def simple_speaker_listener(options: SpeakerListenerOptions, render_mode: str | None = None) -> Any:
    """mpe2 simple_speaker_listener_v4 as a ParallelEnv with discrete actions."""
    from mpe2 import simple_speaker_listener_v4

    return JointObsState(
        simple_speaker_listener_v4.parallel_env(
            max_cycles=options.max_cycles, continuous_actions=False, render_mode=render_mode
        )
    )
