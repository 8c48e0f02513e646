"""The gate open rate conditioned on what an agent knows (predator-prey's `saw_prey`): in `evaluate` and in training."""

from __future__ import annotations

import numpy as np
import pytest

from agents.build import build_ppo_config, probe_env
from agents.config import load_config
from agents.play import GATE_DECISIONS, EpisodeStats, agent_facts, play
from envs.registry import make_team_env


def test_the_facts_of_a_team_env_are_per_agent_whatever_teamenv_made_of_them() -> None:
    env = make_team_env("predator_prey", {"vision": 0})
    _, info = env.reset(seed=0)
    facts = agent_facts(env, info)
    assert set(facts) == {"saw_prey"} and facts["saw_prey"].shape == (3,) and facts["saw_prey"].dtype == bool
    # TeamEnv's two forms of a per-agent scalar: one value when every agent agrees, an (N,) array otherwise.
    assert agent_facts(env, {"saw_prey": True})["saw_prey"].tolist() == [True] * 3
    split = {"agent_info": {"saw_prey": np.array([1.0, 0.0, 1.0])}}
    assert agent_facts(env, split)["saw_prey"].tolist() == [True, False, True]
    assert agent_facts(make_team_env("signal"), {}) == {}  # an env without facts


def test_evaluate_reports_the_gate_rate_given_each_fact_by_hand() -> None:
    """A scripted actor opens exactly the gates of the predators that saw the prey, on the fact of the observation
    it acts on: the rate given the fact is 1 and 0 otherwise; the counts are the agent-steps of each kind."""
    env = make_team_env("predator_prey", {"vision": 1})
    seen: list[np.ndarray] = []
    last_info: dict = {}

    def actor(obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
        facts = agent_facts(env, last_info)["saw_prey"]
        seen.append(facts & (obs["alive"] > 0))
        mask = obs["action_mask"]
        return mask.argmax(-1), {"gate_open_rate": 0.0, GATE_DECISIONS: facts.astype(np.float32)}

    real_reset, real_step = env.reset, env.step

    def reset(**kwargs):
        out = real_reset(**kwargs)
        last_info.clear()
        last_info.update(out[1])
        return out

    def step(actions):
        out = real_step(actions)
        last_info.clear()
        last_info.update(out[4])
        return out

    env.reset, env.step = reset, step  # type: ignore[method-assign]
    stats = play(env, actor, episodes=3, seed=5)
    given = stats.summary()["gate_open_rate_given"]["saw_prey"]
    n_true = int(sum(s.sum() for s in seen))
    assert n_true > 0 and given["agent_steps_true"] == n_true
    assert given["true"] == 1.0 and (given["false"] in (0.0, None))


def test_episode_stats_count_only_alive_agents() -> None:
    stats = EpisodeStats()
    stats.count_gates(np.array([1.0, 1.0, 0.0]), np.array([1.0, 0.0, 1.0]), {"f": np.array([True, True, False])})
    other = EpisodeStats()
    other.count_gates(np.array([0.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0]), {"f": np.array([True, False, False])})
    stats.extend(other)
    summary = stats.summary()["gate_open_rate_given"]["f"]
    assert summary == {"true": 0.5, "false": 2 / 3, "agent_steps_true": 2, "agent_steps_false": 3}


@pytest.mark.usefixtures("ray_session")
def test_training_logs_the_gate_rate_given_each_fact() -> None:
    overrides = ["training.train_batch_size=512", "training.minibatch_size=256", "training.num_epochs=1"]
    overrides += ["resources.num_env_runners=0", "resources.num_envs_per_env_runner=16", "training.sample_ahead=false"]
    overrides += ["model.embed_dim=16", "env.options.vision=0"]
    config = load_config("configs/predator_prey.yaml", overrides)
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    try:
        runners = algo.train()["env_runners"]
    finally:
        algo.stop()
    given, unless = runners["gate_open_rate_if_saw_prey"], runners["gate_open_rate_unless_saw_prey"]
    assert 0.0 <= given <= 1.0 and 0.0 <= unless <= 1.0
    assert 0.5 < unless < 1.0  # sampled around the initial p = 0.88
