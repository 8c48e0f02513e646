"""GPU checks of the pure-PyTorch model library (no Ray needed), with the CPU figure beside each GPU one.

    python -m benchmarks.gpu_check [--out FILE.json]

1. Policy update speed: one PPO-shaped gradient step (forward of the CommFormer policy on a batch of 1000 team
   steps of simple_spread N=3 shapes, a per-agent clipped surrogate + value loss, backward, Adam step), timed
   on CPU (one thread) and on CUDA: the speed-up a GPU learner gives this model's update.
2. Orchid under CUDA autocast (fp16 and bf16) at a length that is not a power of two: the FFT path must stay in
   float32 (cuFFT half precision needs power-of-two sizes), outputs finite and close to the float32 result.
3. MoE top-k head: CUDA output equals the CPU output for the same weights and inputs.

Prints one line per figure and writes them all as JSON (the device tool brings the file back).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import torch.nn.functional as F

from commformer.config import ModelConfig
from commformer.layers.moe import MoEConfig, MoEHead
from commformer.layers.orchid import OrchidBlock, OrchidConfig
from commformer.policy import CommFormerPolicy

N_AGENTS, OBS_DIM, N_ACTIONS, STATE_DIM = 3, 18, 5, 54


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def update_step_seconds(device: torch.device, batch: int, steps: int = 20, warmup: int = 5) -> float:
    """Median seconds of one PPO-shaped gradient step of the default policy on `batch` team steps."""
    torch.manual_seed(0)
    policy = CommFormerPolicy(ModelConfig(), N_AGENTS, OBS_DIM, N_ACTIONS, STATE_DIM).to(device)
    opt = torch.optim.Adam(policy.parameters(), lr=5e-4, eps=1e-5)
    obs = torch.randn(batch, N_AGENTS, OBS_DIM, device=device)
    state = torch.randn(batch, STATE_DIM, device=device)
    actions = torch.randint(0, N_ACTIONS, (batch, N_AGENTS), device=device)
    old_logp = torch.full((batch, N_AGENTS), -1.6, device=device)
    adv = torch.randn(batch, 1, device=device)
    targets = torch.randn(batch, 1, device=device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        out = policy(obs, state=state)
        logp = F.log_softmax(out.logits, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        ratio = (logp - old_logp).exp()
        surrogate = torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
        loss = -surrogate + F.huber_loss(out.values, targets.expand_as(out.values)) + out.comm_cost
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def orchid_autocast(device: torch.device, length: int = 1000) -> dict[str, float]:
    """Relative error of the Orchid block under fp16/bf16 autocast against float32, at a non-power-of-two L."""
    torch.manual_seed(0)
    block = OrchidBlock(64, OrchidConfig(max_len=length)).to(device)
    x = torch.randn(2, length, 64, device=device)
    with torch.no_grad():
        reference = block(x).float()
        result = {}
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            with torch.autocast(device.type, dtype=dtype):
                out = block(x).float()
            finite = bool(torch.isfinite(out).all())
            rel = float((out - reference).norm() / reference.norm()) if finite else float("inf")
            result[f"orchid_{name}_rel_error"] = rel
    return result


def moe_cpu_vs_cuda(device: torch.device) -> float:
    """Max abs difference of a top-2-of-8 MoE head's output on CUDA and on CPU (same weights, inputs)."""
    torch.manual_seed(0)
    head = MoEHead(64, 16, MoEConfig(experts=8, gate="topk", k=2))
    x = torch.randn(3000, 64)
    with torch.no_grad():
        cpu = head(x).out
        gpu = head.to(device)(x.to(device)).out.cpu()
    return float((cpu - gpu).abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    figures: dict[str, Any] = {"torch": torch.__version__, "batch_team_steps": args.batch}
    cpu = torch.device("cpu")
    figures["update_step_s_cpu_1thread"] = update_step_seconds(cpu, args.batch)
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        figures["gpu"] = torch.cuda.get_device_name(0)
        figures["update_step_s_cuda"] = update_step_seconds(cuda, args.batch)
        figures["update_step_s_cuda_batch_32000"] = update_step_seconds(cuda, 32_000)
        figures["update_speedup"] = figures["update_step_s_cpu_1thread"] / figures["update_step_s_cuda"]
        figures.update(orchid_autocast(cuda))
        figures["moe_topk_cuda_vs_cpu_max_abs_diff"] = moe_cpu_vs_cuda(cuda)
    else:
        figures["gpu"] = None
        figures.update(orchid_autocast(cpu))  # bf16 autocast on CPU; fp16 autocast on CPU is also supported
    for key, value in figures.items():
        print(f"{key}: {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
