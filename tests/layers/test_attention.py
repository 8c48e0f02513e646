"""GraphAttention and CommBlock: shapes, naive reference (outputs and gradients), masking, equivariance, and the
gathered layout (each receiver's listed senders only) against the dense one and the naive reference."""

from __future__ import annotations

import pytest
import torch

from commformer.config import GraphConfig
from commformer.gates import gate_adjacency, gate_senders
from commformer.graph import CommGraph, straight_through_senders, straight_through_topk
from commformer.layers import CommBlock, GraphAttention
from commformer.layers.attention import PROBE_CAP, Senders, masked_weights
from tests.layers.naive_reference import naive_comm_block, naive_graph_attention


def _random_adjacency(batch: int, n: int, seed: int) -> torch.Tensor:
    """(B, N, N) random 0/1 adjacency with self-loops."""
    gen = torch.Generator().manual_seed(seed)
    adjacency = (torch.rand(batch, n, n, generator=gen) < 0.5).double()
    return torch.maximum(adjacency, torch.eye(n))


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial parameters (LayerNorm affine and relation embeddings are otherwise near-identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("shared_graph", [True, False])
def test_shapes(batch: int, n: int, heads: int, shared_graph: bool) -> None:
    attn = GraphAttention(8, heads)
    adjacency = _random_adjacency(batch, n, seed=n)
    out = attn(torch.randn(batch, n, 8), adjacency[0] if shared_graph else adjacency)
    assert out.shape == (batch, n, 8)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("n", [1, 3, 5])
@pytest.mark.parametrize("heads", [1, 2])
def test_matches_naive_reference(n: int, heads: int) -> None:
    torch.manual_seed(n + heads)
    attn = GraphAttention(4, heads)
    _randomise(attn, seed=n)
    graph = CommGraph(n, GraphConfig(sparsity=0.5))
    with torch.no_grad():
        graph.logits.copy_(torch.randn(n, n))
    x = torch.randn(2, n, 4, requires_grad=True)
    upstream = torch.randn(2, n, 4)
    params = [x, graph.logits, *attn.parameters()]

    # A is the straight-through graph gated per sample: exercises both (N, N)-like rows and (B, N, N).
    adjacency = graph() * torch.ones(2, 1, 1)
    fast = attn(x, adjacency)
    grads_fast = torch.autograd.grad((fast * upstream).sum(), params, allow_unused=True)
    adjacency = graph() * torch.ones(2, 1, 1)
    naive = naive_graph_attention(attn, x, adjacency)
    grads_naive = torch.autograd.grad((naive * upstream).sum(), params, allow_unused=True)

    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-12)
    for param, g_fast, g_naive in zip(params, grads_fast, grads_naive, strict=True):
        if g_naive is None:  # e.g. the "other agent" edge embedding when N = 1
            assert g_fast is None or torch.equal(g_fast, torch.zeros_like(param))
            continue
        assert g_fast is not None
        torch.testing.assert_close(g_fast, g_naive, rtol=1e-9, atol=1e-11)
    if n > 2:
        assert grads_fast[1] is not None and grads_fast[1].abs().sum() > 0, "no gradient reached the graph"


def test_block_matches_naive_reference() -> None:
    torch.manual_seed(0)
    block = CommBlock(6, 3, 2)
    _randomise(block, seed=1)
    x = torch.randn(3, 4, 6, requires_grad=True)
    adjacency = _random_adjacency(3, 4, seed=2)
    upstream = torch.randn(3, 4, 6)
    params = [x, *block.parameters()]
    fast = block(x, adjacency)
    grads_fast = torch.autograd.grad((fast * upstream).sum(), params)
    naive = naive_comm_block(block, x, adjacency)
    grads_naive = torch.autograd.grad((naive * upstream).sum(), params)
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-12)
    for g_fast, g_naive in zip(grads_fast, grads_naive, strict=True):
        torch.testing.assert_close(g_fast, g_naive, rtol=1e-9, atol=1e-11)


def test_every_parameter_gets_a_finite_gradient() -> None:
    torch.manual_seed(0)
    block = CommBlock(8, 2, 2)
    adjacency = _random_adjacency(2, 5, seed=3)
    block(torch.randn(2, 5, 8), adjacency).square().sum().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_non_senders_have_no_influence() -> None:
    torch.manual_seed(0)
    attn = GraphAttention(8, 2)
    adjacency = _random_adjacency(1, 6, seed=4)
    x = torch.randn(1, 6, 8)
    out = attn(x, adjacency)
    for j in range(6):
        perturbed = x.clone()
        perturbed[0, j] += 10.0
        moved = (attn(perturbed, adjacency) - out).abs().sum(-1)[0] > 1e-9  # (N,) receivers that changed
        assert torch.equal(moved, adjacency[0, :, j] == 1), f"sender {j}"


