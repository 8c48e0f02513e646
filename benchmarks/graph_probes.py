"""What assessing the senders a receiver does not hear costs where attention gathers (large teams, few senders each).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.graph_probes [--agents 256 1024] [--k 4] [--probes 4]
        [--batch 32] [--repeats 7]

Per N, the learner's forward and backward of one policy (``benchmarks/team_scaling.py``'s ``train`` call: gate
decisions recorded beforehand, a PPO-like scalar of every output, backward to every parameter) in two kinds of
gradient step: a lower-level one (``probes=False``: the graph draws no senders to assess) and an upper-level one, where
each receiver's gradient assesses ``--probes`` senders it does not hear (``model.graph.probes``,
commformer/graph.py). Both give the same outputs; only the upper step's graph-logit gradient differs. The learner
takes one upper step in ``training.graph_every`` (default 5), so the run pays the difference that often.

Time: process CPU seconds of one call, median over ``--repeats`` rounds after a warm-up, the calls interleaved in a
shuffled order per round (``interleaved_medians``). One thread, float32.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # single-threaded BLAS, as in the learners here; before torch

import argparse

import torch

from benchmarks.team_scaling import interleaved_medians
from commformer.config import GateConfig, GraphConfig, ModelConfig
from commformer.policy import CommFormerPolicy


def step_times(n: int, args: argparse.Namespace) -> tuple[float, float]:
    """(lower-level, upper-level) step seconds at N agents."""
    torch.manual_seed(0)
    graph = GraphConfig(k=args.k, probes=args.probes)
    config = ModelConfig(embed_dim=64, num_heads=1, num_blocks=1, graph=graph, gates=GateConfig(enabled=True))
    policy = CommFormerPolicy(config, n_agents=n, obs_dim=args.obs_dim, n_actions=args.n_actions, state_dim=None)
    if not policy.trunk.graph.gathered:
        raise SystemExit(f"N = {n} with k = {args.k} is attended in the dense layout, which assesses every sender")
    b = args.batch
    obs, mask, alive = torch.randn(b, n, args.obs_dim), torch.ones(b, n, args.n_actions), torch.ones(b, n)
    gate_open = policy.act(obs, mask, alive, sample_gates=True).gate_open

    def step(probes: bool) -> object:
        policy.zero_grad(set_to_none=True)
        out = policy(obs, mask, alive, gate_open=gate_open, greedy_values=True, probes=probes)
        assert out.gate_logit is not None
        loss = torch.log_softmax(out.logits, -1)[..., 0].sum() + out.values.square().sum() + out.gate_logit.sum()
        loss.backward()
        return None

    lower, upper = interleaved_medians([lambda: step(False), lambda: step(True)], args.repeats, warmup=2)
    return lower, upper


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--probes", type=int, default=GraphConfig().probes)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--obs-dim", type=int, default=32)
    parser.add_argument("--n-actions", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"k = {args.k}, probes = {args.probes}, batch = {args.batch} teams, one thread")
    print(f"{'N':>6}{'lower-level ms':>16}{'upper-level ms':>16}{'upper / lower':>15}")
    for n in args.agents:
        lower, upper = step_times(n, args)
        print(f"{n:>6}{lower * 1e3:>16.1f}{upper * 1e3:>16.1f}{upper / lower:>15.2f}")


if __name__ == "__main__":
    main()
