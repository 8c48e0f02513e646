"""TeamEnv against a scripted raw env whose every output is known by hand.

`ScriptedEnv` is a PettingZoo ParallelEnv in which agent i at step t observes the constant 10*i + t and earns
reward (i + 1) * (t + 1); agents can be scripted to die, to emit a wrong shape or NaN, to mask actions, or to
report info values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from pettingzoo import ParallelEnv

from envs.team import TeamEnv

Mask = Callable[[str, int], np.ndarray | None]


class ScriptedEnv(ParallelEnv):
    """Deterministic raw env for the adapter tests (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"name": "scripted", "render_modes": []}

    def __init__(
        self,
        names: tuple[str, ...] = ("a", "b", "c"),
        obs_dims: tuple[int, ...] = (2, 2, 2),
        n_actions: tuple[int, ...] = (3, 3, 3),
        *,
        episode_len: int = 5,
        die_at: dict[str, int] | None = None,
        bad_shape_at: tuple[str, int] | None = None,
        nan_at: int | None = None,
        info_mask: Mask | None = None,
        mask_in_obs: bool = False,
        extra_infos: Callable[[str, int], dict[str, Any]] | None = None,
    ) -> None:
        self.possible_agents = list(names)
        self.agents: list[str] = []
        self._dims = dict(zip(names, obs_dims, strict=True))
        self._n_actions = dict(zip(names, n_actions, strict=True))
        self._obs_spaces: dict[str, spaces.Space[Any]] = {}
        for name in names:
            box = spaces.Box(-100.0, 100.0, shape=(self._dims[name],), dtype=np.float32)
            mask_box = spaces.Box(0, 1, shape=(self._n_actions[name],), dtype=np.int8)
            self._obs_spaces[name] = spaces.Dict({"observation": box, "action_mask": mask_box}) if mask_in_obs else box
        self._act_spaces: dict[str, spaces.Space[Any]] = {
            name: spaces.Discrete(self._n_actions[name]) for name in names
        }
        self.episode_len = episode_len
        self.die_at = die_at or {}
        self.bad_shape_at = bad_shape_at
        self.nan_at = nan_at
        self.info_mask = info_mask
        self.mask_in_obs = mask_in_obs
        self.extra_infos = extra_infos
        self.received: list[dict[str, int]] = []
        self.closed = False
        self.t = 0

    def observation_space(self, agent: str) -> spaces.Space[Any]:
        return self._obs_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space[Any]:
        return self._act_spaces[agent]

    def _obs(self, agent: str) -> Any:
        i = self.possible_agents.index(agent)
        shape = (self._dims[agent] + 1,) if self.bad_shape_at == (agent, self.t) else (self._dims[agent],)
        value = np.nan if (self.nan_at == self.t and i == 0) else 10 * i + self.t
        obs = np.full(shape, value, dtype=np.float32)
        if self.mask_in_obs:
            mask = self.info_mask(agent, self.t) if self.info_mask else None
            if mask is None:
                mask = np.ones(self._n_actions[agent], dtype=np.int8)
            return {"observation": obs, "action_mask": mask}
        return obs

    def _infos(self) -> dict[str, dict[str, Any]]:
        infos: dict[str, dict[str, Any]] = {}
        for agent in self.agents:
            info: dict[str, Any] = {}
            if self.info_mask is not None and not self.mask_in_obs:
                mask = self.info_mask(agent, self.t)
                if mask is not None:
                    info["action_mask"] = mask
            if self.extra_infos is not None:
                info.update(self.extra_infos(agent, self.t))
            infos[agent] = info
        return infos

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, Any]:
        self.t = 0
        self.agents = self.possible_agents[:]
        # Reversed key order on purpose: TeamEnv must order rows by possible_agents, not by dict order.
        return {a: self._obs(a) for a in reversed(self.agents)}, self._infos()

    def step(self, actions: dict[str, int]) -> tuple[Any, Any, Any, Any, Any]:
        assert set(actions) == set(self.agents), f"actions for {sorted(actions)}, live {sorted(self.agents)}"
        self.received.append(dict(actions))
        self.t += 1
        rewards = {a: float((self.possible_agents.index(a) + 1) * self.t) for a in self.agents}
        terminations = {a: self.die_at.get(a) == self.t for a in self.agents}
        truncations = {a: self.t >= self.episode_len for a in self.agents}
        observations = {a: self._obs(a) for a in reversed(self.agents)}
        infos = self._infos()
        self.agents = [a for a in self.agents if not (terminations[a] or truncations[a])]
        return observations, rewards, terminations, truncations, infos

    def close(self) -> None:
        self.closed = True


