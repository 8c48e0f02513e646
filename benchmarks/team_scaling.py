"""Acting-path forward time of ``CommFormerPolicy`` against team size N: a sparse graph (k fixed) vs a dense one.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.team_scaling [--agents 8 16 32 64] [--k 4] [--batch 64]

For each N, two policies differ only in ``model.graph.k``: sparse (``--k`` senders per receiver, default 4) and
dense (k = N - 1, everyone hears everyone). Each timed call is ``policy.act(obs, action_mask, alive)`` on a batch
of B team steps (the EnvRunner's acting path: no gradient, no value head), on one thread, float32; the median
over ``--repeats`` calls is reported, after ``--warmup`` untimed ones. The clock is this process' CPU time
(``time.process_time``), which time slices lost to other processes on a shared machine do not inflate; the
cases are timed in interleaved rounds (every case once per round, shuffled), so that load drifting during the
run falls on all cases alike.

Printed per N and graph: time per team step (one call / B), time per agent (/ B N), and the off-diagonal edges
(messages) per team step; then for each graph the least-squares slope of log(time per team step) against
log(N), i.e. the exponent p of time ~ N^p. The graph-attention module alone (``GraphAttention.forward``: the QKV
and output projections and the masked (N, N) scores, the only place where k could matter) is timed the same way,
in its own column.

The model is the shipped SMAX configs' (configs/smax_3m.yaml): embed_dim 64, 1 head, 1 block, gates on, mlp
encoder, linear heads. The observation size D and the action count A are held fixed (``--obs-dim``,
``--n-actions``) so that only N changes; in SMAC-like envs D itself grows with N (each unit sees the others),
which adds an N x D embedding cost on top of what is measured here.

Why sparse and dense cost the same: commformer/layers/attention.py computes every receiver's scores against
*every* sender, a dense (B, H, N, N) matrix, and only then masks the pairs the graph leaves out (``masked_fill``
to finfo.min, softmax, times A). The work is the same N^2 dot products whatever k is; the graph changes which
entries are kept, not how many are computed. ``hard_topk`` sorts an (N, N - 1) logits matrix once per call (not
per team step) for either graph. So the sparse graph saves messages (k N instead of N (N - 1) per team step,
what a real deployment would send over a network), not policy compute. Time per agent is roughly flat because
the per-agent O(N d^2) linear layers (QKV, output, MLP, heads, gates) dominate; the O(N^2 d) scores only start
to show between N = 32 and 64 (time per agent rises there, more at B = 512, where per-call overhead no longer
hides it). A gather-based attention (each receiver gathers its k senders' keys and values: O(N k d)) would make
sparse cheaper only by that super-linear part.

Measured (2 shared CPU cores, loaded by two long benchmark runs and a test suite, load average ~7; process CPU
clock; torch 2.13 CPU), ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.team_scaling --repeats 60``:

       N  graph  k  us/step  us/agent  attn us/step
       8  sparse 4    31.8     3.98       11.1
       8  dense  7    31.1     3.88       10.6
      64  sparse 4   229.0     3.58       78.7
      64  dense 63   235.9     3.69       82.7
    exponent (8..64): sparse N^0.95, dense N^0.98; sparse / dense 0.97 to 1.03 at every N.

With ``--batch 512 --repeats 30``: sparse N^1.22, dense N^1.21 (attention alone N^1.30 / N^1.28), sparse /
dense 0.93 to 1.01; time per agent 2.5 us at N = 8, 4.0 us at N = 64 for both graphs.
"""

from __future__ import annotations

import os

# Single-threaded BLAS, as in the EnvRunners (docs/DESIGN.md, "Threads"); set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from commformer.config import GateConfig, GraphConfig, ModelConfig
from commformer.policy import CommFormerPolicy


@dataclass(frozen=True)
class Case:
    """One (N, graph) policy and its inputs, ready to call."""

    n: int
    graph: str
    k: int
    act: Callable[[], object]
    """``policy.act`` on the whole batch."""
    attend: Callable[[], object]
    """The block's ``GraphAttention.forward`` on the whole batch, with the effective graph the block sees."""
    messages: float
    """Off-diagonal edges used per team step (after the gates)."""


