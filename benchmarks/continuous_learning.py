"""Learning curves with continuous actions: CommFormer's Gaussian head against RLlib's stock PPO on the same env.

    python -m benchmarks.continuous_learning run --task spread --algo commformer --seed 0 [--env-steps 1000000]
    python -m benchmarks.continuous_learning run --task multiwalker --algo ppo_mlp --seed 0
    python -m benchmarks.continuous_learning summarize     # table at the task's marks + a PNG of the curves per task

Tasks: `spread` is mpe2 simple_spread with `continuous_actions=True` (N=3; configs/mpe_spread_continuous.yaml),
`multiwalker` is PettingZoo's sisl multiwalker (3 walkers, 4 torques each; configs/multiwalker.yaml, the `sisl`
extra). `commformer` trains the task's ready config unchanged but for the seed and the run length; `ppo_mlp` is
what a user would otherwise pick: RLlib's stock PPO with its default Gaussian MLP module (64x64, a separate value
network) on the raw PettingZoo env through RLlib's ParallelPettingZooEnv, one policy shared by every agent, RLlib's
own action handling (the module's actions unsquashed from [-1, 1] to the box and clipped), with the same PPO
batch, epochs, learning rate, discount and GAE lambda as the CommFormer config and the same EnvRunners. As in
benchmarks/learning.py, its value clip is off (`vf_clip_param=inf`: the returns are far beyond RLlib's 10) and its
episode return, a sum over agents, is divided by N.

Each run appends one row per iteration (env steps, per-agent mean episode return, wall seconds) to
docs/benchmarks/continuous_learning/<task>_<algo>_seed<k>.csv, flushed, so a killed run keeps what it measured.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.learning import _at, _read, plot_curves, start_run, stock_ppo_algo, train_to_csv

if TYPE_CHECKING:
    from ray.rllib.algorithms.algorithm import Algorithm

OUT = Path("docs/benchmarks/continuous_learning")
ALGOS = ("commformer", "ppo_mlp")


@dataclass(frozen=True)
class Task:
    config: str  # the ready config
    raw_env: Callable[[], Any]  # the PettingZoo ParallelEnv the config describes, for the stock arm
    n_agents: int
    marks: tuple[int, ...]
    random: float  # per-agent return of uniform random actions in the box (`commformer rollout`, below)


def _spread() -> Any:
    from mpe2 import simple_spread_v3

    return simple_spread_v3.parallel_env(N=3, local_ratio=0.5, max_cycles=25, continuous_actions=True)


def _multiwalker() -> Any:
    from pettingzoo.sisl import multiwalker_v9

    return multiwalker_v9.parallel_env(n_walkers=3, max_cycles=500)


# The random baselines, 100 episodes each (mean; the 95% CI half-width was 1.5 and 2.7):
#   commformer rollout mpe2.simple_spread_v3 N=3 local_ratio=0.5 max_cycles=25 continuous_actions=true --episodes 100
#   commformer rollout pettingzoo.sisl.multiwalker_v9 n_walkers=3 max_cycles=500 --episodes 100
TASKS = {
    "spread": Task("configs/mpe_spread_continuous.yaml", _spread, 3, (100_000, 250_000, 500_000), -25.8),
    "multiwalker": Task("configs/multiwalker.yaml", _multiwalker, 3, (100_000, 200_000, 300_000), -102.3),
}


def _commformer_algo(task: Task, seed: int, env_steps: int) -> tuple[Algorithm, float]:
    from agents.build import build_ppo_config, probe_env
    from agents.config import load_config

    config = load_config(task.config, [f"run.seed={seed}", f"stop.env_steps={env_steps}"])
    probe_env(config)
    return build_ppo_config(config).build_algo(), 1.0


def _ppo_mlp_algo(task: Task, seed: int, env_steps: int) -> tuple[Algorithm, float]:
    return stock_ppo_algo(task.config, (), task.raw_env, task.n_agents, seed, env_steps)


def run(task_name: str, algo_name: str, seed: int, env_steps: int) -> Path:
    start_run()
    task = TASKS[task_name]
    make = {"commformer": _commformer_algo, "ppo_mlp": _ppo_mlp_algo}[algo_name]
    algo, scale = make(task, seed, env_steps)
    path = OUT / f"{task_name}_{algo_name}_seed{seed}.csv"
    return train_to_csv(algo, path, env_steps, f"{task_name} {algo_name} seed {seed}", scale)


def summarize() -> None:
    colors = {"commformer": "tab:blue", "ppo_mlp": "tab:orange"}
    for task_name, task in TASKS.items():
        rows, curves = [], {}
        for algo_name in ALGOS:
            for path in sorted(OUT.glob(f"{task_name}_{algo_name}_seed*.csv")):
                steps, rets, walls = _read(path)
                curves.setdefault(algo_name, []).append((steps, rets))
                fps = steps[-1] / walls[-1] if walls and walls[-1] > 0 else math.nan
                seed = path.stem.split("seed")[1]
                rows.append((algo_name, seed, [_at(steps, rets, m) for m in task.marks], fps))
        if not rows:
            continue
        print(f"\n{task_name}:")
        print("| algo | seed | " + " | ".join(f"{m // 1000}k" for m in task.marks) + " | env steps/s |")
        print("|---|---|" + "---|" * len(task.marks) + "---|")
        for algo_name, seed, vals, fps in rows:
            cells = " | ".join("-" if v is None else f"{v:.2f}" for v in vals)
            print(f"| {algo_name} | {seed} | {cells} | {fps:,.0f} |")
        for algo_name in ALGOS:
            cells = []
            for i in range(len(task.marks)):
                got = [r[2][i] for r in rows if r[0] == algo_name and r[2][i] is not None]
                cells.append(f"{sum(got) / len(got):.2f} (n={len(got)})" if got else "-")
            print(f"| {algo_name} | mean | " + " | ".join(cells) + " | |")
        title = f"{task_name}, continuous actions (one line per seed)"
        baseline = (task.random, f"uniform random ({task.random})")
        plot_curves(curves, colors, baseline, title, OUT / f"{task_name}_curves.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("--task", choices=sorted(TASKS), required=True)
    one.add_argument("--algo", choices=ALGOS, required=True)
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--env-steps", type=int, default=1_000_000)
    sub.add_parser("summarize")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.task, args.algo, args.seed, args.env_steps)
    else:
        summarize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
