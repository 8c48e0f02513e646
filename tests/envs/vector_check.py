"""The check every natively vectorised env of `envs/batched.py` shares: B envs stepped at once behave exactly as B
single team envs seeded alike (seed + b) and given the same actions, step by step through NEXT_STEP auto-resets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from envs.team import TeamEnv

Actions = Callable[[dict[str, np.ndarray], np.random.Generator], np.ndarray]
InfoCheck = Callable[[dict[str, Any], int, dict[str, Any]], None]


def random_available(obs: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A uniformly random available action for every agent of every env, (B, N)."""
    mask = obs["action_mask"]
    return np.where(mask > 0, rng.random(mask.shape), -1.0).argmax(-1)


def assert_vector_matches_singles(
    vector: Any, singles: list[TeamEnv], steps: int, actions: Actions = random_available, info: InfoCheck | None = None
) -> list[dict[str, Any]]:
    """Steps both sides `steps` times; asserts equal observations (every key), rewards, terminated / truncated flags
    and per-agent rewards, and calls `info(vector_info, b, single_info)` for the env's own facts. Returns the single
    envs' infos of every stepped (not resetting) step, for the caller's counts."""
    b = len(singles)
    obs, _ = vector.reset(seed=10)
    single_obs = [env.reset(seed=10 + i)[0] for i, env in enumerate(singles)]
    rng = np.random.default_rng(0)
    done = np.zeros(b, dtype=bool)
    stepped: list[dict[str, Any]] = []
    resets = 0
    for _ in range(steps):
        for i in range(b):
            for key in single_obs[i]:
                np.testing.assert_array_equal(obs[key][i], single_obs[i][key], err_msg=key)
        chosen = actions(obs, rng)
        obs, reward, terminated, truncated, vector_info = vector.step(chosen)
        for i, env in enumerate(singles):
            if done[i]:  # NEXT_STEP auto-reset: this step started a new episode (reward 0)
                single_obs[i], _ = env.reset()
                assert reward[i] == 0.0 and not terminated[i] and not truncated[i]
                resets += 1
                continue
            single_obs[i], r, term, trunc, single_info = env.step(chosen[i])
            assert reward[i] == pytest.approx(r) and terminated[i] == term and truncated[i] == trunc
            np.testing.assert_array_equal(vector_info["agent_rewards"][i], single_info["agent_rewards"])
            if info is not None:
                info(vector_info, i, single_info)
            stepped.append(single_info)
        done = terminated | truncated
    assert resets >= 4, resets  # the comparison went through several auto-resets
    return stepped
