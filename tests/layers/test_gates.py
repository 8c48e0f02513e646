"""Temporal gates: greedy and sampled decisions, replay, the score function, cost, effect on the graph."""

from __future__ import annotations

import pytest
import torch

from commformer.config import GateConfig
from commformer.gates import (
    TemporalGate,
    communication_cost,
    gate_adjacency,
    gate_log_prob,
    gate_rows,
    gate_senders,
)
from commformer.graph import straight_through_senders, straight_through_topk
from commformer.layers.attention import Senders


@pytest.mark.parametrize("batch", [(), (2,), (3, 2)])
def test_greedy_decisions_are_binary_thresholds_of_the_logit(batch: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    gate = TemporalGate(8, GateConfig(init_bias=0.0))
    with torch.no_grad():
        gate.proj.weight.normal_()
    h = torch.randn(*batch, 5, 8)
    out = gate(h)
    assert out.open.shape == out.logit.shape == out.prob.shape == (*batch, 5)
    assert set(out.open.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out.open, (out.prob > 0.5).double())
    assert torch.equal(out.open, out.greedy)
    assert not out.open.requires_grad and out.logit.requires_grad  # decisions carry no gradient


def test_gates_start_open() -> None:
    gate = TemporalGate(4, GateConfig(init_bias=2.0))
    out = gate(torch.randn(10, 3, 4) * 100)
    assert torch.equal(out.open, torch.ones(10, 3))
    torch.testing.assert_close(out.prob, torch.full((10, 3), torch.sigmoid(torch.tensor(2.0)).item()))


def test_sampled_decisions_open_at_the_gate_probability() -> None:
    """Each decision is Bernoulli(sigmoid(z)): the open frequency of 20,000 draws per agent is within 5 binomial
    standard deviations of p, for p from 0.05 to 0.95 (seeded, so the check is deterministic)."""
    gate = TemporalGate(1, GateConfig(init_bias=0.0))
    logits = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])
    with torch.no_grad():
        gate.proj.weight.fill_(1.0)
    h = logits.view(1, 5, 1).expand(20_000, 5, 1)
    out = gate(h, sample=True, generator=torch.Generator().manual_seed(0))
    p = torch.sigmoid(logits)
    rate = out.open.mean(0)
    assert set(out.open.unique().tolist()) == {0.0, 1.0}
    assert ((rate - p).abs() < 5 * (p * (1 - p) / 20_000).sqrt()).all(), (rate, p)


def test_a_recorded_decision_is_replayed_and_a_wrong_shape_refused() -> None:
    torch.manual_seed(2)
    gate = TemporalGate(4, GateConfig(init_bias=3.0))  # greedy: every gate open
    h = torch.randn(6, 3, 4)
    record = torch.tensor([[0.0, 1.0, 0.0]]).expand(6, 3)
    out = gate(h, record, sample=True)
    assert torch.equal(out.open, record)
    torch.testing.assert_close(out.logit, gate(h).logit)
    with pytest.raises(ValueError, match=r"recorded gate decisions have shape \(6, 2\); expected \(6, 3\)"):
        gate(h, record[:, :2])


def test_gate_log_prob_by_hand_and_finite_in_the_tails() -> None:
    logit = torch.tensor([-2.0, 0.5, 0.5, 3.0, -200.0, 200.0], dtype=torch.float32)
    decision = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float32)
    p = 1 / (1 + torch.exp(-logit[:4].double()))
    expected = torch.stack([p[0].log(), p[1].log(), (1 - p[2]).log(), (1 - p[3]).log()]).float()
    out = gate_log_prob(logit, decision)
    torch.testing.assert_close(out[:4], expected)
    # The rare decision in float32, where log(sigmoid(-200)) would be log(0) = -inf: log p = -200, finite.
    torch.testing.assert_close(out[4:], torch.tensor([-200.0, -200.0], dtype=torch.float32))


