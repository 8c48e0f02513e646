"""MoEHead: naive reference (outputs, gradients, losses), sparse compute, temperature, dtypes, shapes, config."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import Tensor

from commformer.layers.moe import GateName, MoEConfig, MoEHead
from tests.layers.naive_reference import naive_moe, naive_moe_losses

DENSE_GATES: list[GateName] = ["dense_to_sparse", "activation"]
ALL_GATES: list[GateName] = ["topk", *DENSE_GATES]


def _head(seed: int = 0, **config: Any) -> MoEHead:
    """A 5 -> 3 head with non-trivial parameters (a larger router so that inputs spread over the experts)."""
    torch.manual_seed(seed)
    head = MoEHead(5, 3, MoEConfig(**config))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in head.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.7)
        head.router.weight.mul_(2.0)
    return head


def _count_expert_rows(head: MoEHead) -> Counter[int]:
    """Wrap ``head._run_expert`` so that every call adds its number of rows to the returned counter."""
    counts: Counter[int] = Counter()
    original = head._run_expert

    def counting(e: int, x: Tensor) -> Tensor:
        counts[e] += x.shape[0]
        return original(e, x)

    head._run_expert = counting  # type: ignore[method-assign]
    return counts


CASES = [
    {"gate": "topk", "experts": 1, "k": 1},
    {"gate": "topk", "experts": 4, "k": 1},
    {"gate": "topk", "experts": 4, "k": 2},
    {"gate": "topk", "experts": 6, "k": 3},
    {"gate": "topk", "experts": 3, "k": 3},
    {"gate": "dense_to_sparse", "experts": 1},
    {"gate": "dense_to_sparse", "experts": 4},
    {"gate": "activation", "experts": 4, "activation": "sigmoid"},
    {"gate": "activation", "experts": 3, "activation": "tanh"},
    {"gate": "activation", "experts": 4, "activation": "gelu", "hidden": 7},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_matches_naive_reference(case: dict[str, Any]) -> None:
    head = _head(seed=len(CASES), **case)
    head.set_tau(0.7)
    x = torch.randn(2, 6, 5, requires_grad=True)
    upstream = torch.randn(2, 6, 3)
    params = [x, *head.parameters()]

    fast = head(x)
    loss_fast = (fast.out * upstream).sum() + 0.3 * fast.balance_loss + 0.2 * fast.z_loss
    grads_fast = torch.autograd.grad(loss_fast, params)
    out, weights = naive_moe(head, x)
    balance, z = naive_moe_losses(head, x)
    grads_naive = torch.autograd.grad((out * upstream).sum() + 0.3 * balance + 0.2 * z, params)

    torch.testing.assert_close(fast.out, out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.weights, weights, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.balance_loss, balance, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.z_loss, z, rtol=1e-10, atol=1e-12)
    for g_fast, g_naive in zip(grads_fast, grads_naive, strict=True):
        torch.testing.assert_close(g_fast, g_naive, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(("experts", "k"), [(4, 1), (4, 2), (8, 3)])
def test_topk_computes_only_the_chosen_experts(experts: int, k: int) -> None:
    head = _head(gate="topk", experts=experts, k=k)
    rows = _count_expert_rows(head)
    x = torch.randn(40, 5)
    result = head(x)

    chosen = result.weights != 0  # (N, E)
    assert (chosen.sum(-1) == k).all()
    torch.testing.assert_close(result.weights.sum(-1), torch.ones(40))
    assert sum(rows.values()) == k * 40
    # Each expert ran on exactly the inputs that chose it; an expert nobody chose was never called.
    assert rows == Counter({e: int(n) for e, n in enumerate(chosen.sum(0).tolist()) if n > 0})


@pytest.mark.parametrize(("gate", "k"), [("topk", 3), ("dense_to_sparse", 2), ("activation", 2)])
def test_every_expert_runs_on_every_input_when_dense(gate: GateName, k: int) -> None:
    head = _head(gate=gate, experts=3, k=k)  # topk with K == E is dense too
    rows = _count_expert_rows(head)
    head(torch.randn(7, 5))
    assert rows == Counter({0: 7, 1: 7, 2: 7})


@pytest.mark.parametrize("gate", DENSE_GATES)
def test_low_temperature_approaches_top1(gate: GateName) -> None:
    head = _head(gate=gate, experts=5)
    x = torch.randn(30, 5)
    warm = head.route(x)
    head.set_tau(1e-4)
    cold = head(x).weights
    assert warm.weights.max(-1).values.min() < 0.9
    assert cold.max(-1).values.min() > 1 - 1e-6
    # The limit is the argmax of the scores that tau divides: W x + b, or sigma(W x) without b (which sits
    # outside tau in the activation gate, so its influence fades).
    scores = warm.logits if gate == "dense_to_sparse" else warm.logits - head.router.bias
    assert torch.equal(cold.argmax(-1), scores.argmax(-1))


def test_balance_and_z_loss_hand_computed() -> None:
    # Router = identity, b = 0: the logits are the inputs. Top-1 choices 0, 0, 1, 2 -> f = (1/2, 1/4, 1/4, 0).
    head = MoEHead(4, 2, MoEConfig(experts=4, gate="topk", k=1))
    with torch.no_grad():
        head.router.weight.copy_(torch.eye(4))
        head.router.bias.zero_()
    x = 2.0 * torch.eye(4)[[0, 0, 1, 2]]
    result = head(x)

    # Each row's softmax is a = e^2 / (e^2 + 3) at its hot index and b = 1 / (e^2 + 3) elsewhere.
    a, b = math.exp(2) / (math.exp(2) + 3), 1 / (math.exp(2) + 3)
    p = [(2 * a + 2 * b) / 4, (a + 3 * b) / 4, (a + 3 * b) / 4, b]
    balance = 4 * (0.5 * p[0] + 0.25 * p[1] + 0.25 * p[2] + 0.0 * p[3])
    z = math.log(math.exp(2) + 3) ** 2  # the same logsumexp for every row
    torch.testing.assert_close(result.balance_loss, torch.tensor(balance))
    torch.testing.assert_close(result.z_loss, torch.tensor(z))
    torch.testing.assert_close(result.aux_loss, torch.tensor(0.01 * balance + 0.001 * z))
    # Routing weight shares (1/2, 1/4, 1/4, 0) and their entropy.
    torch.testing.assert_close(result.usage, torch.tensor([0.5, 0.25, 0.25, 0.0]))
    torch.testing.assert_close(result.usage_entropy, torch.tensor(1.5 * math.log(2)))


@pytest.mark.parametrize("gate", ALL_GATES)
def test_every_parameter_gets_a_finite_gradient(gate: GateName) -> None:
    head = MoEHead(5, 3, MoEConfig(gate=gate, experts=3, k=2))
    result = head(torch.randn(64, 5))
    # The router learns from the output itself (K = 2 for topk), not only from the auxiliary losses.
    (router_grad,) = torch.autograd.grad(result.out.square().sum(), [head.router.weight], retain_graph=True)
    assert torch.isfinite(router_grad).all() and router_grad.abs().sum() > 0
    (result.out.square().sum() + result.aux_loss).backward()
    for name, param in head.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("gate", DENSE_GATES)
def test_tau_travels_with_the_state_dict(gate: GateName) -> None:
    # Same parameters; the learner then anneals tau and the EnvRunner's copy receives its state_dict.
    rollout = _head(gate=gate, experts=4)
    learner = _head(gate=gate, experts=4)
    x = torch.randn(10, 5)
    assert "tau" in rollout.state_dict()
    before = rollout(x).weights

    learner.set_tau(rollout.config.tau_at(0.5))
    rollout.load_state_dict(learner.state_dict())  # what the weight sync to EnvRunners does
    assert rollout.tau.item() == learner.tau.item()
    assert not torch.allclose(rollout(x).weights, before)
    assert torch.equal(rollout(x).weights, learner(x).weights)
    assert torch.equal(rollout(x).out, learner(x).out)


def test_routing_is_per_input() -> None:
    head = _head(gate="topk", experts=6, k=2)
    x = torch.randn(12, 5)
    together = head(x)
    alone = [head(row) for row in x]
    torch.testing.assert_close(together.out, torch.stack([r.out for r in alone]), rtol=1e-12, atol=1e-12)
    assert torch.equal(together.weights != 0, torch.stack([r.weights != 0 for r in alone]))


@pytest.mark.parametrize("gate", ALL_GATES)
def test_router_runs_in_float32_under_bf16_autocast(gate: GateName) -> None:
    head = _head(gate=gate, experts=4, k=2).float()
    x = torch.randn(16, 5, dtype=torch.float32)
    plain = head(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = head(x)
        routing = head.route(x)
    assert auto.out.dtype == torch.bfloat16  # the experts follow autocast ...
    for tensor in (routing.logits, routing.weights, auto.weights, auto.balance_loss, auto.z_loss):
        assert tensor.dtype == torch.float32  # ... the router does not
    assert torch.equal(auto.weights, plain.weights)  # the very same routing as without autocast
    auto.out.float().sum().backward()
    assert head.router.weight.grad is not None and torch.isfinite(head.router.weight.grad).all()


@pytest.mark.parametrize("batch", [(), (2,), (3, 2)])
@pytest.mark.parametrize("gate", ALL_GATES)
def test_shapes(batch: tuple[int, ...], gate: GateName) -> None:
    head = MoEHead(5, 3, MoEConfig(gate=gate, experts=4, k=2, hidden=6))
    result = head(torch.randn(*batch, 5))
    assert result.out.shape == (*batch, 3)
    assert result.weights.shape == (*batch, 4)
    assert result.usage.shape == (4,)
    for scalar in (result.balance_loss, result.z_loss, result.aux_loss, result.usage_entropy):
        assert scalar.shape == ()
        assert torch.isfinite(scalar)
    torch.testing.assert_close(result.usage.sum(), torch.tensor(1.0))


def test_bad_input_width_is_refused() -> None:
    head = MoEHead(5, 3, MoEConfig())
    with pytest.raises(ValueError, match=r"expected \(\*B, 5\)"):
        head(torch.randn(2, 4))


def test_temperature_schedule_is_geometric() -> None:
    config = MoEConfig(tau_start=1.0, tau_end=0.01)
    assert config.tau_at(0.0) == 1.0
    assert config.tau_at(1.0) == pytest.approx(0.01)
    assert config.tau_at(0.5) == pytest.approx(0.1)
    assert config.tau_at(-1.0) == 1.0 and config.tau_at(2.0) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="tau=0"):
        MoEHead(5, 3, config).set_tau(0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"experts": 4, "k": 5}, r"model\.moe\.k=5 is larger than model\.moe\.experts=4"),
        ({"experts": 0, "k": 1}, r"model\.moe\.experts=0"),
        ({"gate": "dense_to_sparse", "experts": 1}, None),
        ({"experts": True}, r"model\.moe\.experts=True"),
        ({"k": 0}, r"model\.moe\.k=0"),
        ({"tau_start": 0.0}, r"model\.moe\.tau_start=0\.0; expected a number > 0"),
        ({"tau_end": -0.1}, r"model\.moe\.tau_end=-0\.1; expected a number > 0"),
        ({"gate": "noisy_topk"}, r"model\.moe\.gate='noisy_topk'; expected one of 'topk'"),
        ({"activation": "relu"}, r"model\.moe\.activation='relu'; expected one of 'sigmoid'"),
        ({"hidden": 0}, r"model\.moe\.hidden=0"),
        ({"balance_coeff": -1.0}, r"model\.moe\.balance_coeff=-1\.0; expected a number >= 0"),
        ({"z_coeff": float("nan")}, r"model\.moe\.z_coeff=nan"),
    ],
)
def test_config_validation(changes: dict[str, object], message: str | None) -> None:
    if message is None:  # accepted
        replace(MoEConfig(), **changes)  # type: ignore[arg-type]
        return
    with pytest.raises(ValueError, match=message):
        replace(MoEConfig(), **changes)  # type: ignore[arg-type]
