"""Learning test: on the signal env only the right communication graph pays, and the bi-level PPO finds it.

Agent i must name the private symbol of agent i-1. The graph starts from the ring i <- i+1 (k=1), the wrong
sender for every receiver, so the team can only succeed by moving its graph logits (upper level). Control: the
same run with the graph frozen from the start stays at chance (1/K per agent and step).
"""

from __future__ import annotations

import numpy as np
import pytest

from agents import checkpoints as ckpt
from agents.config import load_config
from agents.play import greedy_actor, play
from agents.train import train
from commformer.export import load_policy
from envs.registry import make_team_env

STEPS = 40_000
EPISODE_LEN = 8


def _train_and_evaluate(tmp_path, name: str, overrides: list[str], steps: int = STEPS) -> tuple[float, np.ndarray]:
    config = load_config(
        "configs/signal.yaml",
        [
            f"stop.env_steps={steps}",
            f"run.output_dir={tmp_path}",
            f"run.name={name}",
            "run.checkpoint_every=1000",
            *overrides,
        ],
    )
    train(config, tmp_path / name)
    policy, _ = load_policy(ckpt.latest_checkpoint(tmp_path / name) / ckpt.POLICY)
    env = make_team_env("signal", config.env.options)
    stats = play(env, greedy_actor(policy, use_state=False), episodes=20, seed=123)
    return float(np.mean(stats.returns)), policy.trunk.graph.hard().numpy()


@pytest.mark.slow
def test_bilevel_ppo_learns_whom_to_listen_to(tmp_path):
    ret, adjacency = _train_and_evaluate(tmp_path, "learn", [])
    n = adjacency.shape[0]
    # every receiver i listens to i-1 (row = receiver, column = sender), besides itself
    for i in range(n):
        assert adjacency[i, (i - 1) % n] == 1.0, adjacency
    assert ret >= 0.9 * EPISODE_LEN, ret  # chance is EPISODE_LEN / 4


@pytest.mark.slow
def test_with_a_frozen_wrong_graph_the_team_stays_at_chance(tmp_path):
    ret, adjacency = _train_and_evaluate(tmp_path, "frozen", ["training.graph_freeze_fraction=0.0"])
    n = adjacency.shape[0]
    assert all(adjacency[i, (i + 1) % n] == 1.0 for i in range(n))  # the initial ring, untouched
    assert ret <= 0.45 * EPISODE_LEN, ret


@pytest.mark.slow
def test_the_graph_search_finds_one_sender_among_five_under_ppo(tmp_path):
    """N = 6, k = 1: each receiver must find agent i-1 among 5 candidates, from the wrong ring i <- i+1, with the
    default exploration (deterministic top-k and its straight-through gradient, no Gumbel noise) and the default
    gates. Measured with benchmarks/gate_sweep.py (task graph_n6): solved at ~60-100k env steps."""
    ret, adjacency = _train_and_evaluate(
        tmp_path, "n6", ["env.options.n_agents=6", "resources.num_env_runners=0"], steps=150_000
    )
    n = adjacency.shape[0]
    assert n == 6
    for i in range(n):
        assert adjacency[i, (i - 1) % n] == 1.0, adjacency
    assert ret >= 0.9 * EPISODE_LEN, ret