def test_rows_follow_possible_agents_not_dict_order() -> None:
    raw = ScriptedEnv(names=("zeta", "alpha", "mid"))
    env = TeamEnv(raw)
    assert env.agents == ("zeta", "alpha", "mid")
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["obs"], [[0, 0], [10, 10], [20, 20]])
    obs, *_ = env.step(np.array([0, 1, 2]))
    np.testing.assert_array_equal(obs["obs"], [[1, 1], [11, 11], [21, 21]])
    assert raw.received == [{"zeta": 0, "alpha": 1, "mid": 2}]


@pytest.mark.parametrize(("team_reward", "expected"), [("mean", (1 + 2 + 3) / 3), ("sum", 1 + 2 + 3)])
def test_team_reward_against_hand_computation(team_reward: str, expected: float) -> None:
    env = TeamEnv(ScriptedEnv(), team_reward=team_reward)
    env.reset(seed=0)
    _, reward, *_, info = env.step(np.zeros(3, dtype=np.int64))
    assert reward == pytest.approx(expected)
    np.testing.assert_array_equal(info["agent_rewards"], [1.0, 2.0, 3.0])
    _, reward, *_, info = env.step(np.zeros(3, dtype=np.int64))  # t = 2: rewards 2, 4, 6
    assert reward == pytest.approx(2 * expected)


def test_unknown_team_reward_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown team_reward 'max'; expected one of: mean, sum"):
        TeamEnv(ScriptedEnv(), team_reward="max")


def test_dead_agent_is_zeroed_masked_and_ignored() -> None:
    raw = ScriptedEnv(die_at={"b": 2}, episode_len=10)
    env = TeamEnv(raw)
    env.reset(seed=0)
    env.step(np.array([1, 1, 1]))
    obs, reward, terminated, truncated, info = env.step(np.array([2, 2, 2]))  # b dies at t = 2
    np.testing.assert_array_equal(obs["alive"], [1, 0, 1])
    np.testing.assert_array_equal(obs["obs"], [[2, 2], [0, 0], [22, 22]])
    np.testing.assert_array_equal(obs["action_mask"], [[1, 1, 1], [1, 0, 0], [1, 1, 1]])
    # The reward of the step in which b died still counts; mean is over all N agents.
    np.testing.assert_array_equal(info["agent_rewards"], [2.0, 4.0, 6.0])
    assert reward == pytest.approx(4.0) and not terminated and not truncated
    # Dead agents' actions are ignored, even invalid ones; random team actions give them the no-op.
    obs, reward, *_ = env.step(np.array([0, 99, 0]))
    assert raw.received[-1] == {"a": 0, "c": 0}
    assert reward == pytest.approx((3.0 + 9.0) / 3)
    np.testing.assert_array_equal(obs["obs"][1], [0, 0])
    assert all(env.action_space.sample()[1] == 0 for _ in range(20))


def test_all_dead_terminates() -> None:
    env = TeamEnv(ScriptedEnv(die_at={"a": 1, "b": 2, "c": 2}, episode_len=10))
    env.reset(seed=0)
    *_, terminated, truncated, _ = env.step(np.zeros(3, dtype=np.int64))
    assert not terminated and not truncated
    obs, _, terminated, truncated, _ = env.step(np.zeros(3, dtype=np.int64))
    assert terminated and not truncated
    np.testing.assert_array_equal(obs["alive"], [0, 0, 0])
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(3, dtype=np.int64))


