"""Temporal gates on the `signal` task: do they stay open where messages pay, close where they do not, and does the
rate at which they close follow the communication cost?

    python -m benchmarks.gate_sweep run --task fixed_edge --cost 0.01 --seed 0
    python -m benchmarks.gate_sweep sweep --tasks fixed_edge useless --costs 0 0.001 0.01 0.1 --seeds 0 1
    python -m benchmarks.gate_sweep summarize     # table (stdout + results.md) and gates_over_training.png

Each run trains configs/signal.yaml (`run`: the `commformer train` path; `sweep`: per task one `commformer sweep`
over the costs and seeds, as Tune trials, sampling in the driver so two trials share the 2 cores) with
``model.gates.cost_weight`` set to the cost, then plays the exported policy greedily for 20 episodes. Tasks
(N = 3 agents, K = 4 symbols, 8 steps an episode; agent i must name the symbol of agent i - 1, which only that
agent sees; a guess earns 1 of 8 per episode on average 2):

- ``fixed_edge``: the graph is fixed on the right edge i <- i - 1 (``env.options.offset=1`` makes the initial ring
  right, ``training.graph_freeze_fraction=0`` keeps it): messages are always needed.
- ``useless``: the graph is fixed on the wrong edge i <- i + 1 (the default offset, frozen): messages carry a symbol
  nobody needs.
- ``learned``: the ready config as it is (the graph has to find the right edge) with the given cost.
- ``start_closed``: ``fixed_edge`` with gates that start closed (``model.gates.init_bias=-3``, p = 0.05).
- ``graph_n6`` / ``graph_n6_gumbel``: the ready config with N = 6 agents (k = 1 sender of 5 candidates, starting
  from the wrong ring): graph search under PPO, without and with Gumbel noise in the graph steps' surrogate gradient;
  ``graph_n6_held``: ``graph_n6_gumbel`` with ``model.graph.held_product`` (the held senders' product gradient too);
  ``graph_n6_warm``: ``graph_n6_gumbel`` with ``model.graph.warmup_fraction=0.25`` (everyone heard at first).

One JSON row per run goes to docs/benchmarks/gates/: the per-iteration sampled and greedy gate open rates, the
mean gate probability and the return, and the greedy evaluation. ``closed_at`` is the first env step from which the
greedy open rate stays below 0.1 to the end of the run; ``solved_at`` the first env step from which the training
return stays at or above 90% of the best (7.2 of 8); ``graph_right`` the share of receivers whose kept sender is
the agent they must name.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

OUT = Path("docs/benchmarks/gates")
RUNS = Path("runs/gate_sweep")
TASKS: dict[str, list[str]] = {
    "fixed_edge": ["env.options.offset=1", "training.graph_freeze_fraction=0.0"],
    "useless": ["training.graph_freeze_fraction=0.0"],
    "learned": [],
    "start_closed": ["env.options.offset=1", "training.graph_freeze_fraction=0.0", "model.gates.init_bias=-3.0"],
    "graph_n6": ["env.options.n_agents=6", "model.graph.gumbel=false"],  # named: the default is on
    "graph_n6_gumbel": ["env.options.n_agents=6", "model.graph.gumbel=true"],
    # Both pressures on a held sender: the product's gradient besides the renormalised one (docs/DESIGN.md).
    "graph_n6_held": ["env.options.n_agents=6", "model.graph.gumbel=true", "model.graph.held_product=true"],
    # Every receiver hears every sender for the first quarter of the run while the graph learns (docs/DESIGN.md).
    "graph_n6_warm": ["env.options.n_agents=6", "model.graph.gumbel=true", "model.graph.warmup_fraction=0.25"],
}
SCALARS = {
    "gate_open_rate": "comm/gate_open_rate",
    "gate_greedy_open_rate": "comm/gate_greedy_open_rate",
    "gate_prob_mean": "comm/gate_prob_mean",
    "return": "return/episode_return_mean",
}
CLOSED = 0.1
SOLVED = 0.9 * 8


def _name(task: str, cost: float, seed: int) -> str:
    return f"{task}_cost{cost:g}_seed{seed}"


def _overrides(env_steps: int, runs: Path) -> list[str]:
    """What every run of the benchmark sets on top of configs/signal.yaml (and its task's overrides)."""
    return [
        f"stop.env_steps={env_steps}",
        f"run.output_dir={runs}",
        "resources.num_env_runners=0",  # sampling in the driver: two runs share the 2 cores
        "run.checkpoint_every=1000",
    ]


def run(task: str, cost: float, seed: int, env_steps: int, episodes: int, out: Path, runs: Path) -> Path:
    """Trains one run (the `commformer train` path) and writes its row."""
    from agents.train import prepare_run, train

    name = _name(task, cost, seed)
    overrides = [
        *_overrides(env_steps, runs),
        f"run.seed={seed}",
        f"run.name={name}",
        f"model.gates.cost_weight={cost}",
    ]
    config, run_dir = prepare_run("configs/signal.yaml", [*overrides, *TASKS[task]], None)
    train(config, run_dir)
    return write_row(task, cost, seed, env_steps, episodes, run_dir, out)


def sweep(
    tasks: list[str], costs: list[float], seeds: list[int], env_steps: int, episodes: int, out: Path, runs: Path
) -> None:
    """Every task x cost x seed: per task one `commformer sweep` (agents/sweep.py: Tune trials, two at a time on 2
    cores, each an ordinary run directory, continued where a trial stopped), then a row per trial without one."""
    from agents.sweep import plan
    from agents.sweep import run as run_trials

    for task in tasks:
        costs_spec = f"model.gates.cost_weight={','.join(f'{c:g}' for c in costs)}"
        trials = plan(
            "configs/signal.yaml", seeds, [*_overrides(env_steps, runs), *TASKS[task], costs_spec], f"gate_sweep-{task}"
        )
        run_trials(trials)
        for trial in trials:
            cost = trial.config.model.gates.cost_weight
            if not (out / f"{_name(task, cost, trial.seed)}.json").exists():
                write_row(task, cost, trial.seed, env_steps, episodes, trial.run_dir, out)


def write_row(
    task: str,
    cost: float,
    seed: int,
    env_steps: int,
    episodes: int,
    run_dir: Path,
    out: Path,
) -> Path:
    """A trained run's row as JSON: its curves (TensorBoard) and the greedy evaluation of its exported policy."""
    from agents.checkpoints import POLICY, latest_checkpoint
    from agents.metrics import METRICS, read_metrics
    from agents.play import greedy_actor, make_play_env, play
    from commformer.export import load_policy

    policy, metadata = load_policy(latest_checkpoint(run_dir) / POLICY)
    env = make_play_env(metadata["env"], policy)
    try:
        greedy = play(env, greedy_actor(policy, use_state=False), episodes, seed=1000 + seed).summary()
    finally:
        env.close()
    curves = read_curves(run_dir)
    n, offset = policy.n_agents, int(metadata["env"]["options"].get("offset", -1))
    adjacency = policy.trunk.graph.hard()
    right = sum(float(adjacency[i, (i + offset) % n]) for i in range(n)) / n  # agent i must name agent i + offset
    row = {
        "task": task,
        "cost": cost,
        "seed": seed,
        "env_steps": env_steps,
        "train_s": round(read_metrics(run_dir / METRICS)[-1].time_s, 1),  # the run's own clock (agents/metrics.py)
        "curves": curves,
        "closed_at": stays(curves["env_steps"], curves["gate_greedy_open_rate"], lambda rate: rate < CLOSED),
        "solved_at": stays(curves["env_steps"], curves["return"], lambda ret: ret >= SOLVED),
        "graph_right": right,
        "greedy_return": greedy["return_mean"],
        "greedy_gate_open_rate": greedy["gate_open_rate"],
        "greedy_messages_per_step": greedy["messages_per_step"],
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{_name(task, cost, seed)}.json"
    path.write_text(json.dumps(row))
    print(json.dumps({k: v for k, v in row.items() if k != "curves"}))
    return path


def read_curves(run_dir: Path) -> dict[str, list[float]]:
    """The run's TensorBoard scalars of `SCALARS`, on the env steps of the gate open rate."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    series = {key: {e.step: e.value for e in events.Scalars(tag)} for key, tag in SCALARS.items()}
    steps = sorted(series["gate_open_rate"])
    curves: dict[str, list[float]] = {"env_steps": [float(s) for s in steps]}
    for key, values in series.items():
        curves[key] = [values.get(s, float("nan")) for s in steps]
    return curves


def stays(steps: list[float], values: list[float], holds: Callable[[float], bool]) -> float | None:
    """The first env step from which `holds(value)` is true to the end of the run (None: not at the end)."""
    first = None
    for step, value in zip(steps, values, strict=True):
        first = (step if first is None else first) if holds(value) else None
    return first


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def summarize(out: Path) -> str:
    """The table of every (task, cost): greedy return and open rate, and when the gates closed, per seed."""
    rows = _rows(out)
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["cost"]), []).append(row)
    lines = [
        "| task | cost | seeds | greedy return (of 8) | greedy gates open | sampled open rate at the end "
        "| gates closed at (env steps, per seed) | solved at (per seed) | right sender |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def when(group: list[dict[str, Any]], key: str, holds: Callable[[float], bool]) -> str:
        at = [stays(r["curves"]["env_steps"], r["curves"][key], holds) for r in group]
        return " / ".join("never" if a is None else f"{a:,.0f}" for a in at)

    for (task, cost), group in sorted(groups.items(), key=lambda kv: (list(TASKS).index(kv[0][0]), kv[0][1])):
        group.sort(key=lambda r: r["seed"])
        ret = statistics.mean(r["greedy_return"] for r in group)
        gates = statistics.mean(r["greedy_gate_open_rate"] for r in group)
        end = statistics.mean(statistics.mean(r["curves"]["gate_open_rate"][-3:]) for r in group)
        closed = when(group, "gate_greedy_open_rate", lambda rate: rate < CLOSED)
        solved = when(group, "return", lambda ret: ret >= SOLVED)
        right = [r.get("graph_right") for r in group]
        learned = not any("graph_freeze_fraction=0.0" in o for o in TASKS[task])  # a frozen graph: right by design
        shown = learned and None not in right
        right_text = f"{statistics.mean(r for r in right if r is not None):.2f}" if shown else "-"
        lines.append(
            f"| {task} | {cost:g} | {len(group)} | {ret:.2f} | {gates:.2f} | {end:.2f} | {closed} | {solved} "
            f"| {right_text} |"
        )
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    _plot(rows, out / "gates_over_training.png")
    return table


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    costs = sorted({r["cost"] for r in rows})
    colours = {c: plt.get_cmap("viridis")(i / max(1, len(costs) - 1)) for i, c in enumerate(costs)}
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.5 * len(tasks), 6.5), squeeze=False, sharex=True)
    for col, task in enumerate(tasks):
        for row in sorted((r for r in rows if r["task"] == task), key=lambda r: (r["cost"], r["seed"])):
            c = row["curves"]
            x = [s / 1000 for s in c["env_steps"]]
            label = f"cost {row['cost']:g}" if row["seed"] == 0 else None
            axes[0][col].plot(x, c["gate_open_rate"], color=colours[row["cost"]], label=label, alpha=0.8)
            axes[1][col].plot(x, c["return"], color=colours[row["cost"]], alpha=0.8)
        axes[0][col].set_title(task)
        axes[0][col].set_ylim(-0.02, 1.02)
        axes[1][col].set_xlabel("env steps (thousands)")
    axes[0][0].set_ylabel("gate open rate (sampled)")
    axes[1][0].set_ylabel("episode return (of 8)")
    axes[0][-1].legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="train and evaluate one (task, cost, seed)")
    one.add_argument("--task", choices=list(TASKS), required=True)
    one.add_argument("--cost", type=float, required=True)
    one.add_argument("--seed", type=int, default=0)
    many = sub.add_parser("sweep", help="every task x cost x seed as Tune trials (trials that have a row are skipped)")
    many.add_argument("--tasks", nargs="+", choices=list(TASKS), default=["fixed_edge", "useless"])
    many.add_argument("--costs", nargs="+", type=float, default=[0.0, 0.001, 0.01, 0.1])
    many.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    for p in (one, many):
        p.add_argument("--env-steps", type=int, default=150_000)
        p.add_argument("--episodes", type=int, default=20)
        p.add_argument("--out", type=Path, default=OUT)
        p.add_argument("--runs", type=Path, default=RUNS)
    summary = sub.add_parser("summarize", help="print and write the table and the figure")
    summary.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.command == "summarize":
        print(summarize(args.out))
        return 0
    if args.command == "run":
        run(args.task, args.cost, args.seed, args.env_steps, args.episodes, args.out, args.runs)
        return 0
    sweep(args.tasks, args.costs, args.seeds, args.env_steps, args.episodes, args.out, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
