"""SMAX speed: the raw jitted stepping rate at B = 1, 16, 64, 256, and training env steps/s on SMAX 3m with the
split of time between env stepping, policy inference and the learner.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.smax_speed [--seconds 3] [--iterations 6]
        [--config configs/smax_3m.yaml] [key=value ...] [--sizes 1 16 64 256]

(`--sizes` takes every number after it: give the key=value overrides before it.)

(1) For each B, `SMAXVectorEnv("3m", num_envs=B)` steps for --seconds with random available actions: "vector
env" is the whole `step()` (action checks, the jitted step, the info dict), "jitted core" calls the compiled
step alone with pre-drawn actions (the floor the Python around it adds to). Compilation is excluded.
(2) The config trains for --iterations iterations; env steps/s is over all iterations but the first (start-up,
compilation). The time is split, timed around the EnvRunner's `VectorEnv.step`, its policy forward and action
draw (`TeamEnvRunner._act`) and `sample()` (inside the remote EnvRunner when there is one), and around the
Learner's update (batch preparation and gradient steps) in the driver. With `training.sample_ahead` the
EnvRunner samples while the Learner updates: its shares run alongside the driver's, and the driver's "waiting"
line is what sampling still costs the wall clock. RLlib's own timers are EMAs that carry the first iteration's
compilation for many iterations, so they are not used.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import agents  # noqa: F401  (sets how OpenMP waits, which it reads when torch loads)


def raw_rates(scenario: str, num_envs: int, seconds: float) -> tuple[float, float]:
    """(vector env steps/s, jitted core steps/s) with random available actions, after compilation."""
    from envs.smax import SMAXVectorEnv

    env = SMAXVectorEnv(scenario, num_envs=num_envs)
    env.reset(seed=0)
    env.step(env.action_space.sample())  # compile
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(env.action_space.sample())
        steps += num_envs
    vector = steps / (time.perf_counter() - start)

    actions = [env.action_space.sample().astype(np.int32) for _ in range(64)]
    resetting = np.zeros(num_envs, dtype=bool)
    carry = env._carry
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for acts in actions:
            carry, out = env._jit_step(carry, resetting, acts)
        out["obs"].block_until_ready()
        resetting = np.asarray(out["terminated"]) | np.asarray(out["truncated"])
        steps += num_envs * len(actions)
    core = steps / (time.perf_counter() - start)
    env.close()
    return vector, core


def _timed(fn: Callable[..., Any], clock: dict[str, float], key: str) -> Callable[..., Any]:
    """`fn`, adding its wall time to clock[key]."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            clock[key] += time.perf_counter() - t0

    return timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1, 16, 64, 256], help="none: skip the raw rates")
    parser.add_argument("--config", default="configs/smax_3m.yaml")
    parser.add_argument("--json", metavar="FILE", help="also write the training figures as JSON")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    if args.iterations < 2:
        parser.error("--iterations must be >= 2 (the first one is not timed)")

    import torch

    torch.set_num_threads(1)
    if args.sizes:
        print("raw SMAX 3m, random available actions (compilation excluded):")
        print(f"  {'B':>5}  {'vector env step()':>18}  {'jitted core':>12}   env steps/s")
    for size in args.sizes:
        vector, core = raw_rates("3m", size, args.seconds)
        print(f"  {size:>5}  {vector:>18,.0f}  {core:>12,.0f}")

    from agents.build import build_ppo_config, probe_env
    from agents.config import load_config
    from agents.train import init_ray

    config = load_config(args.config, args.overrides)
    probe_env(config)
    init_ray()
    algo = build_ppo_config(config).build_algo()
    remote = config.resources.num_env_runners > 0
    clock = {"env": 0.0, "inference": 0.0, "sample": 0.0, "update": 0.0, "fetch": 0.0}
    if remote:  # the runners time themselves; the driver times the Learner's update
        algo.env_runner_group.foreach_env_runner(_install_timers, local_env_runner=False)
    else:
        _install_timers(algo.env_runner, clock)
    algo.learner_group.update = _timed(algo.learner_group.update, clock, "update")
    runners = algo.env_runner_group  # sample-ahead fetches the runners' samples through this call
    runners.fetch_ready_async_reqs = _timed(runners.fetch_ready_async_reqs, clock, "fetch")
    steps, walls = [], []
    for i in range(args.iterations):
        if i == 1:  # from here on: the first iteration carries start-up and compilation
            clock.update(dict.fromkeys(clock, 0.0))
            if remote:
                algo.env_runner_group.foreach_env_runner(_reset_timers, local_env_runner=False)
        t0 = time.perf_counter()
        result = algo.train()
        walls.append(time.perf_counter() - t0)
        steps.append(int(result["env_runners"]["num_env_steps_sampled"]))
    runner_clocks = (
        algo.env_runner_group.foreach_env_runner(_read_timers, local_env_runner=False) if remote else [clock]
    )
    algo.stop()

    train_fps = sum(steps[1:]) / sum(walls[1:])
    wall = sum(walls[1:])
    print(f"training: {args.config} {' '.join(args.overrides)}")
    print(f"  env steps/s (iterations 2..{args.iterations}): {train_fps:,.0f}   ({steps[-1]} env steps per iteration)")
    print(f"  time of iterations 2..{args.iterations} ({wall:.2f} s):")
    print("    per iteration (s): " + " ".join(f"{w:.3f}" for w in walls[1:]))
    env_s, inference_s, sample_s = (sum(c[k] for c in runner_clocks) for k in ("env", "inference", "sample"))
    sampling = [
        ("env stepping (SMAXVectorEnv.step)", env_s),
        ("policy forward + action draw", inference_s),
        ("rest of sampling (batching, episode chunks)", sample_s - env_s - inference_s),
    ]
    update = ("learner update (batch + gradient steps)", clock["update"])
    if remote:
        overlapped = " alongside" if config.training.sample_ahead else ", the driver waiting"
        print(f"    in the EnvRunner process{overlapped} (summed over {len(runner_clocks)} runner(s)):")
        _lines("      ", sampling, wall)
        print("    in the driver:")
        fetch = ("waiting for samples and receiving them", clock["fetch"])
        rest = ("weight sync, the rest of train()", wall - clock["update"] - clock["fetch"])
        _lines("      ", [update, fetch, rest] if config.training.sample_ahead else [update, rest], wall)
    else:
        _lines("    ", [*sampling, update, ("the rest of train()", wall - sample_s - clock["update"])], wall)
    if args.json:
        figures = {
            "config": args.config,
            "overrides": list(args.overrides),
            "env_steps_per_s": train_fps,
            "env_steps": sum(steps[1:]),
            "wall_s": wall,
            "update_s": clock["update"],
            "fetch_s": clock["fetch"] if remote and config.training.sample_ahead else None,
            "runner_env_s": env_s,
            "runner_inference_s": inference_s,
            "runner_sample_s": sample_s,
            "remote_runners": remote,
        }
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


def _lines(indent: str, rows: list[tuple[str, float]], wall: float) -> None:
    for name, seconds in rows:
        print(f"{indent}{name:<42} {seconds:7.3f} s  {100 * seconds / wall:5.1f} %")


def _install_timers(runner: Any, clock: dict[str, float] | None = None) -> None:
    """Times the EnvRunner's `VectorEnv.step`, its policy forward and action draw, and `sample()` into `clock`
    (kept on the runner as `_bench_clock` when it runs in another process)."""
    clock = runner._bench_clock = clock if clock is not None else {"env": 0.0, "inference": 0.0, "sample": 0.0}
    env = runner.env.unwrapped
    env.step = _timed(env.step, clock, "env")
    runner._act = _timed(runner._act, clock, "inference")
    runner.sample = _timed(runner.sample, clock, "sample")


def _reset_timers(runner: Any) -> None:
    runner._bench_clock.update(dict.fromkeys(runner._bench_clock, 0.0))


def _read_timers(runner: Any) -> dict[str, float]:
    return dict(runner._bench_clock)


if __name__ == "__main__":
    sys.exit(main())
