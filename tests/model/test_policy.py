"""CommFormerPolicy: shapes over a grid, gradients, gates, dead agents, masks, equivariance, determinism."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from commformer.config import GateConfig, GraphConfig, ModelConfig
from commformer.export import load_policy, save_policy
from commformer.policy import CommFormerPolicy, PolicyOutput

D, A, S = 5, 4, 6
SMALL = ModelConfig(embed_dim=8, num_heads=2, num_blocks=2, mlp_ratio=2)


def _inputs(
    batch: tuple[int, ...], n: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """obs (*B, N, D), action_mask (*B, N, A) with action 0 always available, alive (*B, N), state (*B, S)."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(*batch, n, D, generator=gen)
    mask = (torch.rand(*batch, n, A, generator=gen) < 0.6).double()
    mask[..., 0] = 1.0
    alive = (torch.rand(*batch, n, generator=gen) < 0.8).double()
    state = torch.randn(*batch, S, generator=gen)
    return obs, mask, alive, state


def _policy(n: int, config: ModelConfig = SMALL, state: bool = True, seed: int = 0) -> CommFormerPolicy:
    torch.manual_seed(seed)
    return CommFormerPolicy(config, n_agents=n, obs_dim=D, n_actions=A, state_dim=S if state else None)


def _loss(out: PolicyOutput, mask: torch.Tensor | None) -> torch.Tensor:
    """A PPO-like scalar: log-prob of the first available action + value regression + communication cost."""
    log_probs = torch.log_softmax(out.logits, dim=-1)[..., 0]
    if mask is not None:
        log_probs = log_probs * mask[..., 0]
    return -log_probs.sum() + out.values.square().sum() + out.comm_cost


@pytest.mark.parametrize("batch", [(), (2,), (3, 2)])
@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize(("use_mask", "use_alive", "use_state"), list(itertools.product([False, True], repeat=3)))
def test_shapes(batch: tuple[int, ...], n: int, use_mask: bool, use_alive: bool, use_state: bool) -> None:
    policy = _policy(n, state=use_state)
    obs, mask, alive, state = _inputs(batch, n)
    out = policy(
        obs,
        action_mask=mask if use_mask else None,
        alive=alive if use_alive else None,
        state=state if use_state else None,
    )
    assert out.logits.shape == (*batch, n, A)
    assert out.values.shape == (*batch, n)
    assert out.adjacency.shape == (*batch, n, n)
    assert out.gate_open.shape == out.gate_prob.shape == (*batch, n)
    assert out.comm_cost.shape == ()
    assert out.messages.shape == batch
    assert set(out.adjacency.unique().tolist()) <= {0.0, 1.0}
    assert set(out.gate_open.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out.adjacency.diagonal(dim1=-2, dim2=-1), torch.ones(*batch, n))
    for value in (out.logits, out.values, out.comm_cost, out.messages):
        assert torch.isfinite(value).all()


def test_empty_batch() -> None:
    policy = _policy(3)
    obs, mask, alive, state = _inputs((0, 2), 3)
    out = policy(obs, mask, alive, state)
    assert out.logits.shape == (0, 2, 3, A) and out.messages.shape == (0, 2)
    assert out.comm_cost.item() == 0.0


@pytest.mark.parametrize("n", [1, 2, 3, 8])
@pytest.mark.parametrize("gates", [True, False])
def test_every_parameter_gets_a_finite_gradient(n: int, gates: bool) -> None:
    config = ModelConfig(embed_dim=8, num_heads=2, num_blocks=2, gates=GateConfig(enabled=gates))
    policy = _policy(n, config)
    obs, mask, alive, state = _inputs((4,), n, seed=n)
    _loss(policy(obs, mask, alive, state), mask).backward()
    for name, param in policy.named_parameters():
        if n == 1 and name == "trunk.graph.logits":
            assert param.grad is None  # a lone agent's graph is the constant [[1]]
            continue
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    logits_grad = policy.trunk.graph.logits.grad
    if n > 2:
        assert logits_grad is not None and logits_grad.abs().sum() > 0, "the ST path did not reach the graph"


