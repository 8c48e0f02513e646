"""One Adam step of a config's policy on 1 vs 2 torch threads, with OpenMP's default and passive waiting, on a
quiet machine and beside a busy process: why `resources.learner_threads` is 2 and how agents/__init__.py makes
OpenMP wait.

    .venv/bin/python -m benchmarks.update_threads [--config configs/smax_3m.yaml] [--batch 1600] [--steps 30]

Each case runs in a fresh interpreter (OpenMP reads its wait policy once, when torch loads). A step is the
learner's shape of work: the full forward over `--batch` team steps, a loss touching the logits, values and
communication cost, backward and Adam. "busy" runs one pure-Python spinning process beside the measurement, as
a second training or a test run would on a 2-core machine. Prints the median step time of each case.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

CASES = (  # (threads, label, how OpenMP waits)
    ("1", "default", {}),
    ("2", "default", {}),
    ("2", "passive", {"OMP_WAIT_POLICY": "PASSIVE"}),  # what importing agents sets
    ("2", "passive, spin 1000", {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "1000"}),  # libgomp only
)
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def measure(config_path: str, batch: int, steps: int) -> list[float]:
    """Step times (s) of the policy of `config_path` on random inputs of its env's shapes, in this process."""
    import torch

    from agents.build import probe_env
    from agents.config import load_config
    from agents.rl_module import build_policy, team_dims

    config = load_config(config_path, [])
    spaces = probe_env(config)
    dims = team_dims(spaces.observation_space, spaces.action_space)
    policy = build_policy(config.model, dims)
    n, d, a = dims.n_agents, dims.obs_dim, dims.n_actions
    obs, mask, alive = torch.randn(batch, n, d), torch.ones(batch, n, a), torch.ones(batch, n)
    state = torch.randn(batch, dims.state_dim) if dims.state_dim else None
    history = torch.randn(batch, dims.history, n, d) if dims.history else None
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-4)
    times = []
    for _ in range(steps + 5):  # the first 5 warm up
        start = time.perf_counter()
        out = policy(obs, mask, alive, state, history)
        loss = torch.log_softmax(out.logits, -1).mean() + out.values.pow(2).mean() + out.comm_cost
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[5:]


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smax_3m.yaml")
    parser.add_argument("--batch", type=int, default=1600, help="team steps per minibatch")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--case", metavar="THREADS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.case:  # a child: the env was set by the parent before this interpreter loaded torch
        import torch

        torch.set_num_threads(int(args.case))
        print(json.dumps(measure(args.config, args.batch, args.steps)))
        return 0

    print(f"one Adam step, {args.config} policy, {args.batch} team steps; median of {args.steps} steps (ms)")
    print(f"  {'threads':>7}  {'OpenMP wait':>18}  {'quiet':>8}  {'beside a busy process':>22}")
    for threads, label, waiting in CASES:
        env = {k: v for k, v in os.environ.items() if k not in WAIT_VARS}
        env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **waiting})
        cells = []
        for busy in (False, True):
            command = [sys.executable, "-m", "benchmarks.update_threads", "--config", args.config]
            command += ["--batch", str(args.batch), "--steps", str(args.steps), "--case", threads]
            spinner = None
            if busy:
                spinner = multiprocessing.get_context("spawn").Process(target=_spin, args=(time.time() + 600,))
                spinner.start()
            try:
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
            finally:
                if spinner is not None:
                    spinner.terminate()
                    spinner.join()
            cells.append(1e3 * statistics.median(json.loads(out.strip().splitlines()[-1])))
        print(f"  {threads:>7}  {label:>18}  {cells[0]:8.1f}  {cells[1]:22.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
