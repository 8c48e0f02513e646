"""JEI-DNN early exits (commformer/early_exit.py) against naive loops, hand counts and invariants."""

from __future__ import annotations

import math
import re

import pytest
import torch

from commformer.config import ModelConfig
from commformer.early_exit import (
    EarlyExitConfig,
    count_macs,
    distill_kl,
    ece,
    exit_macs,
    exit_probabilities,
    gate_loss,
    gate_targets,
    surrogate_target,
    team_exit_depth,
    uncertainty_features,
)
from commformer.export import load_policy, save_policy
from commformer.policy import CommFormerPolicy
from commformer.typed import ConfigError, from_mapping

N, D, A, S, G, E = 3, 5, 4, 6, 3, 8  # agents, obs, actions, state, blocks, embed


def _config(**exit_options: object) -> ModelConfig:
    options = {"enabled": True, **exit_options}
    return ModelConfig(embed_dim=E, num_heads=2, num_blocks=G, early_exit=EarlyExitConfig(**options))  # type: ignore[arg-type]


def _policy(config: ModelConfig | None = None, seed: int = 0) -> CommFormerPolicy:
    torch.manual_seed(seed)
    return CommFormerPolicy(config or _config(), n_agents=N, obs_dim=D, n_actions=A, state_dim=S)


def _inputs(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(b, N, D, generator=gen)
    mask = (torch.rand(b, N, A, generator=gen) < 0.7).double()
    mask[..., 0] = 1.0
    alive = (torch.rand(b, N, generator=gen) < 0.85).double()
    return obs, mask, alive, torch.randn(b, S, generator=gen)


def _act(policy: CommFormerPolicy, *args: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``policy.act``'s logits and depths."""
    acted = policy.act(*args, **kwargs)  # type: ignore[arg-type]
    return acted.logits, acted.depth


def _set_gates(policy: CommFormerPolicy, bias: float) -> None:
    assert policy.exits is not None
    with torch.no_grad():
        for gate in policy.exits.gates:
            gate.weight.zero_()
            gate.bias.fill_(bias)


# -- exit probabilities and the exit rule ------------------------------------------------------------------------


def test_exit_probabilities_match_a_loop_are_nonnegative_and_sum_to_one():
    gen = torch.Generator().manual_seed(0)
    gates = torch.rand(50, G, generator=gen)
    gates[0] = torch.tensor([0.0, 1.0, 0.3])
    gates[1] = torch.tensor([1.0, 1.0, 1.0])
    gates[2] = 0.0
    probs = exit_probabilities(gates)
    for row, p in zip(gates.tolist(), probs.tolist(), strict=True):
        reach, expected = 1.0, []
        for g in row:
            expected.append(reach * g)
            reach *= 1.0 - g
        expected.append(reach)
        assert p == pytest.approx(expected, abs=1e-12)
    assert (probs >= 0).all()
    assert torch.all(probs.sum(-1) <= 1.0 + 1e-12) and torch.allclose(probs.sum(-1), torch.ones(50))


def _naive_team_depth(gates: torch.Tensor, alive: torch.Tensor, threshold: float) -> list[int]:
    depths = []
    for team in range(gates.shape[0]):
        depth = gates.shape[-1]
        for layer in range(gates.shape[-1]):
            voters = [i for i in range(gates.shape[1]) if alive[team, i] > 0] or list(range(gates.shape[1]))
            votes = [bool(gates[team, i, layer] >= threshold) for i in voters]
            if all(votes):
                depth = layer
                break
        depths.append(depth)
    return depths


def test_team_exit_rule_matches_a_loop_and_is_deterministic():
    gen = torch.Generator().manual_seed(1)
    gates = torch.rand(64, N, G, generator=gen) ** 0.5
    alive = (torch.rand(64, N, generator=gen) < 0.7).double()
    alive[:4] = 0.0  # teams without an alive agent: everyone votes
    depth = team_exit_depth(gates, alive, 0.5)
    assert depth.tolist() == _naive_team_depth(gates, alive, 0.5)
    assert 0 < int((depth < G).sum()) < 64  # both outcomes occur in this sample
    assert torch.equal(depth, team_exit_depth(gates.clone(), alive.clone(), 0.5))
    assert torch.equal(depth[10:20], team_exit_depth(gates[10:20], alive[10:20], 0.5))  # batch-independent


def test_gate_at_exactly_the_threshold_exits():
    gates = torch.full((1, N, G), 0.5)
    assert team_exit_depth(gates, None, 0.5).tolist() == [0]
    assert team_exit_depth(gates - 1e-9, None, 0.5).tolist() == [G]


def test_uncertainty_features_by_hand_and_detached():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = torch.log(p.clamp(min=1e-300)).masked_fill(p == 0, torch.finfo(torch.float64).min).requires_grad_()
    feats = uncertainty_features(logits)
    q = torch.tensor([0.25, 0.09, 0.04]) / 0.38
    expected = [
        0.5,
        -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)),
        0.2,
        float(-(q * q.log()).sum()),
    ]
    assert feats.tolist() == pytest.approx(expected, rel=1e-9)
    assert not feats.requires_grad


