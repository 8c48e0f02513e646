"""Learning curves on mpe2 simple_spread (N=3): CommFormer against RLlib's stock PPO with one shared MLP.

    python -m benchmarks.learning run --algo commformer --seed 0 --env-steps 1000000
    python -m benchmarks.learning run --algo ppo_mlp --seed 0 --env-steps 1000000
    python -m benchmarks.learning summarize            # table at 250k/500k/1M + PNG of the curves

Each run appends (env_steps, per-agent mean episode return, wall seconds) per iteration to
docs/benchmarks/learning/<algo>_seed<k>.csv, so a killed run keeps what it measured. Both algorithms sample in
the driver (num_env_runners=0) and update on the local learner, on the same environment settings.

`no_comm` is the ablation: the same pipeline and settings as `commformer` with `model.communicate=false`
(every agent attends only to itself), which isolates what the learned communication contributes.

`ppo_mlp` is what a user would otherwise pick: RLlib's stock PPO learner and default MLP module (64x64), the
raw PettingZoo env through RLlib's ParallelPettingZooEnv, every agent mapped to one shared policy, 16 envs per
runner. Its non-default settings, each for a reason:
- the same PPO settings as configs/mpe_spread.yaml (4000 env steps per iteration = 12,000 agent steps, 5 epochs,
  minibatches of 1000 env steps = 3000 agent steps, lr 5e-4, entropy 0.01, gamma 0.99, lambda 0.95): RLlib's
  defaults (30 epochs of 128-sample minibatches) run ~2,800 gradient steps per iteration, about 80 env steps/s
  here, too slow to reach 1M steps. Batch sizes count env steps, minibatches rows of the module's batch
  (agent steps).
- `vf_share_layers=False` (DefaultModelConfig's default is True): a separate 64x64 value network. With the
  shared trunk the value loss (per-agent returns about -25, squared errors 50-600, coefficient 1) dominates the
  trunk's gradient and the policy got worse than random (-33 at 220k env steps, vf_explained_var ~0); with
  separate networks the same run reached -20.3 at 240k.
- `vf_clip_param=inf` (default 10): with returns around -25 the clip at 10 zeroes the value loss (docs/DESIGN.md,
  "RLlib facts"). Harmless now that the critic has its own network.
Known limits, left as RLlib does them: the critic stays at vf_explained_var ~0 (at lr 5e-4 it is still chasing
the mean of the unnormalised returns at 250k; the policy learns from the lambda=0.95 returns with standardised
advantages), and RLlib 2.60 records an episode in which every agent is truncated at max_cycles as terminated
(MultiAgentEpisode.add_env_step), so GAE does not bootstrap V at the time limit. Reporting the limit through
`__all__` alone makes it bootstrap but did not help at 250k, and with rewards scaled by 0.01 (a critic that
fits, explained variance 0.8) the policy collapsed (-59 at 240k): not adopted.
Its episode_return_mean is the sum over agents, so it is divided by N to compare per-agent returns.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.rllib.algorithms.algorithm import Algorithm

OUT = Path("docs/benchmarks/learning")
MARKS = (250_000, 500_000, 1_000_000)
N_AGENTS = 3
ALGOS = ("commformer", "no_comm", "ppo_mlp")


def _commformer_algo(seed: int, env_steps: int, extra: tuple[str, ...] = ()) -> tuple[Algorithm, float]:
    from agents.build import build_ppo_config, probe_env
    from agents.config import load_config

    # Sampling in the driver, as the recorded runs did (the config's default is now two EnvRunners).
    base = [f"run.seed={seed}", f"stop.env_steps={env_steps}", "resources.num_env_runners=0"]
    config = load_config("configs/mpe_spread.yaml", [*base, *extra])
    probe_env(config)
    return build_ppo_config(config).build_algo(), 1.0


def _simple_spread() -> Any:
    from mpe2 import simple_spread_v3

    return simple_spread_v3.parallel_env(N=N_AGENTS, local_ratio=0.5, max_cycles=25, continuous_actions=False)


def _ppo_mlp_algo(seed: int, env_steps: int) -> tuple[Algorithm, float]:
    # Sampling in the driver, as the CommFormer arm.
    overrides = ["resources.num_env_runners=0"]
    return stock_ppo_algo("configs/mpe_spread.yaml", overrides, _simple_spread, N_AGENTS, seed, env_steps)


def stock_ppo_algo(
    config_path: str,
    overrides: Sequence[str],
    raw_env: Callable[[], Any],
    n_agents: int,
    seed: int,
    env_steps: int,
) -> tuple[Algorithm, float]:
    """RLlib's stock PPO with its default MLP module on the raw PettingZoo env ``raw_env`` builds (through RLlib's
    ParallelPettingZooEnv, one policy shared by every agent), with the PPO batch, epochs, learning rate, entropy,
    discount, GAE lambda and EnvRunners of the ready config at ``config_path`` (with ``overrides``); and the factor
    (1 / N) that turns its episode return, a sum over agents, into a per-agent return."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv
    from ray.tune.registry import register_env

    from agents.config import load_config

    ours = load_config(config_path, [*overrides, f"run.seed={seed}", f"stop.env_steps={env_steps}"])
    train, res = ours.training, ours.resources
    name = f"stock_{Path(config_path).stem}"
    register_env(name, lambda _config: ParallelPettingZooEnv(raw_env()))
    config = (
        PPOConfig()
        .environment(name)
        .env_runners(num_env_runners=res.num_env_runners, num_envs_per_env_runner=res.num_envs_per_env_runner)
        .multi_agent(policies={"shared"}, policy_mapping_fn=lambda agent_id, episode, **kw: "shared")
        # A separate 64x64 value network: with the default shared trunk the unclipped value loss (returns ~-25,
        # squared errors in the hundreds at first) swamps the policy gradient in the shared layers.
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64], vf_share_layers=False))
        .training(
            train_batch_size_per_learner=train.train_batch_size,
            minibatch_size=train.minibatch_size * n_agents,  # rows of the module's batch are agent steps
            num_epochs=train.num_epochs,
            lr=train.lr,
            entropy_coeff=train.entropy_coeff,
            gamma=train.gamma,
            lambda_=train.gae_lambda,
            # RLlib clips the squared value error at vf_clip_param (10): with returns around -25 the value loss
            # would be clipped away and the critic never learn (docs/DESIGN.md, "RLlib facts").
            vf_clip_param=float("inf"),
        )
        .debugging(seed=seed, log_level="ERROR")
    )
    return config.build_algo(), 1.0 / n_agents


