"""The PettingZoo ParallelEnv step result, as the raw envs of this package return it."""

from __future__ import annotations

from typing import Any, TypeAlias, TypeVar

Obs = TypeVar("Obs")

ParallelStep: TypeAlias = tuple[
    dict[str, Obs],  # observations of the agents still in the episode before this step
    dict[str, float],  # rewards
    dict[str, bool],  # terminations
    dict[str, bool],  # truncations
    dict[str, dict[str, Any]],  # infos
]
"""`step()`'s return: `ParallelStep[np.ndarray]` for flat observations, `ParallelStep[dict[str, np.ndarray]]` for
observations with an action mask inside."""