# -- surrogate target and gate loss -------------------------------------------------------------------------------


def test_surrogate_target_matches_a_loop_with_earliest_ties():
    gen = torch.Generator().manual_seed(2)
    losses = torch.rand(40, G + 1, generator=gen)
    losses[:, -1] = 0.0
    losses[0] = torch.tensor([0.2, 0.1, 0.1, 0.0])  # with lambda * C = 0.1 * (0, .., ..) ties below
    costs = torch.tensor([0.0, 0.0, 0.5, 1.0])
    for lam in (0.0, 0.3, 2.0):
        got = surrogate_target(losses, costs, lam).tolist()
        for row, target in zip(losses.tolist(), got, strict=True):
            objective = [loss + lam * c for loss, c in zip(row, costs.tolist(), strict=True)]
            assert target == objective.index(min(objective))
    assert surrogate_target(losses[:1], costs, 0.0).tolist() == [3]


def test_lambda_zero_targets_the_final_head_and_huge_lambda_the_first_exit():
    gen = torch.Generator().manual_seed(3)
    losses = torch.cat([torch.rand(30, G, generator=gen) + 1e-3, torch.zeros(30, 1)], dim=-1)
    costs = torch.tensor([0.1, 0.4, 0.7, 1.0])
    assert (surrogate_target(losses, costs, 0.0) == G).all()
    assert (surrogate_target(losses, costs, 1e6) == 0).all()


def test_gate_targets_and_balanced_bce_against_a_loop():
    optimal = torch.tensor([0, 2, 3, 1])
    targets = gate_targets(optimal, G)
    assert targets.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0], [0, 1, 1]]
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(4, N, G, generator=gen)
    weight = torch.ones(4, N)
    weight[1, 2] = 0.0
    pos = neg = 0.0
    for b in range(4):
        for i in range(N):
            if weight[b, i]:
                pos += float(targets[b].sum())
                neg += float(G - targets[b].sum())
    ratio = max(neg / pos, 1.0)
    total, count = 0.0, 0
    for b in range(4):
        for i in range(N):
            for layer in range(G):
                if not weight[b, i]:
                    continue
                t, x = float(targets[b, layer]), float(logits[b, i, layer])
                s = 1.0 / (1.0 + math.exp(-x))
                bce = -(t * math.log(s) + (1 - t) * math.log(1 - s))
                total += bce * (ratio if t else 1.0)
                count += 1
    assert float(gate_loss(logits, targets, weight)) == pytest.approx(total / count, rel=1e-10)


