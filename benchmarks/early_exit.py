"""JEI-DNN early exits on mpe2 simple_spread (N=3): return vs MACs per action over a lambda sweep, and latency.

    python -m benchmarks.early_exit run --cost-weight 0.1 --seed 0 --env-steps 1000000
    python -m benchmarks.early_exit sweep --seeds 0 1 2 --env-steps 1000000     # every lambda x seed, in turn
    python -m benchmarks.early_exit summarize        # table (stdout + results.md) and the Pareto PNG
    python -m benchmarks.early_exit latency [--checkpoint RUN_OR_CKPT]

`run` trains one run through the normal `commformer train` path (configs/mpe_spread.yaml with
`model.num_blocks=3`, `model.early_exit.enabled=true`, `model.early_exit.cost_weight=lambda`; rollouts at full
depth, the default) into runs/early_exit/, then plays the final exported policy greedily for `--episodes`
episodes twice on the same seeds: at full depth (the run's own baseline) and through its exits. One JSON row per
run goes to docs/benchmarks/early_exit/. MACs per action are the team decision's MACs over N, counted by
FlopCounterMode on the policy's modules (commformer/early_exit.py); the baseline is the plain full-depth path
without exit modules. The goal of issue 4: >= 40% fewer MACs per action at <= 2% lower return than full depth.

`latency` times one team decision (batch 1) on one CPU thread: the plain full-depth path, and the exit path
exiting at each depth (forced), or, with --checkpoint, as the trained gates decide over real observations.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

OUT = Path("docs/benchmarks/early_exit")
RUNS = Path("runs/early_exit")
LAMBDAS = (0.0, 0.03, 0.1, 0.3)
NUM_BLOCKS = 3


def _row_path(cost_weight: float, seed: int, out: Path) -> Path:
    return out / f"lam{cost_weight:g}_seed{seed}.json"


def run(cost_weight: float, seed: int, env_steps: int, episodes: int, extra: list[str], out: Path, runs: Path) -> Path:
    """Trains one run and writes its evaluation row (full depth vs exits) as JSON."""
    from agents.train import prepare_run, train

    name = f"lam{cost_weight:g}_seed{seed}"
    overrides = [
        f"run.seed={seed}",
        f"stop.env_steps={env_steps}",
        f"run.output_dir={runs}",
        f"run.name={name}",
        f"model.num_blocks={NUM_BLOCKS}",
        "model.early_exit.enabled=true",
        f"model.early_exit.cost_weight={cost_weight}",
        "resources.num_env_runners=0",  # sampling in the driver: two sweep runs share the 2 cores
        *extra,
    ]
    config, run_dir = prepare_run("configs/mpe_spread.yaml", overrides, None)
    t0 = time.monotonic()
    checkpoint = train(config, run_dir)
    row = {"cost_weight": cost_weight, "seed": seed, "env_steps": env_steps, "train_s": time.monotonic() - t0}
    row.update(evaluate(checkpoint, episodes, seed=1000 + seed))
    out.mkdir(parents=True, exist_ok=True)
    path = _row_path(cost_weight, seed, out)
    path.write_text(json.dumps(row, indent=2))
    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict | list)}, indent=2))
    return path


def evaluate(checkpoint: Path, episodes: int, seed: int) -> dict[str, Any]:
    """Greedy return at full depth and through the exits (same episode seeds), with the exits' report."""
    from agents.checkpoints import POLICY
    from agents.play import EarlyExitActor, greedy_actor, make_play_env, play
    from commformer.export import load_policy

    policy, metadata = load_policy(Path(checkpoint) / POLICY)
    use_state = bool(metadata["env"].get("use_state"))
    env = make_play_env(metadata["env"], policy)
    try:
        full = play(env, greedy_actor(policy, use_state), episodes, seed=seed).summary()
        actor = EarlyExitActor(policy, use_state)
        exits = play(env, actor, episodes, seed=seed).summary()
    finally:
        env.close()
    report = actor.report()
    return {
        "checkpoint": str(checkpoint),
        "return_full": full["return_mean"],
        "return_exit": exits["return_mean"],
        "macs_per_action_full": report["macs_per_action_full_depth"],
        "macs_per_action_exit": report["macs_per_action_executed"],
        "exit_depth_mean": report["exit_depth_mean"],
        "early_exit": report,
    }