def test_the_score_function_is_an_unbiased_gradient_of_the_expected_return() -> None:
    """d/db E_g[R(g)] = p (1 - p) (R(open) - R(closed)) by hand; the mean of R(g) d log p(g)/db over sampled
    decisions must match it within 5 standard errors. The task gradient a closed gate gets: with p = 0.05 the
    estimate is still positive where opening pays."""
    reward = {1.0: 1.0, 0.0: 0.25}  # the signal task: naming the neighbour's symbol vs guessing among 4
    for bias in (-3.0, 0.0, 2.0):
        gate = TemporalGate(2, GateConfig(init_bias=bias))
        h = torch.zeros(40_000, 1, 2)
        out = gate(h, sample=True, generator=torch.Generator().manual_seed(1))
        returns = torch.where(out.open > 0, reward[1.0], reward[0.0])
        per_sample = returns * gate_log_prob(out.logit, out.open)  # (S, 1)
        grads = torch.autograd.grad(per_sample.mean(), gate.proj.bias)[0]
        p = torch.sigmoid(torch.tensor(bias))
        exact = p * (1 - p) * (reward[1.0] - reward[0.0])
        spread = (returns * (out.open - p)).std() / 40_000**0.5  # d log p(g)/dz = g - p
        assert abs(float(grads) - float(exact)) < 5 * float(spread), (bias, grads, exact)
        assert float(grads) > 0


def test_cost_is_weighted_mean_over_alive_agents() -> None:
    gate = TemporalGate(4, GateConfig(cost_weight=0.5))
    prob = torch.tensor([[0.2, 0.4, 1.0], [0.6, 0.0, 0.8]])
    alive = torch.tensor([[1, 1, 0], [1, 0, 1]])
    torch.testing.assert_close(gate.cost(prob, alive), torch.tensor(0.5 * (0.2 + 0.4 + 0.6 + 0.8) / 4))
    torch.testing.assert_close(gate.cost(prob), 0.5 * prob.mean())
    assert communication_cost(prob, torch.zeros(2, 3)).item() == 0.0


def test_closed_gate_leaves_only_the_self_loop() -> None:
    adjacency = torch.ones(4, 4)
    gate_open = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    effective = gate_adjacency(adjacency, gate_open)
    assert effective.shape == (1, 4, 4)
    assert torch.equal(effective[0, 1], torch.eye(4)[1])
    assert torch.equal(effective[0, 3], torch.eye(4)[3])
    assert torch.equal(effective[0, 0], torch.ones(4))


def test_dead_senders_send_nothing() -> None:
    adjacency = torch.ones(2, 4, 4)
    alive = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 1]])
    effective = gate_adjacency(adjacency, torch.ones(2, 4), alive)
    expected_col1 = torch.eye(4)[:, 1]
    assert torch.equal(effective[0, :, 1], expected_col1)  # only the dead agent's own self-loop
    assert torch.equal(effective[1, :, 0], torch.eye(4)[:, 0])
    assert torch.equal(effective[0, :, 0], torch.ones(4))
    assert torch.equal(effective.diagonal(dim1=-2, dim2=-1), torch.ones(2, 4))


def test_gate_adjacency_passes_gradients_to_graph_and_gates() -> None:
    adjacency = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]], requires_grad=True)
    gate_open = torch.tensor([[1.0, 0.0, 1.0]], requires_grad=True)
    effective = gate_adjacency(adjacency, gate_open, torch.ones(1, 3))
    effective.mul(torch.randn(1, 3, 3)).sum().backward()
    assert adjacency.grad is not None and adjacency.grad[0].abs().sum() > 0
    assert adjacency.grad[1].abs().sum() == 0  # a closed gate's row does not depend on the graph
    assert gate_open.grad is not None and gate_open.grad.abs().sum() > 0


def test_gate_adjacency_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"adjacency has shape \(3, 3\); expected \(\.\.\., 4, 4\)"):
        gate_adjacency(torch.ones(3, 3), torch.ones(2, 4))


