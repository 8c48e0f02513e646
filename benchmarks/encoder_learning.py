"""Learning with history encoders: Orchid vs a present-only MLP vs causal softmax attention, at equal env steps.

    python -m benchmarks.encoder_learning run --env ENV --encoder ENC --seed S [--env-steps N]
    python -m benchmarks.encoder_learning summarize            # table + one PNG of curves per env

ENV is `spread` (configs/mpe_spread.yaml: simple_spread N=3, where the present observation is nearly enough) or
`memory` (configs/memory_orchid.yaml: each agent must repeat at step 64 a cue seen only at step 0; chance 0.25).
ENC is `mlp` (model.history=1: the present only), `orchid` or `attention` over a window of `model.history`
steps: 16 on spread, 72 (>= delay + 1) on memory. Everything else is the config's. Per iteration the CSV in
docs/benchmarks/encoder_learning/ records env steps, per-agent return and wall seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.learning import _at, _read, plot_curves, start_run, train_to_csv

OUT = Path("docs/benchmarks/encoder_learning")
ENVS = {
    "spread": ("configs/mpe_spread.yaml", 16, (50_000, 100_000, 200_000), -26.5),
    "memory": ("configs/memory_orchid.yaml", 72, (30_000, 60_000, 120_000), 0.25),
}
"""env -> (config, window of the history encoders, marks of the table, chance / random-play return)."""
ENCODERS = ("mlp", "orchid", "attention")


def overrides(env: str, encoder: str) -> tuple[str, ...]:
    window = 1 if encoder == "mlp" else ENVS[env][1]
    return (f"model.encoder={encoder}", f"model.history={window}")


def run(env: str, encoder: str, seed: int, env_steps: int) -> Path:
    start_run()
    from agents.build import build_ppo_config, probe_env
    from agents.config import load_config

    # Sampling in the driver, as the recorded runs did (mpe_spread's default is now two EnvRunners).
    base = [f"run.seed={seed}", f"stop.env_steps={env_steps}", "resources.num_env_runners=0"]
    config = load_config(ENVS[env][0], [*base, *overrides(env, encoder)])
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    return train_to_csv(algo, OUT / f"{env}_{encoder}_seed{seed}.csv", env_steps, f"{env} {encoder} seed {seed}")


def summarize() -> None:
    for env, (_, window, marks, chance) in ENVS.items():
        print(f"\n{env} (history window {window} for orchid/attention, 1 for mlp; chance/random {chance})")
        print("| encoder | seeds | " + " | ".join(f"{m // 1000}k" for m in marks) + " | env steps/s |")
        print("|---|---|" + "---|" * len(marks) + "---|")
        curves: dict[str, list[tuple[list[int], list[float]]]] = {}
        for encoder in ENCODERS:
            runs = [_read(p) for p in sorted(OUT.glob(f"{env}_{encoder}_seed*.csv"))]
            runs = [r for r in runs if r[0]]
            if not runs:
                continue
            curves[encoder] = [(steps, rets) for steps, rets, _ in runs]
            cells = []
            for mark in marks:
                vals = [v for steps, rets, _ in runs if (v := _at(steps, rets, mark, window=mark // 8)) is not None]
                cells.append(f"{sum(vals) / len(vals):.2f} (n={len(vals)})" if vals else "-")
            fps = sum(steps[-1] / walls[-1] for steps, _, walls in runs) / len(runs)
            print(f"| {encoder} | {len(runs)} | " + " | ".join(cells) + f" | {fps:,.0f} |")
        if curves:
            colors = {"mlp": "tab:orange", "orchid": "tab:blue", "attention": "tab:green"}
            title = f"{env}: history encoders (one line per seed)"
            plot_curves(curves, colors, (chance, f"chance / random ({chance})"), title, OUT / f"{env}_curves.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--env", choices=list(ENVS), required=True)
    r.add_argument("--encoder", choices=ENCODERS, required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--env-steps", type=int, default=None, help="default: the last mark of the env's table")
    sub.add_parser("summarize")
    args = parser.parse_args(argv)
    if args.command == "run":
        steps = args.env_steps or ENVS[args.env][2][-1]
        print(f"wrote {run(args.env, args.encoder, args.seed, steps)}")
    else:
        summarize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