def test_distill_kl_is_zero_for_a_copy_and_matches_by_hand():
    final = torch.tensor([[[0.0, 1.0, torch.finfo(torch.float64).min]]])  # (B=1, N=1, A=3), action 2 masked
    heads = torch.stack([final, torch.tensor([[[1.0, 0.0, torch.finfo(torch.float64).min]]])], dim=1)
    kl = distill_kl(final, heads)  # (1, 2, 1)
    p = torch.softmax(torch.tensor([0.0, 1.0]), -1)
    q = torch.softmax(torch.tensor([1.0, 0.0]), -1)
    assert float(kl[0, 0, 0]) == pytest.approx(0.0, abs=1e-12)
    assert float(kl[0, 1, 0]) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-10)


def test_ece_by_hand():
    confidence = torch.tensor([0.95, 0.95, 0.55, 0.55])
    correct = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert ece(confidence, correct) == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)
    assert math.isnan(ece(torch.zeros(0), torch.zeros(0)))


# -- the policy with exits ------------------------------------------------------------------------------------


def test_disabled_exits_leave_the_policy_unchanged():
    plain = _policy(ModelConfig(embed_dim=E, num_heads=2, num_blocks=G), seed=5)
    with_exits = _policy(seed=5)
    assert plain.exits is None and with_exits.exits is not None
    extra = {k for k in with_exits.state_dict() if not k.startswith("exits.")}
    assert extra == set(plain.state_dict())
    for key, value in plain.state_dict().items():
        assert torch.equal(value, with_exits.state_dict()[key]), key
    obs, mask, alive, state = _inputs(6)
    a, b = plain(obs, mask, alive, state), with_exits(obs, mask, alive, state)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.values, b.values)
    assert a.exits is None and b.exits is not None and (b.exits.depth == G).all()
    with pytest.raises(ValueError, match="no early exits"):
        plain(obs, mask, alive, state, exit_depth=torch.zeros(6, dtype=torch.long))


def test_act_without_exits_equals_the_full_forward():
    policy = _policy()
    _set_gates(policy, -10.0)  # never exit
    obs, mask, alive, state = _inputs(7)
    logits, depth = _act(policy, obs, mask, alive, state)
    assert (depth == G).all()
    assert torch.allclose(logits, policy(obs, mask, alive, state).logits, atol=1e-12)
    plain_logits, plain_depth = _act(policy, obs, mask, alive, state, early_exit=False)
    assert torch.equal(plain_depth, depth) and torch.allclose(plain_logits, logits, atol=1e-12)


def test_act_with_mixed_exits_matches_per_team_runs_and_the_replayed_forward():
    policy = _policy()
    assert policy.exits is not None
    with torch.no_grad():  # gates that react to the features, so teams exit at different depths
        for layer, gate in enumerate(policy.exits.gates):
            gate.weight.copy_(torch.tensor([[8.0, 0.0, 0.0, 0.0]]))
            gate.bias.fill_(-8.0 * 0.26 + layer * 0.4)
    obs, mask, alive, state = _inputs(32, seed=9)
    logits, depth = _act(policy, obs, mask, alive, state)
    assert len(set(depth.tolist())) >= 2, depth.tolist()
    for team in range(32):
        one, one_depth = _act(policy, obs[team : team + 1], mask[team : team + 1], alive[team : team + 1])
        assert int(one_depth) == int(depth[team])
        assert torch.allclose(one[0], logits[team], atol=1e-12)
    replay = policy(obs, mask, alive, state, exit_depth=depth)  # what the learner recomputes
    assert torch.allclose(replay.logits, logits, atol=1e-12)
    assert torch.equal(replay.exits.depth, depth)
    # the same gates decide in the full forward: the rule applied to its gate logits gives the same depths
    gates = torch.sigmoid(replay.exits.gate_logits)
    assert torch.equal(team_exit_depth(gates, alive, 0.5), depth)