@pytest.mark.parametrize("with_alive", [False, True])
def test_gate_senders_are_the_gathered_entries_of_gate_adjacency(with_alive: bool) -> None:
    n, k, b = 9, 3, 6
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(n, n, generator=gen, dtype=torch.float64, requires_grad=True)
    index, entries = straight_through_senders(logits, k, 1.0)
    dense = straight_through_topk(logits, k, 1.0)
    gate_open = (torch.rand(b, n, generator=gen) < 0.6).double()
    alive = (torch.rand(b, n, generator=gen) < 0.7).double() if with_alive else None
    gathered = gate_senders(Senders(index, entries), gate_open, alive)
    expected = gate_adjacency(dense, gate_open, alive)
    assert gathered.index is index and gathered.weight.shape == (b, n, k + 1)
    assert torch.equal(gathered.dense(), expected)  # the listed entries, and 0 everywhere else
    assert torch.equal(gate_senders(Senders(None, dense), gate_open, alive).weight, expected)
    # The gradient to the logits through the gated entries is the dense one's.
    upstream = torch.randn(b, n, k + 1, generator=gen, dtype=torch.float64)
    (grad_gathered,) = torch.autograd.grad((gathered.weight * upstream).sum(), logits)
    scattered = torch.zeros(b, n, n, dtype=torch.float64).scatter(-1, index.expand(b, n, k + 1), upstream)
    (grad_dense,) = torch.autograd.grad((expected * scattered).sum(), logits)
    torch.testing.assert_close(grad_gathered, grad_dense, rtol=1e-12, atol=1e-14)
    assert grad_gathered.abs().sum() > 0


def test_the_budget_moves_the_cost_weight_towards_the_target_rate_and_never_below_zero() -> None:
    """model.gates.target_open_rate: weight += budget_lr * (rate - target), floored at 0, by hand; the cost reads the
    adapted weight; without a budget nothing adapts and nothing is saved."""
    gate = TemporalGate(4, GateConfig(cost_weight=0.01, target_open_rate=0.4, budget_lr=0.05))
    assert "budget" in gate.state_dict() and gate.weight == pytest.approx(0.01)
    gate.adapt(0.9)  # 0.5 above the target
    assert gate.weight == pytest.approx(0.01 + 0.05 * 0.5)
    prob = torch.tensor([[0.9, 0.5]])
    torch.testing.assert_close(gate.cost(prob), torch.tensor(0.035 * 0.7))
    gate.adapt(0.0)  # 0.4 below: 0.035 - 0.02
    assert gate.weight == pytest.approx(0.015)
    gate.adapt(0.0)
    assert gate.weight == 0.0  # floored: a budget that is not used costs nothing
    plain = TemporalGate(4, GateConfig(cost_weight=0.01))
    plain.adapt(0.9)
    assert plain.weight == 0.01 and "budget" not in plain.state_dict()


def test_the_cost_keeps_its_weight_for_the_backward_when_the_budget_moves() -> None:
    gate = TemporalGate(4, GateConfig(cost_weight=0.02, target_open_rate=0.1))
    h = torch.randn(3, 2, 4)
    out = gate(h)
    cost = gate.cost(out.prob)
    gate.adapt(1.0)  # the learner steps the budget after the loss is built, before its backward
    cost.backward()
    expected = torch.autograd.grad(0.02 * communication_cost(gate(h).prob), gate.proj.bias)[0]
    assert gate.proj.bias.grad is not None
    torch.testing.assert_close(gate.proj.bias.grad, expected)


def test_gate_rows_are_the_rows_of_gate_adjacency_with_its_gradient() -> None:
    gen = torch.Generator().manual_seed(3)
    n, b = 5, 4
    graph = torch.maximum((torch.rand(n, n, generator=gen) < 0.5).double(), torch.eye(n)).requires_grad_(True)
    gate_open = (torch.rand(b, n, generator=gen) < 0.5).double()
    alive = (torch.rand(b, n, generator=gen) < 0.7).double()
    teams, receivers = torch.tensor([0, 0, 2, 3]), torch.tensor([1, 4, 0, 2])
    full = gate_adjacency(graph, gate_open, alive)[teams, receivers]  # (R, N)
    rows = gate_rows(graph, receivers, gate_open[teams, receivers], alive[teams])
    assert torch.equal(rows, full)
    upstream = torch.randn(4, n, generator=gen)
    (want,) = torch.autograd.grad((full * upstream).sum(), graph)
    (got,) = torch.autograd.grad((rows * upstream).sum(), graph)
    torch.testing.assert_close(got, want)
