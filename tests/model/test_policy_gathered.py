"""CommFormerPolicy on a graph attended in the gathered layout (a team of 48, two senders each): the same outputs and
gradients as the same policy in the dense layout, a layout that does not depend on the batch, acting equal to the
learner's recomputation bit for bit, and the parts that read the adjacency (gates, dead agents, the critic's greedy
rerun, early exits, the decoder)."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch

from commformer.config import EarlyExitConfig, GateConfig, GraphConfig, ModelConfig
from commformer.layers.attention import gathers
from commformer.policy import CommFormerPolicy, PolicyOutput

N, D, A, S, K = 48, 5, 4, 6, 2
CONFIG = ModelConfig(
    embed_dim=8,
    num_heads=2,
    num_blocks=2,
    mlp_ratio=2,
    graph=GraphConfig(k=K, probes=0),
    gates=GateConfig(init_bias=0.0),
)
"""Without probes: the graph logits learn from the held senders only, in both layouts (the dense copy keeps
``candidates=False``)."""


def _pair(config: ModelConfig = CONFIG) -> tuple[CommFormerPolicy, CommFormerPolicy]:
    """(gathered, dense): one policy with random graph logits and gates that depend on the agent, and a copy of it
    told to attend in the dense layout (its graph assessing the senders left out only if the gathered one probes
    them)."""
    assert gathers(N, K)
    torch.manual_seed(0)
    policy = CommFormerPolicy(config, n_agents=N, obs_dim=D, n_actions=A, state_dim=S)
    with torch.no_grad():
        policy.trunk.graph.logits.normal_()
        if policy.trunk.gate is not None:
            policy.trunk.gate.proj.weight.normal_()  # gates near p = 0.5 that differ by agent
        for param in policy.policy_head.parameters():
            param.normal_(0.0, 0.5)
    dense = copy.deepcopy(policy)
    dense.trunk.graph.gathered = False
    dense.trunk.graph.candidates = policy.trunk.graph.probes > 0
    return policy, dense


def _inputs(batch: tuple[int, ...], seed: int = 0, alive_p: float = 0.7) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(*batch, N, D, generator=gen)
    mask = (torch.rand(*batch, N, A, generator=gen) < 0.7).double()
    mask[..., 0] = 1.0
    alive = (torch.rand(*batch, N, generator=gen) < alive_p).double()
    return obs, mask, alive, torch.randn(*batch, S, generator=gen)


def _loss(out: PolicyOutput) -> torch.Tensor:
    """Every output the learner differentiates: log-probs, values, the gates' log-probs and cost."""
    assert out.gate_logit is not None
    gate = torch.nn.functional.logsigmoid(out.gate_logit).sum()
    return torch.log_softmax(out.logits, -1)[..., 0].sum() + out.values.square().sum() + gate + out.comm_cost


