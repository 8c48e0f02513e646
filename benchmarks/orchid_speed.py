"""Forward + backward time and peak memory of ``OrchidBlock`` against causal softmax attention, by length L.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.orchid_speed [--lengths 256 1024 4096 16384 65536]

Three models of the same width D (default B = 1, D = 64, float32, one thread): (a) one ``OrchidBlock``
(``max_len = L``), (b) a causal attention block (qkv projection D -> 3D, ``--heads`` heads, out projection
D -> D) whose core is ``F.scaled_dot_product_attention(is_causal=True)``, (c) the same block with the attention
materialised: ``softmax(mask(Q K^T / sqrt(d)))`` as an explicit (B, H, L, L) tensor. One call is one forward
and one backward of ``out.sum()``; the median over ``--repeats`` calls after ``--warmup`` untimed ones is
reported. The default clock is the process' CPU time (``--clock cpu``), which time slices lost to other
processes on a busy machine do not inflate; with one thread it equals wall time on an idle machine.

Memory. Each (model, L) entry runs in a fresh subprocess. The timed calls run with glibc's default allocator
(what a user gets). Then the child fixes glibc's mmap threshold at 64 KiB (``mallopt``), so that every large
tensor gets its own mapping and is returned to the OS when freed (RSS then follows the live tensors), trims the
heap, makes one more untimed call, resets its peak resident set (writes 5 to /proc/self/clear_refs, which resets
VmHWM), notes its current RSS, makes one last call and reports VmHWM minus that RSS: the peak of what one
steady-state forward and backward holds at once (activations, gradients, FFT and attention workspaces), without
the interpreter, torch, the parameters or one-off first-call costs. (Timing with the fixed threshold instead
would charge every temporary tensor an mmap and its page faults: the Orchid block, with many mid-sized
temporaries, then measured 2.6x slower at L = 4096.) Where the reset is refused, the child reports VmHWM minus
the RSS measured before the model was built (an upper bound that includes those; marked with "*").
torch.cuda memory statistics do not exist on CPU, and tracemalloc does not see torch's allocations.

Caps. Before each entry, its time and memory are predicted from the same model's last measured length, with
the model's growth (attention time and materialised memory ~ L^2, the rest ~ L; Orchid time ~ L^1.2 to err on
the side of skipping) and, for materialised attention, a floor of three (B, H, L, L) float32 tensors. An entry
predicted over ``--max-seconds`` (all its calls) or ``--max-gb`` prints "skipped (over N s)" / "skipped (over
M GB)" instead of running; a child whose calls pass the time cap stops at that call, and a child still running
after the cap (plus start-up slack) is killed, both reported the same way.

Last, the ratios Orchid / SDPA of time and memory per L, and the growth exponent of Orchid's time in L
(least-squares slope of log time on log L over the measured L >= 1024; 1 plus a little for O(L log L)).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import ctypes
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from commformer.layers.orchid import OrchidBlock, OrchidConfig

MODELS = ("orchid", "sdpa", "materialised")
TIME_GROWTH = {"orchid": 1.2, "sdpa": 2.0, "materialised": 2.0}
MEMORY_GROWTH = {"orchid": 1.0, "sdpa": 1.0, "materialised": 2.0}
STARTUP_SLACK_S = 60.0
M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter number for the mmap threshold (malloc.h)."""
ROOT = Path(__file__).resolve().parents[1]


class CausalAttention(nn.Module):
    """Causal multi-head softmax attention with projections: (B, L, D) -> (B, L, D)."""

    def __init__(self, width: int, heads: int, materialise: bool) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"--width={width} is not divisible by --heads={heads}")
        self.heads, self.materialise = heads, materialise
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, length, d = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.heads, d // self.heads)  # (B, L, 3, H, d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, d_head)
        if self.materialise:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)  # (B, H, L, L)
            future = torch.ones(length, length, dtype=torch.bool).triu(1)  # (L, L)
            mixed = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v  # (B, H, L, d_head)
        else:
            mixed = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, d_head)
        return self.out(mixed.transpose(1, 2).reshape(b, length, d))  # (B, L, D)


def _build(model: str, length: int, args: argparse.Namespace) -> nn.Module:
    if model == "orchid":
        return OrchidBlock(args.width, OrchidConfig(max_len=length, conditioning=args.conditioning))
    return CausalAttention(args.width, args.heads, materialise=model == "materialised")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _call(module: nn.Module, x: Tensor, clock: Callable[[], float]) -> float:
    """One forward and backward of ``out.sum()``; returns its duration on ``clock``."""
    start = clock()
    module(x).sum().backward()
    module.zero_grad(set_to_none=True)
    x.grad = None
    return clock() - start


def _child(args: argparse.Namespace) -> dict[str, float | str | bool]:
    """Time and measure one (model, L) entry in this (fresh) process."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rss_before_build = _status_kb("VmRSS")
    module = _build(args.child, args.length, args)
    x = torch.randn(args.batch, args.length, args.width, requires_grad=True)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    spent = 0.0
    for _ in range(args.warmup):
        spent += _call(module, x, clock)
        if spent > args.max_seconds:
            return {"skipped": f"over {args.max_seconds:g} s"}
    times = []
    for _ in range(args.repeats):
        times.append(_call(module, x, clock))
        if spent + sum(times) > args.max_seconds:
            return {"skipped": f"over {args.max_seconds:g} s"}
    peak_bytes, exact = _peak_bytes(module, x, rss_before_build)
    return {"seconds": statistics.median(times), "peak_bytes": peak_bytes, "exact_memory": exact}


def _peak_bytes(module: nn.Module, x: Tensor, rss_before_build: int) -> tuple[float, bool]:
    """Peak bytes one forward + backward holds, and whether the peak could be reset (see the module docstring)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 65536)  # every allocation >= 64 KiB: its own mapping, unmapped when freed
    libc.malloc_trim(0)
    _call(module, x, time.process_time)  # settles the allocator under the new threshold
    libc.malloc_trim(0)  # hands back the pages that call freed, so the measured call must fault them in again
    try:
        Path("/proc/self/clear_refs").write_text("5")
        baseline, exact = _status_kb("VmRSS"), True
    except OSError:
        baseline, exact = rss_before_build, False
    _call(module, x, time.process_time)
    return (_status_kb("VmHWM") - baseline) * 1024.0, exact


