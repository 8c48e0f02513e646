"""ActionDecoder: the naive reference (outputs and gradients), causality, graph cuts, and acting = teacher forcing."""

from __future__ import annotations

import pytest
import torch

from commformer.config import GraphConfig
from commformer.graph import CommGraph
from commformer.layers.decoder import ActionDecoder, decoder_masks
from tests.layers.naive_reference import naive_action_decoder

D, A = 8, 4


def _decoder(blocks: int = 1, heads: int = 2, seed: int = 0) -> ActionDecoder:
    """A float64 decoder with non-trivial parameters (LayerNorm affine and biases are otherwise near-identity)."""
    torch.manual_seed(seed)
    decoder = ActionDecoder(D, A, blocks, heads, mlp_ratio=2, activation="gelu").double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in decoder.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64) * 0.5)
    return decoder


def _adjacency(batch: int, n: int, seed: int) -> torch.Tensor:
    """(B, N, N) random 0/1 adjacency with self-loops, float64."""
    gen = torch.Generator().manual_seed(seed)
    adjacency = (torch.rand(batch, n, n, generator=gen) < 0.5).double()
    return torch.maximum(adjacency, torch.eye(n, dtype=torch.float64))


def _inputs(batch: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n, D, generator=gen, dtype=torch.float64)
    actions = torch.randint(0, A, (batch, n), generator=gen)
    return features, actions


@pytest.mark.parametrize("n", [1, 3, 5])
@pytest.mark.parametrize(("blocks", "heads"), [(1, 1), (1, 2), (2, 2)])
def test_matches_naive_reference_outputs_and_gradients(n: int, blocks: int, heads: int) -> None:
    decoder = _decoder(blocks, heads, seed=n)
    graph = CommGraph(n, GraphConfig(sparsity=0.5)).double()
    with torch.no_grad():
        graph.logits.copy_(torch.randn(n, n, dtype=torch.float64))
    features, actions = _inputs(2, n, seed=n)
    features.requires_grad_(True)
    gates = torch.tensor([[1.0] * n, [float(i % 2) for i in range(n)]], dtype=torch.float64)  # (2, N)
    params = [features, graph.logits, *decoder.parameters()]
    upstream = torch.randn(2, n, D, dtype=torch.float64)

    def adjacency() -> torch.Tensor:  # straight-through graph; a closed receiver keeps only its self-loop
        eye = torch.eye(n, dtype=torch.float64)
        return graph() * gates.unsqueeze(-1) + eye * (1 - gates.unsqueeze(-1))

    fast = decoder(features, adjacency(), actions)
    grads_fast = torch.autograd.grad((fast * upstream).sum(), params, allow_unused=True)
    naive = naive_action_decoder(decoder, features, adjacency(), actions)
    grads_naive = torch.autograd.grad((naive * upstream).sum(), params, allow_unused=True)

    torch.testing.assert_close(fast, naive)
    for got, want in zip(grads_fast, grads_naive, strict=True):
        if want is None:
            assert got is None or not got.any()
        else:
            assert got is not None
            torch.testing.assert_close(got, want)
    if n > 1:
        assert grads_fast[1] is not None and grads_fast[1].abs().sum() > 0  # the graph learns through the decoder


@pytest.mark.parametrize("n", [2, 4, 6])
def test_agent_i_depends_on_no_action_of_its_own_or_later(n: int) -> None:
    decoder = _decoder(blocks=2, seed=1)
    features, actions = _inputs(3, n, seed=2)
    adjacency = torch.ones(3, n, n, dtype=torch.float64)  # everyone hears everyone: the causal cut is the only one
    out = decoder(features, adjacency, actions)
    for i in range(n):
        changed = actions.clone()
        changed[:, i:] = (changed[:, i:] + 1) % A
        again = decoder(features, adjacency, changed)
        assert torch.equal(again[:, : i + 1], out[:, : i + 1])  # rows 0..i read nothing of a_i, a_i+1, ...
        if i > 0:
            assert not torch.allclose(again[:, i + 1 :], out[:, i + 1 :]) or i + 1 == n  # later agents do read a_i


def test_graph_and_gates_cut_exactly_the_actions_they_say() -> None:
    n = 4
    decoder = _decoder(blocks=1, seed=3)
    features, actions = _inputs(2, n, seed=4)
    adjacency = torch.eye(n, dtype=torch.float64).expand(2, n, n).clone()
    adjacency[:, 3, 1] = 1.0  # agent 3 hears agent 1 only
    out = decoder(features, adjacency, actions)

    changed = actions.clone()
    changed[:, 0] = (changed[:, 0] + 1) % A
    changed[:, 2] = (changed[:, 2] + 1) % A
    assert torch.equal(decoder(features, adjacency, changed), out)  # nobody hears agents 0 or 2

    changed = actions.clone()
    changed[:, 1] = (changed[:, 1] + 1) % A
    moved = (decoder(features, adjacency, changed) - out).abs().amax(-1)  # (B, N)
    assert (moved[:, :3] == 0).all() and (moved[:, 3] > 0).all()  # only agent 3 reads a_1


def test_masks_match_the_rule_in_words() -> None:
    adjacency = _adjacency(1, 5, seed=5)
    tokens, agents = decoder_masks(adjacency)
    for i in range(5):
        want = [1.0] + [float(adjacency[0, i, q - 1]) if q - 1 < i else 0.0 for q in range(1, 5)]
        assert agents[0, i].tolist() == want
    assert tokens[0, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    for q in range(1, 5):
        want = agents[0, q - 1].clone()
        want[q] = 1.0
        assert torch.equal(tokens[0, q], want)


@pytest.mark.parametrize("n", [1, 3, 8])
def test_decode_gives_exactly_the_teacher_forced_logits(n: int) -> None:
    decoder = _decoder(blocks=2, seed=6).float()
    head = torch.nn.Linear(D, A, dtype=torch.float32)
    gen = torch.Generator().manual_seed(7)
    features = torch.randn(5, n, D, generator=gen, dtype=torch.float32)
    adjacency = _adjacency(5, n, seed=8).float()
    mask = torch.rand(5, n, A, generator=gen) < 0.7
    mask[..., 0] = True

    def logits_of(z: torch.Tensor) -> torch.Tensor:
        return head(z).masked_fill(~mask, torch.finfo(z.dtype).min)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Categorical(logits=logits).sample()

    with torch.no_grad():
        actions, logits = decoder.decode(features, adjacency, logits_of, pick)
        replay = logits_of(decoder(features, adjacency, actions))
    assert torch.equal(logits, replay)
    assert mask.gather(-1, actions.unsqueeze(-1)).all()  # a draw from masked logits never takes a masked action


def test_bad_shapes_are_refused() -> None:
    decoder = _decoder()
    features, actions = _inputs(2, 3, seed=9)
    with pytest.raises(ValueError, match=r"actions has shape \(2, 2\); expected \(2, 3\)"):
        decoder(features, torch.ones(2, 3, 3, dtype=torch.float64), actions[:, :2])
    with pytest.raises(ValueError, match=r"adjacency has shape \(3, 3\); expected \(2, 3, 3\)"):
        decoder(features, torch.ones(3, 3, dtype=torch.float64), actions)
