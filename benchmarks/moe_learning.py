"""Learning with mixture-of-experts policy heads: linear head vs the three gates, simple_spread N=3.

    python -m benchmarks.moe_learning run --arm ARM --seed S [--env-steps 200000]
    python -m benchmarks.moe_learning summarize

ARM is one of: linear (the default head), topk (K=2 of E=4), dense_to_sparse, activation (sigmoid), each the
default experiment (configs/mpe_spread.yaml) with `model.head=moe` and the gate's settings; the temperature of
the dense gates anneals from 1.0 to 0.1 over the run. Per iteration the CSV in docs/benchmarks/moe_learning/
records env steps, per-agent return and, for MoE arms, the policy head's expert-usage entropy (log 4 = 1.386
is uniform usage; a collapsed router shows a value near 0).
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.learning import _at, _commformer_algo, plot_curves, start_run, train_to_csv

OUT = Path("docs/benchmarks/moe_learning")
MOE = ("model.head=moe", "model.moe.experts=4", "model.moe.tau_start=1.0", "model.moe.tau_end=0.1")
ARMS: dict[str, tuple[str, ...]] = {
    "linear": (),
    "topk": (*MOE, "model.moe.gate=topk", "model.moe.k=2"),
    "dense_to_sparse": (*MOE, "model.moe.gate=dense_to_sparse"),
    "activation": (*MOE, "model.moe.gate=activation", "model.moe.activation=sigmoid"),
}
MARKS = (50_000, 100_000, 200_000)


def run(arm: str, seed: int, env_steps: int) -> Path:
    start_run()
    algo, _ = _commformer_algo(seed, env_steps, ARMS[arm])

    def usage_entropy(result: dict[str, Any]) -> dict[str, float]:
        learner = result["learners"]["default_policy"]
        return {"usage_entropy": float(learner.get("moe_policy_usage_entropy", float("nan")))}

    return train_to_csv(algo, OUT / f"{arm}_seed{seed}.csv", env_steps, f"{arm} seed {seed}", extra=usage_entropy)


def summarize() -> None:
    print("| arm | seeds | " + " | ".join(f"{m // 1000}k" for m in MARKS) + " | usage entropy at the end |")
    print("|---|---|" + "---|" * len(MARKS) + "---|")
    curves: dict[str, list[tuple[list[int], list[float]]]] = {}
    for arm in ARMS:
        runs = []
        for path in sorted(OUT.glob(f"{arm}_seed*.csv")):
            with path.open() as f:
                rows = list(csv.DictReader(f))
            if not rows:
                continue
            steps = [int(r["env_steps"]) for r in rows]
            rets = [float(r["return_per_agent"]) for r in rows]
            curves.setdefault(arm, []).append((steps, rets))
            runs.append(([_at(steps, rets, m) for m in MARKS], float(rows[-1]["usage_entropy"])))
        if not runs:
            continue
        cells = []
        for i in range(len(MARKS)):
            vals = [r[0][i] for r in runs if r[0][i] is not None]
            spread = f" +- {statistics.stdev(vals):.2f}" if len(vals) > 1 else ""
            cells.append(f"{statistics.fmean(vals):.2f}{spread} (n={len(vals)})" if vals else "-")
        ents = [r[1] for r in runs if math.isfinite(r[1])]
        ent = " / ".join(f"{e:.3f}" for e in ents) if ents else "n/a"
        print(f"| {arm} | {len(runs)} | " + " | ".join(cells) + f" | {ent} |")
    colors = {"linear": "black", "topk": "tab:blue", "dense_to_sparse": "tab:green", "activation": "tab:red"}
    title = "simple_spread N=3: policy heads (one line per seed)"
    plot_curves(curves, colors, (-26.5, "random (-26.5)"), title, OUT / "moe_curves.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--arm", choices=list(ARMS), required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--env-steps", type=int, default=200_000)
    sub.add_parser("summarize")
    args = parser.parse_args(argv)
    if args.command == "run":
        print(f"wrote {run(args.arm, args.seed, args.env_steps)}")
    else:
        summarize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
