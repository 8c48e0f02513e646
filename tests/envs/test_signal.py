"""The signal env: PettingZoo API, the reward rule, chance level, determinism, options."""

from __future__ import annotations

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from envs.signal import SignalEnv, SignalOptions


def neighbour_answers(env: SignalEnv, obs: dict[str, np.ndarray]) -> dict[str, int]:
    """The perfect team: agent i names the symbol that agent (i+offset) mod N sees (read from its observation)."""
    agents = env.possible_agents
    k, offset = env.options.n_symbols, env.options.offset
    return {a: int(np.argmax(obs[agents[(i + offset) % len(agents)]][:k])) for i, a in enumerate(agents)}


def test_parallel_api() -> None:
    parallel_api_test(SignalEnv(), num_cycles=100)
    parallel_api_test(SignalEnv(SignalOptions(n_agents=5, n_symbols=3, episode_len=2, agent_id=True)))


def test_correct_answers_earn_one_and_episode_truncates() -> None:
    env = SignalEnv(SignalOptions(n_agents=4, n_symbols=5, episode_len=6))
    obs, _ = env.reset(seed=1)
    for t in range(6):
        obs, rewards, terminations, truncations, _ = env.step(neighbour_answers(env, obs))
        assert rewards == dict.fromkeys(env.possible_agents, 1.0)
        assert not any(terminations.values())
        assert all(truncations.values()) == (t == 5)
    assert env.agents == []


def test_own_symbol_is_not_the_answer() -> None:
    """Naming one's own symbol scores only when it happens to equal the neighbour's: chance, not 1."""
    env = SignalEnv(SignalOptions(n_symbols=4, episode_len=1000))
    obs, _ = env.reset(seed=2)
    total = 0.0
    for _ in range(500):
        own = {a: int(np.argmax(o)) for a, o in obs.items()}
        obs, rewards, *_ = env.step(own)
        total += sum(rewards.values())
    assert total / (500 * 3) == pytest.approx(0.25, abs=0.05)


def test_random_policy_earns_one_over_k() -> None:
    env = SignalEnv(SignalOptions(n_agents=3, n_symbols=4, episode_len=8))
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    rewards_seen: list[float] = []
    for _ in range(2000):
        _, rewards, _, truncations, _ = env.step({a: int(rng.integers(4)) for a in env.agents})
        rewards_seen.extend(rewards.values())
        if all(truncations.values()):
            env.reset()
    # 6000 Bernoulli(1/4) draws: standard error 0.0056.
    assert np.mean(rewards_seen) == pytest.approx(0.25, abs=0.03)


def rollout(seed: int, steps: int = 20) -> list[tuple[dict[str, np.ndarray], dict[str, float]]]:
    env = SignalEnv(SignalOptions(episode_len=steps))
    obs, _ = env.reset(seed=seed)
    out = []
    for t in range(steps):
        obs, rewards, *_ = env.step({a: t % 4 for a in env.agents})
        out.append((obs, rewards))
    return out


def test_deterministic_under_seed() -> None:
    first, second, other = rollout(7), rollout(7), rollout(8)
    for (obs_1, rew_1), (obs_2, rew_2) in zip(first, second, strict=True):
        assert rew_1 == rew_2
        for agent in obs_1:
            np.testing.assert_array_equal(obs_1[agent], obs_2[agent])
    assert any(not np.array_equal(o1[a], o2[a]) for (o1, _), (o2, _) in zip(first, other, strict=True) for a in o1)


def test_observation_and_state_layout() -> None:
    env = SignalEnv(SignalOptions(n_agents=3, n_symbols=4, agent_id=True))
    obs, _ = env.reset(seed=3)
    state = env.state().reshape(3, 4)
    for i, agent in enumerate(env.possible_agents):
        assert obs[agent].shape == (7,) and obs[agent].dtype == np.float32
        np.testing.assert_array_equal(obs[agent][:4], state[i])
        np.testing.assert_array_equal(obs[agent][4:], np.eye(3)[i])
        assert obs[agent] in env.observation_space(agent)
    assert env.state() in env.state_space


def test_render_rgb_array() -> None:
    env = SignalEnv(render_mode="rgb_array")
    env.reset(seed=0)
    env.step(dict.fromkeys(env.agents, 0))
    frame = env.render()
    assert frame is not None and frame.shape == (3 * 16, 2 * 4 * 16, 3) and frame.dtype == np.uint8
    with pytest.raises(ValueError, match="render_mode 'human'"):
        SignalEnv(render_mode="human")


@pytest.mark.parametrize("action", [4, -1, True, 1.0])
def test_invalid_action_names_agent(action: object) -> None:
    env = SignalEnv()
    env.reset(seed=0)
    actions: dict[str, object] = dict.fromkeys(env.agents, 0)
    actions["agent_1"] = action
    with pytest.raises(ValueError, match=r"agent 'agent_1'.*expected an int in 0\.\.3"):
        env.step(actions)


def test_missing_action_names_agent() -> None:
    env = SignalEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="no action for live agent 'agent_2'"):
        env.step({"agent_0": 0, "agent_1": 0})


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("n_agents", 1, ValueError),
        ("n_symbols", 1, ValueError),
        ("episode_len", 0, ValueError),
        ("n_agents", 2.5, TypeError),
        ("agent_id", 1, TypeError),
    ],
)
def test_options_validation_names_field(field: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"env\.options\.{field}"):
        SignalOptions(**{field: value})  # type: ignore[arg-type]


def test_offset_selects_the_source_and_must_not_point_at_oneself() -> None:
    for offset in (1, -1, 2):
        env = SignalEnv(SignalOptions(n_agents=4, offset=offset))
        obs, _ = env.reset(seed=3)
        _, rewards, _, _, _ = env.step(neighbour_answers(env, obs))
        assert all(r == 1.0 for r in rewards.values())
    with pytest.raises(ValueError, match=r"env\.options\.offset must be not a multiple of n_agents"):
        SignalOptions(n_agents=3, offset=3)
