"""The learner's PPO terms on hand-built batches, against a loop-by-loop reference written from the paper."""

from __future__ import annotations

import math

import pytest
import torch

from agents.learner import GateTerms, huber_value_loss, masked_mean, ppo_team_loss


def reference_ppo(logits, old_logits, actions, adv, weight, clip):
    """Per-sample, per-agent loops: softmax, ratio, clipped surrogate, entropy."""
    b, n, _ = logits.shape
    total, count, ent_total = 0.0, 0.0, 0.0
    for t in range(b):
        for i in range(n):
            if weight[t, i] == 0:
                continue
            p = torch.softmax(logits[t, i], -1)
            q = torch.softmax(old_logits[t, i], -1)
            a = int(actions[t, i])
            ratio = float(p[a] / q[a])
            unclipped = ratio * float(adv[t])
            clipped = min(max(ratio, 1 - clip), 1 + clip) * float(adv[t])
            total += min(unclipped, clipped)
            ent_total += float(-(p * torch.log(p.clamp(min=1e-300))).sum())
            count += 1
    return -total / count, ent_total / count


def test_ppo_team_loss_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    b, n, a = 7, 3, 5
    logits = torch.randn(b, n, a, generator=g, dtype=torch.float64)
    old = logits + 0.3 * torch.randn(b, n, a, generator=g, dtype=torch.float64)  # ratios beyond the clip
    actions = torch.randint(0, a, (b, n), generator=g)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    weight = torch.ones(b, n, dtype=torch.float64)
    weight[2, 1] = 0.0  # a dead agent
    weight[6] = 0.0  # RLlib's bootstrap step
    terms = ppo_team_loss(logits, old, actions, adv, weight, clip_param=0.1)
    ref_loss, ref_entropy = reference_ppo(logits, old, actions, adv, weight, 0.1)
    assert float(terms["policy_loss"]) == pytest.approx(ref_loss, rel=1e-10)
    assert float(terms["entropy"]) == pytest.approx(ref_entropy, rel=1e-10)
    assert 0.0 < float(terms["clip_fraction"]) < 1.0


def reference_decoupled(logits, prox_logits, old_logits, actions, adv, weight, clip):
    """Decoupled PPO (Hilton et al. 2021) by loops: w = pi_prox / pi_behaviour times the surrogate clipped around
    pi_prox."""
    b, n, _ = logits.shape
    total, count = 0.0, 0.0
    for t in range(b):
        for i in range(n):
            if weight[t, i] == 0:
                continue
            a = int(actions[t, i])
            p, prox, behaviour = (float(torch.softmax(x[t, i], -1)[a]) for x in (logits, prox_logits, old_logits))
            ratio = p / prox
            surrogate = min(ratio * float(adv[t]), min(max(ratio, 1 - clip), 1 + clip) * float(adv[t]))
            total += prox / behaviour * surrogate
            count += 1
    return -total / count


def test_decoupled_loss_matches_loop_reference():
    g = torch.Generator().manual_seed(2)
    b, n, a = 9, 3, 4
    behaviour = torch.randn(b, n, a, generator=g, dtype=torch.float64)
    prox = behaviour + 0.3 * torch.randn(b, n, a, generator=g, dtype=torch.float64)  # one update later
    logits = prox + 0.3 * torch.randn(b, n, a, generator=g, dtype=torch.float64)
    actions = torch.randint(0, a, (b, n), generator=g)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    weight = torch.ones(b, n, dtype=torch.float64)
    weight[4, 0] = 0.0
    terms = ppo_team_loss(logits, behaviour, actions, adv, weight, clip_param=0.1, prox_logits=prox)
    expected = reference_decoupled(logits, prox, behaviour, actions, adv, weight, 0.1)
    assert float(terms["policy_loss"]) == pytest.approx(expected, rel=1e-10)
    # The plain loss on the same batch differs: the decoupling is not a no-op here.
    plain = ppo_team_loss(logits, behaviour, actions, adv, weight, clip_param=0.1)
    assert float(plain["policy_loss"]) != pytest.approx(expected, rel=1e-3)


