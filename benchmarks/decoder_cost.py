"""What the autoregressive decoder costs: acting and training forward time of CommFormer-dec against CommFormer-enc.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.decoder_cost [--agents 3 10 27] [--batch 128] [--repeats 30]

For each team size N, two policies differ only in ``model.decoder`` (``none`` / ``autoregressive``, one decoder
block). Timed per call, on a batch of B team steps, one thread, float32, the process CPU clock (interleaved rounds:
``benchmarks.team_scaling.interleaved_medians``):

- ``act``: the EnvRunner's acting path, ``policy.act`` with sampled gates and (decoder) sampled actions. The decoder
  chooses agent after agent, each choice one teacher-forced decoder pass and one policy-head pass over the team
  (``ActionDecoder.decode``), so it runs the decoder N times: the price of logits that equal the learner's exactly.
- ``train fwd``: the learner's forward (``policy(...)`` with gradient, values included), teacher-forced on given
  actions: one decoder pass for every agent at once.

The model is the SMAX configs' (embed_dim 64, 1 head, 1 block, relu, gates on, k = max(1, int(0.4 N))). The
observation size is fixed (``--obs-dim``) and A = 6 + N (SMAX: move, stop, no-op and one attack per enemy, with as
many enemies as allies), so that the decoder's cost, not the env's, is what changes. Printed per N: microseconds per
team step for each variant and path, and the decoder / encoder ratios.
"""

from __future__ import annotations

import os

# Single-threaded BLAS, as in the EnvRunners; set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
from collections.abc import Callable

import torch

from benchmarks.team_scaling import interleaved_medians
from commformer.config import GateConfig, GraphConfig, ModelConfig
from commformer.policy import CommFormerPolicy

VARIANTS = ("none", "autoregressive")


def calls(n: int, decoder: str, args: argparse.Namespace) -> tuple[Callable[[], object], Callable[[], object]]:
    """The acting call and the training-forward call of one (N, decoder) policy on a fixed random batch."""
    torch.manual_seed(0)
    config = ModelConfig(
        embed_dim=64,
        num_heads=1,
        num_blocks=1,
        activation="relu",
        graph=GraphConfig(sparsity=0.4),
        gates=GateConfig(enabled=True),
        decoder=decoder,  # type: ignore[arg-type]
    )
    a = 6 + n
    policy = CommFormerPolicy(config, n_agents=n, obs_dim=args.obs_dim, n_actions=a, state_dim=None)
    b = args.batch
    obs, mask, alive = torch.randn(b, n, args.obs_dim), torch.ones(b, n, a), torch.ones(b, n)
    actions = torch.randint(0, a, (b, n)) if decoder == "autoregressive" else None

    def act() -> object:
        return policy.act(obs, mask, alive, sample_gates=True, sample_actions=True)

    def train_forward() -> object:
        return policy(obs, mask, alive, actions=actions, greedy_values=True)

    return act, train_forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[3, 10, 27], help="team sizes N")
    parser.add_argument("--batch", type=int, default=128, help="B, team steps per call (SMAX runners: 128 battles)")
    parser.add_argument("--obs-dim", type=int, default=48, help="D, per-agent observation size (fixed)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per case (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per case")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"CommFormerPolicy, embed_dim=64, 1 head, 1 block, gates on, D={args.obs_dim}, A=6+N, B={args.batch}, "
        f"float32, 1 thread, torch {torch.__version__}; process CPU clock, median of {args.repeats} calls\n"
    )
    cases = [(n, decoder, *calls(n, decoder, args)) for n in args.agents for decoder in VARIANTS]
    act_s = interleaved_medians([c[2] for c in cases], args.repeats, args.warmup)
    train_s = interleaved_medians([c[3] for c in cases], args.repeats, args.warmup)
    per_step = {
        (n, d): (1e6 * a / args.batch, 1e6 * t / args.batch)
        for (n, d, *_), a, t in zip(cases, act_s, train_s, strict=True)
    }
    print(f"{'N':>4}  {'act enc':>9}{'act dec':>9}{'dec/enc':>9}  {'train enc':>10}{'train dec':>10}{'dec/enc':>9}")
    for n in args.agents:
        (act_enc, train_enc), (act_dec, train_dec) = per_step[n, "none"], per_step[n, "autoregressive"]
        print(
            f"{n:>4}  {act_enc:>9.1f}{act_dec:>9.1f}{act_dec / act_enc:>9.2f}  "
            f"{train_enc:>10.1f}{train_dec:>10.1f}{train_dec / train_enc:>9.2f}"
        )
    print("\n(us per team step)")


if __name__ == "__main__":
    main()