def test_graph_and_model_parameters_partition_parameters() -> None:
    policy = _policy(4)
    graph, model = policy.graph_parameters(), policy.model_parameters()
    assert graph == [policy.trunk.graph.logits]
    ids = [id(p) for p in graph + model]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in policy.parameters()}


def test_closed_gates_leave_only_self_loops() -> None:
    policy = _policy(4)
    with torch.no_grad():
        policy.trunk.gate.proj.bias.fill_(-5.0)  # type: ignore[union-attr]
    obs, mask, _, state = _inputs((3,), 4)
    out = policy(obs, mask, None, state)
    assert torch.equal(out.gate_open, torch.zeros(3, 4))
    assert torch.equal(out.adjacency, torch.eye(4).expand(3, 4, 4))
    assert torch.equal(out.messages, torch.zeros(3))
    # With every gate closed an agent's action logits depend on its own observation only.
    perturbed = obs.clone()
    perturbed[:, 1:] += 3.0
    torch.testing.assert_close(policy(perturbed, mask, None, state).logits[:, 0], out.logits[:, 0])


def test_dead_senders_send_nothing() -> None:
    config = ModelConfig(embed_dim=8, graph=GraphConfig(k=3))  # dense graph over 4 agents
    policy = _policy(4, config, state=False)
    obs = torch.randn(2, 4, D)
    alive = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    out = policy(obs, alive=alive)
    assert torch.equal(out.adjacency[0, :, 1], torch.eye(4)[:, 1])
    assert torch.equal(out.adjacency[1], torch.ones(4, 4))
    # Edges into the dead agent do not count as messages; edges out of it do not exist.
    assert torch.equal(out.messages, torch.tensor([6.0, 12.0]))
    perturbed = obs.clone()
    perturbed[0, 1] += 3.0
    moved = policy(perturbed, alive=alive).logits[0] - out.logits[0]
    assert torch.equal(moved[[0, 2, 3]], torch.zeros(3, A)), "a dead agent's observation reached the others"


def test_gates_disabled() -> None:
    policy = _policy(3, ModelConfig(embed_dim=8, gates=GateConfig(enabled=False)))
    assert policy.trunk.gate is None
    obs, mask, alive, state = _inputs((2,), 3)
    out = policy(obs, mask, alive, state)
    assert torch.equal(out.gate_open, torch.ones(2, 3))
    assert out.comm_cost.item() == 0.0


def test_masked_actions_get_zero_probability() -> None:
    policy = _policy(3)
    with torch.no_grad():
        for param in policy.policy_head.parameters():
            param.mul_(100.0)  # large logits: masking must still win
    obs, mask, alive, state = _inputs((5,), 3)
    mask[0, 0] = 0.0  # agent 0 of sample 0 has nothing available: its row must stay finite
    probs = torch.softmax(policy(obs, mask, alive, state).logits, dim=-1)  # (5, 3, A)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs[0, 0], torch.full((A,), 1.0 / A))
    masked = mask == 0
    masked[0, 0] = False
    assert masked.any() and (probs[masked] < 1e-30).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, 3))


def test_permutation_equivariance() -> None:
    n = 6
    config = ModelConfig(embed_dim=8, num_heads=2, agent_embedding=False, graph=GraphConfig(k=2))
    policy = _policy(n, config)
    gate = policy.trunk.gate
    assert gate is not None
    obs, mask, alive, state = _inputs((3,), n, seed=1)
    with torch.no_grad():
        policy.trunk.graph.logits.copy_(torch.randn(n, n))
        gate.proj.weight.normal_()
        # Put the threshold between the two middle gate logits: half the gates open, half closed.
        gate_logits = torch.logit(policy(obs, mask, alive, state).gate_prob).flatten().sort().values
        gate.proj.bias.sub_(gate_logits[8:10].mean())
    out = policy(obs, mask, alive, state)
    assert out.gate_open.sum() == 9

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        policy.trunk.graph.logits.copy_(policy.trunk.graph.logits[perm][:, perm])  # P L P^T
    out_p = policy(obs[:, perm], mask[:, perm], alive[:, perm], state)
    torch.testing.assert_close(out_p.logits, out.logits[:, perm])
    torch.testing.assert_close(out_p.values, out.values[:, perm])
    torch.testing.assert_close(out_p.adjacency, out.adjacency[:, perm][:, :, perm])
    torch.testing.assert_close(out_p.gate_open, out.gate_open[:, perm])
    torch.testing.assert_close(out_p.messages, out.messages)
    torch.testing.assert_close(out_p.comm_cost, out.comm_cost)


