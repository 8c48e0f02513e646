"""TeamEnv with continuous (Box) actions: the team action space, clipping to each agent's box at its limits, padded
boxes of different sizes, dead agents, bad actions, and real PettingZoo envs (mpe2 with `continuous_actions=True`).

The sisl envs with Box actions (multiwalker, waterworld) need Box2D / pymunk, not installed here; they are not tested.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from mpe2 import simple_spread_v3

from agents.play import random_actor
from envs.registry import make_team_env
from envs.team import TeamEnv
from tests.envs.test_team_env import ScriptedEnv


class BoxEnv(ScriptedEnv):
    """ScriptedEnv whose agents take real vectors: agent a a Box(-1, 1, (2, 2)), b a Box([0, -inf], [1, inf]), c a
    Box(-2, 3, (1,)) of float64; it records what it receives."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._act_spaces = {
            "a": spaces.Box(-1.0, 1.0, shape=(2, 2), dtype=np.float32),
            "b": spaces.Box(np.array([0.0, -np.inf]), np.array([1.0, np.inf]), dtype=np.float32),
            "c": spaces.Box(-2.0, 3.0, shape=(1,), dtype=np.float64),
        }


def test_the_team_action_space_is_a_box_of_the_agents_bounds_padded_to_the_largest():
    env = TeamEnv(BoxEnv())
    assert env.continuous and env.n_actions == 4
    space = env.action_space
    assert isinstance(space, spaces.Box) and space.shape == (3, 4) and space.dtype == np.float32
    np.testing.assert_array_equal(space.low, [[-1, -1, -1, -1], [0, -np.inf, 0, 0], [-2, 0, 0, 0]])
    np.testing.assert_array_equal(space.high, [[1, 1, 1, 1], [1, np.inf, 0, 0], [3, 0, 0, 0]])
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["action_mask"], [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])  # own entries


def test_actions_are_clipped_to_each_box_at_its_limits_and_reach_the_raw_env_in_its_shape_and_dtype():
    raw = BoxEnv()
    env = TeamEnv(raw)
    env.reset(seed=0)
    action = np.array([[-5.0, 0.5, 1.0, 7.0], [1.5, -1e6, 9.0, 9.0], [3.0, 4.0, 4.0, 4.0]], dtype=np.float32)
    env.step(action)
    sent = raw.received[-1]
    np.testing.assert_array_equal(sent["a"], [[-1.0, 0.5], [1.0, 1.0]])  # clipped both ways, the limit itself kept
    np.testing.assert_array_equal(sent["b"], [1.0, -1e6])  # an infinite bound clips nothing
    np.testing.assert_array_equal(sent["c"], [3.0])
    assert sent["a"].shape == (2, 2) and sent["a"].dtype == np.float32 and sent["c"].dtype == np.float64
    for name in "abc":
        assert raw.action_space(name).contains(sent[name])
    np.testing.assert_array_equal(action[0], [-5.0, 0.5, 1.0, 7.0])  # the caller's (unclipped) array is left alone


def test_a_dead_agent_is_sent_zero_clipped_into_its_box():
    class Lingering(BoxEnv):
        """Terminated agents stay listed in `agents` (an env that keeps them until the episode ends)."""

        def step(self, actions: dict[str, Any]) -> tuple[Any, Any, Any, Any, Any]:
            listed = self.agents[:]
            out = super().step(actions)
            self.agents = listed if self.t < self.episode_len else []
            return out

    raw = Lingering(die_at={"c": 1})
    raw._act_spaces["c"] = spaces.Box(0.5, 3.0, shape=(1,), dtype=np.float64)  # zero lies outside
    env = TeamEnv(raw)
    env.reset(seed=0)
    obs, *_ = env.step(np.zeros((3, 4), dtype=np.float32))
    assert obs["alive"].tolist() == [1.0, 1.0, 0.0]
    env.step(np.full((3, 4), 2.0, dtype=np.float32))
    np.testing.assert_array_equal(raw.received[-1]["c"], [0.5])


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.zeros((3, 3), dtype=np.float32), r"shape \(3, 4\)"),
        (np.full((3, 4), np.nan, dtype=np.float32), r"non-finite entries for agents \['a', 'b', 'c'\]"),
        (np.zeros((3, 4), dtype=object), r"a real array"),
    ],
)
def test_a_bad_continuous_action_raises_naming_what_was_expected(action, message):
    env = TeamEnv(BoxEnv())
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


