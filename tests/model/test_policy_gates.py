"""Sampled temporal gates in CommFormerPolicy: replay, the critic's greedy decisions, and the cost of keeping them."""

from __future__ import annotations

import pytest
import torch

from commformer.config import GateConfig, GraphConfig, ModelConfig
from commformer.gates import gate_log_prob
from commformer.policy import CommFormerPolicy

N, D, A, S = 4, 5, 3, 6
CONFIG = ModelConfig(embed_dim=8, num_heads=2, num_blocks=2, graph=GraphConfig(k=2), gates=GateConfig(init_bias=0.0))


def _policy(seed: int = 0) -> CommFormerPolicy:
    torch.manual_seed(seed)
    policy = CommFormerPolicy(CONFIG, n_agents=N, obs_dim=D, n_actions=A, state_dim=S)
    assert policy.trunk.gate is not None
    with torch.no_grad():
        policy.trunk.gate.proj.weight.normal_()  # gates near p = 0.5 that depend on the agent: many draws differ
    return policy


def _inputs(b: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(b, N, D, generator=gen)
    mask = torch.ones(b, N, A)
    alive = torch.ones(b, N)
    state = torch.randn(b, S, generator=gen)
    return obs, mask, alive, state


def test_the_update_replays_the_rollouts_gate_decisions_bit_for_bit() -> None:
    policy = _policy()
    obs, mask, alive, state = _inputs(64)
    torch.manual_seed(5)
    acted = policy.act(obs, mask, alive, sample_gates=True)
    greedy = policy.act(obs, mask, alive)
    assert acted.gate_logit is not None
    assert not torch.equal(acted.gate_open, greedy.gate_open)  # the draw differs from the greedy decisions
    replay = policy(obs, mask, alive, state, gate_open=acted.gate_open)
    assert torch.equal(replay.gate_open, acted.gate_open)
    assert torch.equal(replay.logits, acted.logits)  # PPO ratio exactly 1 before the first update
    assert replay.gate_logit is not None and torch.equal(replay.gate_logit, acted.gate_logit)
    torch.testing.assert_close(
        gate_log_prob(replay.gate_logit, replay.gate_open).exp().mean(), torch.tensor(0.5), atol=0.2, rtol=0
    )


def test_greedy_values_use_the_greedy_decisions_whatever_the_actor_used() -> None:
    """A GAE baseline computed from the sampled decisions would depend on the gates' own action."""
    policy = _policy()
    obs, mask, alive, state = _inputs(64)
    torch.manual_seed(6)
    sampled = policy.act(obs, mask, alive, sample_gates=True).gate_open
    greedy_out = policy(obs, mask, alive, state)
    replay = policy(obs, mask, alive, state, gate_open=sampled, greedy_values=True)
    differ = (sampled != greedy_out.gate_open).any(-1)
    assert differ.any() and not differ.all()
    torch.testing.assert_close(replay.values, greedy_out.values, rtol=0, atol=1e-12)
    # Without greedy_values the values read the actor's features (what the value loss trains on): they differ
    # exactly in the teams whose decisions differ.
    acted = policy(obs, mask, alive, state, gate_open=sampled)
    assert torch.equal(acted.values[~differ], greedy_out.values[~differ])
    assert (acted.values[differ] - greedy_out.values[differ]).abs().amax(-1).gt(0).all()
    assert torch.equal(replay.logits[~differ], greedy_out.logits[~differ])
    assert (replay.logits[differ] - greedy_out.logits[differ]).abs().amax(dim=(-2, -1)).gt(0).all()
    # Control: the values do depend on the gates, so the check above could fail.
    closed = policy(obs, mask, alive, state, gate_open=torch.zeros(64, N))
    assert not torch.allclose(closed.logits, greedy_out.logits)


def test_greedy_values_rerun_only_the_teams_whose_alive_agents_were_not_greedy() -> None:
    policy = _policy()
    obs, mask, alive, state = _inputs(8)
    greedy = policy(obs, mask, alive, state).gate_open
    record = greedy.clone()
    record[2, 1] = 1 - record[2, 1]  # team 2: an alive agent's decision differs -> rerun
    record[5, 3] = 1 - record[5, 3]  # team 5: only a dead agent's decision differs -> no rerun
    alive[5, 3] = 0.0
    sizes: list[int] = []
    hook = policy.trunk.blocks[0].register_forward_hook(lambda _m, args, _o: sizes.append(args[0].shape[0]))
    try:
        policy(obs, mask, alive, state, gate_open=record, greedy_values=True)
        assert sizes == [8, 1]
        sizes.clear()
        policy(obs, mask, alive, state, gate_open=greedy, greedy_values=True)
        assert sizes == [8]  # greedy decisions: the actor's pass is the critic's
        sizes.clear()
        policy(obs, mask, alive, state, gate_open=record)
        assert sizes == [8]  # the training forward's values read the actor's pass: no rerun per gradient step
    finally:
        hook.remove()


def test_gate_decisions_need_learned_gates_and_the_right_shape() -> None:
    policy = _policy()
    obs, mask, alive, state = _inputs(3)
    with pytest.raises(ValueError, match=r"gate_open has shape \(3, 3\); expected \(3, 4\)"):
        policy(obs, mask, alive, state, gate_open=torch.ones(3, 3))
    torch.manual_seed(0)
    plain = CommFormerPolicy(
        ModelConfig(embed_dim=8, gates=GateConfig(enabled=False)), n_agents=N, obs_dim=D, n_actions=A, state_dim=S
    )
    with pytest.raises(ValueError, match="no learned gates"):
        plain(obs, mask, alive, state, gate_open=torch.ones(3, N))
    assert plain.act(obs, mask, alive, sample_gates=True).gate_logit is None  # nothing to sample


def test_the_task_gradient_reaches_a_closed_gate_through_its_log_prob() -> None:
    """The probe the straight-through gate failed: with every gate almost surely closed (p = 0.007), a replayed
    batch in which some decisions opened sends the gate a gradient through log p(open) (the score function), and
    none through the messages (the decisions carry no gradient)."""
    policy = _policy()
    assert policy.trunk.gate is not None
    with torch.no_grad():
        policy.trunk.gate.proj.weight.zero_()
        policy.trunk.gate.proj.bias.fill_(-5.0)
    obs, mask, alive, state = _inputs(16)
    record = torch.zeros(16, N)
    record[::4, 0] = 1.0  # a few draws opened
    out = policy(obs, mask, alive, state, gate_open=record)
    assert out.gate_logit is not None
    advantage = torch.linspace(-1, 1, 16).unsqueeze(-1)  # (B, 1)
    score = (advantage * gate_log_prob(out.gate_logit, out.gate_open)).sum()
    (grad,) = torch.autograd.grad(score, policy.trunk.gate.proj.bias)
    expected = (advantage * (record - torch.sigmoid(torch.tensor(-5.0)))).sum()  # d log p(g)/dz = g - p
    torch.testing.assert_close(grad, expected.reshape(1))
    assert grad.abs() > 0.1
    # The logits themselves send the gate nothing: the decisions are constants.
    (logit_grad,) = torch.autograd.grad(out.logits.sum(), policy.trunk.gate.proj.bias, allow_unused=True)
    assert logit_grad is None or torch.equal(logit_grad, torch.zeros(1))


def test_in_the_graph_warm_up_every_gate_is_open_costs_nothing_and_learns_nothing() -> None:
    """model.graph.warmup_fraction: every receiver hears every sender, its gate open too, so that the policy learns
    to read messages before the gates' cost can close them; after ``end_warmup`` the gates decide again."""
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=8, graph=GraphConfig(k=1, warmup_fraction=0.5), gates=GateConfig(init_bias=-3.0))
    policy = CommFormerPolicy(config, n_agents=N, obs_dim=D, n_actions=A, state_dim=S)
    obs, mask, alive, state = _inputs(16)
    assert policy.trunk.graph.hears_all and not policy.trunk.learns_gates
    acted = policy.act(obs, mask, alive, sample_gates=True)
    assert acted.gate_logit is None and torch.equal(acted.gate_open, torch.ones(16, N))  # p_open is 0.05 otherwise
    out = policy(obs, mask, alive, state, greedy_values=True)
    assert out.gate_logit is None and float(out.comm_cost) == 0.0 and torch.equal(out.gate_open, torch.ones(16, N))
    assert torch.equal(out.senders.dense(), torch.ones(16, N, N))  # hears everyone
    (out.logits.sum() + out.values.sum() + out.comm_cost).backward()  # the learner's loss adds the cost
    assert policy.trunk.gate is not None
    assert all(p.grad is None for p in policy.trunk.gate.parameters())  # no gradient reaches the gates
    with pytest.raises(ValueError, match="graph is in its warm-up"):
        policy(obs, mask, alive, state, gate_open=torch.ones(16, N))
    policy.trunk.graph.end_warmup()
    assert policy.trunk.learns_gates
    after = policy(obs, mask, alive, state)
    assert after.gate_logit is not None and float(after.comm_cost.detach()) > 0.0
    assert torch.equal(after.gate_open, torch.zeros(16, N))  # the greedy decisions of p_open = 0.05: closed