def test_an_exit_at_depth_l_runs_no_block_beyond_l():
    policy = _policy()
    calls: list[tuple[int, int]] = []
    for index, block in enumerate(policy.trunk.blocks):
        block.register_forward_hook(lambda _m, args, _out, index=index: calls.append((index, args[0].shape[0])))
    obs, mask, alive, state = _inputs(5)
    for forced in range(G + 1):
        calls.clear()
        _, depth = _act(policy, obs, mask, alive, state, force_depth=forced)
        assert (depth == forced).all()
        assert [index for index, _ in calls] == list(range(forced))
    _set_gates(policy, 10.0)
    calls.clear()
    _act(policy, obs, mask, alive, state)
    assert calls == []


def _block_macs() -> int:
    """Hand count of one CommBlock: qkv d->3d, out d->d, MLP d->2d->d per agent; q.k and w.v over N x N."""
    return N * (3 * E * E + E * E + 2 * (2 * E * E)) + 2 * N * N * E


def test_exit_macs_against_a_hand_count():
    policy = _policy()
    macs = exit_macs(policy)
    encoder = N * D * E + N * E  # obs embedding, temporal gate projection
    head = N * (E * E + E * A)  # exit heads and the final head have the same shape
    gate = N * 4
    assert macs.full_depth == encoder + G * _block_macs() + head
    assert macs.per_exit == tuple(
        encoder + depth * _block_macs() + (depth + 1) * (head + gate) - (gate if depth == G else 0)
        for depth in range(G + 1)
    )
    assert macs.relative()[-1] == 1.0 and (macs.relative().diff() > 0).all()


def test_counted_macs_are_lower_for_an_early_exit_and_equal_otherwise():
    policy = _policy()
    macs = exit_macs(policy)
    obs, mask, alive, state = _inputs(1)
    _set_gates(policy, -10.0)
    assert count_macs(lambda: _act(policy, obs, mask, alive, state)) == macs.per_exit[G]
    _set_gates(policy, 10.0)
    assert count_macs(lambda: _act(policy, obs, mask, alive, state)) == macs.per_exit[0] < macs.per_exit[G]
    # a batch whose teams leave at different depths: the executed MACs are the sum of the per-team costs
    for layer, gate in enumerate(policy.exits.gates):  # type: ignore[union-attr]
        with torch.no_grad():
            gate.weight.copy_(torch.tensor([[8.0, 0.0, 0.0, 0.0]]))
            gate.bias.fill_(-8.0 * 0.26 + layer * 0.4)
    obs, mask, alive, state = _inputs(16, seed=9)
    _, depth = _act(policy, obs, mask, alive, state)
    assert len(set(depth.tolist())) >= 2
    executed = count_macs(lambda: _act(policy, obs, mask, alive, state))
    assert executed == sum(macs.per_exit[d] for d in depth.tolist())


# -- training signals ------------------------------------------------------------------------------------------