def test_the_random_actor_draws_inside_each_box():
    env = TeamEnv(BoxEnv())
    obs, _ = env.reset(seed=0)
    act = random_actor(0, env)
    draws = np.stack([act(obs)[0] for _ in range(200)])  # (200, 3, 4)
    low, high = env.action_space.low, env.action_space.high
    assert np.all((draws >= low) & (draws <= high))
    assert draws[:, 0, 0].min() < -0.8 and draws[:, 0, 0].max() > 0.8  # spread over the box, not at one point


# ---------------------------------------------------------------------------------------------- real PettingZoo envs


def _spread(**kwargs: Any) -> TeamEnv:
    return TeamEnv(simple_spread_v3.parallel_env(N=3, max_cycles=10, continuous_actions=True, **kwargs), use_state=True)


def test_mpe_spread_with_continuous_actions_passes_gymnasiums_checker_and_plays_an_episode():
    env = _spread()
    assert env.continuous and env.action_space.shape == (3, 5)
    np.testing.assert_array_equal(env.action_space.low, 0.0)
    np.testing.assert_array_equal(env.action_space.high, 1.0)
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps, done = 0, False
    while not done:
        _, reward, terminated, truncated, _ = env.step(rng.normal(0.5, 2.0, size=(3, 5)).astype(np.float32))
        assert np.isfinite(reward)
        steps, done = steps + 1, terminated or truncated
    assert steps == 10


def test_mpe_spread_moves_the_agents_as_the_clipped_action_does():
    """An action beyond the box moves an agent exactly as the box's limit does (mpe2 would move it further)."""
    positions = []
    for action in (np.float32(1.0), np.float32(25.0)):
        env = _spread()
        env.reset(seed=3)
        push = np.zeros((3, 5), dtype=np.float32)
        push[:, 2] = action  # "move right" at full force, or far beyond it
        env.step(push)
        obs, *_ = env.step(push)
        positions.append(obs["obs"][:, 2:4].copy())  # each agent's own position
        env.close()
    np.testing.assert_array_equal(positions[0], positions[1])


def test_sisl_multiwalker_by_import_path_matches_the_raw_env_under_clipped_actions():
    """PettingZoo's multiwalker (Box2D, 3 walkers, 4 joint torques in [-1, 1]), taken by import path as any user's
    env: the team env's observations and team reward are the raw env's when the raw env is sent the clipped
    actions, for a random walk with actions far outside the box."""
    from pettingzoo.sisl import multiwalker_v9

    options = {"n_walkers": 3, "max_cycles": 40}
    team = make_team_env("pettingzoo.sisl.multiwalker_v9", options)
    raw = multiwalker_v9.parallel_env(**options)
    try:
        assert team.continuous and team.action_space.shape == (3, 4)
        np.testing.assert_array_equal(team.action_space.low, -1.0)
        obs, _ = team.reset(seed=5)
        raw_obs, _ = raw.reset(seed=5)
        agents = list(raw.possible_agents)
        rng = np.random.default_rng(0)
        for step in range(40):
            for i, agent in enumerate(agents):
                if agent in raw_obs:
                    np.testing.assert_allclose(obs["obs"][i], raw_obs[agent], rtol=1e-6, err_msg=f"step {step}")
            actions = rng.normal(0.0, 3.0, size=(3, 4)).astype(np.float32)
            obs, reward, terminated, truncated, _ = team.step(actions)
            clipped = {a: np.clip(actions[i], -1.0, 1.0) for i, a in enumerate(agents) if a in raw.agents}
            raw_obs, raw_rewards, *_ = raw.step(clipped)
            assert reward == pytest.approx(sum(raw_rewards.values()) / 3, rel=1e-5)  # team_reward: mean
            if terminated or truncated:
                break
    finally:
        team.close()
        raw.close()
