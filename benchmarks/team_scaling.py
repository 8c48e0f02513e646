"""Time and peak memory of ``CommFormerPolicy`` against team size N: a sparse graph (k fixed) vs a dense one.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.team_scaling [--agents 64 256 1024] [--forward-agents 4096]
        [--k 4] [--batch 32] [--repeats 5] [--no-memory]

Three policies per N in ``--agents``, with the same weights except the graph:

    sparse        k = ``--k`` senders per receiver, in the layout ``gathers(N, k)`` picks: gathered from
                  N = 16 (k + 1) on (commformer/layers/attention.py), so at k = 4 from N = 80
    sparse-dense  the same graph, attention forced into the dense layout (``CommGraph.gathered = False``): what the
                  sparse policy cost before the gather, and the reference the gathered layout is compared with
    dense         k = N - 1, everyone hears everyone (dense layout)

and for each:

    train   the learner's forward and backward in a lower-level step (four in five; ``benchmarks/graph_probes.py``
            times the upper-level step's probes): ``policy(obs, action_mask, alive, gate_open=..., greedy_values=True,
            probes=False)`` with gate decisions sampled once beforehand (as the EnvRunner records them), then a
            PPO-like scalar of the logits, values, gate log-probs and communication cost, backward to every
            parameter, the graph logits included
    act     ``policy.act(obs, action_mask, alive)``, no gradient: the EnvRunners' acting path
    attn    the first block's ``GraphAttention`` alone, forward and backward (to its input, its parameters and the
            adjacency entries, the gradient path to the graph logits), on the effective adjacency that block sees

Each N in ``--forward-agents`` (default 4,096) runs ``act`` and the attention's forward only, for the sparse policy
alone: a dense (B, H, N, N) score matrix at N = 4,096 and B = 32 is 2 GiB per intermediate.

Time: process CPU seconds (``time.process_time``) of one call, median over ``--repeats`` calls after ``--warmup``,
every case once per round in a shuffled order (``interleaved_medians``); on a shared, loaded machine the process
clock does not count time slices lost to other processes, and rounds spread load drifts over all cases alike. One
thread, float32. Printed per call, per team step (/ B) and as ratios (sparse-dense / sparse, dense / sparse).

Peak memory: each case again in a fresh Python process (``--memory-case``), which builds the policy and inputs, resets
its peak resident set size to the current one (``/proc/self/clear_refs``), reads its resident set size, makes one
call and reads the peak (``VmRSS`` and ``VmHWM`` of /proc/self/status; Linux). The difference is the most memory the
call held at once on top of torch, the model and the inputs: every tensor it allocated, as the pages it touched
(tracemalloc does not see torch's allocations, which bypass Python's allocator). Where the reset is not allowed, a
peak from before the call may hide the call's own, and the figure is an upper bound (marked ``<=``).

Allocator: glibc returns a freed block above its mmap threshold (at most 32 MiB) to the system, so a large
intermediate is paged in again by every operation that allocates one; the dense layout's (B, N, N) intermediates
(128 MiB at N = 1,024, B = 32) pay that on every call. ``MALLOC_MMAP_THRESHOLD_=4294967296
MALLOC_TRIM_THRESHOLD_=4294967296`` in the environment keeps freed memory for reuse instead; docs/BENCHMARKS.md
reports both.

Growth: the least-squares slope p of log(value) against log(N) over ``--agents`` (time or memory ~ N^p).

The model is the shipped SMAX configs' (configs/smax_3m.yaml: embed_dim 64, 1 head, 1 block, gates on, mlp encoder,
linear heads). The observation size D and the action count A are fixed (``--obs-dim``, ``--n-actions``) so that only
N changes; in SMAC-like envs D itself grows with N (each unit sees the others), which adds an N x D embedding cost on
top of what is measured here.

Results: docs/BENCHMARKS.md, "Policy time and memory vs team size".
"""

from __future__ import annotations

import os

# Single-threaded BLAS, as in the EnvRunners (docs/DESIGN.md, "Threads"); set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from commformer.config import GateConfig, GraphConfig, ModelConfig
from commformer.layers.attention import Senders
from commformer.policy import CommFormerPolicy, PolicyOutput

GRAPHS = ("sparse", "sparse-dense", "dense")
KINDS = ("train", "act", "attn")


@dataclass(frozen=True)
class Case:
    """One (N, graph) policy and its calls, ready to run."""

    n: int
    graph: str
    k: int
    layout: str
    """``gathered`` or ``dense``: what the attention reads."""
    calls: dict[str, Callable[[], object]]
    """By kind (``KINDS``); forward-only cases have ``act`` and ``attn`` (the attention's forward)."""
    messages: float
    """Off-diagonal edges used per team step (after the gates)."""


