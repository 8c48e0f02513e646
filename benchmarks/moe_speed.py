"""Forward + backward time per input of ``MoEHead``: top-K for several K against the dense gates.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.moe_speed [--repeats 20] [--batches 3000 256]

Settings mirror the policy head: 64 inputs (``model.embed_dim``), 64 hidden units per expert, 16 outputs (a
mid-size discrete action space; mpe2 has 5, SMACv2 protoss 5v5 11), E = 8 experts. Batches: 3000 rows (a
1000-step minibatch of 3 agents, the PPO update) and 256 rows (a rollout-sized call). Each timed call is one
forward and one backward of ``out.sum() + aux_loss``, as in training, on one thread, float32; the median
over ``--repeats`` calls is reported, after ``--warmup`` untimed calls. The default clock is this process' CPU
time (``--clock cpu``), which time slices lost to other processes on a shared machine do not inflate; with one
thread it equals wall time on an idle machine (``--clock wall``).

Two alternatives that ``moe.py`` does not use are timed beside it, to keep its choices checkable:
``topk gather K=2`` gathers each input's K expert weight matrices and runs N K matrix-vector products
(instead of sorting inputs by expert), and ``dense fused`` runs the dense gate's experts as two matmuls over
all experts' stacked weights (instead of one expert at a time).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from commformer.layers.moe import MoEConfig, MoEHead

IN_DIM, HIDDEN, OUT_DIM, EXPERTS = 64, 64, 16, 8
Alternative = Callable[[MoEHead, Tensor], Tensor]


def _gather_topk(head: MoEHead, x: Tensor) -> Tensor:
    """Alternative top-K dispatch: per-input gathered expert weights, (N, K, in, hidden) in memory."""
    routing = head.route(x)
    chosen = routing.assigned  # (N, K)
    weights = routing.weights.gather(-1, chosen)  # (N, K)
    h = F.gelu(torch.einsum("ni,nkih->nkh", x, head.w1[chosen]) + head.b1[chosen])  # (N, K, hidden)
    y = torch.einsum("nkh,nkho->nko", h, head.w2[chosen]) + head.b2[chosen]  # (N, K, out)
    return (y * weights.unsqueeze(-1)).sum(dim=1)


def _fused_dense(head: MoEHead, x: Tensor) -> Tensor:
    """Alternative dense mixing: ``(N, in) @ (in, E*hidden)``, then the gate-scaled hidden units in one matmul."""
    weights = head.route(x).weights  # (N, E)
    h = F.gelu(torch.einsum("ni,eih->neh", x, head.w1) + head.b1)  # (N, E, hidden)
    # sum_e w_e (h_e @ w2[e] + b2[e]) = (w * h) contracted over (e, hidden) + w @ b2
    return torch.einsum("neh,eho->no", h * weights.unsqueeze(-1), head.w2) + weights @ head.b2


def _seconds_per_call(
    config: MoEConfig, alternative: Alternative | None, batch: int, repeats: int, warmup: int, clock: str
) -> float:
    """Median time of one forward + backward over ``repeats`` calls, after ``warmup`` untimed ones."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    head = MoEHead(IN_DIM, OUT_DIM, config)
    x = torch.randn(batch, IN_DIM)
    times = []
    for i in range(warmup + repeats):
        start = now()
        if alternative is not None:
            loss = alternative(head, x).sum()
        else:
            result = head(x)
            loss = result.out.sum() + result.aux_loss
        loss.backward()
        if i >= warmup:
            times.append(now() - start)
    return statistics.median(times)


def _cases() -> list[tuple[str, MoEConfig, Alternative | None]]:
    """(label, config, alternative forward or None for ``MoEHead.forward``)."""
    cases: list[tuple[str, MoEConfig, Alternative | None]] = [
        (f"topk K={k}", MoEConfig(experts=EXPERTS, gate="topk", k=k, hidden=HIDDEN), None) for k in (1, 2, 4, 8)
    ]
    cases += [
        ("dense_to_sparse", MoEConfig(experts=EXPERTS, gate="dense_to_sparse", hidden=HIDDEN), None),
        ("activation (sigmoid)", MoEConfig(experts=EXPERTS, gate="activation", hidden=HIDDEN), None),
        ("topk gather K=2 (alt.)", MoEConfig(experts=EXPERTS, gate="topk", k=2, hidden=HIDDEN), _gather_topk),
        ("dense fused (alt.)", MoEConfig(experts=EXPERTS, gate="dense_to_sparse", hidden=HIDDEN), _fused_dense),
    ]
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[3000, 256], help="rows per call")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per case (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per case")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU time or wall time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"MoEHead in={IN_DIM} hidden={HIDDEN} out={OUT_DIM} experts={EXPERTS}, float32, 1 thread")
    print(f"torch {torch.__version__}, topk K={EXPERTS} = K=E runs every expert on every row (the dense path)")
    print(f"forward+backward, {args.clock} clock, median of {args.repeats} calls after {args.warmup} warm-up calls\n")
    for batch in args.batches:
        print(f"batch {batch} rows")
        print(f"  {'case':<24}{'us/input':>10}{'ms/call':>10}")
        seconds: dict[str, float] = {}
        for label, config, alternative in _cases():
            seconds[label] = _seconds_per_call(config, alternative, batch, args.repeats, args.warmup, args.clock)
            print(f"  {label:<24}{1e6 * seconds[label] / batch:>10.2f}{1e3 * seconds[label]:>10.3f}")
        ratio = seconds["topk K=2"] / seconds[f"topk K={EXPERTS}"]
        print(f"  time(K=2) / time(K={EXPERTS}) = {ratio:.2f}\n")


if __name__ == "__main__":
    main()