@dataclass
class Entry:
    """Result of one (model, L): a time per call and peak bytes, or the reason it was skipped."""

    seconds: float | None = None
    peak_bytes: float | None = None
    exact_memory: bool = True
    skipped: str | None = None

    def cell(self) -> str:
        if self.skipped is not None:
            return f"skipped ({self.skipped})"
        assert self.seconds is not None and self.peak_bytes is not None
        mark = "" if self.exact_memory else "*"
        return f"{1e3 * self.seconds:10.1f} ms {self.peak_bytes / 2**20:9.1f} MB{mark}"


def _predicted_skip(model: str, length: int, last: tuple[int, Entry] | None, args: argparse.Namespace) -> str | None:
    """A skip reason if the entry is predicted over a cap, else None."""
    calls = args.warmup + args.repeats + 2  # the two memory calls of _peak_bytes
    memory = 3 * 4 * args.batch * args.heads * length**2 if model == "materialised" else 0.0
    seconds = 0.0
    if last is not None and last[1].seconds is not None and last[1].peak_bytes is not None:
        ratio = length / last[0]
        seconds = calls * last[1].seconds * ratio ** TIME_GROWTH[model]
        memory = max(memory, last[1].peak_bytes * ratio ** MEMORY_GROWTH[model])
    if seconds > args.max_seconds:
        return f"over {args.max_seconds:g} s"
    if memory > args.max_gb * 2**30:
        return f"over {args.max_gb:g} GB"
    return None


def _run_entry(model: str, length: int, args: argparse.Namespace) -> Entry:
    """Run one entry in a fresh subprocess, killed after the time cap (plus start-up slack)."""
    command = [sys.executable, "-m", "benchmarks.orchid_speed", "--child", model, "--length", str(length)]
    for name in ("batch", "width", "heads", "conditioning", "repeats", "warmup", "threads", "clock", "max_seconds"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=args.max_seconds + STARTUP_SLACK_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Entry(skipped=f"over {args.max_seconds:g} s")
    if done.returncode != 0:
        reason = "killed, likely out of memory" if done.returncode < 0 else f"failed: {done.stderr.strip()[-200:]}"
        return Entry(skipped=reason)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "skipped" in result:
        return Entry(skipped=str(result["skipped"]))
    return Entry(result["seconds"], result["peak_bytes"], bool(result["exact_memory"]))


def _growth_exponent(rows: dict[int, dict[str, Entry]]) -> str:
    """Least-squares slope of log(Orchid time) on log(L) over the measured L >= 1024."""
    points = [(L, e.seconds) for L, row in rows.items() if L >= 1024 and (e := row["orchid"]).seconds is not None]
    if len(points) < 2:
        return "n/a (needs two measured lengths >= 1024)"
    xs = [math.log(L) for L, _ in points]
    ys = [math.log(t) for _, t in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    return f"{slope:.2f} over L = {', '.join(str(L) for L, _ in points)}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:7.2f}" if a is not None and b else "    n/a"


def main(args: argparse.Namespace) -> None:
    print(
        f"B={args.batch} D={args.width} heads={args.heads} float32 threads={args.threads} clock={args.clock} "
        f"warmup={args.warmup} repeats={args.repeats} orchid conditioning={args.conditioning} "
        f"caps: {args.max_seconds:g} s, {args.max_gb:g} GB per entry",
        flush=True,
    )
    rows: dict[int, dict[str, Entry]] = {}
    last: dict[str, tuple[int, Entry]] = {}
    for length in sorted(args.lengths):
        row: dict[str, Entry] = {}
        for model in MODELS:
            reason = _predicted_skip(model, length, last.get(model), args)
            row[model] = Entry(skipped=reason) if reason is not None else _run_entry(model, length, args)
            if row[model].seconds is not None:
                last[model] = (length, row[model])
            print(f"L={length:6d} {model:>12}: {row[model].cell()}", flush=True)
        orchid, sdpa = row["orchid"], row["sdpa"]
        print(
            f"L={length:6d} orchid / sdpa: time {_ratio(orchid.seconds, sdpa.seconds)}, "
            f"memory {_ratio(orchid.peak_bytes, sdpa.peak_bytes)}",
            flush=True,
        )
        rows[length] = row
    print(f"Orchid time ~ L^k, k = {_growth_exponent(rows)}")
    if any(not e.exact_memory for row in rows.values() for e in row.values() if e.seconds is not None):
        print("* peak RSS not reset after set-up (clear_refs refused): includes the model and input")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096, 16384, 65536])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--width", type=int, default=64, help="D of every model")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--conditioning", choices=["type1", "type2", "none"], default="type1")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per entry (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before them")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="cap on all calls of one entry")
    parser.add_argument("--max-gb", type=float, default=8.0, help="cap on one entry's peak memory")
    parser.add_argument("--child", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    parsed = _parser().parse_args()
    if parsed.child is not None:
        print(json.dumps(_child(parsed)))
    else:
        main(parsed)
