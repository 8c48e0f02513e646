"""benchmarks/traffic_baselines.py: the full-information rule on hand-built scenes, and over random episodes it
collides only where an arrival lands on a held entry cell, which no driving rule can prevent."""

from __future__ import annotations

import numpy as np

from benchmarks.traffic_baselines import always_gas, play, yield_to_the_front
from envs.traffic_junction import BRAKE, GAS, TrafficJunctionGame, TrafficJunctionOptions


def _easy() -> TrafficJunctionGame:
    """One easy junction with no random arrivals, reset to an empty road."""
    game = TrafficJunctionGame(TrafficJunctionOptions(difficulty="easy", arrival_prob=0.0), 1)
    game.seed([0])
    game.reset(np.ones(1, dtype=bool))
    return game


def test_at_the_junction_the_top_route_goes_first_and_the_queue_behind_the_other_waits() -> None:
    game = _easy()  # 7 x 7: route 0 south down column 3, route 1 east along row 3; the junction is (3, 3)
    game.place_car(0, 0, 1, progress=2)  # (3, 2), next to the junction
    game.place_car(0, 1, 0, progress=2)  # (2, 3), next to the junction
    game.place_car(0, 2, 1, progress=1)  # (3, 1), behind car 0
    game.place_car(0, 3, 0, progress=6)  # (6, 3), on the last cell: it leaves
    assert yield_to_the_front(game)[0, :4].tolist() == [BRAKE, GAS, BRAKE, GAS]


def test_a_car_does_not_enter_a_cell_a_car_ahead_still_holds() -> None:
    game = _easy()
    game.place_car(0, 0, 1, progress=4)  # (3, 4), past the junction: drives on
    game.place_car(0, 1, 1, progress=3)  # (3, 3): follows it into (3, 4), which it leaves
    game.place_car(0, 2, 0, progress=2)  # (2, 3): the junction is held by car 1 now but free after the step
    assert yield_to_the_front(game)[0, :3].tolist() == [GAS, GAS, GAS]


def test_the_rule_collides_only_on_entry_cells_and_beats_always_gas() -> None:
    episodes = 200
    game = TrafficJunctionGame(TrafficJunctionOptions(difficulty="medium"), episodes)
    game.seed(list(range(episodes)))
    rows = np.ones(episodes, dtype=bool)
    game.reset(rows)
    for _ in range(game.episode_len):
        game.step(yield_to_the_front(game), rows)
        here = game.route_cells[game.route, game.progress]
        for b in np.flatnonzero(game.active.any(-1)):
            cars = np.flatnonzero(game.active[b])
            _, index, count = np.unique(here[b, cars], return_inverse=True, return_counts=True)
            shared = cars[count[index] > 1]
            assert (game.progress[b, shared] == 0).all(), "a collision away from an entry cell"
    assert (~game.failed).mean() > 0.9
    assert play(always_gas, "medium", 0.2, episodes)[0] < 0.2