def test_self_only_rows_ignore_everyone_else() -> None:
    attn = GraphAttention(8, 1)
    x = torch.randn(2, 4, 8)
    out = attn(x, torch.eye(4))
    torch.testing.assert_close(out, attn.out(attn.qkv(x)[..., 16:]))  # softmax over one sender = its value


def test_permutation_equivariance() -> None:
    torch.manual_seed(0)
    attn = GraphAttention(8, 2)
    _randomise(attn, seed=5)
    adjacency = _random_adjacency(2, 6, seed=6)
    x = torch.randn(2, 6, 8)
    perm = torch.randperm(6)
    out = attn(x, adjacency)
    out_perm = attn(x[:, perm], adjacency[:, perm][:, :, perm])
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-10, atol=1e-12)


def test_empty_row_stays_finite() -> None:
    # A row with no entry (not produced by our graph, which always keeps the self-loop) outputs out.bias.
    attn = GraphAttention(4, 1)
    adjacency = torch.eye(3)
    adjacency[1, 1] = 0.0
    out = attn(torch.randn(1, 3, 4), adjacency)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 1], attn.out.bias)


def test_rejects_bad_adjacency_shape() -> None:
    attn = GraphAttention(4, 1)
    with pytest.raises(ValueError, match=r"adjacency has shape \(3, 4, 4\); expected \(4, 4\) or \(2, 4, 4\)"):
        attn(torch.randn(2, 4, 4), torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="embed_dim=6 is not divisible by num_heads=4"):
        GraphAttention(6, 4)


def _gated_graphs(
    n: int, k: int, batch: int, seed: int, candidates: bool = False
) -> tuple[torch.Tensor, torch.Tensor, Senders]:
    """Graph logits (N, N) with gradient, and one gated graph in both layouts: ``(logits, dense (B, N, N),
    gathered)``, each built from the logits by its own functions. The dense one carries the surrogate's gradient on
    its kept entries only, as the gathered one can (on every entry with ``candidates``).

    The gates close some receivers (only their self-loop left) and some senders are dead, so most rows keep fewer
    than k + 1 entries; the entries are the straight-through graph's (the gradient path to the logits).
    """
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, n, generator=gen).requires_grad_()
    gate_open = (torch.rand(batch, n, generator=gen) < 0.7).double()
    alive = (torch.rand(batch, n, generator=gen) < 0.7).double()
    dense = gate_adjacency(straight_through_topk(logits, k, 1.0, candidates=candidates), gate_open, alive)
    gathered = gate_senders(Senders(*straight_through_senders(logits, k, 1.0)), gate_open, alive)
    kept = (dense != 0).sum(-1)  # (B, N)
    assert (kept == 1).any() and (kept == k + 1).any()  # closed or cut off; every sender heard
    assert k == 1 or ((kept > 1) & (kept < k + 1)).any()  # some senders dead
    return logits, dense, gathered


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize(("n", "k"), [(6, 2), (9, 3), (12, 1)])
def test_gathered_layout_matches_dense_and_naive(heads: int, n: int, k: int) -> None:
    torch.manual_seed(n + heads)
    attn = GraphAttention(8, heads)
    _randomise(attn, seed=n)
    logits, dense, gathered = _gated_graphs(n, k, batch=4, seed=n + k)
    x = torch.randn(4, n, 8, requires_grad=True)
    upstream = torch.randn(4, n, 8)
    params = [x, logits, *attn.parameters()]

    def grads(out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad((out * upstream).sum(), params, retain_graph=True)

    fast = attn(x, gathered)
    reference = attn(x, dense)
    naive = naive_graph_attention(attn, x, dense)
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-13)  # float64 rounding: ~1e-15 measured
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-12)
    for name, g_fast, g_dense, g_naive in zip(
        ["x", "logits", *dict(attn.named_parameters())], grads(fast), grads(reference), grads(naive), strict=True
    ):
        torch.testing.assert_close(g_fast, g_dense, rtol=1e-12, atol=1e-13, msg=lambda m, p=name: f"{p}: {m}")
        torch.testing.assert_close(g_fast, g_naive, rtol=1e-9, atol=1e-11, msg=lambda m, p=name: f"{p}: {m}")
    assert grads(fast)[1].abs().sum() > 0, "no gradient reached the graph logits"