@pytest.mark.parametrize("gumbel", [False, True])
def test_gathered_policy_equals_the_dense_one_outputs_and_gradients(gumbel: bool) -> None:
    gathered, dense = _pair()
    obs, mask, alive, state = _inputs((6,))
    gate_open = gathered.act(obs, mask, alive, sample_gates=True).gate_open  # sampled: some differ from greedy
    outs, grads = [], []
    for policy in (gathered, dense):
        torch.manual_seed(5)  # the same Gumbel noise for both
        out = policy(obs, mask, alive, state, gate_open=gate_open, gumbel=gumbel, greedy_values=True)
        outs.append(out)
        grads.append(torch.autograd.grad(_loss(out), list(policy.parameters())))
    assert outs[0].senders.index is not None and outs[0].senders.weight.shape == (6, N, K + 1)
    assert outs[1].senders.index is None
    closed = gate_open == 0
    assert closed.any() and (~closed).any() and (alive == 0).any()
    assert torch.equal(outs[0].adjacency, outs[1].adjacency)  # exactly 0/1, the same entries
    assert torch.equal(outs[0].messages, outs[1].messages)
    for field in ("logits", "values", "gate_prob", "comm_cost"):
        torch.testing.assert_close(getattr(outs[0], field), getattr(outs[1], field), rtol=1e-12, atol=1e-13)
    names = [name for name, _ in gathered.named_parameters()]
    for name, g_gathered, g_dense in zip(names, *grads, strict=True):
        torch.testing.assert_close(g_gathered, g_dense, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")
    graph_grad = grads[0][names.index("trunk.graph.logits")]
    assert graph_grad.abs().sum() > 0, "no gradient reached the graph logits"


@pytest.mark.parametrize("held_product", [False, True])
def test_probing_every_sender_left_out_gives_the_dense_layouts_graph_gradient(held_product: bool) -> None:
    """With as many probes as senders left out (N - 1 - K, so the sample is all of them and the scale 1), the
    gathered layout's exactly-zero assessment terms give every parameter, the graph logits included, the gradient of
    the dense layout, where ``masked_weights`` assesses every sender; with ``model.graph.held_product`` too."""
    config = dataclasses.replace(CONFIG, graph=GraphConfig(k=K, probes=N - 1 - K, held_product=held_product))
    gathered, dense = _pair(config)
    assert gathered.trunk.graph.probes == N - 1 - K and dense.trunk.graph.candidates
    obs, mask, alive, state = _inputs((5,), seed=7)
    gate_open = gathered.act(obs, mask, alive, sample_gates=True).gate_open
    outs = [p(obs, mask, alive, state, gate_open=gate_open) for p in (gathered, dense)]
    grads = [torch.autograd.grad(_loss(o), list(p.parameters())) for o, p in zip(outs, (gathered, dense), strict=True)]
    assert outs[0].senders.probes is not None
    torch.testing.assert_close(outs[0].logits, outs[1].logits, rtol=1e-12, atol=1e-13)
    names = [name for name, _ in gathered.named_parameters()]
    for name, g_gathered, g_dense in zip(names, *grads, strict=True):
        torch.testing.assert_close(g_gathered, g_dense, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")
    # The senders left out do carry gradient (not all of it through the held ones).
    kept_only = _pair()[0]
    (held,) = torch.autograd.grad(
        _loss(kept_only(obs, mask, alive, state, gate_open=gate_open)), [kept_only.trunk.graph.logits]
    )
    logits_grad = grads[0][names.index("trunk.graph.logits")]
    assert (logits_grad - held).abs().max() > 1e-3
    if held_product:  # the key reaches the gradient: the held senders' product term is there
        plain = _pair(dataclasses.replace(CONFIG, graph=GraphConfig(k=K, probes=N - 1 - K)))[1]
        (without,) = torch.autograd.grad(
            _loss(plain(obs, mask, alive, state, gate_open=gate_open)), [plain.trunk.graph.logits]
        )
        assert (logits_grad - without).abs().max() > 1e-3


def test_probes_are_drawn_per_forward_among_the_senders_left_out_and_change_no_output() -> None:
    config = dataclasses.replace(CONFIG, graph=GraphConfig(k=K, probes=3))
    policy = _pair(config)[0]
    graph = policy.trunk.graph
    draws = [graph.senders().probes for _ in range(4)]
    kept = graph.senders().index
    assert kept is not None
    for probes in draws:
        assert probes is not None and probes.index is not None and probes.index.shape == (N, 3)
        assert torch.equal(probes.weight, torch.zeros(N, 3, dtype=probes.weight.dtype))  # exactly 0 forward
        for i in range(N):  # distinct, never held, never the receiver itself
            row = set(probes.index[i].tolist())
            assert len(row) == 3 and not row & set(kept[i].tolist())
    assert any(not torch.equal(a.index, b.index) for a, b in itertools.pairwise(draws))  # drawn afresh
    with torch.no_grad():
        assert graph.senders().probes is None  # acting draws none
    obs, mask, alive, state = _inputs((4,), seed=8)
    acted = policy.act(obs, mask, alive)
    assert torch.equal(policy(obs, mask, alive, state, gate_open=acted.gate_open).logits, acted.logits)


def test_the_layout_does_not_depend_on_the_batch_and_acting_equals_the_recomputation_bit_for_bit() -> None:
    policy = _pair(dataclasses.replace(CONFIG, graph=GraphConfig(k=K)))[0].float()  # with the default probes
    indexes = []
    for batch in [(1,), (7,), (3, 4)]:
        obs, mask, alive, state = (t.float() for t in _inputs(batch, seed=len(batch)))
        acted = policy.act(obs, mask, alive, sample_gates=True)
        replay = policy(obs, mask, alive, state, gate_open=acted.gate_open, gumbel=True)  # the learner's forward
        assert torch.equal(replay.logits, acted.logits)
        assert replay.senders.index is not None
        indexes.append(replay.senders.index)
    assert all(torch.equal(index, indexes[0]) for index in indexes)


def test_early_exits_on_a_gathered_graph_equal_the_dense_layout() -> None:
    config = dataclasses.replace(CONFIG, early_exit=EarlyExitConfig(enabled=True))
    gathered, dense = _pair(config)
    assert gathered.exits is not None and dense.exits is not None
    with torch.no_grad():  # gates that react to the features, so teams exit at different depths
        for policy in (gathered, dense):
            assert policy.exits is not None
            for layer, gate in enumerate(policy.exits.gates):
                gate.weight.zero_()
                gate.weight[0, 0] = 8.0
                gate.bias.fill_(-8.0 * 0.3 + layer * 0.4)
    obs, mask, alive, state = _inputs((32,), seed=3, alive_p=0.05)
    alive[:, 0] = 1.0  # every team has someone alive
    acted = [policy.act(obs, mask, alive) for policy in (gathered, dense)]
    assert len(set(acted[0].depth.tolist())) >= 2, acted[0].depth.tolist()  # some teams leave the batch early
    assert torch.equal(acted[0].depth, acted[1].depth)
    torch.testing.assert_close(acted[0].logits, acted[1].logits, rtol=1e-12, atol=1e-13)
    replay = gathered(obs, mask, alive, state, exit_depth=acted[0].depth)
    torch.testing.assert_close(replay.logits, acted[0].logits, rtol=0, atol=1e-12)


def test_the_decoder_on_a_gathered_graph_equals_the_dense_layout() -> None:
    config = dataclasses.replace(CONFIG, decoder="autoregressive", decoder_blocks=1)
    gathered, dense = _pair(config)
    obs, mask, alive, state = _inputs((3,), seed=4)
    acted = gathered.act(obs, mask, alive, sample_gates=True, sample_actions=True)
    assert acted.actions is not None
    replay = gathered(obs, mask, alive, state, gate_open=acted.gate_open, actions=acted.actions)
    assert torch.equal(replay.logits, acted.logits)  # the PPO ratio is exactly 1 before the first update
    outs = [p(obs, mask, alive, state, gate_open=acted.gate_open, actions=acted.actions) for p in (gathered, dense)]
    grads = [
        torch.autograd.grad(_loss(out), list(p.parameters())) for out, p in zip(outs, (gathered, dense), strict=True)
    ]
    torch.testing.assert_close(outs[0].logits, outs[1].logits, rtol=1e-12, atol=1e-13)
    for g_gathered, g_dense in zip(*grads, strict=True):
        torch.testing.assert_close(g_gathered, g_dense, rtol=1e-10, atol=1e-12)
