"""CommFormerPolicy with mixture-of-experts heads: wiring, auxiliary losses, temperature, export."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from commformer.config import ModelConfig
from commformer.export import load_policy, save_policy
from commformer.layers.moe import MoEConfig, MoEHead
from commformer.policy import CommFormerPolicy

D, A, S, N = 5, 4, 6, 3


def _policy(gate: str = "topk", value_head: str = "moe") -> CommFormerPolicy:
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=8, head="moe", value_head=value_head, moe=MoEConfig(experts=4, gate=gate, k=2))
    return CommFormerPolicy(config, n_agents=N, obs_dim=D, n_actions=A, state_dim=S)


def _inputs(batch: tuple[int, ...] = (7,)) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {"obs": torch.randn(*batch, N, D, generator=gen), "state": torch.randn(*batch, S, generator=gen)}


@pytest.mark.parametrize("gate", ["topk", "dense_to_sparse", "activation"])
@pytest.mark.parametrize("batch", [(), (2,), (3, 2)])
def test_moe_heads_shapes_and_aux_loss(gate, batch):
    policy = _policy(gate)
    out = policy(**_inputs(batch))
    assert out.logits.shape == (*batch, N, A) and out.values.shape == (*batch, N)
    assert set(out.moe) == {"policy", "value"}
    expected = out.moe["policy"].aux_loss + out.moe["value"].aux_loss
    torch.testing.assert_close(out.aux_loss, expected)
    assert torch.isfinite(out.aux_loss) and out.aux_loss > 0


def test_the_policy_head_equals_its_moe_applied_to_the_features():
    """The logits are exactly the MoE head's output: no hidden extra layer on the MoE path."""
    policy = _policy()
    seen = {}
    policy.policy_head.moe.register_forward_hook(lambda mod, inp, out: seen.update(out=out.out))
    out = policy(**_inputs())
    torch.testing.assert_close(out.logits, seen["out"].reshape(out.logits.shape))


def test_aux_loss_gradient_reaches_the_routers():
    policy = _policy()
    policy(**_inputs()).aux_loss.backward()
    for head in policy.moe_heads().values():
        assert head.router.weight.grad is not None and head.router.weight.grad.abs().sum() > 0


def test_linear_heads_have_no_moe_and_zero_aux_loss():
    torch.manual_seed(0)
    policy = CommFormerPolicy(ModelConfig(embed_dim=8), n_agents=N, obs_dim=D, n_actions=A, state_dim=S)
    out = policy(**_inputs())
    assert out.moe == {} and float(out.aux_loss) == 0.0 and policy.moe_heads() == {}


def test_set_moe_tau_moves_dense_routing_and_travels_in_the_state_dict(tmp_path):
    policy = _policy("dense_to_sparse")
    before = policy(**_inputs()).logits
    policy.set_moe_tau(0.05)
    after = policy(**_inputs()).logits
    assert not torch.allclose(before, after)
    assert all(float(h.tau) == pytest.approx(0.05) for h in policy.moe_heads().values())
    # the exported policy (safetensors + JSON) carries tau: a reload acts like the original
    dims = {"n_agents": N, "obs_dim": D, "n_actions": A, "state_dim": S}
    save_policy(policy, tmp_path / "p", dims, {})
    loaded, _ = load_policy(tmp_path / "p")
    torch.testing.assert_close(loaded(**_inputs()).logits, after)


def test_initial_moe_policy_is_near_uniform():
    out = _policy()(**_inputs())
    probs = torch.softmax(out.logits, -1)
    assert (probs - 1.0 / A).abs().max() < 0.05


def test_head_config_is_validated_by_name():
    with pytest.raises(ValueError, match=r"model\.head='mixture'"):
        ModelConfig(head="mixture")
    with pytest.raises(ValueError, match=r"model\.moe\.k=5 is larger than model\.moe\.experts=4"):
        dataclasses.replace(ModelConfig(), moe=MoEConfig(experts=4, k=5))
    assert isinstance(_policy().policy_head.moe, MoEHead)