def test_gumbel_changes_gradient_not_outputs() -> None:
    policy = _policy(5)
    obs, mask, _, state = _inputs((4,), 5)
    out = policy(obs, mask, None, state)
    grad = torch.autograd.grad(_loss(out, mask), policy.trunk.graph.logits)[0]
    torch.manual_seed(3)
    out_g = policy(obs, mask, None, state, gumbel=True)
    grad_g = torch.autograd.grad(_loss(out_g, mask), policy.trunk.graph.logits)[0]
    torch.testing.assert_close(out_g.logits, out.logits, rtol=0, atol=0)
    torch.testing.assert_close(out_g.values, out.values, rtol=0, atol=0)
    assert not torch.allclose(grad, grad_g)


def test_deterministic_under_a_seed() -> None:
    obs, mask, alive, state = _inputs((2,), 3)
    outs = [_policy(3, seed=7)(obs, mask, alive, state) for _ in range(2)]
    for field in ("logits", "values", "adjacency", "gate_prob"):
        assert torch.equal(getattr(outs[0], field), getattr(outs[1], field)), field
    other = _policy(3, seed=8)(obs, mask, alive, state)
    assert not torch.equal(other.logits, outs[0].logits)


def test_float32_policy() -> None:
    torch.set_default_dtype(torch.float32)  # the conftest fixture restores the default afterwards
    policy = _policy(3)
    obs, mask, alive, state = (t.float() for t in _inputs((2,), 3))
    out = policy(obs, mask.bool(), alive, state)
    assert out.logits.dtype == torch.float32
    assert out.logits[~mask.bool()].eq(torch.finfo(torch.float32).min).all()


def test_input_errors_name_the_input() -> None:
    policy = _policy(3)
    obs, _, _, state = _inputs((2,), 3)
    with pytest.raises(ValueError, match=r"obs has shape \(2, 4, 5\); expected \(\*B, 3, 5\)"):
        policy(torch.randn(2, 4, D), state=state)
    with pytest.raises(ValueError, match=r"action_mask has shape \(2, 3, 5\); expected \(2, 3, 4\)"):
        policy(obs, torch.ones(2, 3, A + 1), state=state)
    with pytest.raises(ValueError, match=r"alive has shape \(3,\); expected \(2, 3\)"):
        policy(obs, alive=torch.ones(3), state=state)
    with pytest.raises(ValueError, match=r"state is None but the policy was built with state_dim=6"):
        policy(obs)
    with pytest.raises(ValueError, match=r"state has shape \(2, 7\); expected \(2, 6\)"):
        policy(obs, state=torch.randn(2, S + 1))
    with pytest.raises(ValueError, match=r"state was given but the policy was built with state_dim=None"):
        _policy(3, state=False)(obs, state=state)
    with pytest.raises(ValueError, match=r"model\.graph\.k=3 but the environment has N=3 agents"):
        CommFormerPolicy(ModelConfig(graph=GraphConfig(k=3)), n_agents=3, obs_dim=D, n_actions=A)


def test_use_state_false_ignores_state() -> None:
    policy = _policy(3, ModelConfig(embed_dim=8, use_state=False))
    assert policy.value_head.state_embed is None
    obs, _, _, state = _inputs((2,), 3)
    torch.testing.assert_close(policy(obs, state=state).values, policy(obs).values)