def _loss(out: PolicyOutput) -> torch.Tensor:
    """A PPO-like scalar that reaches every output the learner differentiates."""
    assert out.gate_logit is not None
    gates = torch.nn.functional.logsigmoid(out.gate_logit).sum()
    return torch.log_softmax(out.logits, -1)[..., 0].sum() + out.values.square().sum() + gates + out.comm_cost


def build_case(n: int, graph: str, args: argparse.Namespace, forward_only: bool = False) -> Case:
    """The policy with N agents and ``graph`` (``GRAPHS``), its inputs and its calls."""
    k = n - 1 if graph == "dense" else args.k
    torch.manual_seed(0)
    config = ModelConfig(
        embed_dim=args.embed_dim, num_heads=1, num_blocks=1, graph=GraphConfig(k=k), gates=GateConfig(enabled=True)
    )
    policy = CommFormerPolicy(config, n_agents=n, obs_dim=args.obs_dim, n_actions=args.n_actions, state_dim=None)
    if graph == "sparse-dense":
        policy.trunk.graph.gathered = False
    b = args.batch
    obs = torch.randn(b, n, args.obs_dim)  # (B, N, D)
    action_mask = torch.ones(b, n, args.n_actions)  # (B, N, A)
    alive = torch.ones(b, n)  # (B, N)
    gate_open = policy.act(obs, action_mask, alive, sample_gates=True).gate_open  # (B, N), as recorded
    with torch.no_grad():
        connection = policy.trunk.connect(policy.encoder(obs), alive, gate_open=gate_open)
    adjacency, messages = connection.adjacency, float(connection.messages().mean())
    attention = policy.trunk.blocks[0].attn
    x = torch.randn(b, n, args.embed_dim, requires_grad=not forward_only)  # (B, N, d)
    entries = adjacency.weight.detach().requires_grad_(not forward_only)

    def train() -> object:
        policy.zero_grad(set_to_none=True)
        out = policy(obs, action_mask, alive, gate_open=gate_open, greedy_values=True, probes=False)
        _loss(out).backward()
        return None

    def act() -> object:
        return policy.act(obs, action_mask, alive)

    def attend() -> object:
        if forward_only:
            with torch.no_grad():
                return attention(x, Senders(adjacency.index, entries))
        attention.zero_grad(set_to_none=True)
        x.grad = entries.grad = None
        attention(x, Senders(adjacency.index, entries)).square().sum().backward()
        return None

    calls = {"act": act, "attn": attend} if forward_only else {"train": train, "act": act, "attn": attend}
    layout = "dense" if adjacency.index is None else "gathered"
    return Case(n, graph, k, layout, calls, messages)


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


