"""Scripted reference policies on `traffic_junction`: what a trained team should beat, and what it can reach.

    .venv/bin/python -m benchmarks.traffic_baselines [--difficulty easy medium] [--arrival-probs 0.1 0.2 0.3]

Two policies, played on the env's own rules (envs/traffic_junction.py) for `--episodes` seeded episodes each:

- ``always gas``: every car drives on at every step. It needs no information at all, so a team without messages
  can learn it; cars collide only where two routes meet at the same step (and never queue, so nobody is rear-ended).
- ``yield``: every car knows where every other car is and what it will do, as a team that shares everything could:
  cars decide front to back (furthest along its route first, then by route id), and a car brakes when the cell it
  would enter will be taken after the step (by a car that stays there or by one that has already chosen to enter it).
  Only a car that arrives on an entry cell a braking car still holds can collide (as in IC3Net, an arrival is not
  held back), so its success is close to what full communication can buy.

Prints each policy's success rate (episodes without a collision) and return per agent (the team's summed reward over
the episode divided by the cars' slots, the figure `benchmarks.communication` reports for `team_reward: mean`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np

from envs.traffic_junction import BRAKE, GAS, PRESETS, TrafficJunctionGame, TrafficJunctionOptions

Policy = Callable[[TrafficJunctionGame], np.ndarray]


def always_gas(game: TrafficJunctionGame) -> np.ndarray:
    """(B, N) gas for every slot (an empty slot's action is ignored)."""
    return np.full(game.active.shape, GAS, dtype=np.int64)


def yield_to_the_front(game: TrafficJunctionGame) -> np.ndarray:
    """(B, N) the full-information rule of the module docstring."""
    cells = game.route_cells[game.route, game.progress]  # (B, N) flat cells
    last = game.route_cells.shape[1] - 1
    leaving = game.progress + 1 >= game.route_len[game.route]
    ahead = np.where(leaving, -1, game.route_cells[game.route, np.minimum(game.progress + 1, last)])
    actions = np.full(game.active.shape, BRAKE, dtype=np.int64)
    for b in range(game.num_envs):
        cars = np.flatnonzero(game.active[b])
        order = sorted(cars, key=lambda i: (-game.progress[b, i], game.route[b, i]))
        undecided = set(cars.tolist())
        taken: set[int] = set()  # cells held after the step by the cars decided so far
        for i in order:
            undecided.discard(i)
            target = int(ahead[b, i])
            held_by_a_car_behind = any(cells[b, j] == target for j in undecided)  # it has not moved yet
            go = target == -1 or (target not in taken and not held_by_a_car_behind)
            actions[b, i] = GAS if go else BRAKE
            taken.add(target if go else int(cells[b, i]))
    return actions


POLICIES: dict[str, Policy] = {"always gas": always_gas, "yield": yield_to_the_front}


def play(policy: Policy, difficulty: str, arrival_prob: float, episodes: int) -> tuple[float, float]:
    """Success rate and return per agent of `policy` over `episodes` episodes (seeds 0..episodes-1)."""
    game = TrafficJunctionGame(TrafficJunctionOptions(difficulty=difficulty, arrival_prob=arrival_prob), episodes)
    game.seed(list(range(episodes)))
    rows = np.ones(episodes, dtype=bool)
    game.reset(rows)
    total = np.zeros(episodes)
    for _ in range(game.episode_len):
        total += game.step(policy(game), rows).rewards.sum(-1)
    return float((~game.failed).mean()), float(total.mean() / game.n_agents)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--difficulty", nargs="+", default=["easy", "medium"], choices=sorted(PRESETS))
    parser.add_argument("--arrival-probs", nargs="+", type=float, help="default: the version's own")
    parser.add_argument("--episodes", type=int, default=1000)
    args = parser.parse_args(argv)
    print(f"{args.episodes} episodes per row")
    print(f"{'version':>8} {'p_arrive':>8} {'policy':>11} {'success':>8} {'return/agent':>13}")
    for difficulty in args.difficulty:
        for p in args.arrival_probs or [PRESETS[difficulty].arrival_prob]:
            for name, policy in POLICIES.items():
                success, ret = play(policy, difficulty, p, args.episodes)
                print(f"{difficulty:>8} {p:>8.2f} {name:>11} {success:>8.3f} {ret:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