@pytest.mark.parametrize("held_product", [False, True])
def test_one_block_reruns_only_the_receivers_whose_decision_differs_with_the_same_values_and_gradients(
    held_product: bool,
) -> None:
    """One block in the dense layout: the critic reruns single receivers (``CommBlock.receiver_rows``), not teams; its
    values and every parameter's gradient (the graph logits' included) equal those of the pass acted on the greedy
    decisions, the reference."""
    torch.manual_seed(0)
    config = ModelConfig(
        embed_dim=8, num_heads=2, num_blocks=1, graph=GraphConfig(k=2, held_product=held_product), gates=CONFIG.gates
    )
    policy = CommFormerPolicy(config, n_agents=N, obs_dim=D, n_actions=A, state_dim=S)
    assert policy.trunk.gate is not None
    with torch.no_grad():
        policy.trunk.gate.proj.weight.normal_()
    obs, mask, alive, state = _inputs(32)
    alive[3, 1] = 0.0
    greedy = policy(obs, mask, alive, state).gate_open
    torch.manual_seed(7)
    sampled = policy.act(obs, mask, alive, sample_gates=True).gate_open
    sampled[3, 1] = 1 - greedy[3, 1]  # a dead agent's differing decision: not rerun
    differ = (sampled != greedy) & (alive > 0)
    assert differ.any() and not differ.all(-1).any()
    block = policy.trunk.blocks[0]
    calls: list[int] = []
    hook = block.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    real_rows = block.receiver_rows
    rows_seen: list[tuple[int, int]] = []

    def counting(x: torch.Tensor, team: torch.Tensor, *args: object) -> torch.Tensor:
        rows_seen.append((x.shape[0], team.shape[0]))
        return real_rows(x, team, *args)  # type: ignore[arg-type]

    block.receiver_rows = counting  # type: ignore[method-assign]
    try:
        critic = policy(obs, mask, alive, state, gate_open=sampled, greedy_values=True)
    finally:
        hook.remove()
        del block.receiver_rows
    # One pass over every team, then the differing receivers alone (their teams' keys and values once each).
    assert calls == [32] and rows_seen == [(int(differ.any(-1).sum()), int(differ.sum()))]
    reference = policy(obs, mask, alive, state, gate_open=greedy)  # the values acted on the greedy decisions
    live = alive > 0  # a dead agent's value is never read (the losses mask it)
    torch.testing.assert_close(critic.values[live], reference.values[live], rtol=1e-10, atol=1e-12)
    upstream = torch.randn(32, N) * alive
    params = [p for p in policy.parameters() if p.requires_grad]
    got = torch.autograd.grad((critic.values * upstream).sum(), params, allow_unused=True)
    want = torch.autograd.grad((reference.values * upstream).sum(), params, allow_unused=True)
    for name_param, g, w in zip(policy.named_parameters(), got, want, strict=True):
        if w is None:
            assert g is None or g.abs().max() == 0, name_param[0]
            continue
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=name_param[0])
    graph_grad = next(w for p, w in zip(params, want, strict=True) if p is policy.trunk.graph.logits)
    assert graph_grad is not None and graph_grad.abs().sum() > 0  # the value loss reaches the graph through the rerun
    # Control: the actor's own values differ where decisions differ, so the equality above could fail.
    acted = policy(obs, mask, alive, state, gate_open=sampled)
    assert not torch.allclose(acted.values, reference.values)