@pytest.mark.parametrize(("n", "k"), [(6, 2), (12, 1)])
def test_the_dense_layout_assesses_the_senders_left_out(n: int, k: int) -> None:
    """With candidates, the dense layout's graph gradient is the naive renormalised attention's, every sender a
    receiver could hear included; it differs from the kept-only one (the gathered layout's) exactly there."""
    torch.manual_seed(n)
    attn = GraphAttention(8, 2)
    _randomise(attn, seed=n)
    logits, dense, _ = _gated_graphs(n, k, batch=4, seed=n + k, candidates=True)
    x = torch.randn(4, n, 8)
    upstream = torch.randn(4, n, 8)
    fast = attn(x, dense)
    (g_fast,) = torch.autograd.grad((fast * upstream).sum(), [logits], retain_graph=True)  # dense is read again
    (g_naive,) = torch.autograd.grad((naive_graph_attention(attn, x, dense) * upstream).sum(), [logits])
    torch.testing.assert_close(g_fast, g_naive, rtol=1e-9, atol=1e-11)
    same_logits, kept_only, _ = _gated_graphs(n, k, batch=4, seed=n + k)
    (g_kept,) = torch.autograd.grad((attn(x, kept_only) * upstream).sum(), [same_logits])
    assert torch.equal(attn(x, kept_only), fast)  # the same forward
    assert (g_fast - g_kept).abs().max() > 1e-3  # the candidates' own gradients


