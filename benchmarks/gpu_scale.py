"""Does the learner wait? SMAX 3m training speed over learner / EnvRunner layouts, one table, one command.

    python -m benchmarks.gpu_scale [--arms cpu gpu gpu_r4 gpu_r8] [--iterations 8] [--config configs/smax_3m.yaml]

Each arm is configs/smax_3m.yaml with a few resource and batch overrides (`ARMS`), trained for --iterations
iterations by `benchmarks.smax_speed` in a fresh process (its own Ray; the first iteration, start-up and
compilation, is not timed). Per arm: env steps/s; the driver's wall clock split into the Learner's update,
waiting for and receiving the EnvRunners' samples (sample-ahead: the hand-off), and the rest of `train()` (weight
sync, metrics); the same three per 1,000 env steps; and the EnvRunners' own time per 1,000 env steps (env
stepping, policy forward, the rest of sampling), summed over runners. A learner that waits shows a large
"waiting" share; runners that wait for the learner show an update share near 100% with runner time well under
the wall clock.

Made to run on the lent GPU machine in under 5 minutes (about 40-60 s an arm there); the `cpu` arm runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ARMS: dict[str, tuple[str, ...]] = {
    "cpu": ("resources.num_gpus_per_learner=0",),
    "gpu": ("resources.num_gpus_per_learner=1",),
    "gpu_r4": (
        "resources.num_gpus_per_learner=1",
        "resources.num_env_runners=4",
        "training.train_batch_size=12800",
        "training.minibatch_size=6400",
    ),
    "gpu_r8": (
        "resources.num_gpus_per_learner=1",
        "resources.num_env_runners=8",
        "training.train_batch_size=25600",
        "training.minibatch_size=12800",
    ),
}
"""Overrides per arm: the CPU learner; one GPU learner; with 4 and 8 EnvRunners and batches grown with them."""


def run_arm(name: str, config: str, iterations: int, extra: list[str]) -> dict[str, Any]:
    """Trains one arm in a subprocess; returns `smax_speed --json`'s figures with the arm's name."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        command = [
            sys.executable, "-m", "benchmarks.smax_speed", "--config", config, "--iterations", str(iterations),
            "--json", str(out), *ARMS[name], *extra, "--sizes",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"arm {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return {"arm": name, **json.loads(out.read_text())}


def table(rows: list[dict[str, Any]]) -> str:
    """The figures of every arm as a Markdown table (shares of the driver's wall clock, ms per 1,000 env steps)."""
    lines = [
        "| arm | env steps/s | update | waiting for samples | rest of train() | update / waiting / rest, ms per 1k "
        "steps | runners: env / forward / rest, ms per 1k steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        wall, steps = r["wall_s"], r["env_steps"] / 1000
        fetch = r["fetch_s"] or 0.0
        rest = wall - r["update_s"] - fetch
        runner_rest = r["runner_sample_s"] - r["runner_env_s"] - r["runner_inference_s"]
        parts = (r["update_s"], fetch, rest)
        shares = " | ".join(f"{100 * x / wall:.1f}%" for x in parts)
        per_k = " / ".join(f"{1000 * x / steps:.1f}" for x in parts)
        runners = " / ".join(
            f"{1000 * x / steps:.1f}" for x in (r["runner_env_s"], r["runner_inference_s"], runner_rest)
        )
        lines.append(f"| {r['arm']} | {r['env_steps_per_s']:,.0f} | {shares} | {per_k} | {runners} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(ARMS))
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--config", default="configs/smax_3m.yaml")
    parser.add_argument("--json", metavar="FILE", help="also write every arm's figures as JSON")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every arm, after its own")
    args = parser.parse_args(argv)
    if args.iterations < 2:
        parser.error("--iterations must be >= 2 (the first one is not timed)")
    rows = []
    for name in args.arms:
        rows.append(run_arm(name, args.config, args.iterations, args.overrides))
        print(f"{name}: {rows[-1]['env_steps_per_s']:,.0f} env steps/s", flush=True)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
