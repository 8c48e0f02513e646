"""The memory env: PettingZoo API, the reward rule, what each step shows, chance level, options."""

from __future__ import annotations

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from envs.memory import MemoryEnv, MemoryOptions
from envs.registry import make_options, make_team_env


def test_parallel_api() -> None:
    parallel_api_test(MemoryEnv(), num_cycles=200)
    parallel_api_test(MemoryEnv(MemoryOptions(n_agents=3, n_symbols=2, delay=1)), num_cycles=20)


def test_cue_only_at_the_start_and_respond_flag_only_at_the_end() -> None:
    env = MemoryEnv(MemoryOptions(n_agents=2, n_symbols=3, delay=4))
    obs, _ = env.reset(seed=0)
    cues = {a: int(np.argmax(o[:3])) for a, o in obs.items()}
    for o in obs.values():
        assert o[:3].sum() == 1.0 and o[3] == 1.0 and o[4] == 0.0  # cue one-hot, cue flag
    for t in range(1, 5):
        obs, rewards, terminations, truncations, _ = env.step(dict.fromkeys(env.agents, 0))
        assert rewards == {"agent_0": 0.0, "agent_1": 0.0}
        assert not any(terminations.values()) and not any(truncations.values())
        for o in obs.values():
            np.testing.assert_array_equal(o, [0, 0, 0, 0, 1] if t == 4 else [0, 0, 0, 0, 0])
    # The response at step delay: agent_0 right, agent_1 wrong; then the episode terminates.
    wrong = (cues["agent_1"] + 1) % 3
    _, rewards, terminations, truncations, _ = env.step({"agent_0": cues["agent_0"], "agent_1": wrong})
    assert rewards == {"agent_0": 1.0, "agent_1": 0.0}
    assert all(terminations.values()) and not any(truncations.values())
    assert env.agents == []
    with pytest.raises(RuntimeError, match="reset"):
        env.step({"agent_0": 0, "agent_1": 0})


def test_remembering_earns_one_and_the_present_alone_earns_one_over_k() -> None:
    """Through the team env: the window of delay + 1 steps holds the cue at the response; the current
    observation does not (every response from the present alone is the same guess)."""
    delay, k = 5, 4
    env = make_team_env("memory", {"n_agents": 2, "n_symbols": k, "delay": delay}, history=delay + 1)
    remembered, guessed = [], []
    for episode in range(200):
        obs, _ = env.reset(seed=episode)
        for _ in range(delay):
            obs, *_ = env.step(np.zeros(2, dtype=np.int64))
        assert obs["obs"][:, :k].sum() == 0.0  # the cue is gone from the present
        cue = obs["history"][0, :, :k].argmax(-1)  # the oldest row of the window is step 0
        guess = np.zeros(2, dtype=np.int64)
        _, reward, terminated, _, _ = env.step(cue if episode % 2 else guess)
        assert terminated
        (remembered if episode % 2 else guessed).append(reward)
    assert np.mean(remembered) == 1.0
    assert np.mean(guessed) == pytest.approx(1 / k, abs=0.1)


def test_seeded_resets_repeat_the_cues() -> None:
    a, b = MemoryEnv(), MemoryEnv()
    obs_a, _ = a.reset(seed=3)
    obs_b, _ = b.reset(seed=3)
    for agent in a.possible_agents:
        np.testing.assert_array_equal(obs_a[agent], obs_b[agent])


def test_state_and_render() -> None:
    env = MemoryEnv(MemoryOptions(n_agents=3, n_symbols=4, delay=2), render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(env.state(), np.concatenate([obs[a] for a in env.possible_agents]))
    frame = env.render()
    assert frame is not None and frame.shape == (3 * env.CELL, 8 * env.CELL, 3)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"delay": 0}, ValueError, r"env\.options\.delay must be >= 1, got 0"),
        ({"n_symbols": 1}, ValueError, r"env\.options\.n_symbols must be >= 2"),
        ({"n_agents": 0}, ValueError, r"env\.options\.n_agents must be in \[1, 1024\]"),
        ({"delay": 2.5}, TypeError, r"env\.options\.delay must be int"),
        ({"cue": 1}, ValueError, r"unknown option env\.options\.cue"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make_options("memory", options)