def test_a_candidates_gradient_is_the_slope_of_mixing_in_its_message() -> None:
    """Hand check of ``masked_weights``: the gradient at an entry left out (edge 0) equals the finite-difference slope
    of the output as that entry grows from 0 (the row renormalised), and kept entries' slopes likewise."""
    torch.manual_seed(3)
    scores = torch.randn(2, 1, 4, 4)
    values = torch.randn(2, 1, 4, 3)
    upstream = torch.randn(2, 1, 4, 3)
    edge = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1]]).requires_grad_()

    def loss(e: torch.Tensor) -> torch.Tensor:
        return ((masked_weights(scores, e) @ values) * upstream).sum()

    # A candidate's score counts at most PROBE_CAP above the best kept one of its row.
    best = scores.masked_fill(edge.detach() == 0, -torch.inf).amax(-1, keepdim=True)
    capped = torch.minimum(scores, best + PROBE_CAP).exp()

    def soft_loss(e: torch.Tensor) -> torch.Tensor:  # the renormalised attention, written out
        weights = e * capped / (e * capped).sum(-1, keepdim=True)
        return ((weights @ values) * upstream).sum()

    (grad,) = torch.autograd.grad(loss(edge), [edge])
    eps = 1e-3
    for i in range(4):
        for j in range(4):
            bumped = edge.detach().clone()
            bumped[i, j] += eps
            slope = (soft_loss(bumped) - soft_loss(edge.detach())) / eps
            torch.testing.assert_close(grad[i, j], slope, rtol=2e-2, atol=2e-3)
    assert grad[edge == 0].abs().min() > 0  # every sender left out is assessed
    with torch.no_grad():  # the forward value is the masked softmax, unchanged
        expected = torch.softmax(scores.masked_fill(edge == 0, -torch.inf), -1)
        torch.testing.assert_close(masked_weights(scores, edge), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("held_product", [False, True])
@pytest.mark.parametrize("edge_shape", [(5, 5), (3, 1, 5, 5), (3, 2, 5, 5), (1, 2, 1, 5)])
def test_masked_weights_backward_equals_autograd_of_the_written_out_form(
    edge_shape: tuple[int, ...], held_product: bool
) -> None:
    """The hand-written backward against autograd through the formula, for every way ``edge`` broadcasts against
    the (B, H, N, N) scores: the scores' gradient is the masked softmax's, the edge's the renormalised weights'
    (plus, with ``held_product``, the plain product's: ``softmax * edge`` differentiated in ``edge``)."""
    torch.manual_seed(len(edge_shape) + edge_shape[0])
    scores = torch.randn(3, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    hard = (torch.rand(edge_shape) < 0.5).double()
    hard[..., 0] = 1.0  # every row keeps a sender (a row that keeps none is checked below)
    if edge_shape[0] == 3:
        hard[0, ..., 1, :] = 0.0  # ... but this one
    edge = hard.clone().requires_grad_()
    weights = masked_weights(scores, edge, held_product)
    g_scores, g_edge = torch.autograd.grad((weights * upstream).sum(), [scores, edge])

    reference_scores = scores.detach().clone().requires_grad_()
    reference_edge = hard.clone().requires_grad_()
    masked = reference_scores.masked_fill(hard == 0, torch.finfo(torch.float64).min)
    # A row that keeps no entry has placeholder uniform weights forward, and no product term.
    keeps = hard.amax(-1, keepdim=True) > 0
    plain = torch.softmax(masked, -1) * (torch.where(keeps, reference_edge, hard) if held_product else hard)
    logits = reference_scores.detach()
    best = logits.masked_fill(hard == 0, -torch.inf).amax(-1, keepdim=True)
    best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
    weighted = reference_edge * torch.minimum(logits, best + PROBE_CAP).sub(best).exp()
    total = weighted.sum(-1, keepdim=True)
    renormalised = weighted / torch.where(total > 0, total, torch.ones_like(total))
    written = plain + renormalised - renormalised.detach()
    r_scores, r_edge = torch.autograd.grad((written * upstream).sum(), [reference_scores, reference_edge])
    torch.testing.assert_close(g_scores, r_scores, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_edge, r_edge, rtol=1e-12, atol=1e-14)
    assert g_edge.shape == edge.shape and g_edge.abs().max() > 1e-3


def test_gathered_layout_with_a_shared_graph_and_any_column_order() -> None:
    torch.manual_seed(0)
    attn = GraphAttention(8, 2)
    _randomise(attn, seed=1)
    n, k = 10, 3
    logits = torch.randn(n, n).requires_grad_()
    index, entries = straight_through_senders(logits, k, 1.0)  # (N, K): one graph for the whole batch
    x = torch.randn(3, n, 8)
    out = attn(x, Senders(index, entries))
    torch.testing.assert_close(out, attn(x, straight_through_topk(logits, k, 1.0)), rtol=1e-12, atol=1e-12)
    # The listed order is not part of the result: any permutation of each row's columns gives the same output.
    order = torch.rand(n, k + 1).argsort(-1)
    shuffled = Senders(index.gather(1, order), entries.gather(1, order))
    torch.testing.assert_close(attn(x, shuffled), out, rtol=1e-12, atol=1e-12)


def test_block_gathered_matches_dense() -> None:
    torch.manual_seed(0)
    block = CommBlock(6, 3, 2)
    _randomise(block, seed=1)
    logits, dense, gathered = _gated_graphs(8, 2, batch=3, seed=2)
    x = torch.randn(3, 8, 6, requires_grad=True)
    upstream = torch.randn(3, 8, 6)
    params = [x, logits, *block.parameters()]
    fast = block(x, gathered)
    reference = naive_comm_block(block, x, dense)
    torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-12)
    grads_fast = torch.autograd.grad((fast * upstream).sum(), params)
    grads_naive = torch.autograd.grad((reference * upstream).sum(), params)
    for g_fast, g_naive in zip(grads_fast, grads_naive, strict=True):
        torch.testing.assert_close(g_fast, g_naive, rtol=1e-9, atol=1e-11)


def test_rejects_bad_gathered_entries_shape() -> None:
    attn = GraphAttention(4, 1)
    index = torch.zeros(4, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"adjacency has shape \(2, 4, 3\); expected \(4, 2\) or \(2, 4, 2\)"):
        attn(torch.randn(2, 4, 4), Senders(index, torch.ones(2, 4, 3)))


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("held_product", [False, True])
def test_receiver_rows_equal_the_blocks_rows_with_their_gradients(heads: int, held_product: bool) -> None:
    """``CommBlock.receiver_rows``: one receiver's row of the block per team, against the full block's row, in value
    and in the gradients to the inputs, the parameters and the entries (the graph's path); a control: another row
    differs."""
    torch.manual_seed(0)
    block = CommBlock(6, heads, 2)
    _randomise(block, seed=3)
    r, n = 5, 4
    x = torch.randn(r, n, 6, requires_grad=True)
    adjacency = _random_adjacency(r, n, seed=4).requires_grad_(True)
    receivers = torch.tensor([0, 3, 1, 1, 2])
    picked = torch.arange(r)
    upstream = torch.randn(r, 6)
    params = [x, adjacency, *block.parameters()]
    full = block(x, Senders(None, adjacency, held_product=held_product))[picked, receivers]  # (R, d)
    grads_full = torch.autograd.grad((full * upstream).sum(), params)
    edges = adjacency[picked, receivers]  # (R, N), the same leaf: gradient to the receivers' rows only
    rows = block.receiver_rows(x, picked, receivers, edges, held_product)
    grads_rows = torch.autograd.grad((rows * upstream).sum(), params)
    torch.testing.assert_close(rows, full, rtol=1e-10, atol=1e-12)
    for g_rows, g_full in zip(grads_rows, grads_full, strict=True):
        torch.testing.assert_close(g_rows, g_full, rtol=1e-9, atol=1e-11)
    assert grads_rows[1].abs().sum() > 0  # the entries' (graph's) gradient is there and equal
    other = block.receiver_rows(x, picked, (receivers + 1) % n, adjacency[picked, (receivers + 1) % n], held_product)
    assert not torch.allclose(other, rows)
    # Two receivers of one team share its keys and values: teams (0, 0, 2) against the full block's rows.
    team, pair = torch.tensor([0, 0, 2]), torch.tensor([1, 3, 0])
    shared = block.receiver_rows(x[:3], team, pair, adjacency[team, pair], held_product)
    torch.testing.assert_close(shared, block(x, Senders(None, adjacency, held_product=held_product))[team, pair])
