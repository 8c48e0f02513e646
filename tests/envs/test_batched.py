"""envs/batched.py on a toy game: the vector of B team envs equals B TeamEnvs over the ParallelEnv face, step by
step through auto-resets; PettingZoo's API test; actions checked against the masks."""

from __future__ import annotations

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from envs.batched import BatchedGame, BatchedParallelEnv, BatchedTeamEnv, Observed, Stepped
from envs.team import TeamEnv
from tests.envs.vector_check import assert_vector_matches_singles

LENGTH, N, T = 5, 3, 6


class Walk(BatchedGame):
    """N walkers on a line of LENGTH cells; each must reach the env's target cell (drawn at reset). Actions: 0 stay,
    1 left, 2 right (no walking off the line: masked). Agent 2 sits out every odd step (inactive). Reward 1 per
    agent on the target; the episode terminates when every active agent is on it, is truncated after T steps."""

    agent_prefix = "walker"
    name = "walk"
    n_agents, n_actions, obs_dim, state_dim = N, 3, LENGTH, N + 1

    def __init__(self, num_envs: int) -> None:
        super().__init__(num_envs)
        self.pos = np.zeros((num_envs, N), dtype=np.int64)
        self.target = np.zeros(num_envs, dtype=np.int64)
        self.t = np.zeros(num_envs, dtype=np.int64)

    def reset(self, rows: np.ndarray) -> None:
        for b in np.flatnonzero(rows):
            self.pos[b] = self.rngs[b].integers(LENGTH, size=N)
            self.target[b] = self.rngs[b].integers(LENGTH)
        self.t[rows] = 0

    def _active(self) -> np.ndarray:
        active = np.ones((self.num_envs, N), dtype=bool)
        active[:, 2] = self.t % 2 == 0
        return active

    def step(self, actions: np.ndarray, rows: np.ndarray) -> Stepped:
        moving = rows[:, None] & self._active()
        delta = np.where(actions == 1, -1, np.where(actions == 2, 1, 0))
        self.pos = np.where(moving, np.clip(self.pos + delta, 0, LENGTH - 1), self.pos)
        self.t = self.t + rows
        on_target = self.pos == self.target[:, None]
        active = self._active()
        rewards = np.where(rows[:, None] & on_target, 1.0, 0.0)
        done = rows & (on_target | ~active).all(-1)
        return Stepped(rewards, done, rows & (self.t >= T), {"won": done})

    def observe(self) -> Observed:
        b = self.num_envs
        obs = np.zeros((b, N, LENGTH), dtype=np.float32)
        np.put_along_axis(obs, self.pos[..., None], 1.0, axis=-1)
        mask = np.ones((b, N, 3), dtype=np.float32)
        mask[..., 1] = self.pos > 0
        mask[..., 2] = self.pos < LENGTH - 1
        state = np.concatenate([self.pos, self.target[:, None]], axis=1).astype(np.float32)
        return Observed(obs, mask, self._active(), state)


def _team_env(seed: int, history: int) -> TeamEnv:
    return TeamEnv(BatchedParallelEnv(Walk(1)), use_state=True, history=history)


@pytest.mark.parametrize("history", [0, 3])
def test_the_vector_env_equals_single_team_envs_through_auto_resets(history: int) -> None:
    b = 4
    vector = BatchedTeamEnv(Walk(b), use_state=True, history=history)
    singles = [_team_env(b_, history) for b_ in range(b)]

    def won(vector_info: dict, i: int, single_info: dict) -> None:
        assert bool(vector_info["won"][i]) == bool(single_info.get("won", False))

    assert_vector_matches_singles(vector, singles, 40, info=won)


def test_an_inactive_agent_is_dead_to_the_team_and_rejoins() -> None:
    env = _team_env(0, 0)
    obs, _ = env.reset(seed=3)
    assert obs["alive"].tolist() == [1.0, 1.0, 1.0]
    obs, *_ = env.step(np.zeros(N, dtype=np.int64))
    assert obs["alive"].tolist() == [1.0, 1.0, 0.0] and obs["obs"][2].sum() == 0.0
    assert obs["action_mask"][2].tolist() == [1.0, 0.0, 0.0]  # only the no-op
    obs, _, terminated, _, _ = env.step(np.zeros(N, dtype=np.int64))
    if not terminated:
        assert obs["alive"].tolist() == [1.0, 1.0, 1.0]


def test_the_parallel_face_passes_pettingzoos_api_test() -> None:
    parallel_api_test(BatchedParallelEnv(Walk(1)), num_cycles=50)


def test_actions_are_checked_against_the_masks() -> None:
    vector = BatchedTeamEnv(Walk(2))
    with pytest.raises(RuntimeError, match="before reset"):
        vector.step(np.zeros((2, N), dtype=np.int64))
    obs, _ = vector.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        vector.step(np.zeros((2, 2), dtype=np.int64))
    seed = next(s for s in range(100) if (vector.reset(seed=s)[0]["action_mask"][..., 1] == 0).any())
    obs, _ = vector.reset(seed=seed)
    env, agent = (int(x) for x in np.argwhere(obs["action_mask"][..., 1] == 0)[0])  # on cell 0: cannot go left
    actions = np.zeros((2, N), dtype=np.int64)
    actions[env, agent] = 1
    with pytest.raises(ValueError, match=rf"action 1 for agent walker_{agent} of env {env} is not available"):
        vector.step(actions)
    obs, *_ = vector.step(np.zeros((2, N), dtype=np.int64))
    assert obs["alive"][:, 2].tolist() == [0.0, 0.0]
    actions = np.zeros((2, N), dtype=np.int64)
    actions[:, 2] = 7  # an inactive agent's action is ignored
    vector.step(actions)
    assert vector.action_space.sample().shape == (2, N)


def test_the_parallel_face_plays_one_env_only() -> None:
    with pytest.raises(ValueError, match="plays one env"):
        BatchedParallelEnv(Walk(2))
