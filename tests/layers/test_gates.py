"""Temporal gates: hard deterministic decisions, straight-through gradient, cost, effect on the graph."""

from __future__ import annotations

import pytest
import torch

from commformer.config import GateConfig
from commformer.gates import TemporalGate, communication_cost, gate_adjacency


@pytest.mark.parametrize("batch", [(), (2,), (3, 2)])
def test_gate_shapes_and_binary_forward(batch: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    gate = TemporalGate(8, GateConfig(init_bias=0.0)).double()
    nn_weight = torch.randn(1, 8)
    with torch.no_grad():
        gate.proj.weight.copy_(nn_weight)
    h = torch.randn(*batch, 5, 8)
    gate_open, prob = gate(h)
    assert gate_open.shape == prob.shape == (*batch, 5)
    assert set(gate_open.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(gate_open, (prob > 0.5).double())


def test_gates_start_open() -> None:
    gate = TemporalGate(4, GateConfig(init_bias=2.0))
    gate_open, prob = gate(torch.randn(10, 3, 4) * 100)
    assert torch.equal(gate_open, torch.ones(10, 3))
    torch.testing.assert_close(prob, torch.full((10, 3), torch.sigmoid(torch.tensor(2.0)).item()))


def test_straight_through_gradient_is_that_of_the_probability() -> None:
    torch.manual_seed(1)
    gate = TemporalGate(4, GateConfig(init_bias=0.3)).double()
    h = torch.randn(6, 3, 4)
    weights = torch.randn(6, 3)
    gate_open, prob = gate(h)
    (grad_st,) = torch.autograd.grad((gate_open * weights).sum(), gate.proj.bias)
    (grad_p,) = torch.autograd.grad((gate(h)[1] * weights).sum(), gate.proj.bias)
    torch.testing.assert_close(grad_st, grad_p)
    assert grad_st.abs().sum() > 0 and prob.requires_grad


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