def test_truncation_keeps_final_observation_alive() -> None:
    """On a time limit the last observation is the real next state: the critic bootstraps from it."""
    env = TeamEnv(ScriptedEnv(episode_len=2))
    env.reset(seed=0)
    env.step(np.zeros(3, dtype=np.int64))
    obs, _, terminated, truncated, _ = env.step(np.zeros(3, dtype=np.int64))
    assert truncated and not terminated
    np.testing.assert_array_equal(obs["alive"], [1, 1, 1])
    np.testing.assert_array_equal(obs["obs"], [[2, 2], [12, 12], [22, 22]])
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs["obs"], [[0, 0], [10, 10], [20, 20]])


def test_wrong_observation_shape_names_agent() -> None:
    env = TeamEnv(ScriptedEnv(bad_shape_at=("b", 1)))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(3,\) for agent 'b'; expected \(2,\)"):
        env.step(np.zeros(3, dtype=np.int64))


def test_nonfinite_observation_is_flagged_and_zeroed() -> None:
    env = TeamEnv(ScriptedEnv(nan_at=1))
    _, info = env.reset(seed=0)
    assert "nonfinite_obs" not in info
    obs, *_, info = env.step(np.zeros(3, dtype=np.int64))
    assert info["nonfinite_obs"] is True
    np.testing.assert_array_equal(obs["obs"], [[0, 0], [11, 11], [21, 21]])
    *_, info = env.step(np.zeros(3, dtype=np.int64))
    assert "nonfinite_obs" not in info


def test_nonfinite_reward_is_flagged_and_zeroed() -> None:
    class NanReward(ScriptedEnv):
        def step(self, actions: dict[str, int]) -> tuple[Any, Any, Any, Any, Any]:
            obs, rewards, *rest = super().step(actions)
            if self.t == 1:
                rewards[self.possible_agents[1]] = float("inf")
            return (obs, rewards, *rest)

    env = TeamEnv(NanReward(), team_reward="sum")
    env.reset(seed=0)
    _, reward, *_, info = env.step(np.zeros(3, dtype=np.int64))
    assert info["nonfinite_reward"] is True
    np.testing.assert_array_equal(info["agent_rewards"], [1.0, 0.0, 3.0])  # the inf became 0, the others stay
    assert reward == 4.0
    _, reward, *_, info = env.step(np.zeros(3, dtype=np.int64))
    assert "nonfinite_reward" not in info and reward == 2.0 + 4.0 + 6.0


def test_invalid_actions_name_agent_and_action() -> None:
    env = TeamEnv(ScriptedEnv(names=("small", "big"), obs_dims=(1, 3), n_actions=(2, 4)))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 3 for agent 'small' \(row 0\) is outside its 2 actions"):
        env.step(np.array([3, 0]))
    with pytest.raises(ValueError, match=r"action -1 for agent 'big' \(row 1\) is outside its 4 actions"):
        env.step(np.array([0, -1]))
    with pytest.raises(ValueError, match=r"integer array of shape \(2,\)"):
        env.step(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"integer array of shape \(2,\)"):
        env.step(np.array([0.0, 1.0]))
    env.step([1, 3])  # a list of ints is fine


def test_raw_env_masks_from_infos_and_from_obs_dicts() -> None:
    def mask(agent: str, t: int) -> np.ndarray | None:
        return np.array([1, 0, 1], dtype=np.int8) if agent == "b" and t == 1 else None

    for mask_in_obs in (False, True):
        env = TeamEnv(ScriptedEnv(info_mask=mask, mask_in_obs=mask_in_obs))
        obs, _ = env.reset(seed=0)
        np.testing.assert_array_equal(obs["action_mask"], np.ones((3, 3)))
        obs, *_ = env.step(np.zeros(3, dtype=np.int64))
        np.testing.assert_array_equal(obs["action_mask"], [[1, 1, 1], [1, 0, 1], [1, 1, 1]])
        np.testing.assert_array_equal(obs["obs"][1], [11, 11])
        with pytest.raises(ValueError, match=r"action 1 for agent 'b' \(row 1\) is masked out; available .*\[0, 2\]"):
            env.step(np.array([0, 1, 0]))
        obs, *_ = env.step(np.array([0, 2, 0]))  # t = 2: the raw env stops masking, the full row returns
        np.testing.assert_array_equal(obs["action_mask"], np.ones((3, 3)))