def build_case(n: int, k: int, graph: str, args: argparse.Namespace) -> Case:
    """A policy with N agents and k senders per receiver, on a fixed random batch."""
    torch.manual_seed(0)
    config = ModelConfig(
        embed_dim=args.embed_dim,
        num_heads=1,
        num_blocks=1,
        graph=GraphConfig(k=k),
        gates=GateConfig(enabled=True),
    )
    policy = CommFormerPolicy(config, n_agents=n, obs_dim=args.obs_dim, n_actions=args.n_actions, state_dim=None)
    policy.eval()
    b = args.batch
    obs = torch.randn(b, n, args.obs_dim)  # (B, N, D)
    action_mask = torch.ones(b, n, args.n_actions)  # (B, N, A)
    alive = torch.ones(b, n)  # (B, N)
    with torch.no_grad():
        out = policy(obs, action_mask, alive)
    adjacency = out.adjacency  # (B, N, N)
    x = torch.randn(b, n, args.embed_dim)  # (B, N, d)
    attention = policy.trunk.blocks[0].attn

    def attend() -> object:
        with torch.no_grad():
            return attention(x, adjacency)

    return Case(n, graph, k, lambda: policy.act(obs, action_mask, alive), attend, float(out.messages.mean()))


def interleaved_medians(calls: list[Callable[[], object]], repeats: int, warmup: int) -> list[float]:
    """Median process CPU seconds of each call, timed in rounds that call every one once, in a shuffled order.

    On a loaded machine the cost of a call drifts (caches, frequency); rounds spread that drift over every
    case alike instead of charging it to whichever case happened to run during a busy minute.
    """
    order = random.Random(0)
    times: list[list[float]] = [[] for _ in calls]
    for round_ in range(warmup + repeats):
        for i in order.sample(range(len(calls)), len(calls)):
            start = time.process_time()
            calls[i]()
            if round_ >= warmup:
                times[i].append(time.process_time() - start)
    return [statistics.median(t) for t in times]


def growth_exponent(ns: list[int], seconds: list[float]) -> float:
    """Least-squares slope p of log(seconds) = p log(N) + c."""
    xs = [math.log(n) for n in ns]
    ys = [math.log(s) for s in seconds]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[8, 16, 32, 64], help="team sizes N")
    parser.add_argument("--k", type=int, default=4, help="senders per receiver of the sparse graph")
    parser.add_argument("--batch", type=int, default=64, help="B, team steps per call")
    parser.add_argument("--embed-dim", type=int, default=64, help="model.embed_dim")
    parser.add_argument("--obs-dim", type=int, default=48, help="D, per-agent observation size (fixed)")
    parser.add_argument("--n-actions", type=int, default=12, help="A, per-agent actions (fixed)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per case (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per case")
    args = parser.parse_args()
    if len(args.agents) < 2 or min(args.agents) <= args.k:
        parser.error(f"--agents needs at least two team sizes, each > --k={args.k}; got {args.agents}")
    torch.set_num_threads(1)
    print(
        f"CommFormerPolicy.act, embed_dim={args.embed_dim}, 1 head, 1 block, gates on, D={args.obs_dim}, "
        f"A={args.n_actions}, B={args.batch}, float32, 1 thread, torch {torch.__version__}"
    )
    print(f"process CPU clock, median of {args.repeats} calls after {args.warmup} warm-up calls\n")
    cases = [build_case(n, k, graph, args) for n in args.agents for graph, k in (("sparse", args.k), ("dense", n - 1))]
    policy_s = interleaved_medians([c.act for c in cases], args.repeats, args.warmup)
    attention_s = interleaved_medians([c.attend for c in cases], args.repeats, args.warmup)
    print(f"{'N':>4} {'graph':<7}{'k':>4}{'us/step':>10}{'us/agent':>10}{'attn us/step':>14}{'msgs/step':>11}")
    for case, p, a in zip(cases, policy_s, attention_s, strict=True):
        step_us = 1e6 * p / args.batch
        print(
            f"{case.n:>4} {case.graph:<7}{case.k:>4}{step_us:>10.1f}{step_us / case.n:>10.2f}"
            f"{1e6 * a / args.batch:>14.1f}{case.messages:>11.0f}"
        )
    print()
    for graph in ("sparse", "dense"):
        mine = [i for i, c in enumerate(cases) if c.graph == graph]
        ns = [cases[i].n for i in mine]
        p_policy = growth_exponent(ns, [policy_s[i] for i in mine])
        p_attn = growth_exponent(ns, [attention_s[i] for i in mine])
        print(f"{graph:<7} time per team step ~ N^{p_policy:.2f} (attention alone ~ N^{p_attn:.2f})")
    ratios = [f"{n}: {policy_s[2 * i] / policy_s[2 * i + 1]:.2f}" for i, n in enumerate(args.agents)]
    print("sparse / dense time per team step, by N: " + ", ".join(ratios))


if __name__ == "__main__":
    main()
