"""Padding, type one-hot and masks on mpe2 simple_speaker_listener (speaker: obs 3, 3 actions; listener: obs
11, 5 actions), checked by hand against the raw env stepped in lockstep."""

from __future__ import annotations

import numpy as np
import pytest

from envs import make_team_env
from envs.mpe import SpeakerListenerOptions, simple_speaker_listener


def test_layout_by_hand() -> None:
    env = make_team_env("mpe_speaker_listener")
    assert env.agents == ("speaker_0", "listener_0")
    assert env.agent_types == (0, 1) and env.heterogeneous
    assert (env.obs_dim, env.n_actions) == (11 + 2, 5)
    assert env.observation_space["obs"].shape == (2, 13)
    assert env.observation_space["action_mask"].shape == (2, 5)
    assert list(env.action_space.nvec) == [5, 5]

    raw = simple_speaker_listener(SpeakerListenerOptions())
    raw_obs, _ = raw.reset(seed=11)
    obs, _ = env.reset(seed=11)
    speaker, listener = obs["obs"]
    np.testing.assert_array_equal(speaker[:3], raw_obs["speaker_0"])
    np.testing.assert_array_equal(speaker[3:11], np.zeros(8))  # padding
    np.testing.assert_array_equal(speaker[11:], [1, 0])  # type one-hot
    np.testing.assert_array_equal(listener[:11], raw_obs["listener_0"])
    np.testing.assert_array_equal(listener[11:], [0, 1])
    np.testing.assert_array_equal(obs["action_mask"], [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(obs["alive"], [1, 1])
    assert obs in env.observation_space

    # The same actions give the same transition as the raw env.
    for t in range(3):
        action = np.array([t % 3, (2 * t) % 5])
        raw_obs, raw_rewards, *_ = raw.step({"speaker_0": int(action[0]), "listener_0": int(action[1])})
        obs, reward, *_, info = env.step(action)
        np.testing.assert_array_equal(obs["obs"][0, :3], raw_obs["speaker_0"])
        np.testing.assert_array_equal(obs["obs"][1, :11], raw_obs["listener_0"])
        np.testing.assert_array_equal(info["agent_rewards"], [raw_rewards["speaker_0"], raw_rewards["listener_0"]])
        assert reward == pytest.approx(np.mean(list(raw_rewards.values())))


def test_padded_speaker_action_is_rejected() -> None:
    env = make_team_env("mpe_speaker_listener")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 3 for agent 'speaker_0' \(row 0\) is outside its 3 actions"):
        env.step(np.array([3, 4]))


def test_random_team_actions_stay_in_each_agents_range() -> None:
    env = make_team_env("mpe_speaker_listener")
    env.reset(seed=0)
    env.action_space.seed(0)
    samples = np.array([env.action_space.sample() for _ in range(200)])
    assert set(samples[:, 0]) == {0, 1, 2}
    assert set(samples[:, 1]) == {0, 1, 2, 3, 4}