def summarize(out: Path) -> str:
    """Mean over seeds per lambda; writes results.md and pareto.png; returns the table."""
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("lam*_seed*.json"))]
    if not rows:
        raise SystemExit(f"no rows in {out}; run `python -m benchmarks.early_exit run ...` first")
    by_lambda: dict[float, list[dict[str, Any]]] = {}
    for row in rows:
        by_lambda.setdefault(float(row["cost_weight"]), []).append(row)
    lines = [
        "| lambda | seeds | return full depth | return with exits | return change | MACs/action full | "
        "MACs/action exits | MACs saved | mean exit depth |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    points = []
    for lam in sorted(by_lambda):
        group = by_lambda[lam]

        def mean(key: str, group: list[dict[str, Any]] = group) -> float:
            return statistics.fmean(float(r[key]) for r in group)

        full, exit_ret = mean("return_full"), mean("return_exit")
        macs_full, macs_exit = mean("macs_per_action_full"), mean("macs_per_action_exit")
        change = (exit_ret - full) / abs(full) if full else float("nan")  # negative = worse (returns are < 0)
        lines.append(
            f"| {lam:g} | {len(group)} | {full:.3f} | {exit_ret:.3f} | {100 * change:+.1f}% | {macs_full:,.0f} | "
            f"{macs_exit:,.0f} | {100 * (1 - macs_exit / macs_full):.1f}% | {mean('exit_depth_mean'):.2f} |"
        )
        points.append((lam, macs_full, full, macs_exit, exit_ret))
    lines += [
        "",
        "| lambda | seed | return full depth | return with exits | return change | MACs saved |",
        "|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (float(r["cost_weight"]), int(r["seed"]))):
        full, exit_ret = float(row["return_full"]), float(row["return_exit"])
        saved = 1 - float(row["macs_per_action_exit"]) / float(row["macs_per_action_full"])
        change = (exit_ret - full) / abs(full) if full else float("nan")
        lines.append(
            f"| {float(row['cost_weight']):g} | {row['seed']} | {full:.3f} | {exit_ret:.3f} | {100 * change:+.1f}% | "
            f"{100 * saved:.1f}% |"
        )
    table = "\n".join(lines)
    (out / "results.md").write_text(f"# Early exits on simple_spread N=3 ({NUM_BLOCKS} blocks)\n\n{table}\n")
    _plot(points, out / "pareto.png")
    return table


def _plot(points: list[tuple[float, float, float, float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[3] for p in points], [p[4] for p in points], label="with exits (per lambda)", zorder=3)
    ax.scatter([p[1] for p in points], [p[2] for p in points], marker="x", label="same runs, full depth")
    for lam, _, _, macs, ret in points:
        ax.annotate(f"lambda={lam:g}", (macs, ret), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("MACs per action (executed)")
    ax.set_ylabel("greedy return per agent")
    ax.set_title("simple_spread N=3: return vs compute")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _observed_inputs(policy: Any, env_section: dict[str, Any], steps: int) -> list[tuple[Any, ...]]:
    """`steps` batch-1 policy inputs (obs, mask, alive, history) met by the greedy policy in its own env."""
    import torch

    from agents.play import greedy_actor, make_play_env

    env = make_play_env(env_section, policy)
    actor = greedy_actor(policy, bool(env_section.get("use_state")))
    inputs = []
    obs, _ = env.reset(seed=0)
    while len(inputs) < steps:
        history = torch.as_tensor(obs["history"])[None] if "history" in obs else None
        inputs.append(
            (
                torch.as_tensor(obs["obs"])[None],
                torch.as_tensor(obs["action_mask"])[None],
                torch.as_tensor(obs["alive"])[None],
                history,
            )
        )
        action, _ = actor(obs)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return inputs


def latency(checkpoint: str | None, repeats: int) -> dict[str, float]:
    """Median seconds per batch-1 decision on one CPU thread."""
    import torch

    torch.set_num_threads(1)
    from commformer.config import ModelConfig
    from commformer.early_exit import EarlyExitConfig
    from commformer.policy import CommFormerPolicy

    if checkpoint is not None:
        from agents.cli import _load_trained

        policy, metadata, _ = _load_trained(checkpoint)
        inputs = _observed_inputs(policy, metadata["env"], steps=256)
    else:
        config = ModelConfig(num_blocks=NUM_BLOCKS, early_exit=EarlyExitConfig(enabled=True))
        policy = CommFormerPolicy(config, n_agents=3, obs_dim=18, n_actions=5, state_dim=None).eval()
        gen = torch.Generator().manual_seed(0)
        n, d, a = policy.n_agents, policy.obs_dim, policy.n_actions
        inputs = [(torch.randn(1, n, d, generator=gen), torch.ones(1, n, a), torch.ones(1, n), None)]

    def median_time(**kwargs: Any) -> float:
        times = []
        for i in range(-20, repeats):  # 20 warm-up calls first
            obs, mask, alive, history = inputs[i % len(inputs)]
            t0 = time.perf_counter()
            policy.act(obs, mask, alive, history=history, **kwargs)
            if i >= 0:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    result = {"full_depth_no_exits": median_time(early_exit=False), "gates_decide": median_time()}
    assert policy.exits is not None
    for depth in range(policy.exits.n_exits + 1):
        result[f"exit_at_{depth}"] = median_time(force_depth=depth)
    for key, seconds in result.items():
        print(f"  {key:<20} {1e6 * seconds:8.1f} us")
    return result


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="train and evaluate one (lambda, seed)")
    one.add_argument("--cost-weight", type=float, required=True)
    one.add_argument("--seed", type=int, default=0)
    sweep = sub.add_parser("sweep", help="run every lambda for every seed, skipping rows already written")
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sweep.add_argument("--cost-weights", type=float, nargs="+", default=list(LAMBDAS))
    for p in (one, sweep):
        p.add_argument("--env-steps", type=int, default=1_000_000)
        p.add_argument("--episodes", type=int, default=50)
        p.add_argument("--out", type=Path, default=OUT)
        p.add_argument("--runs", type=Path, default=RUNS)
        p.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides (smoke tests)")
    summary = sub.add_parser("summarize", help="table + Pareto plot from the rows")
    summary.add_argument("--out", type=Path, default=OUT)
    lat = sub.add_parser("latency", help="batch-1 decision latency on CPU with and without exits")
    lat.add_argument("--checkpoint", help="a run or checkpoint with exits (default: an untrained policy)")
    lat.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.cost_weight, args.seed, args.env_steps, args.episodes, args.overrides, args.out, args.runs)
    elif args.command == "sweep":
        for seed in args.seeds:
            for lam in args.cost_weights:
                if _row_path(lam, seed, args.out).is_file():
                    continue
                run(lam, seed, args.env_steps, args.episodes, args.overrides, args.out, args.runs)
    elif args.command == "summarize":
        print(summarize(args.out))
    else:
        latency(args.checkpoint, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
