"""CommGraph: exact top-k, straight-through gradients, Gumbel only in the surrogate, naive reference, and the
gathered layout (each receiver's self-loop and k senders) against the dense matrix."""

from __future__ import annotations

import pytest
import torch

from commformer.config import GraphConfig
from commformer.graph import (
    CommGraph,
    hard_topk,
    sample_gumbel,
    straight_through_senders,
    straight_through_topk,
    team_senders,
    topk_senders,
)
from commformer.layers.attention import GATHER_FACTOR, gathers
from commformer.validate import ConfigError
from tests.layers.naive_reference import naive_straight_through_topk, naive_topk_senders


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


def _logits(n: int, init: str, seed: int) -> torch.Tensor:
    """(N, N) float64 logits: random, all equal, few integer levels (many ties), or ties a float32 sort would see."""
    gen = torch.Generator().manual_seed(seed)
    if init == "ones":
        return torch.ones(n, n, dtype=torch.float64)
    if init == "integer_ties":
        return torch.randint(0, 3, (n, n), generator=gen).double()
    if init == "near_ties":  # distinct in float64, 1 ulp of float32 apart
        return 1.0 + torch.randint(0, 3, (n, n), generator=gen).double() * 2.0**-23
    return torch.randn(n, n, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40])
@pytest.mark.parametrize("init", ["random", "ones", "integer_ties", "near_ties"])
def test_topk_senders_match_the_naive_sort_for_every_k(n: int, init: str) -> None:
    logits = _logits(n, init, seed=n)
    for k in range(n):
        senders = topk_senders(logits, k)
        assert senders.shape == (n, k) and senders.dtype == torch.long
        assert senders.tolist() == naive_topk_senders(logits, k), f"k={k}"


def test_topk_senders_of_a_large_tied_team_match_the_naive_sort() -> None:
    logits = _logits(300, "integer_ties", seed=1)
    for k in (1, 4, 150, 299):
        assert topk_senders(logits, k).tolist() == naive_topk_senders(logits, k), f"k={k}"


@pytest.mark.parametrize("n", [2, 3, 8, 20])
@pytest.mark.parametrize("noisy", [False, True])
def test_straight_through_senders_are_the_dense_graphs_kept_entries(n: int, noisy: bool) -> None:
    graph = _random_graph(n, sparsity=0.25, seed=n, tau=0.7)
    k = graph.k
    noise = sample_gumbel((n, n), dtype=torch.float64, device=torch.device("cpu")) if noisy else None
    index, entries = straight_through_senders(graph.logits, k, 0.7, noise)
    dense = straight_through_topk(graph.logits, k, 0.7, noise)
    assert index.shape == entries.shape == (n, k + 1)
    assert torch.equal(index[:, 0], torch.arange(n)) and torch.equal(index[:, 1:], topk_senders(graph.logits, k))
    assert torch.equal(entries, torch.ones(n, k + 1, dtype=torch.float64))
    assert torch.equal(torch.zeros_like(dense).scatter(1, index, entries), dense)  # every unlisted entry is 0
    # Any upstream gradient on the listed entries reaches the logits as the dense graph's does with that upstream
    # on the same entries (and 0 elsewhere).
    upstream = torch.randn(n, k + 1, dtype=torch.float64)
    (grad_listed,) = torch.autograd.grad((entries * upstream).sum(), graph.logits)
    scattered = torch.zeros(n, n, dtype=torch.float64).scatter(1, index, upstream)
    (grad_dense,) = torch.autograd.grad((dense * scattered).sum(), graph.logits)
    torch.testing.assert_close(grad_listed, grad_dense, rtol=1e-12, atol=1e-14)
    assert (grad_listed.abs().sum() > 0) == (n > 2)


def test_straight_through_senders_skip_the_surrogate_without_autograd() -> None:
    graph = _random_graph(6, seed=2)
    with torch.no_grad():
        index, entries = straight_through_senders(graph.logits, graph.k, 1.0)
    assert entries.grad_fn is None and torch.equal(entries, torch.ones(6, graph.k + 1, dtype=torch.float64))
    assert torch.equal(index, straight_through_senders(graph.logits, graph.k, 1.0)[0])


def test_the_layout_follows_team_size_and_k_only() -> None:
    assert gathers(GATHER_FACTOR * 5, 4) and not gathers(GATHER_FACTOR * 5 - 1, 4)
    assert not gathers(1, 0) and not gathers(27, 26)
    small, large = CommGraph(63, GraphConfig(k=3)), CommGraph(64, GraphConfig(k=3))
    assert not small.gathered and large.gathered
    assert small.senders().index is None and torch.equal(small.senders().weight, small())
    senders = large.senders(gumbel=True)
    assert senders.index is not None and senders.weight.shape == (64, 4)
    assert torch.equal(senders.dense(), large.hard())


@pytest.mark.parametrize("n", [3, 8])
def test_without_candidates_only_the_kept_entries_carry_the_gradient(n: int) -> None:
    """``candidates=False`` (the gathered layout's graph): an upstream gradient on the entries left out reaches the
    logits not at all, and one on the kept entries exactly as with candidates."""
    graph = _random_graph(n, sparsity=0.4, seed=n)
    hard = graph.hard()
    upstream = torch.randn(n, n, dtype=torch.float64)
    kept_only = straight_through_topk(graph.logits, graph.k, 1.0, candidates=False)
    every = straight_through_topk(graph.logits, graph.k, 1.0)
    assert torch.equal(kept_only, every) and torch.equal(kept_only, hard)
    (left_out,) = torch.autograd.grad((kept_only * upstream * (1 - hard)).sum(), graph.logits, retain_graph=True)
    assert torch.equal(left_out, torch.zeros_like(left_out))
    (kept_a,) = torch.autograd.grad((kept_only * upstream * hard).sum(), graph.logits)
    (kept_b,) = torch.autograd.grad((every * upstream * hard).sum(), graph.logits, retain_graph=True)
    torch.testing.assert_close(kept_a, kept_b, rtol=0, atol=0)
    (candidates,) = torch.autograd.grad((every * upstream * (1 - hard)).sum(), graph.logits)
    assert candidates.abs().sum() > 0


