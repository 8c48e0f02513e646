"""Learning test for continuous actions: mpe2's simple_spread with `continuous_actions=True` (2 agents, 2 landmarks,
25 steps), by import path, with the ready config's training settings (only the sizes shrunk). After 60k env steps
the greedy policy (the Gaussian's mean, clipped by the env) must beat a uniform random policy over the [0, 1] action
boxes by 15% of the random return over 40 episodes each: the agents learn to move towards the landmarks. The margin
it had when written, and why 30k steps were too few: docs/BENCHMARKS.md, "Continuous actions".
"""

from __future__ import annotations

import numpy as np
import pytest

from agents import checkpoints as ckpt
from agents.config import load_config
from agents.play import greedy_actor, make_play_env, play, random_actor
from agents.train import train
from commformer.export import load_policy

SMALL = [
    "env.options={N: 2, local_ratio: 0.5, max_cycles: 25, continuous_actions: true}",
    "model.embed_dim=32",
    "training.train_batch_size=2000",
    "training.minibatch_size=500",
    "resources.num_env_runners=0",
    "resources.num_envs_per_env_runner=16",
    "training.sample_ahead=false",
    "stop.env_steps=60000",
    "run.checkpoint_every=1000",
]


@pytest.mark.slow
def test_the_gaussian_policy_beats_a_random_one_on_continuous_spread(tmp_path):
    config = load_config("configs/mpe_spread_continuous.yaml", [*SMALL, f"run.output_dir={tmp_path}", "run.name=c"])
    train(config, tmp_path / "c")
    policy, metadata = load_policy(ckpt.latest_checkpoint(tmp_path / "c") / ckpt.POLICY)
    env = make_play_env(metadata["env"], policy)
    try:
        learned = np.asarray(play(env, greedy_actor(policy, use_state=True), 40, seed=100).returns)
        chance = np.asarray(play(env, random_actor(0, env), 40, seed=100).returns)
    finally:
        env.close()
    assert learned.mean() > chance.mean() + 0.15 * abs(chance.mean()), (learned.mean(), chance.mean())
