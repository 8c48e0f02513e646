"""Steps per second of raw mpe2 simple_spread (N=3, parallel API) and of the same env behind `TeamEnv`.

Both loops run in this process, one after the other, for a fixed wall-clock duration each, with uniformly
random actions drawn from a seeded numpy generator (the same cost in both loops, so the difference is the
adapter's overhead). Episodes are reset when they end; resets count as part of the time, not as steps.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.env_speed [--seconds 5] [--n-agents 3]

(run from the repository root, or with the package installed, so that `envs` is importable)
"""

from __future__ import annotations

import os

# Single-threaded BLAS, as in the EnvRunners (docs/DESIGN.md, "Threads"); set before numpy is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import time
from typing import Any

import numpy as np

from envs import make_team_env
from envs.mpe import SpreadOptions, simple_spread


def raw_steps_per_second(options: SpreadOptions, seconds: float, seed: int) -> float:
    """Raw ParallelEnv steps per second with random actions: mpe2's own env, without `JointObsState`."""
    env: Any = simple_spread(options).env
    rng = np.random.default_rng(seed)
    agents = list(env.possible_agents)
    n_actions = np.array([int(env.action_space(a).n) for a in agents])
    env.reset(seed=seed)
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        # One vectorised draw per step, as in the TeamEnv loop.
        env.step(dict(zip(agents, rng.integers(n_actions).tolist(), strict=True)))
        steps += 1
        if not env.agents:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def team_steps_per_second(options: SpreadOptions, seconds: float, seed: int) -> float:
    """TeamEnv steps per second with random actions."""
    env = make_team_env("mpe_spread", options)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        action = rng.integers(env.n_actions, size=env.n_agents)
        _, _, terminated, truncated, _ = env.step(action)
        steps += 1
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="wall-clock duration of each loop")
    parser.add_argument("--n-agents", type=int, default=3, help="simple_spread N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the env and of the random actions")
    args = parser.parse_args()
    options = SpreadOptions(n_agents=args.n_agents)
    raw = raw_steps_per_second(options, args.seconds, args.seed)
    team = team_steps_per_second(options, args.seconds, args.seed)
    print(f"mpe2 simple_spread N={args.n_agents}, {args.seconds:.1f} s per loop, OMP_NUM_THREADS=1")
    print(f"raw ParallelEnv : {raw:9.0f} steps/s ({1e6 / raw:6.1f} us/step)")
    print(f"TeamEnv         : {team:9.0f} steps/s ({1e6 / team:6.1f} us/step)")
    print(f"TeamEnv / raw   : {team / raw:9.3f} (overhead {1e6 / team - 1e6 / raw:.1f} us/step)")


if __name__ == "__main__":
    main()