def test_random_actions_respect_padding_and_masks() -> None:
    def mask(agent: str, t: int) -> np.ndarray | None:
        return np.array([0, 0, 0, 1], dtype=np.int8) if agent == "big" else None

    env = TeamEnv(ScriptedEnv(names=("small", "big"), obs_dims=(1, 3), n_actions=(2, 4), info_mask=mask))
    env.reset(seed=0)
    samples = np.array([env.action_space.sample() for _ in range(50)])
    assert set(samples[:, 0]) <= {0, 1} and set(samples[:, 1]) == {3}
    check_env(env, skip_render_check=True)


def test_info_pass_through_without_clobbering() -> None:
    def extra(agent: str, t: int) -> dict[str, Any]:
        return {
            "won": t == 2,
            "kills": {"a": 1, "b": 0, "c": 2}[agent],
            "agent_rewards": 5,  # collides with TeamEnv's own key
            "note": "not a scalar we pass",
            "vec": np.zeros(2),
        }

    env = TeamEnv(ScriptedEnv(extra_infos=extra))
    _, info = env.reset(seed=0)
    assert info["won"] is False
    *_, info = env.step(np.zeros(3, dtype=np.int64))
    *_, info = env.step(np.zeros(3, dtype=np.int64))
    assert info["won"] is True
    np.testing.assert_array_equal(info["agent_rewards"], [2.0, 4.0, 6.0])
    np.testing.assert_array_equal(info["agent_info"]["kills"], [1, 0, 2])
    np.testing.assert_array_equal(info["agent_info"]["agent_rewards"], [5, 5, 5])
    assert "kills" not in info and "note" not in info and "vec" not in info


def test_heterogeneous_scripted_team_passes_env_checker() -> None:
    env = TeamEnv(ScriptedEnv(names=("x", "y", "z"), obs_dims=(1, 3, 1), n_actions=(2, 4, 2)))
    assert env.agent_types == (0, 1, 0)
    assert env.observation_space["obs"].shape == (3, 3 + 2)
    check_env(env, skip_render_check=True)


def test_accepts_a_factory_and_closes_the_raw_env() -> None:
    env = TeamEnv(ScriptedEnv)
    raw = env.raw_env
    assert isinstance(raw, ScriptedEnv)
    env.close()
    assert raw.closed


def test_rejects_what_is_not_an_env() -> None:
    with pytest.raises(TypeError, match="expected a PettingZoo ParallelEnv"):
        TeamEnv(lambda: 42)
    with pytest.raises(TypeError, match="zero-argument factory"):
        TeamEnv(42)


class WithState(ScriptedEnv):
    """ScriptedEnv plus a global state: 6 copies of the step count, NaN at step 1."""

    state_space = spaces.Box(-100.0, 100.0, shape=(6,), dtype=np.float32)

    def state(self) -> np.ndarray:
        return np.full(6, np.nan if self.t == 1 else float(self.t), dtype=np.float32)


def test_state_is_returned_and_nonfinite_state_flagged() -> None:
    env = TeamEnv(WithState(), use_state=True)
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs["state"], np.zeros(6))
    assert "nonfinite_state" not in info
    obs, *_, info = env.step(np.zeros(3, dtype=np.int64))
    assert info["nonfinite_state"] is True
    np.testing.assert_array_equal(obs["state"], np.zeros(6))
    obs, *_, info = env.step(np.zeros(3, dtype=np.int64))
    np.testing.assert_array_equal(obs["state"], np.full(6, 2.0))
    assert obs in env.observation_space