def reference_joint(logits, old_logits, gate_logit, old_gate_logit, decision, actions, adv, weight, clip, prox=None):
    """Loops over (step, agent): the ratio of the joint decision (gate, action), p(g) = sigmoid(z) if open else
    1 - sigmoid(z); decoupled around `prox` = (prox_logits, prox_gate_logit) when given."""
    b, n, _ = logits.shape
    total, count = 0.0, 0.0

    def joint(action_logits, gate, t, i):
        a = int(actions[t, i])
        p_gate = 1 / (1 + math.exp(-float(gate[t, i].detach())))
        p_gate = p_gate if decision[t, i] > 0 else 1 - p_gate
        return float(torch.softmax(action_logits[t, i], -1)[a]) * p_gate

    for t in range(b):
        for i in range(n):
            if weight[t, i] == 0:
                continue
            p, behaviour = joint(logits, gate_logit, t, i), joint(old_logits, old_gate_logit, t, i)
            anchor = behaviour if prox is None else joint(prox[0], prox[1], t, i)
            ratio = p / anchor
            surrogate = min(ratio * float(adv[t]), min(max(ratio, 1 - clip), 1 + clip) * float(adv[t]))
            total += anchor / behaviour * surrogate
            count += 1
    return -total / count


@pytest.mark.parametrize("decoupled", [False, True])
def test_sampled_gates_join_each_agents_ratio(decoupled):
    g = torch.Generator().manual_seed(4)
    b, n, a = 8, 3, 4
    old = torch.randn(b, n, a, generator=g, dtype=torch.float64)
    prox = old + 0.2 * torch.randn(b, n, a, generator=g, dtype=torch.float64)
    logits = prox + 0.2 * torch.randn(b, n, a, generator=g, dtype=torch.float64)
    old_gate = torch.randn(b, n, generator=g, dtype=torch.float64)
    prox_gate = old_gate + 0.3 * torch.randn(b, n, generator=g, dtype=torch.float64)
    gate = (prox_gate + 0.3 * torch.randn(b, n, generator=g, dtype=torch.float64)).requires_grad_()
    decision = (torch.rand(b, n, generator=g) < 0.5).double()
    actions = torch.randint(0, a, (b, n), generator=g)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    weight = torch.ones(b, n, dtype=torch.float64)
    weight[3, 2] = 0.0
    terms = ppo_team_loss(
        logits,
        old,
        actions,
        adv,
        weight,
        clip_param=0.1,
        prox_logits=prox if decoupled else None,
        gates=GateTerms(decision, gate, old_gate, prox_gate if decoupled else None),
    )
    expected = reference_joint(
        logits, old, gate, old_gate, decision, actions, adv, weight, 0.1, (prox, prox_gate) if decoupled else None
    )
    assert float(terms["policy_loss"].detach()) == pytest.approx(expected, rel=1e-10)
    # The gates' logits get the policy gradient (the score function) and the gate terms change the loss.
    (grad,) = torch.autograd.grad(terms["policy_loss"], gate)
    assert grad.abs().sum() > 0
    without = ppo_team_loss(logits, old, actions, adv, weight, 0.1, prox_logits=prox if decoupled else None)
    assert float(without["policy_loss"]) != pytest.approx(expected, rel=1e-3)


def test_gate_clipped_fraction_counts_steps_clipped_only_because_of_the_gate():
    # One agent, five steps, two actions. The actions' ratio is 1.05 (inside clip 0.2) on steps 0-3 and 1.3 on
    # step 4; the gate's ratio p(open) / p_old(open) is 1.5, 1.5, 0.5, 1.0, 1.5, so the joint ratio is 1.575,
    # 1.575, 0.525, 1.05, 1.95. Advantages +1, -1, -1, +1, +1: PPO drops the gradient where r > 1.2 with A > 0 or
    # r < 0.8 with A < 0: steps 0, 2 and 4; step 1 is outside the range on the side PPO keeps, step 3 inside, and
    # step 4 would be dropped for its actions alone. By hand: steps 0 and 2, 2 of 5.
    action_ratio = torch.tensor([1.05, 1.05, 1.05, 1.05, 1.3], dtype=torch.float64)
    old = torch.zeros(5, 1, 2, dtype=torch.float64)  # p_old(action 0) = 0.5
    logits = old.clone()
    logits[:, 0, 0] = torch.log(action_ratio / (2.0 - action_ratio))  # softmax([x, 0])[0] = 0.5 * ratio
    actions = torch.zeros(5, 1, dtype=torch.long)
    p_old = torch.full((5, 1), 0.4, dtype=torch.float64)
    p_new = p_old * torch.tensor([[1.5], [1.5], [0.5], [1.0], [1.5]], dtype=torch.float64)
    logit, old_logit = torch.log(p_new / (1 - p_new)), torch.log(p_old / (1 - p_old))
    decision = torch.ones(5, 1, dtype=torch.float64)  # every gate opened
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    weight = torch.ones(5, 1, dtype=torch.float64)
    terms = ppo_team_loss(logits, old, actions, adv, weight, 0.2, gates=GateTerms(decision, logit, old_logit))
    assert float(terms["gate_clipped_fraction"]) == pytest.approx(2 / 5)
    assert float(terms["clip_fraction"]) == pytest.approx(4 / 5)  # steps 0, 1, 2 and 4 are outside the range
    # Decoupled: the proximal gate logits are the reference; equal to the behaviour's, the same count.
    gates = GateTerms(decision, logit, old_logit, old_logit)
    decoupled = ppo_team_loss(logits, old, actions, adv, weight, 0.2, prox_logits=old, gates=gates)
    assert float(decoupled["gate_clipped_fraction"]) == pytest.approx(2 / 5)
    # A dead agent's steps do not count, and without gates there is no such statistic.
    weight[0, 0] = 0.0
    terms = ppo_team_loss(logits, old, actions, adv, weight, 0.2, gates=GateTerms(decision, logit, old_logit))
    assert float(terms["gate_clipped_fraction"]) == pytest.approx(1 / 4)
    assert "gate_clipped_fraction" not in ppo_team_loss(logits, old, actions, adv, weight, 0.2)