def test_no_communication_ablation_ignores_the_other_agents():
    """With communicate=False an agent's outputs depend on its own observation only, and no message is sent."""
    config = ModelConfig(embed_dim=8, num_heads=2, communicate=False, use_state=False)
    policy = _policy(3, config, state=False)
    obs, mask, alive, _ = _inputs((4,), 3)
    out = policy(obs, mask, alive)
    changed = obs.clone()
    changed[:, 1:] += 1.0  # every other agent sees something else
    out2 = policy(changed, mask, alive)
    torch.testing.assert_close(out.logits[:, 0], out2.logits[:, 0])
    assert not torch.equal(out.values[:, 1], out2.values[:, 1])  # (logits start near-uniform)
    torch.testing.assert_close(out.values[:, 0], out2.values[:, 0])
    assert float(out.messages.sum()) == 0.0 and float(out.comm_cost) == 0.0
    eye = torch.eye(3, dtype=out.adjacency.dtype).expand(4, 3, 3)
    torch.testing.assert_close(out.adjacency, eye)


def test_value_head_reads_each_agent_beside_the_state():
    """The value head splits its first layer so the state's half runs once per team: values and every gradient
    equal the head applied to the concatenation [h_i, embed(state)] of each agent (float64)."""
    policy = _policy(3).double()
    obs, mask, alive, state = _inputs((4,), 3)
    trunk = {}
    policy.trunk.norm.register_forward_hook(lambda module, args, out: trunk.update(h=out))
    out = policy(obs.double(), mask, alive, state.double())
    h = trunk["h"]  # (B, N, d): what the value head reads for each agent
    s = policy.value_head.state_embed(state.double())  # (B, d)
    reference = policy.value_head.mlp(torch.cat([h, s.unsqueeze(1).expand_as(h)], dim=-1)).squeeze(-1)
    torch.testing.assert_close(out.values, reference, rtol=1e-12, atol=1e-12)
    weights = torch.randn(4, 3, dtype=torch.float64)
    params = list(policy.parameters())
    grads = torch.autograd.grad((out.values * weights).sum(), params, allow_unused=True, retain_graph=True)
    expected = torch.autograd.grad((reference * weights).sum(), params, allow_unused=True)
    for got, want in zip(grads, expected, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "module"), [("gelu", torch.nn.GELU), ("relu", torch.nn.ReLU), ("silu", torch.nn.SiLU)]
)
def test_activation_reaches_every_mlp_of_the_policy(name: str, module: type, tmp_path) -> None:
    """model.activation sets the nonlinearity of the embeddings, block MLPs, heads and early-exit heads (the
    policy's only activation modules), and the forward computes with it: the last block MLP's hidden layer is
    that function of its pre-activation."""
    config = ModelConfig(embed_dim=8, num_heads=2, num_blocks=2, mlp_ratio=2, activation=name)
    config = dataclasses.replace(config, early_exit=dataclasses.replace(config.early_exit, enabled=True))
    policy = CommFormerPolicy(config, n_agents=3, obs_dim=D, n_actions=A, state_dim=S)
    kinds = {type(m) for m in policy.modules() if isinstance(m, (torch.nn.GELU, torch.nn.ReLU, torch.nn.SiLU))}
    assert kinds == {module}
    # obs embed, state embed, 2 block MLPs, policy head, value head, 2 exit heads
    assert sum(isinstance(m, module) for m in policy.modules()) == 8
    seen = {}
    mlp = policy.trunk.blocks[-1].mlp
    mlp[0].register_forward_hook(lambda m, args, out: seen.update(pre=out))
    mlp[1].register_forward_hook(lambda m, args, out: seen.update(post=out))
    obs, mask, alive, state = _inputs((4,), 3)
    policy(obs, mask, alive, state)
    reference = {"gelu": torch.nn.functional.gelu, "relu": torch.relu, "silu": torch.nn.functional.silu}[name]
    torch.testing.assert_close(seen["post"], reference(seen["pre"]))
    # the exported policy (safetensors + JSON) rebuilds with the same activation and acts the same
    save_policy(policy, tmp_path / "p", {"n_agents": 3, "obs_dim": D, "n_actions": A, "state_dim": S}, {})
    loaded, _ = load_policy(tmp_path / "p")
    assert {type(m) for m in loaded.modules() if isinstance(m, module)} == {module}
    torch.testing.assert_close(loaded(obs, mask, alive, state).logits, policy(obs, mask, alive, state).logits)
