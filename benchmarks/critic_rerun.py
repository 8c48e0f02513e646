"""What the critic's rerun of the non-greedy gate decisions costs a gradient step (commformer/trunk.py).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.critic_rerun [--config configs/predator_prey_10x10.yaml]
        [--batch 1600] [--rounds 12] [key=value ...]

The learner's forward (``greedy_values=True``) runs the trunk with the recorded gate decisions, then, for the value
head, again where they were not the greedy ones. On the config's freshly built policy (gates at their initial
open probability, as early in training, when the most decisions differ) and random inputs of its env's shapes, one
Adam step of the learner's shape of work (forward, a loss on the logits, values and cost, backward, step) is timed
in three cases, interleaved in rounds of 3 steps each so that a busy machine slows all alike: the sampled
decisions with the critic rerun by teams (``rerun="teams"``), the same by receivers (``"receivers"``, one block in
the dense layout only), and the greedy decisions (nothing to rerun: the floor). Process time, one thread; prints
the share of agents and teams whose decisions differ and the median step of each case (the first round is a
warm-up).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/predator_prey_10x10.yaml")
    parser.add_argument("--batch", type=int, default=1600, help="team steps per minibatch")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config changes")
    args = parser.parse_args(argv)

    import torch

    from agents.build import probe_env
    from agents.config import load_config
    from agents.rl_module import build_policy, team_dims
    from commformer.trunk import CommTrunk

    torch.set_num_threads(1)
    config = load_config(args.config, args.overrides)
    spaces = probe_env(config)
    dims = team_dims(spaces.observation_space, spaces.action_space)
    policy = build_policy(config.model, dims)
    if policy.trunk.gate is None:
        raise SystemExit(f"{args.config}: model.gates.enabled is false, so there is nothing to rerun")
    gen = torch.Generator().manual_seed(0)
    b, n = args.batch, dims.n_agents
    obs = torch.randn(b, n, dims.obs_dim, generator=gen)
    mask, alive = torch.ones(b, n, dims.n_actions), torch.ones(b, n)
    state = torch.randn(b, dims.state_dim, generator=gen) if dims.state_dim else None
    history = torch.randn(b, dims.history, n, dims.obs_dim, generator=gen) if dims.history else None
    torch.manual_seed(1)
    with torch.no_grad():
        sampled = policy.act(obs, mask, alive, history=history, sample_gates=True).gate_open
        greedy = policy.act(obs, mask, alive, history=history).gate_open
    differ = sampled != greedy
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-7)
    trunk = policy.trunk

    def step(gates: torch.Tensor) -> float:
        start = time.process_time()
        out = policy(obs, mask, alive, state, history, gate_open=gates, greedy_values=True)
        loss = torch.log_softmax(out.logits, -1).mean() + out.values.pow(2).mean() + out.comm_cost
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.process_time() - start

    single = len(trunk.blocks) == 1 and not trunk.graph.gathered
    cases = {"sampled, rerun by teams": ("teams", sampled), "greedy (no rerun)": (None, greedy)}
    if single:
        cases = {"sampled, rerun by receivers": ("receivers", sampled), **cases}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (rerun, gates) in cases.items():
            trunk.critic_features = functools.partial(CommTrunk.critic_features, trunk, rerun=rerun)
            times[name] += [step(gates) for _ in range(3)]
    print(f"{args.config}: {b} team steps of {n} agents, {len(trunk.blocks)} block(s)")
    agents, teams = differ.float().mean(), differ.any(-1).float().mean()
    print(f"  decisions not greedy: {agents:.1%} of the agents, {teams:.1%} of the teams")
    for name, values in times.items():
        print(f"  {name:<30} {1e3 * statistics.median(values[3:]):7.1f} ms per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