def test_a_graph_assesses_the_senders_left_out_unless_it_gathers() -> None:
    small, large = CommGraph(63, GraphConfig(k=3)), CommGraph(64, GraphConfig(k=3))
    assert small.candidates and not large.candidates
    # The dense layout's entries left out carry the gradient: an upstream on them alone reaches the logits.
    upstream = (1 - small.hard()) * torch.randn(63, 63)
    (grad,) = torch.autograd.grad((small() * upstream).sum(), small.logits)
    assert grad.abs().sum() > 0


def test_a_switch_margin_keeps_a_sender_until_another_is_better_by_more_than_it() -> None:
    graph = CommGraph(4, GraphConfig(k=1, switch_margin=0.1)).double()
    assert graph.held is not None and graph.held.flatten().tolist() == [1, 2, 3, 0]  # the ring, as the top-k
    with torch.no_grad():
        graph.logits[0, 2] = 1.05  # receiver 0: sender 2 ahead of the held 1, by less than the margin
    assert graph.settle() == 0
    assert graph.hard()[0].tolist() == [1.0, 1.0, 0.0, 0.0]  # still hears 1, where the plain top-k would take 2
    assert hard_topk(graph.logits, 1)[0].tolist() == [1.0, 0.0, 1.0, 0.0]
    with torch.no_grad():
        graph.logits[0, 2] = 1.2
        graph.logits[3, 1] = 0.5  # receiver 3's held sender 0 stays ahead of 1: nothing to replace
    assert graph.settle() == 1
    assert graph.hard()[0].tolist() == [1.0, 0.0, 1.0, 0.0] and graph.hard()[3].tolist() == [1.0, 0.0, 0.0, 1.0]
    # What acts is the held graph in every path: the straight-through matrix and the gathered entries.
    assert torch.equal(graph(), graph.hard())
    index, _ = straight_through_senders(graph.logits, 1, 1.0, held=graph.held)
    assert index[0].tolist() == [0, 2]


def test_settle_replaces_several_senders_of_a_receiver_in_one_call() -> None:
    graph = CommGraph(5, GraphConfig(k=2, switch_margin=0.1)).double()
    assert graph.held is not None and graph.held[0].tolist() == [1, 2]
    with torch.no_grad():
        graph.logits[0] = torch.tensor([1.0, 0.2, 0.3, 2.0, 1.9], dtype=torch.float64)
    assert graph.settle() == 2
    assert graph.held[0].tolist() == [3, 4]
    assert graph.settle() == 0  # settled: nothing better by more than the margin


def test_without_a_margin_the_graph_is_the_plain_top_k_and_holds_no_state() -> None:
    graph = _random_graph(6, seed=3)
    assert graph.held is None and "held" not in graph.state_dict()
    assert graph.settle() == 0 and torch.equal(graph.hard(), hard_topk(graph.logits, graph.k))
    assert "held" in CommGraph(6, GraphConfig(switch_margin=0.01)).state_dict()  # saved and sent with the weights


def test_in_the_warm_up_every_receiver_hears_every_sender_and_every_logit_learns() -> None:
    """model.graph.warmup_fraction: the straight-through graph is all ones until ``end_warmup``, with the surrogate's
    gradient on every off-diagonal logit; then it is the plain top-k, as a graph without warm-up."""
    n = 5
    warm = CommGraph(n, GraphConfig(k=1, warmup_fraction=0.3)).double()
    plain = CommGraph(n, GraphConfig(k=1)).double()
    with torch.no_grad():
        logits = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        warm.logits.copy_(logits)
        plain.logits.copy_(logits)
    assert warm.hears_all and "hear_all" in warm.state_dict() and "hear_all" not in plain.state_dict()
    adjacency = warm()
    assert torch.equal(adjacency, torch.ones(n, n, dtype=torch.float64)) and torch.equal(warm.hard(), adjacency)
    assert torch.equal(warm.senders().weight, adjacency)
    upstream = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    (grad,) = torch.autograd.grad((adjacency * upstream).sum(), [warm.logits])
    # Naive reference: the surrogate softmax over every other sender, differentiated by hand.
    surrogate = torch.softmax(logits.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf")), dim=-1)
    off = upstream.masked_fill(torch.eye(n, dtype=torch.bool), 0.0)
    expected = surrogate * (off - (surrogate * off).sum(-1, keepdim=True))
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)
    assert (grad + torch.eye(n, dtype=torch.float64)).abs().min() > 0  # every sender's logit moves
    warm.end_warmup()
    assert not warm.hears_all and bool(warm.state_dict()["hear_all"]) is False
    assert torch.equal(warm(), plain()) and torch.equal(warm.hard(), hard_topk(logits, 1))


def test_a_warm_up_needs_the_dense_layout() -> None:
    n = 16 * 2
    assert gathers(n, 1)
    with pytest.raises(ValueError, match=r"model\.graph\.warmup_fraction=0\.1 needs the dense layout"):
        CommGraph(n, GraphConfig(k=1, warmup_fraction=0.1))
    with pytest.raises(ConfigError, match=r"a team of 32 with k=1 senders is gathered"):  # the driver's check
        team_senders(n, GraphConfig(k=1, warmup_fraction=0.1))
    assert team_senders(n // 2, GraphConfig(k=1, warmup_fraction=0.1)) == 1  # N = 16 is dense
