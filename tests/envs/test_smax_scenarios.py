"""Our SMAX scenarios (envs/smax_scenarios.py): the stat changes reach jaxmarl's game, and they do what they are for
(the marauders see only what they can shoot; on ``_hold`` the zerglings stay where they start, on the plain map they
walk)."""

from __future__ import annotations

import numpy as np
import pytest

from envs import smax, smax_scenarios
from envs.smax_scenarios import MARAUDER, STALKER, ZERGLING

pytestmark = pytest.mark.skipif(smax.unavailable_reason() is not None, reason=str(smax.unavailable_reason()))

STOP = 1
"""The team action "stop" (SMAC's layout)."""


def _game(name: str) -> smax.SMAXGame:
    return smax.SMAXGame(name, smax.SMAXOptions())


def _enemy_paths(game: smax.SMAXGame, seed: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Every unit's positions (steps + 1, units, 2) and the allies' observations (steps + 1, allies, D) while the
    allies stand still."""
    jax = game.jax
    key = jax.random.PRNGKey(seed)
    key, reset_key = jax.random.split(key)
    state, raw = game.reset(reset_key)
    positions, observations = [np.asarray(state.state.unit_positions)], [np.asarray(raw["obs"])]
    stop = np.full(game.n_agents, STOP, dtype=np.int32)
    for _ in range(steps):
        key, step_key = jax.random.split(key)
        state, raw = game.step(step_key, state, stop)
        positions.append(np.asarray(state.state.unit_positions))
        observations.append(np.asarray(raw["obs"]))
    return np.stack(positions), np.stack(observations)


@pytest.mark.parametrize("name", sorted(smax_scenarios.SCENARIOS))
def test_the_stat_changes_reach_jaxmarls_game(name: str) -> None:
    env = _game(name).env
    spec = smax_scenarios.SCENARIOS[name]
    assert [int(t) for t in env.scenario] == list(spec.unit_types)
    assert (env.num_allies, env.num_enemies) == (spec.num_allies, spec.num_enemies)
    assert float(env.unit_type_sight_ranges[STALKER]) == 14.0
    assert float(env.unit_type_sight_ranges[MARAUDER]) == 3.0
    assert float(env.unit_type_attack_ranges[MARAUDER]) == 3.0
    assert float(env.unit_type_attacks[STALKER]) == 0.0
    assert float(env.unit_type_velocities[ZERGLING]) == pytest.approx(0.0 if name.endswith("_hold") else 4.13)
    # The rest keep jaxmarl's values.
    assert float(env.unit_type_sight_ranges[ZERGLING]) == 8.0
    assert float(env.unit_type_velocities[MARAUDER]) == pytest.approx(2.25)


def test_zerglings_hold_position_only_on_the_hold_map() -> None:
    steps = 12
    for name, moves in (("1o_2r_vs_4r_hold", False), ("1o_2r_vs_4r", True)):
        game = _game(name)
        enemies = slice(game.n_agents, None)
        travelled = []
        for seed in range(3):
            positions, _ = _enemy_paths(game, seed, steps)
            travelled.append(np.abs(positions[:, enemies] - positions[0, enemies]).max())
        if moves:
            assert max(travelled) > 1.0, name  # jaxmarl's heuristic walks them (4.13 per second of game time)
        else:
            assert max(travelled) == 0.0, name


def test_a_marauder_sees_no_enemy_beyond_three_the_scout_sees_far() -> None:
    game = _game("1o_2r_vs_4r_hold")
    features = len(game.env.unit_features)
    allies, enemies = game.n_agents, game.n_enemies
    seen = {"scout": 0, "marauder": 0}
    for seed in range(4):
        positions, observations = _enemy_paths(game, seed, 4)
        for t in range(len(positions)):
            for ally in range(allies):
                # jaxmarl's unit list: the other allies, then the enemies, each `features` long; 0 when unseen.
                first = (allies - 1) * features
                enemy_rows = observations[t, ally, first : first + enemies * features].reshape(enemies, features)
                distance = np.linalg.norm(positions[t, allies:] - positions[t, ally], axis=-1)
                visible = np.abs(enemy_rows).sum(-1) > 0
                sight = 14.0 if ally == 0 else 3.0
                assert not (visible & (distance > sight + 1e-3)).any()
                seen["scout" if ally == 0 else "marauder"] += int(visible.sum())
    assert seen["scout"] > 0  # the probe could fail: the scout does see enemies from its start
