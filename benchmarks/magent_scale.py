"""MAgent2 battle at scale: env steps/s and agent steps/s of the team env at 64 / 256 / 1,000 agents a side.

    OMP_NUM_THREADS=1 python -m benchmarks.magent_scale [--sizes 64 256 1000] [--seconds 5]

Each size builds `magent_battle` with `n_agents` per side (the map scales with the team), the scripted opponent
(the default), the global state on, and steps it with uniformly random available actions (drawn in one
vectorised call, so the figure is the env's, not the benchmark's) for --seconds of wall clock after one warm-up
episode start, resetting when an episode ends. agent steps/s = env steps/s x agents a side: flat in the team
size means the env and its adapter are linear in it.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


def random_available(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random available action per row of an (N, A) mask."""
    return np.argmax(np.where(mask > 0, rng.random(mask.shape), -1.0), axis=1)


def measure(n_agents: int, seconds: float) -> dict[str, float]:
    from envs.registry import make_team_env

    t0 = time.perf_counter()
    env = make_team_env("magent_battle", {"n_agents": n_agents}, team_reward="mean", use_state=True)
    obs, _ = env.reset(seed=0)
    build = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        obs, _, terminated, truncated, _ = env.step(random_available(obs["action_mask"], rng))
        steps += 1
        if terminated or truncated:
            obs, _ = env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return {"agents": n_agents, "build_s": build, "env_steps_s": rate, "agent_steps_s": rate * n_agents}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1000])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    print("| agents a side | build + reset (s) | env steps/s | agent steps/s |")
    print("|---|---|---|---|")
    for n in args.sizes:
        row = measure(n, args.seconds)
        print(f"| {n:,} | {row['build_s']:.2f} | {row['env_steps_s']:,.1f} | {row['agent_steps_s']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