def test_decoupled_gates_need_their_proximal_logits():
    z = torch.zeros(2, 1)
    with pytest.raises(ValueError, match="proximal gate logits"):
        ppo_team_loss(
            torch.zeros(2, 1, 3),
            torch.zeros(2, 1, 3),
            torch.zeros(2, 1),
            torch.ones(2),
            torch.ones(2, 1),
            0.2,
            prox_logits=torch.zeros(2, 1, 3),
            gates=GateTerms(z, z, z),
        )


def test_decoupled_loss_without_lag_is_plain_ppo():
    g = torch.Generator().manual_seed(3)
    behaviour = torch.randn(6, 2, 5, generator=g)
    logits = behaviour + 0.5 * torch.randn(6, 2, 5, generator=g)
    actions = torch.randint(0, 5, (6, 2), generator=g)
    adv, weight = torch.randn(6, generator=g), torch.ones(6, 2)
    plain = ppo_team_loss(logits, behaviour, actions, adv, weight, clip_param=0.2)
    decoupled = ppo_team_loss(logits, behaviour, actions, adv, weight, clip_param=0.2, prox_logits=behaviour.clone())
    for key in ("policy_loss", "entropy", "approx_kl", "clip_fraction"):
        assert float(decoupled[key]) == pytest.approx(float(plain[key]), abs=1e-6), key


def test_identical_policies_give_unit_ratio_and_zero_kl():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 2, 3, generator=g)
    actions = torch.randint(0, 3, (4, 2), generator=g)
    adv = torch.tensor([1.0, -2.0, 0.5, 3.0])
    weight = torch.ones(4, 2)
    terms = ppo_team_loss(logits, logits.clone(), actions, adv, weight, clip_param=0.2)
    # ratio 1 everywhere: the loss is minus the mean advantage over alive agents
    assert float(terms["policy_loss"]) == pytest.approx(-float(adv.mean()), abs=1e-6)
    assert float(terms["approx_kl"]) == pytest.approx(0.0, abs=1e-7)
    assert float(terms["clip_fraction"]) == 0.0


def test_masked_actions_do_not_break_entropy():
    logits = torch.tensor([[[0.0, torch.finfo(torch.float32).min, 1.0]]])
    terms = ppo_team_loss(logits, logits, torch.tensor([[2]]), torch.tensor([1.0]), torch.ones(1, 1), 0.2)
    p = torch.softmax(torch.tensor([0.0, 1.0]), -1)
    assert float(terms["entropy"]) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-6)
    assert all(math.isfinite(float(v)) for v in terms.values())


def test_policy_gradient_reaches_only_weighted_entries():
    logits = torch.zeros(2, 2, 3, requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    terms = ppo_team_loss(logits, logits.detach(), torch.zeros(2, 2), torch.tensor([1.0, 1.0]), weight, 0.2)
    terms["policy_loss"].backward()
    assert logits.grad is not None
    assert logits.grad[0, 0].abs().sum() > 0
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[1].abs().sum() == 0


def test_huber_value_loss_by_hand():
    values = torch.tensor([[0.0, 2.0], [5.0, 1.0]])
    targets = torch.tensor([1.0, -1.0])
    weight = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # errors: (0-1)=-1 -> 0.5; (2-1)=1 -> 0.5; (5+1)=6 with delta 2 -> 2*(6-1)=10; masked entry ignored
    assert float(huber_value_loss(values, targets, weight, delta=2.0)) == pytest.approx((0.5 + 0.5 + 10.0) / 3)


def test_masked_mean_ignores_zero_weights_and_survives_empty_masks():
    x = torch.tensor([1.0, 100.0, 3.0])
    assert float(masked_mean(x, torch.tensor([1.0, 0.0, 1.0]))) == 2.0
    assert float(masked_mean(x, torch.zeros(3))) == 0.0