def test_use_state_needs_a_state() -> None:
    with pytest.raises(ValueError, match="use_state=True needs a raw env with state_space"):
        TeamEnv(ScriptedEnv(), use_state=True)


def test_a_team_mixing_continuous_and_discrete_actions_is_refused_naming_the_agents() -> None:
    class Mixed(ScriptedEnv):
        def action_space(self, agent: str) -> spaces.Space[Any]:
            return spaces.Box(-1.0, 1.0, shape=(2,)) if agent == "a" else spaces.Discrete(2)

    with pytest.raises(ValueError, match=r"mixes continuous \(Box\) actions \(\['a'\]\) with discrete ones"):
        TeamEnv(Mixed())


def test_an_integer_box_is_not_a_continuous_action() -> None:
    class IntegerBox(ScriptedEnv):
        def action_space(self, agent: str) -> spaces.Space[Any]:
            return spaces.Box(0, 3, shape=(2,), dtype=np.int64)

    with pytest.raises(ValueError, match=r"agent 'a' has action space Box.*expected a float Box"):
        TeamEnv(IntegerBox())


# ---------------------------------------------------------------------------------------------- history window


def _rows(t: int) -> list[list[float]]:
    """ScriptedEnv's team observation at step t: agent i sees 10 * i + t in both columns."""
    return [[10 * i + t] * 2 for i in range(3)]


def test_history_window_is_the_last_steps_oldest_first_with_zeros_before_the_start() -> None:
    env = TeamEnv(ScriptedEnv(episode_len=10), history=4)
    assert env.observation_space["history"].shape == (4, 3, 2)
    zeros = [[0.0, 0.0]] * 3
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["history"], [zeros, zeros, zeros, _rows(0)])
    expected = {1: [zeros, zeros, _rows(0), _rows(1)], 4: [_rows(1), _rows(2), _rows(3), _rows(4)]}
    expected[6] = [_rows(3), _rows(4), _rows(5), _rows(6)]
    for t in range(1, 7):
        obs, *_ = env.step(np.zeros(3, dtype=np.int64))
        np.testing.assert_array_equal(obs["history"][-1], obs["obs"])  # the current step is the last row
        if t in expected:
            np.testing.assert_array_equal(obs["history"], expected[t])
    assert obs["history"].dtype == np.float32
    # Returned windows are copies: a later step does not rewrite what a caller (an episode buffer) holds.
    kept = obs["history"].copy()
    env.step(np.zeros(3, dtype=np.int64))
    np.testing.assert_array_equal(obs["history"], kept)


def test_reset_clears_the_history() -> None:
    env = TeamEnv(ScriptedEnv(episode_len=3), history=5)
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros(3, dtype=np.int64))
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs["history"][:-1], np.zeros((4, 3, 2)))
    np.testing.assert_array_equal(obs["history"][-1], _rows(0))


def test_history_holds_dead_agents_as_zero_rows_and_length_one_is_the_current_obs() -> None:
    env = TeamEnv(ScriptedEnv(die_at={"b": 1}, episode_len=10), history=1)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["history"], obs["obs"][None])
    obs, *_ = env.step(np.zeros(3, dtype=np.int64))
    np.testing.assert_array_equal(obs["history"], [[[1, 1], [0, 0], [21, 21]]])


def test_without_history_there_is_no_window() -> None:
    env = TeamEnv(ScriptedEnv())
    obs, _ = env.reset(seed=0)
    assert "history" not in obs and "history" not in env.observation_space.spaces


@pytest.mark.parametrize("history", [-1, 2.0, True])
def test_bad_history_is_refused_by_name(history: Any) -> None:
    with pytest.raises(ValueError, match=r"history=.*expected an integer >= 0"):
        TeamEnv(ScriptedEnv(), history=history)


def test_history_passes_env_checker() -> None:
    env = TeamEnv(ScriptedEnv(obs_dims=(2, 3, 1), n_actions=(2, 3, 4), die_at={"c": 2}), history=6)
    check_env(env, skip_render_check=True)