def _exit_losses(
    policy: CommFormerPolicy, lam: float, batch: int = 64, costs: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    obs, mask, alive, state = _inputs(batch, seed=11)
    out = policy(obs, mask, alive, state)
    assert out.exits is not None
    kl = distill_kl(out.exits.final_logits, out.exits.head_logits)  # (B, G, N)
    weight = alive
    distill = (kl * weight.unsqueeze(1)).sum() / (weight.sum() * G)
    team_kl = (kl * weight.unsqueeze(1)).sum(-1) / weight.sum(-1, keepdim=True).clamp(min=1)  # (B, G)
    losses = torch.cat([team_kl, torch.zeros(batch, 1)], dim=-1).detach()
    costs = exit_macs(policy).relative() if costs is None else costs
    targets = gate_targets(surrogate_target(losses, costs, lam), G)
    return distill, gate_loss(out.exits.gate_logits, targets, weight)


def _grad_names(policy: CommFormerPolicy, loss: torch.Tensor) -> set[str]:
    params = dict(policy.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {name for (name, _), g in zip(params.items(), grads, strict=True) if g is not None and g.abs().sum() > 0}


def test_distillation_reaches_only_the_exit_heads_and_the_gate_loss_only_the_gates():
    policy = _policy()
    _set_gates(policy, 0.3)
    distill, gates = _exit_losses(policy, lam=0.5)
    heads = {name for name, _ in policy.named_parameters() if name.startswith("exits.heads.")}
    gate_params = {name for name, _ in policy.named_parameters() if name.startswith("exits.gates.")}
    assert _grad_names(policy, distill) == heads
    assert _grad_names(policy, gates) == gate_params


def test_backbone_grad_lets_distillation_train_the_blocks():
    policy = _policy(_config(backbone_grad=True))
    distill, _ = _exit_losses(policy, lam=0.5)
    names = _grad_names(policy, distill)
    assert "trunk.blocks.0.mlp.0.weight" in names and "encoder.obs_embed.1.weight" in names
    assert not any(name.startswith(("policy_head.", "value_head.", "exits.gates.")) for name in names)


def _train_gates(policy: CommFormerPolicy, lam: float, steps: int = 150) -> None:
    assert policy.exits is not None
    optimizer = torch.optim.Adam(policy.exits.gates.parameters(), lr=0.05)
    costs = exit_macs(policy).relative()
    for _ in range(steps):
        _, loss = _exit_losses(policy, lam, costs=costs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_lambda_zero_gates_learn_never_to_exit_and_actions_equal_the_full_policy():
    policy = _policy()
    _set_gates(policy, 3.0)  # start by exiting everywhere
    obs, mask, alive, state = _inputs(40, seed=12)
    assert (_act(policy, obs, mask, alive, state)[1] == 0).all()
    _train_gates(policy, lam=0.0)
    logits, depth = _act(policy, obs, mask, alive, state)
    assert (depth == G).all()
    assert torch.equal(logits.argmax(-1), policy(obs, mask, alive, state).logits.argmax(-1))


def test_huge_lambda_gates_learn_to_exit_at_the_first_block():
    policy = _policy()
    _set_gates(policy, -3.0)  # start by never exiting
    _train_gates(policy, lam=1e6)
    obs, mask, alive, state = _inputs(40, seed=12)
    assert (_act(policy, obs, mask, alive, state)[1] == 0).all()


# -- config and export ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("enabled", 1),
        ("cost_weight", -0.1),
        ("cost_weight", "0.1"),
        ("threshold", 1.0),
        ("warmup_steps", -1),
        ("alternate_every", 0),
        ("rollout", "yes"),
        ("gate_lr", 0.0),
        ("gate_lr", -0.02),
    ],
)
def test_bad_settings_name_the_key(key: str, value: object):
    with pytest.raises(ConfigError, match=re.escape(f"model.early_exit.{key}")):
        from_mapping(ModelConfig, {"early_exit": {key: value}}, "model")
    with pytest.raises(ConfigError, match=re.escape("model.early_exit.nope")):
        from_mapping(ModelConfig, {"early_exit": {"nope": 1}}, "model")


def test_phase_schedule():
    config = EarlyExitConfig(enabled=True, warmup_steps=3, alternate_every=2)
    assert [config.phase(s) for s in range(9)] == ["heads"] * 3 + ["gates", "gates", "heads", "heads"] + ["gates"] * 2


def test_exported_policy_carries_the_exits(tmp_path):
    policy = _policy()
    with torch.no_grad():
        for layer, gate in enumerate(policy.exits.gates):  # type: ignore[union-attr]
            gate.weight.copy_(torch.tensor([[8.0, 0.0, 0.0, 0.0]]))
            gate.bias.fill_(-8.0 * 0.26 + layer * 0.4)
    save_policy(policy, tmp_path, {"n_agents": N, "obs_dim": D, "n_actions": A, "state_dim": S}, {})
    loaded, _ = load_policy(tmp_path)
    assert loaded.config.early_exit == policy.config.early_exit and loaded.exits is not None
    obs, mask, alive, state = _inputs(16, seed=9)
    logits, depth = _act(policy, obs, mask, alive, state)
    loaded_logits, loaded_depth = _act(loaded, obs, mask, alive, state)
    assert torch.equal(depth, loaded_depth) and torch.equal(logits, loaded_logits)
