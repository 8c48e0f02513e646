"""What `TeamEnv` learns about the raw env's agents, and the team action space built from it.

Kept apart from `envs.team` so that the adapter's hot path (`TeamEnv.step`) reads on its own; everything here
runs once, when a TeamEnv is built, except `TeamActionSpace.sample`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

RawEnv = Any
"""A PettingZoo `ParallelEnv` (PettingZoo ships no type information, and duck-typed envs are welcome)."""

MASKED_OBS_KEYS = frozenset({"observation", "action_mask"})
"""Keys of PettingZoo's masked observation dict, whose "action_mask" TeamEnv reads."""


@dataclass(frozen=True)
class AgentSpec:
    """What TeamEnv needs to know about one agent of the raw env, fixed at construction."""

    name: str
    index: int
    observation_space: spaces.Space[Any]
    """The space of the observation proper (inside an {"observation", "action_mask"} dict if there is one)."""
    obs_shape: tuple[int, ...]
    obs_dim: int
    n_actions: int
    """Discrete: the number of actions. Box (``continuous``): the number of entries of the flattened action."""
    type_id: int
    box_obs: bool
    """A Box observation is copied with a reshape (fast path); other spaces go through `spaces.flatten`."""
    mask_in_obs: bool
    """The raw observation is {"observation": ..., "action_mask": ...} (PettingZoo's masking convention)."""
    continuous: bool = False
    """A Box action space (a real vector); otherwise Discrete."""
    action_shape: tuple[int, ...] = ()
    """The Box action's shape (the raw env receives this shape); () for Discrete."""
    action_low: np.ndarray | None = None
    """(n_actions,) float32 lower bounds of the flattened Box action (may be -inf); None for Discrete."""
    action_high: np.ndarray | None = None
    """(n_actions,) float32 upper bounds (may be +inf); None for Discrete."""
    action_dtype: Any = None
    """The Box's dtype, which the raw env receives; None for Discrete."""


class TeamActionSpace(spaces.MultiDiscrete):
    """`MultiDiscrete([A] * N)` whose unmasked `sample()` draws only the actions available now.

    The team env's `action_mask` buffer is shared with this space, so a random policy (gymnasium's
    `check_env`, a smoke test, a random-action baseline) never picks a padded action of a smaller agent or an
    action the raw env masked, which the team env would reject. `contains()` is the plain MultiDiscrete one;
    the team env's `step()` does the precise check with an error that names the agent.
    """

    def __init__(self, n_agents: int, n_actions: int, available: np.ndarray, seed: int | None = None) -> None:
        super().__init__(np.full(n_agents, n_actions, dtype=np.int64), seed=seed)
        if available.shape != (n_agents, n_actions):
            raise ValueError(f"available must have shape ({n_agents}, {n_actions}), got {available.shape}")
        self.available = available  # (N, A), updated in place by the team env

    def sample(
        self,
        mask: tuple[np.ndarray, ...] | None = None,
        probability: tuple[np.ndarray, ...] | None = None,
    ) -> np.ndarray:
        """A random action per agent; without `mask`/`probability`, only among those available now."""
        if mask is None and probability is None:
            mask = tuple((row > 0).astype(np.int8) for row in self.available)
        return super().sample(mask=mask, probability=probability)