def start_run() -> None:
    """One thread and a fresh local Ray in this benchmark process."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import agents  # noqa: F401  (sets how OpenMP waits, which it reads when torch loads)

    # isort: split
    import torch

    torch.set_num_threads(1)
    from agents.train import init_ray

    init_ray()


COMM_COLUMNS = ("gate_open_rate", "gate_greedy_open_rate", "messages_per_step")
"""The learner's communication figures of each iteration: the sampled and greedy gate open rates, messages per step."""


def train_to_csv(
    algo: Algorithm,
    path: Path,
    env_steps: int,
    label: str,
    scale: float = 1.0,
    extra: Callable[[dict[str, Any]], dict[str, float]] | None = None,
    at_end: Callable[[Algorithm], None] | None = None,
) -> Path:
    """Trains until `env_steps`, one CSV row per iteration (flushed, so a killed run keeps what it measured):
    env steps, per-agent return (RLlib's mean episode return times `scale`), wall seconds, then `extra`'s
    columns and the learner's communication figures (`COMM_COLUMNS`, where the policy has them). Calls `at_end`
    with the trained algorithm, then stops it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        header_written = False
        steps = 0
        while steps < env_steps:
            result = algo.train()
            runners = result["env_runners"]
            steps = int(runners["num_env_steps_sampled_lifetime"])
            ret = float(runners.get("episode_return_mean", float("nan"))) * scale
            columns = extra(result) if extra else {}
            learner = result.get("learners", {}).get("default_policy", {})
            columns.update({key: float(learner[key]) for key in COMM_COLUMNS if key in learner})
            if not header_written:
                writer.writerow(["env_steps", "return_per_agent", "wall_s", *columns])
                header_written = True
            writer.writerow(
                [steps, f"{ret:.4f}", f"{time.monotonic() - t0:.1f}", *(f"{v:.4f}" for v in columns.values())]
            )
            f.flush()
            shown = "".join(f"  {k} {v:.3f}" for k, v in columns.items())
            print(f"{label}: {steps:>9,} steps  return/agent {ret:8.3f}{shown}", flush=True)
    if at_end is not None:
        at_end(algo)
    algo.stop()
    return path


def run(algo_name: str, seed: int, env_steps: int) -> Path:
    start_run()
    make = {
        "commformer": _commformer_algo,
        "no_comm": lambda seed, steps: _commformer_algo(seed, steps, ("model.communicate=false",)),
        "ppo_mlp": _ppo_mlp_algo,
    }[algo_name]
    algo, scale = make(seed, env_steps)
    return train_to_csv(algo, OUT / f"{algo_name}_seed{seed}.csv", env_steps, f"{algo_name} seed {seed}", scale)


def _read(path: Path) -> tuple[list[int], list[float], list[float]]:
    steps, rets, walls = [], [], []
    with path.open() as f:
        for row in csv.DictReader(f):
            steps.append(int(row["env_steps"]))
            rets.append(float(row["return_per_agent"]))
            walls.append(float(row["wall_s"]))
    return steps, rets, walls


def _at(steps: list[int], rets: list[float], mark: int, window: int = 25_000) -> float | None:
    """Mean return over the iterations within `window` env steps before `mark` (RLlib's own 100-episode
    smoothing already applies), or None if the run did not get there."""
    if not steps or steps[-1] < mark:
        return None
    chosen = [r for s, r in zip(steps, rets, strict=True) if mark - window <= s <= mark + 4000]
    return sum(chosen) / len(chosen) if chosen else None


def summarize() -> None:
    import math

    rows = []
    curves: dict[str, list[tuple[list[int], list[float]]]] = {}
    for algo_name in ALGOS:
        for path in sorted(OUT.glob(f"{algo_name}_seed*.csv")):
            steps, rets, walls = _read(path)
            curves.setdefault(algo_name, []).append((steps, rets))
            fps = steps[-1] / walls[-1] if walls and walls[-1] > 0 else math.nan
            rows.append((algo_name, path.stem.split("seed")[1], *[_at(steps, rets, m) for m in MARKS], fps))
    print("| algo | seed | " + " | ".join(f"{m // 1000}k" for m in MARKS) + " | env steps/s |")
    print("|---|---|" + "---|" * len(MARKS) + "---|")
    for algo_name, seed, *vals, fps in rows:
        cells = " | ".join("-" if v is None else f"{v:.2f}" for v in vals)
        print(f"| {algo_name} | {seed} | {cells} | {fps:,.0f} |")
    for algo_name in ALGOS:
        per_mark = []
        for i in range(len(MARKS)):
            vals = [r[2 + i] for r in rows if r[0] == algo_name and r[2 + i] is not None]
            per_mark.append(f"{sum(vals) / len(vals):.2f} (n={len(vals)})" if vals else "-")
        print(f"| {algo_name} | mean | " + " | ".join(per_mark) + " | |")
    colors = {"commformer": "tab:blue", "no_comm": "tab:green", "ppo_mlp": "tab:orange"}
    title = "mpe2 simple_spread, N=3 (one line per seed)"
    plot_curves(curves, colors, (-26.5, "random (-26.5)"), title, OUT / "simple_spread_curves.png")


def plot_curves(
    curves: dict[str, list[tuple[list[int], list[float]]]],
    colors: dict[str, str],
    baseline: tuple[float, str] | None,
    title: str,
    path: Path,
    ylabel: str = "per-agent mean episode return",
) -> None:
    """One line per run (env steps vs `ylabel`), one colour per arm, a dotted baseline if given; a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for arm, runs in curves.items():
        for i, (steps, rets) in enumerate(runs):
            ax.plot(steps, rets, color=colors[arm], alpha=0.8, lw=1.2, label=arm if i == 0 else None)
    if baseline is not None:
        ax.axhline(baseline[0], color="gray", ls=":", lw=1, label=baseline[1])
    ax.set_xlabel("env steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--algo", choices=ALGOS, required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--env-steps", type=int, default=1_000_000)
    sub.add_parser("summarize")
    args = parser.parse_args(argv)
    if args.command == "run":
        print(f"wrote {run(args.algo, args.seed, args.env_steps)}")
    else:
        summarize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