def growth_exponent(ns: list[int], values: list[float]) -> float:
    """Least-squares slope p of log(value) = p log(N) + c."""
    xs = [math.log(n) for n in ns]
    ys = [math.log(v) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def _memory_status() -> tuple[int, int]:
    """The process's resident set size now and its peak (``VmRSS``, ``VmHWM`` of /proc/self/status), in bytes."""
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024  # kB
    return found["VmRSS"], found["VmHWM"]


def _reset_peak() -> bool:
    """Resets the peak resident set size to the current one (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def measure_memory_here(n: int, graph: str, kind: str, args: argparse.Namespace, forward_only: bool) -> None:
    """One call of one case in this (fresh) process; prints the bytes it added to the peak resident set, as JSON.

    ``VmHWM`` rather than ``getrusage``'s ``ru_maxrss``: Linux carries a process's ``ru_maxrss`` across fork and exec,
    so a child of a large parent would report the parent's peak.
    """
    torch.set_num_threads(1)
    call = build_case(n, graph, args, forward_only).calls[kind]
    reset = _reset_peak()
    before, peak_before = _memory_status()
    call()
    peak = _memory_status()[1]
    print(json.dumps({"added": peak - before, "bound": not reset and peak == peak_before}))


def measure_memory(n: int, graph: str, kind: str, args: argparse.Namespace, forward_only: bool) -> tuple[float, bool]:
    """(MiB a call of the case adds to the peak resident set, whether that is only an upper bound), measured in a
    fresh Python process."""
    command = [sys.executable, "-m", "benchmarks.team_scaling", "--memory-case", f"{n}:{graph}:{kind}"]
    command += ["--k", str(args.k), "--batch", str(args.batch), "--embed-dim", str(args.embed_dim)]
    command += ["--obs-dim", str(args.obs_dim), "--n-actions", str(args.n_actions)]
    command += ["--forward-only"] if forward_only else []
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ.copy())
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["added"] / 2**20, bool(result["bound"])


def _mib(value: tuple[float, bool] | None) -> str:
    if value is None:
        return "-"
    return ("<=" if value[1] else "") + f"{value[0]:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[64, 256, 1024], help="N, forward and backward")
    parser.add_argument("--forward-agents", type=int, nargs="*", default=[4096], help="N, sparse forward only")
    parser.add_argument("--k", type=int, default=4, help="senders per receiver of the sparse graph")
    parser.add_argument("--batch", type=int, default=32, help="B, team steps per call")
    parser.add_argument("--embed-dim", type=int, default=64, help="model.embed_dim")
    parser.add_argument("--obs-dim", type=int, default=48, help="D, per-agent observation size (fixed)")
    parser.add_argument("--n-actions", type=int, default=12, help="A, per-agent actions (fixed)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per case")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)  # N:graph:kind, run by measure_memory
    parser.add_argument("--forward-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        n, graph, kind = args.memory_case.split(":")
        measure_memory_here(int(n), graph, kind, args, args.forward_only)
        return
    if len(args.agents) < 2 or min(args.agents) <= args.k:
        parser.error(f"--agents needs at least two team sizes, each > --k={args.k}; got {args.agents}")
    torch.set_num_threads(1)
    print(
        f"CommFormerPolicy, embed_dim={args.embed_dim}, 1 head, 1 block, gates on, D={args.obs_dim}, "
        f"A={args.n_actions}, B={args.batch}, k={args.k}, float32, 1 thread, torch {torch.__version__}"
    )
    print(f"process CPU clock, median of {args.repeats} calls after {args.warmup} warm-up calls\n")

    cases = [build_case(n, graph, args) for n in args.agents for graph in GRAPHS]
    forward = [build_case(n, "sparse", args, forward_only=True) for n in args.forward_agents]
    slots = [(i, kind) for i, case in enumerate(cases + forward) for kind in case.calls]
    every = cases + forward
    seconds = dict(
        zip(
            slots,
            interleaved_medians([every[i].calls[kind] for i, kind in slots], args.repeats, args.warmup),
            strict=True,
        )
    )
    memory: dict[tuple[int, str], tuple[float, bool]] = {}
    if not args.no_memory:
        for i, case in enumerate(every):
            for kind in ("train", "attn") if i < len(cases) else ("act", "attn"):
                memory[(i, kind)] = measure_memory(case.n, case.graph, kind, args, forward_only=i >= len(cases))

    b = args.batch
    header = (
        f"{'N':>5} {'graph':<13}{'k':>5} {'layout':<9}{'train ms':>10}{'act ms':>9}{'attn ms':>9}"
        f"{'train us/step':>15}{'act us/step':>13}{'train MiB':>11}{'attn MiB':>10}{'msgs/step':>11}"
    )
    print(header)
    for i, case in enumerate(every):
        t = {kind: seconds.get((i, kind)) for kind in KINDS}
        cells = [f"{1e3 * t[kind]:.1f}" if t[kind] is not None else "-" for kind in KINDS]
        per_step = [f"{1e6 * t[kind] / b:.0f}" if t[kind] is not None else "-" for kind in ("train", "act")]
        mem = [_mib(memory.get((i, kind))) for kind in ("train", "attn")]
        if i >= len(cases):
            mem = [_mib(memory.get((i, "act"))) + " (act)", _mib(memory.get((i, "attn"))) + " (fwd)"]
        print(
            f"{case.n:>5} {case.graph:<13}{case.k:>5} {case.layout:<9}{cells[0]:>10}{cells[1]:>9}{cells[2]:>9}"
            f"{per_step[0]:>15}{per_step[1]:>13}{mem[0]:>11}{mem[1]:>10}{case.messages:>11.0f}"
        )
    print()
    index = {(case.n, case.graph): i for i, case in enumerate(cases)}
    for n in args.agents:
        sparse, before, dense = (index[(n, graph)] for graph in GRAPHS)

        def ratio(slow: int, kind: str, sparse: int = sparse) -> str:
            return f"{seconds[(slow, kind)] / seconds[(sparse, kind)]:.1f}x"

        print(
            f"N = {n}: attention fwd+bwd, dense layout / gathered {ratio(before, 'attn')}; policy train, dense graph "
            f"/ sparse {ratio(dense, 'train')}, sparse in the dense layout / sparse {ratio(before, 'train')}; act, "
            f"dense graph / sparse {ratio(dense, 'act')}"
        )
    print()
    for graph in GRAPHS:
        mine = [index[(n, graph)] for n in args.agents]
        growth = [f"{kind} N^{growth_exponent(args.agents, [seconds[(i, kind)] for i in mine]):.2f}" for kind in KINDS]
        if memory:
            values = [memory[(i, "train")][0] for i in mine]
            if min(values) > 0:
                growth.append(f"train memory N^{growth_exponent(args.agents, values):.2f}")
        print(f"{graph:<13} time " + ", ".join(growth))


if __name__ == "__main__":
    main()