def test_the_two_reruns_agree_and_receivers_need_one_dense_block() -> None:
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=8, num_heads=2, num_blocks=1, graph=GraphConfig(k=2), gates=CONFIG.gates)
    policy = CommFormerPolicy(config, n_agents=N, obs_dim=D, n_actions=A, state_dim=S)
    assert policy.trunk.gate is not None
    with torch.no_grad():
        policy.trunk.gate.proj.weight.normal_()
    obs, mask, alive, _ = _inputs(16)
    torch.manual_seed(3)
    sampled = policy.act(obs, mask, alive, sample_gates=True).gate_open
    h = policy._embed(obs, None)
    trunk = policy.trunk(h, policy.trunk.connect(h, alive, gate_open=sampled))
    by_teams = policy.trunk.critic_features(trunk, rerun="teams")
    torch.testing.assert_close(policy.trunk.critic_features(trunk, rerun="receivers"), by_teams, rtol=1e-10, atol=1e-12)
    assert not torch.equal(by_teams, trunk.features)  # some decision differed
    two = _policy()  # two blocks: a receiver's decision reaches the others through the second
    h = two._embed(obs, None)
    trunk = two.trunk(h, two.trunk.connect(h, alive, gate_open=sampled))
    with pytest.raises(ValueError, match="needs one block in the dense layout"):
        two.trunk.critic_features(trunk, rerun="receivers")