def flat_bounds(space: spaces.Space[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the flattened space, widened to include 0 (dead rows, sanitised values)."""
    flat = space if isinstance(space, spaces.Box) else spaces.flatten_space(space)
    if not isinstance(flat, spaces.Box):
        raise ValueError(f"space {space} cannot be flattened to a vector; expected Box, Discrete, Multi* or Tuple")
    low = np.minimum(flat.low.reshape(-1).astype(np.float32), 0.0)
    high = np.maximum(flat.high.reshape(-1).astype(np.float32), 0.0)
    return low, high


def resolve_env(env: RawEnv | Callable[[], RawEnv]) -> RawEnv:
    """Accept an already constructed ParallelEnv or a zero-argument factory of one."""
    if hasattr(env, "possible_agents") and hasattr(env, "step"):
        return env
    if callable(env):
        built = env()
        if hasattr(built, "possible_agents") and hasattr(built, "step"):
            return built
        raise TypeError(f"env factory {env!r} returned {built!r}; expected a PettingZoo ParallelEnv")
    raise TypeError(f"env must be a PettingZoo ParallelEnv or a zero-argument factory of one, got {env!r}")


def agent_spec(env: RawEnv, name: str, index: int, type_id: int) -> AgentSpec:
    """The fixed facts about agent `name` of `env`.

    Raises:
        ValueError: an action space that is neither Discrete (starting at 0) nor a float Box with low <= high.
    """
    obs_space = env.observation_space(name)
    mask_in_obs = isinstance(obs_space, spaces.Dict) and set(obs_space.spaces) == MASKED_OBS_KEYS
    if mask_in_obs:
        obs_space = obs_space["observation"]
    act_space = env.action_space(name)
    box = isinstance(obs_space, spaces.Box)
    if isinstance(act_space, spaces.Box):
        return _box_agent_spec(name, index, type_id, obs_space, box, mask_in_obs, act_space)
    if not isinstance(act_space, spaces.Discrete):
        raise ValueError(
            f"agent {name!r} has action space {act_space}; TeamEnv expects Discrete actions or continuous actions "
            "in a float Box"
        )
    if int(act_space.start) != 0:
        raise ValueError(f"agent {name!r} has action space {act_space}; expected actions starting at 0")
    return AgentSpec(
        name=name,
        index=index,
        observation_space=obs_space,
        obs_shape=tuple(obs_space.shape) if box else (),
        obs_dim=spaces.flatdim(obs_space),
        n_actions=int(act_space.n),
        type_id=type_id,
        box_obs=box,
        mask_in_obs=mask_in_obs,
    )


def _box_agent_spec(
    name: str,
    index: int,
    type_id: int,
    obs_space: spaces.Space[Any],
    box_obs: bool,
    mask_in_obs: bool,
    act_space: spaces.Box,
) -> AgentSpec:
    """The spec of an agent with continuous actions (a float Box of any shape, flattened in the team layout)."""
    if not np.issubdtype(act_space.dtype, np.floating):
        raise ValueError(
            f"agent {name!r} has action space {act_space} of dtype {act_space.dtype}; expected a float Box for "
            "continuous actions (an integer Box is not a continuous action)"
        )
    low = act_space.low.reshape(-1).astype(np.float32)
    high = act_space.high.reshape(-1).astype(np.float32)
    if low.size == 0 or not np.all(low <= high) or np.isnan(low).any() or np.isnan(high).any():
        raise ValueError(f"agent {name!r} has action space {act_space}; expected at least one entry and low <= high")
    return AgentSpec(
        name=name,
        index=index,
        observation_space=obs_space,
        obs_shape=tuple(obs_space.shape or ()) if box_obs else (),
        obs_dim=spaces.flatdim(obs_space),
        n_actions=int(low.size),
        type_id=type_id,
        box_obs=box_obs,
        mask_in_obs=mask_in_obs,
        continuous=True,
        action_shape=tuple(act_space.shape or ()),
        action_low=low,
        action_high=high,
        action_dtype=act_space.dtype,
    )


def agent_types(env: RawEnv, names: list[str]) -> list[int]:
    """Each agent's type: index of its (observation space, action space) pair in order of first appearance."""
    signatures: list[tuple[Any, Any]] = []
    types: list[int] = []
    for name in names:
        signature = (env.observation_space(name), env.action_space(name))
        # Spaces define == but not hash, hence a list search (construction time only).
        for type_id, known in enumerate(signatures):
            if known == signature:
                types.append(type_id)
                break
        else:
            signatures.append(signature)
            types.append(len(signatures) - 1)
    return types
