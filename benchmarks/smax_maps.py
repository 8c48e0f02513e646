"""Harder SMAX maps head to head: CommFormer-enc, CommFormer-dec and JaxMARL's own MAPPO / IPPO, at equal env steps.

    python -m benchmarks.smax_maps run --map 5m_vs_6m --variant dec --seed 0 [--env-steps 5000000]
    python -m benchmarks.smax_maps anchor --map 5m_vs_6m --alg mappo --csv PATH   # a JaxMARL run's CSV
    python -m benchmarks.smax_maps summarize          # table at 1M / 3M / 5M and a PNG per map

`run` trains the ready config configs/smax_<map>.yaml unchanged but for the seed, the run length and, for the
decoder variant, `model.decoder=autoregressive` (CommFormer-dec, the official code's default), writing
docs/benchmarks/smax_maps/<map>_<variant>_seed<k>.csv (one row per iteration, flushed: a killed run keeps what it
measured) and the greedy win rate over --eval-episodes battles at 1M, 3M and the end (<stem>_greedy_at<m>M.json,
<stem>_greedy.json). The configs anneal the learning rate over stop.env_steps (5M), as JaxMARL's baselines anneal
over TOTAL_TIMESTEPS, so every arm is read at the same points of the same schedule.

`anchor` copies a CSV of one of JaxMARL's own baselines (baselines/MAPPO/mappo_rnn_smax.py or
baselines/IPPO/ippo_rnn_smax.py from FLAIROx/JaxMARL with their SMAX configs, run unchanged in their own environment
for the same 5M env steps, one row per update: env_steps, win_rate, return) to
docs/benchmarks/smax_maps/jaxmarl/<map>_<alg>.csv after checking its columns. Their win rate is the share of won
battles among those finished in one update (128 envs x 128 steps); ours is the share among the last 100 finished
battles of the sampling policy.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

from benchmarks.learning import _at, plot_curves
from benchmarks.smax_learning import train_smax

OUT = Path("docs/benchmarks/smax_maps")
MAPS = ("5m_vs_6m", "3s5z", "6h_vs_8z", "smacv2_5_units")  # configs/smax_<map>.yaml
VARIANTS: dict[str, tuple[str, ...]] = {"enc": (), "dec": ("model.decoder=autoregressive",)}
ALGS = ("mappo", "ippo")  # JaxMARL's baselines
MARKS = (1_000_000, 3_000_000, 5_000_000)
GREEDY_MARKS = MARKS[:-1]  # and the end of the run
COLORS = {"enc": "tab:blue", "dec": "tab:purple", "mappo": "tab:orange", "ippo": "tab:gray"}


def run(smax_map: str, variant: str, seed: int, env_steps: int, eval_episodes: int) -> Path:
    csv_path = OUT / f"{smax_map}_{variant}_seed{seed}.csv"
    config = f"configs/smax_{smax_map}.yaml"
    return train_smax(config, csv_path, seed, env_steps, eval_episodes, VARIANTS[variant], GREEDY_MARKS)


def anchor(smax_map: str, alg: str, source: Path) -> Path:
    """Checks a JaxMARL run's CSV (env_steps, win_rate, return); copies it to docs/benchmarks/smax_maps/jaxmarl."""
    with source.open() as f:
        header = next(csv.reader(f), [])
    if header != ["env_steps", "win_rate", "return"]:
        raise SystemExit(f"{source} has columns {header}; expected env_steps,win_rate,return (jaxmarl_smax.py's CSV)")
    target = OUT / "jaxmarl" / f"{smax_map}_{alg}.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    print(f"wrote {target}")
    return target


def _curve(path: Path) -> tuple[list[int], list[float]]:
    steps, wins = [], []
    with path.open() as f:
        for row in csv.DictReader(f):
            steps.append(int(float(row["env_steps"])))
            wins.append(float(row["win_rate"]))
    return steps, wins


def _greedy(path: Path, mark: int | None) -> str:
    suffix = f"_at{mark / 1e6:g}M" if mark is not None else ""
    greedy = path.with_name(f"{path.stem}_greedy{suffix}.json")
    return f"{json.loads(greedy.read_text())['win_rate']:.2f}" if greedy.exists() else "-"


def _cells(values: list[float | None]) -> str:
    return " | ".join("-" if v is None else f"{v:.2f}" for v in values)


def summarize() -> None:
    marks = " | ".join(f"{m / 1e6:g}M" for m in MARKS)
    greedy_marks = " | ".join(f"greedy {m / 1e6:g}M" for m in GREEDY_MARKS)
    for smax_map in MAPS:
        runs: dict[str, list[Path]] = {v: sorted(OUT.glob(f"{smax_map}_{v}_seed*.csv")) for v in VARIANTS}
        runs.update({alg: sorted((OUT / "jaxmarl").glob(f"{smax_map}_{alg}.csv")) for alg in ALGS})
        if not any(runs.values()):
            continue
        print(f"\n### {smax_map}\n")
        print(f"| arm | run | {marks} | {greedy_marks} | greedy end |")
        print("|" + "---|" * (len(MARKS) + len(GREEDY_MARKS) + 3))
        curves: dict[str, list[tuple[list[int], list[float]]]] = {}
        for arm, paths in runs.items():
            per_mark: list[list[float]] = [[] for _ in MARKS]
            for path in paths:
                steps, wins = _curve(path)
                if not steps:
                    continue
                curves.setdefault(arm, []).append((steps, wins))
                at = [_at(steps, wins, m, window=100_000) for m in MARKS]
                for i, v in enumerate(at):
                    if v is not None:
                        per_mark[i].append(v)
                greedy = " | ".join(_greedy(path, m) for m in (*GREEDY_MARKS, None))  # "-" for JaxMARL's runs
                print(f"| {arm} | {path.stem} | {_cells(at)} | {greedy} |")
            if len(paths) > 1:
                means: list[float | None] = [sum(v) / len(v) if v else None for v in per_mark]
                print(f"| {arm} | mean of {len(paths)} | {_cells(means)} |" + " |" * (len(GREEDY_MARKS) + 1))
        if curves:
            title = f"SMAX {smax_map} vs the heuristic enemy (one line per run)"
            path = OUT / f"{smax_map}_win_rate.png"
            plot_curves(curves, COLORS, None, title, path, ylabel="training win rate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run")
    one.add_argument("--map", choices=MAPS, required=True)
    one.add_argument("--variant", choices=tuple(VARIANTS), required=True)
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--env-steps", type=int, default=MARKS[-1])
    one.add_argument("--eval-episodes", type=int, default=200)
    copy = sub.add_parser("anchor")
    copy.add_argument("--map", choices=MAPS, required=True)
    copy.add_argument("--alg", choices=ALGS, required=True)
    copy.add_argument("--csv", type=Path, required=True)
    sub.add_parser("summarize")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.map, args.variant, args.seed, args.env_steps, args.eval_episodes)
    elif args.command == "anchor":
        anchor(args.map, args.alg, args.csv)
    else:
        summarize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
