"""envs/traffic_junction.py: the routes against hand-written cell lists, the rules on hand-built scenes (driving,
turning, braking, leaving, reusing a slot, collisions, the time penalty, success, the time limit), the vector env
against B single team envs through auto-resets, PettingZoo's API test, rendering and the options' checks."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from envs.batched import BatchedParallelEnv, Stepped
from envs.team import TeamEnv
from envs.traffic_junction import (
    BRAKE,
    GAS,
    TrafficJunctionGame,
    TrafficJunctionOptions,
    traffic_junction_env,
    traffic_junction_vector_env,
)
from tests.envs.vector_check import assert_vector_matches_singles

# Medium, 14 x 14: rows 6 (westward) and 7 (eastward), columns 6 (southward) and 7 (northward); right-hand traffic.
TOP_STRAIGHT = [(r, 6) for r in range(14)]
TOP_RIGHT = [(r, 6) for r in range(7)] + [(6, c) for c in range(5, -1, -1)]  # turns west on the first junction cell
TOP_LEFT = [(r, 6) for r in range(8)] + [(7, c) for c in range(7, 14)]  # turns east after the second
BOTTOM_LEFT = [(r, 7) for r in range(13, 5, -1)] + [(6, c) for c in range(6, -1, -1)]
LEFT_RIGHT = [(7, c) for c in range(7)] + [(r, 6) for r in range(8, 14)]
RIGHT_STRAIGHT = [(6, c) for c in range(13, -1, -1)]
MEDIUM = {0: TOP_STRAIGHT, 1: TOP_RIGHT, 2: TOP_LEFT, 5: BOTTOM_LEFT, 7: LEFT_RIGHT, 9: RIGHT_STRAIGHT}
# Hard, 18 x 18, from the top-right entry (0, 12): right at the first junction (west on row 4), left at the second
# (south on column 4), straight through the third.
HARD_RIGHT_LEFT = [(r, 12) for r in range(5)] + [(4, c) for c in range(11, 3, -1)] + [(r, 4) for r in range(5, 18)]


def _game(difficulty: str = "medium", **options: Any) -> TrafficJunctionGame:
    """One env with no random arrivals (unless asked), reset to an empty road."""
    game = TrafficJunctionGame(TrafficJunctionOptions(difficulty=difficulty, **{"arrival_prob": 0.0, **options}), 1)
    game.seed([0])
    game.reset(np.ones(1, dtype=bool))
    return game


def _step(game: TrafficJunctionGame, *actions: int) -> Stepped:
    return game.step(np.asarray([actions], dtype=np.int64), np.ones(1, dtype=bool))


def _where(game: TrafficJunctionGame, slot: int) -> tuple[int, int]:
    return divmod(int(game.route_cells[game.route[0, slot], game.progress[0, slot]]), game.grid_size)


def test_each_version_has_the_published_entries_and_routes() -> None:
    for difficulty, per_entry, entries in [("easy", 1, 2), ("medium", 3, 4), ("hard", 7, 8)]:
        game = _game(difficulty)
        g = game.grid_size
        assert g == {"easy": 7, "medium": 14, "hard": 18}[difficulty]
        assert np.bincount(game.route_entry).tolist() == [per_entry] * entries
        exits: dict[int, set[tuple[int, int]]] = {}
        for route, cells in enumerate(game.routes):
            steps = np.abs(np.diff(np.asarray(cells), axis=0)).sum(1)
            assert (steps == 1).all() and all(game.road[cell] for cell in cells)
            assert min(cells[0]) == 0 or max(cells[0]) == g - 1  # enters and leaves at the edge
            assert min(cells[-1]) == 0 or max(cells[-1]) == g - 1
            exits.setdefault(int(game.route_entry[route]), set()).add(cells[-1])
        assert all(len(ends) == per_entry for ends in exits.values())  # every route of an entry leaves elsewhere
        moves = {(a, b) for cells in game.routes for a, b in itertools.pairwise(cells)}
        assert not any((b, a) in moves for a, b in moves)  # one-way lanes: no two cars can swap cells
    assert _game("easy").routes == [[(r, 3) for r in range(7)], [(3, c) for c in range(7)]]
    medium = _game("medium")
    for route, cells in MEDIUM.items():
        assert medium.routes[route] == cells, route
    assert _game("hard").routes[12] == HARD_RIGHT_LEFT


DRIVES = [*(("medium", route, cells) for route, cells in MEDIUM.items()), ("hard", 12, HARD_RIGHT_LEFT)]


@pytest.mark.parametrize(("difficulty", "route", "cells"), DRIVES)
def test_a_car_on_gas_drives_its_route_turns_and_leaves(difficulty: str, route: int, cells: list) -> None:
    game = _game(difficulty)
    game.place_car(0, 1, route)
    seen = [_where(game, 1)]
    for _ in range(len(cells) - 1):
        stepped = _step(game, *[GAS] * game.n_agents)
        seen.append(_where(game, 1))
        assert stepped.rewards[0, 1] == pytest.approx(-0.01 * (len(seen) - 1))
    assert seen == cells
    stepped = _step(game, *[GAS] * game.n_agents)  # gas on the last cell: the car leaves
    assert not game.active[0, 1] and stepped.rewards[0, 1] == 0.0
    seen_now = game.observe()
    assert not seen_now.alive[0, 1] and not seen_now.obs[0, 1].any()
    assert seen_now.action_mask[0, 1].tolist() == [1.0, 0.0]  # an empty slot has only the no-op


def test_braking_stays_and_the_time_penalty_grows_with_tau() -> None:
    game = _game()
    game.place_car(0, 0, 0, progress=3)
    rewards = [_step(game, BRAKE, *[BRAKE] * 9).rewards[0, 0] for _ in range(3)]
    assert _where(game, 0) == (3, 6) and rewards == pytest.approx([-0.01, -0.02, -0.03])
    assert game.observe().obs[0, 0, 0] == 0.0  # last action: brake
    assert _step(game, GAS, *[BRAKE] * 9).rewards[0, 0] == pytest.approx(-0.04)
    assert _where(game, 0) == (4, 6) and game.observe().obs[0, 0, 0] == 1.0


def test_a_free_slot_is_reused_by_a_later_car() -> None:
    game = _game("easy", max_cars=2, arrival_prob=1.0)  # both entries add a car at the reset
    assert game.active[0].tolist() == [True, True]
    for slot in (0, 1):  # one car on its last cell, the other parked off the entry cells
        game.place_car(0, slot, slot, progress=6 if slot == 0 else 1)
    stepped = _step(game, GAS, BRAKE)  # slot 0 leaves; its slot is not given out on the same step
    assert game.active[0].tolist() == [False, True] and stepped.rewards[0, 0] == 0.0
    stepped = _step(game, BRAKE, BRAKE)
    assert game.active[0].tolist() == [True, True] and (game.route[0, 0], game.progress[0, 0]) == (0, 0)
    assert stepped.rewards[0, 0] == 0.0 and game.tau[0, 0] == 0  # a new car: no time on the road yet


def test_a_collision_is_penalised_counted_and_ends_success() -> None:
    game = _game()
    game.place_car(0, 0, 0, progress=5, tau=2)  # top, straight: (5, 6), next (6, 6)
    game.place_car(0, 3, 5, progress=7)  # bottom, left turn: (6, 7), next (6, 6)
    game.place_car(0, 8, 9, progress=0)  # right, straight: far away
    assert game.observe().facts["at_risk"][0].tolist() == [i in (0, 3) for i in range(10)]
    stepped = _step(game, *[GAS] * 10)
    assert _where(game, 0) == _where(game, 3) == (6, 6)
    assert stepped.rewards[0, [0, 3, 8]] == pytest.approx([-10.03, -10.01, -0.01])
    assert stepped.info["collisions"].tolist() == [1] and stepped.info["won"].tolist() == [False]
    seen = game.observe()
    assert seen.obs[0, 0, game._o_cars] == 1.0 and seen.obs[0, 8, game._o_cars] == 0.0  # another car in its cell
    assert game.render(0)[6 * game.CELL, 6 * game.CELL].tolist() == [255, 0, 0]  # the crash cell, framed in red
    stepped = _step(game, *[BRAKE] * 10)  # still together: another collision
    assert stepped.info["collisions"].tolist() == [2] and stepped.rewards[0, 0] == pytest.approx(-10.04)
    stepped = _step(game, GAS, *[BRAKE] * 9)  # apart again: no penalty, but the episode stays failed
    assert stepped.rewards[0, 0] == pytest.approx(-0.05) and stepped.info["won"].tolist() == [False]
    game.reset(np.ones(1, dtype=bool))
    assert _step(game, *[BRAKE] * 10).info["won"].tolist() == [True]


def test_a_car_arriving_on_a_taken_entry_cell_collides() -> None:
    game = _game("easy", max_cars=3, arrival_prob=1.0)
    assert game.active[0].sum() == 2  # one car from each entry at the reset
    stepped = _step(game, BRAKE, BRAKE, BRAKE)  # both stay on their entry cells; one slot is left for the top entry
    assert game.active[0].sum() == 3 and stepped.info["collisions"].tolist() == [1]
    newcomer = int(np.flatnonzero((game.tau[0] == 0) & game.active[0])[0])
    assert stepped.rewards[0, newcomer] == -10.0 and _where(game, newcomer) == (0, 3)


def test_the_time_limit_truncates_without_a_terminal() -> None:
    game = _game(episode_len=3)
    outcomes = [_step(game, *[BRAKE] * 10) for _ in range(3)]
    assert [bool(s.truncated[0]) for s in outcomes] == [False, False, True]
    assert not any(bool(s.terminated[0]) for s in outcomes)


def test_the_observation_and_the_state_of_a_car() -> None:
    game = _game(vision=1, agent_id=True, cell_onehot=True)
    game.place_car(0, 2, 1, progress=7, tau=4)  # top, right turn: (6, 5), heading west
    game.place_car(0, 5, 0, progress=7)  # (7, 6): south-east of it, in its window
    seen = game.observe()
    obs, r = seen.obs[0, 2], len(game.routes)
    assert obs[0] == 0.0 and np.flatnonzero(obs[1 : 1 + r]).tolist() == [1]
    assert obs[1 + r : 3 + r] == pytest.approx([6 / 13, 5 / 13])
    road_cells = list(zip(*np.nonzero(game.road), strict=True))
    assert np.flatnonzero(obs[3 + r : 3 + r + len(road_cells)]).tolist() == [road_cells.index((6, 5))]
    window = obs[game._o_cars - 9 : game._o_id].reshape(2, 3, 3)
    assert window[0].tolist() == [[0, 0, 1], [1, 1, 1], [1, 1, 1]]  # rows 5-7 x columns 4-6: road?
    assert window[1].tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1]]  # other cars
    assert np.flatnonzero(obs[game._o_id :]).tolist() == [2] and obs.shape == (game.obs_dim,)
    state = seen.state[0, : 10 * (4 + r)].reshape(10, 4 + r)
    assert state[2, :4] == pytest.approx([1.0, 6 / 13, 5 / 13, 4 / 40]) and state[2, 4 + 1] == 1.0
    assert not state[0].any() and seen.state.shape == (1, game.state_dim)


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_the_vector_env_equals_single_team_envs_through_auto_resets(difficulty: str) -> None:
    b = 4
    options = TrafficJunctionOptions(difficulty=difficulty, episode_len=7, arrival_prob=0.5, vision=1)
    vector = traffic_junction_vector_env(options, b, "mean", True, 2)
    singles = [TeamEnv(traffic_junction_env(options), use_state=True, history=2) for _ in range(b)]

    def gas_or_brake(obs: dict, rng: np.random.Generator) -> np.ndarray:
        return np.where(obs["action_mask"][..., GAS] > 0, rng.integers(0, 2, size=(b, vector.game.n_agents)), BRAKE)

    def facts(vector_info: dict, i: int, single_info: dict) -> None:
        assert vector_info["won"][i] == single_info["won"]
        assert vector_info["collisions"][i] == single_info["collisions"]

    stepped = assert_vector_matches_singles(vector, singles, 30, actions=gas_or_brake, info=facts)
    assert sum(int(info["collisions"]) for info in stepped) > 0  # the crash rule was exercised


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_the_parallel_face_passes_pettingzoos_api_test(difficulty: str) -> None:
    parallel_api_test(traffic_junction_env(TrafficJunctionOptions(difficulty=difficulty)), num_cycles=30)


def test_render_draws_the_roads_and_the_cars() -> None:
    env = traffic_junction_env(TrafficJunctionOptions(difficulty="medium", arrival_prob=1.0), render_mode="rgb_array")
    env.reset(seed=0)
    image = env.render()
    assert isinstance(env, BatchedParallelEnv) and image is not None
    assert image.shape == (14 * 12, 14 * 12, 3) and image.dtype == np.uint8
    colours = {tuple(image[r * 12 + 4, c * 12 + 4]) for r, c in [(0, 6), (13, 7), (7, 0), (6, 13)]}  # entry cells
    assert len(colours) == 4  # four cars in four colours
    assert traffic_junction_env(TrafficJunctionOptions()).render() is None


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"difficulty": "extreme"}, ValueError, r"env.options.difficulty must be one of \['easy', 'hard', 'medium'\]"),
        ({"difficulty": "easy", "grid_size": 8}, ValueError, "grid_size must be odd and >= 3 for easy, got 8"),
        ({"grid_size": 15}, ValueError, "grid_size must be even and >= 4 for medium, got 15"),
        ({"difficulty": "hard", "grid_size": 10}, ValueError, "grid_size must be a multiple of 3 and >= 9"),
        ({"max_cars": 0}, ValueError, r"max_cars must be in \[1, 1024\].*, got 0"),
        ({"arrival_prob": 1.5}, ValueError, r"arrival_prob must be in \[0, 1\], got 1.5"),
        ({"episode_len": 0}, ValueError, "episode_len must be >= 1"),
        ({"vision": -1}, ValueError, "vision must be >= 0 and < grid_size"),
        ({"collision_penalty": -10.0}, ValueError, "collision_penalty must be >= 0"),
        ({"max_cars": True}, TypeError, "env.options.max_cars must be int | None, got True"),
        ({"vision": 1.5}, TypeError, "env.options.vision must be int"),
    ],
)
def test_options_are_checked(options: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        TrafficJunctionOptions(**options)


def test_a_version_sets_the_knobs_left_unset() -> None:
    medium = TrafficJunctionOptions().preset()
    assert (medium.grid_size, medium.max_cars, medium.arrival_prob, medium.episode_len) == (14, 10, 0.2, 40)
    hard = TrafficJunctionOptions(difficulty="hard", max_cars=5, arrival_prob=1).preset()
    assert (hard.grid_size, hard.max_cars, hard.arrival_prob, hard.episode_len) == (18, 5, 1.0, 80)
    easy = TrafficJunctionGame(TrafficJunctionOptions(difficulty="easy"), 3)
    assert (easy.n_agents, easy.n_actions, easy.grid_size, easy.episode_len) == (5, 2, 7, 20)


def test_always_gas_on_easy_succeeds_as_often_as_the_arrival_rounds_predict() -> None:
    """Without a slot limit (20 slots, at most 2 x 7 cars on the road), a car that always presses gas reaches the
    junction 3 steps after it arrives, and so does one of the other entry: cars collide there exactly when both
    entries draw an arrival in the same round, in one of the 18 rounds (t = 0..17) whose cars reach the junction
    by t = 20. Success = (1 - p^2)^18 = 0.183 at p = 0.3; 20,000 episodes put the estimate within 0.012 (4 standard
    errors), where 17 or 19 rounds would be 0.201 or 0.167."""
    episodes, p = 20_000, 0.3
    game = TrafficJunctionGame(TrafficJunctionOptions(difficulty="easy", arrival_prob=p, max_cars=20), episodes)
    game.seed(list(range(episodes)))
    rows = np.ones(episodes, dtype=bool)
    game.reset(rows)
    for _ in range(game.episode_len):
        game.step(np.full(game.active.shape, GAS), rows)
    assert game.active.sum(-1).max() <= 14
    assert abs((~game.failed).mean() - (1 - p * p) ** 18) < 0.012
