"""Learning test: a spatial task that only communication solves, with the default communication settings.

predator_capture_prey on a 3x3 grid: one predator sees the whole neighbourhood (vision 1) but cannot capture; one
capture agent is blind (it observes only its own position) but must stand on the prey and capture it within 6
steps. Alone, the capture agent can only guess where to go (a sweep of the grid needs more steps than it has); told
by the predator, it walks there. The learned graph with its gates reaches near-perfect success; without
communication (`model.communicate=false`, everything else equal) the team stays near chance.
Measured when it was written (150k env steps): learned 0.94 at 77k and 0.99 from 103k; no communication 0.10-0.23.
"""

from __future__ import annotations

import numpy as np
import pytest

from agents import checkpoints as ckpt
from agents.config import load_config
from agents.play import greedy_actor, make_play_env, play
from agents.train import train
from commformer.export import load_policy

SMALL = [
    "env.options.n_predators=1",
    "env.options.n_capture=1",
    "env.options.dim=3",
    "env.options.vision=1",
    "env.options.max_steps=6",
    "resources.num_env_runners=0",
    "training.sample_ahead=false",
    "resources.num_envs_per_env_runner=64",
    "stop.env_steps=120000",
    "run.checkpoint_every=1000",
]


def _greedy_success(tmp_path, name: str, overrides: list[str]) -> float:
    config = load_config(
        "configs/predator_capture_prey.yaml", [*SMALL, f"run.output_dir={tmp_path}", f"run.name={name}", *overrides]
    )
    train(config, tmp_path / name)
    policy, metadata = load_policy(ckpt.latest_checkpoint(tmp_path / name) / ckpt.POLICY)
    env = make_play_env(metadata["env"], policy)
    stats = play(env, greedy_actor(policy, use_state=True), episodes=100, seed=123)
    return float(np.mean(stats.wins))


@pytest.mark.slow
def test_the_blind_capture_agent_is_told_where_the_prey_is(tmp_path):
    assert _greedy_success(tmp_path, "learned", []) >= 0.9


@pytest.mark.slow
def test_without_communication_the_team_stays_near_chance(tmp_path):
    assert _greedy_success(tmp_path, "no_comm", ["model.communicate=false"]) <= 0.5
