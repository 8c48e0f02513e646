"""CommGraph: exact top-k, straight-through gradients, Gumbel only in the surrogate, naive reference."""

from __future__ import annotations

import pytest
import torch

from commformer.config import GraphConfig
from commformer.graph import CommGraph, hard_topk, sample_gumbel, straight_through_topk
from commformer.layers.reference import naive_straight_through_topk, naive_topk_senders


def _random_graph(n: int, sparsity: float = 0.4, seed: int = 0, tau: float = 1.0) -> CommGraph:
    graph = CommGraph(n, GraphConfig(sparsity=sparsity, gumbel_tau=tau)).double()
    with torch.no_grad():
        graph.logits.copy_(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))
    return graph


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16, 25])
@pytest.mark.parametrize("sparsity", [0.1, 0.4, 0.5, 1.0])
@pytest.mark.parametrize("init", ["ones", "random", "integer_ties"])
def test_exactly_k_senders_plus_self_loop(n: int, sparsity: float, init: str) -> None:
    graph = CommGraph(n, GraphConfig(sparsity=sparsity))
    with torch.no_grad():
        if init == "random":
            graph.logits.copy_(torch.randn(n, n))
        elif init == "integer_ties":
            graph.logits.copy_(torch.randint(0, 3, (n, n)).float())
    k = graph.k
    assert k == GraphConfig(sparsity=sparsity).senders(n)
    adjacency = graph()
    assert adjacency.shape == (n, n)
    assert torch.equal(adjacency, graph.hard()), "forward value must be exactly the hard graph"
    assert set(adjacency.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(adjacency.diagonal(), torch.ones(n))
    assert torch.equal(adjacency.sum(-1), torch.full((n,), float(k + 1)))
    # The same senders as the naive Python-sorted reference (including how ties are broken).
    expected = naive_topk_senders(graph.logits, k)
    for i in range(n):
        kept = [j for j in range(n) if j != i and adjacency[i, j] == 1]
        assert kept == expected[i]


def test_initial_ring_graph_balances_senders() -> None:
    # All-equal logits: receiver i listens to i+1..i+k (mod N), so every agent also sends k messages.
    graph = CommGraph(8, GraphConfig(sparsity=0.4))
    hard = graph.hard()
    assert graph.k == 3
    assert torch.equal(hard.sum(0), torch.full((8,), 4.0))
    assert hard[0, 1] == hard[0, 2] == hard[0, 3] == 1 and hard[7, 0] == 1


def test_single_agent_graph() -> None:
    graph = CommGraph(1, GraphConfig())
    assert graph.k == 0
    assert torch.equal(graph(), torch.ones(1, 1))
    assert torch.equal(graph(gumbel=True), torch.ones(1, 1))
    assert torch.equal(graph.probs(), torch.zeros(1, 1))


@pytest.mark.parametrize("n", [2, 3, 8])
@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("noisy", [False, True])
def test_matches_naive_reference_outputs_and_gradients(n: int, tau: float, noisy: bool) -> None:
    graph = _random_graph(n, seed=n, tau=tau)
    noise = sample_gumbel((n, n), dtype=torch.float64, device=torch.device("cpu")) if noisy else None
    weights = torch.randn(n, n)
    fast = straight_through_topk(graph.logits, graph.k, tau, noise)
    (grad_fast,) = torch.autograd.grad((fast * weights).sum(), graph.logits)
    naive = naive_straight_through_topk(graph.logits, graph.k, tau, noise)
    (grad_naive,) = torch.autograd.grad((naive * weights).sum(), graph.logits)
    torch.testing.assert_close(fast, naive, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_fast, grad_naive, rtol=1e-10, atol=1e-12)
    # With N = 2 each receiver has a single candidate sender: softmax over one entry is constant.
    assert (grad_fast.abs().sum() > 0) == (n > 2)


def test_forward_is_exactly_binary_for_awkward_logits() -> None:
    # y_hard - y_soft.detach() + y_soft can round a kept 1 to 1 - eps; ours may not.
    graph = CommGraph(8, GraphConfig(sparsity=0.5)).float()
    with torch.no_grad():
        graph.logits.copy_(torch.randn(8, 8) * 30)
    adjacency = graph(gumbel=True)
    assert torch.equal(adjacency, graph.hard())


def test_gumbel_changes_gradient_not_graph() -> None:
    graph = _random_graph(8, seed=3)
    weights = torch.randn(8, 8)
    plain = graph()
    (grad_plain,) = torch.autograd.grad((plain * weights).sum(), graph.logits)
    noisy = graph(gumbel=True, generator=torch.Generator().manual_seed(1))
    (grad_noisy,) = torch.autograd.grad((noisy * weights).sum(), graph.logits)
    assert torch.equal(plain, noisy)
    assert not torch.allclose(grad_plain, grad_noisy)


def test_gumbel_is_deterministic_under_a_seed() -> None:
    graph = _random_graph(5, seed=4)
    grads = []
    for _ in range(2):
        out = graph(gumbel=True, generator=torch.Generator().manual_seed(7))
        grads.append(torch.autograd.grad((out * torch.arange(25.0).view(5, 5)).sum(), graph.logits)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_probs_rows_sum_to_one_with_zero_diagonal() -> None:
    graph = _random_graph(6, seed=5, tau=0.7)
    probs = graph.probs()
    assert not probs.requires_grad
    torch.testing.assert_close(probs.sum(-1), torch.ones(6))
    assert torch.equal(probs.diagonal(), torch.zeros(6))
    assert not graph.hard().requires_grad


def test_dense_graph_keeps_gradient() -> None:
    # k = N - 1 keeps every sender: the hard graph is constant but the surrogate still has a gradient.
    graph = _random_graph(4, sparsity=1.0, seed=6)
    assert graph.k == 3
    out = graph()
    assert torch.equal(out, torch.ones(4, 4))
    (grad,) = torch.autograd.grad((out * torch.randn(4, 4)).sum(), graph.logits)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_hard_topk_k_zero_is_identity() -> None:
    assert torch.equal(hard_topk(torch.randn(4, 4), 0), torch.eye(4))


def test_a_random_init_is_a_seeded_random_graph_of_k_senders() -> None:
    graphs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        graphs.append(CommGraph(8, GraphConfig(k=3, init="random")).hard())
    assert torch.equal(graphs[0], graphs[1]) and not torch.equal(graphs[0], graphs[2])
    assert torch.equal(graphs[0].sum(-1), torch.full((8,), 4.0))  # k senders + the self-loop
    ring = CommGraph(8, GraphConfig(k=3)).hard()
    assert not torch.equal(graphs[0], ring)  # the uniform start is the ring i <- i+1..i+3


def test_an_unknown_graph_init_is_refused() -> None:
    with pytest.raises(ValueError, match=r"model\.graph\.init"):
        GraphConfig(init="zeros")  # type: ignore[arg-type]
