"""The Gaussian policy head of continuous actions (commformer/distributions.py, commformer/heads.py), against
torch.distributions in float64: log-probs, entropy, the padded entries, the log-std kinds and greedy acting."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.distributions import Normal

from commformer.config import ModelConfig
from commformer.distributions import (
    LOG_STD_BOUNDS,
    categorical_entropy,
    categorical_log_prob,
    gaussian_entropy,
    gaussian_log_prob,
    gaussian_mean,
    gaussian_sample,
)
from commformer.policy import CommFormerPolicy

B, N, A = 7, 3, 4


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(B, N, A, generator=g, dtype=torch.float64)
    log_std = 0.5 * torch.randn(B, N, A, generator=g, dtype=torch.float64)
    return torch.cat([mean, log_std], -1), mean, log_std


def test_gaussian_log_prob_and_entropy_equal_torch_normal_in_float64():
    inputs, mean, log_std = _inputs()
    # Far outside any [0, 1] box too: the log-prob is the unclipped sample's.
    actions = 3.0 * torch.randn(B, N, A, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    reference = Normal(mean, log_std.exp())
    torch.testing.assert_close(
        gaussian_log_prob(inputs, actions), reference.log_prob(actions).sum(-1), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(gaussian_entropy(inputs), reference.entropy().sum(-1), rtol=0, atol=1e-12)


def test_padded_entries_count_neither_in_the_log_prob_nor_in_the_entropy():
    inputs, mean, log_std = _inputs(1)
    actions = torch.randn(B, N, A, dtype=torch.float64)
    own = torch.tensor([4, 2, 1])  # agent i's box has own[i] entries, the rest is padding
    mask = (torch.arange(A) < own[:, None]).to(torch.float64).expand(B, N, A)
    reference = Normal(mean, log_std.exp())
    expected_logp = torch.stack([reference.log_prob(actions)[:, i, : own[i]].sum(-1) for i in range(N)], -1)
    expected_entropy = torch.stack([reference.entropy()[:, i, : own[i]].sum(-1) for i in range(N)], -1)
    torch.testing.assert_close(gaussian_log_prob(inputs, actions, mask), expected_logp, rtol=0, atol=1e-12)
    torch.testing.assert_close(gaussian_entropy(inputs, mask), expected_entropy, rtol=0, atol=1e-12)


def test_the_sample_is_unbounded_and_distributed_as_the_gaussian():
    mean = torch.tensor([[[0.9, -2.0]]], dtype=torch.float64)
    log_std = torch.tensor([[[0.0, -1.0]]], dtype=torch.float64)
    inputs = torch.cat([mean, log_std], -1).expand(20000, 1, 2 * 2)
    draws = gaussian_sample(inputs, torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws.mean(0), mean[0], atol=0.03, rtol=0)
    torch.testing.assert_close(draws.std(0), log_std[0].exp(), atol=0.03, rtol=0)
    assert float(draws[:, 0, 0].max()) > 1.0  # beyond a [0, 1] box: the env clips, the policy does not
    torch.testing.assert_close(gaussian_mean(inputs), mean.expand(20000, 1, 2))


def test_categorical_helpers_equal_torch_categorical():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(B, N, 5, generator=g, dtype=torch.float64)
    actions = torch.randint(0, 5, (B, N), generator=g)
    reference = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(categorical_log_prob(logits, actions), reference.log_prob(actions))
    torch.testing.assert_close(categorical_entropy(logits), reference.entropy())


def test_odd_inputs_are_not_a_gaussian():
    with pytest.raises(ValueError, match="last dimension 5; expected 2A"):
        gaussian_entropy(torch.zeros(1, 1, 5))


# ---------------------------------------------------------------------------------------------- the policy head


def _policy(**model: object) -> CommFormerPolicy:
    torch.manual_seed(0)
    config = dataclasses.replace(ModelConfig(embed_dim=16), **model)
    return CommFormerPolicy(config, n_agents=N, obs_dim=6, n_actions=A, continuous=True)


def test_a_state_independent_log_std_is_one_learned_vector_at_its_initial_value():
    policy = _policy(log_std="parameter", log_std_init=-0.7)
    assert policy.policy_head.log_std is not None and policy.policy_head.log_std.shape == (A,)
    out = policy(torch.randn(5, N, 6))
    assert out.logits.shape == (5, N, 2 * A)
    torch.testing.assert_close(out.logits[..., A:], torch.full((5, N, A), -0.7))
    out.logits[..., A:].sum().backward()
    assert policy.policy_head.log_std.grad is not None  # it learns


def test_a_state_dependent_log_std_is_a_head_output_clamped_to_its_bounds():
    policy = _policy(log_std="state", log_std_init=-0.7)
    assert policy.policy_head.log_std is None
    obs = torch.randn(5, N, 6)
    log_std = policy(obs).logits[..., A:]
    assert not torch.equal(log_std, log_std[:1].expand_as(log_std))  # depends on the state
    torch.testing.assert_close(log_std, torch.full_like(log_std, -0.7), atol=0.05, rtol=0)  # 0.01-scaled weights
    assert policy.policy_head.mlp is not None
    with torch.no_grad():
        policy.policy_head.mlp.out.bias[A:] = 50.0
    assert float(policy(obs).logits[..., A:].detach().max()) == LOG_STD_BOUNDS[1]


def test_acting_samples_or_takes_the_mean_and_the_logits_are_the_forward_pass():
    policy = _policy().eval()
    obs = torch.randn(2, 5, N, 6)
    greedy = policy.act(obs)
    assert greedy.actions is not None and greedy.actions.shape == (2, 5, N, A)
    torch.testing.assert_close(greedy.logits, policy(obs).logits)
    torch.testing.assert_close(greedy.actions, greedy.logits[..., :A])
    torch.manual_seed(1)
    sampled = policy.act(obs, sample_actions=True).actions
    assert sampled is not None and not torch.equal(sampled, greedy.actions)


def test_a_moe_head_gives_a_gaussian_too():
    out = _policy(head="moe", log_std="state")(torch.randn(3, N, 6))
    assert out.logits.shape == (3, N, 2 * A) and "policy" in out.moe


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"decoder": "autoregressive"}, "continuous (Box) actions with model.decoder='autoregressive'"),
        (
            {"early_exit": dataclasses.replace(ModelConfig().early_exit, enabled=True), "num_blocks": 2},
            "continuous (Box) actions with model.early_exit.enabled=true",
        ),
    ],
)
def test_parts_that_choose_among_discrete_actions_refuse_a_box(model, message):
    with pytest.raises(ValueError) as info:
        _policy(**model)
    assert message in str(info.value)


def test_model_log_std_keys_are_checked():
    with pytest.raises(ValueError, match=r"model\.log_std='tanh'"):
        ModelConfig(log_std="tanh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"model.log_std_init=3.0; expected a log-std in \[-5, 2\]"):
        ModelConfig(log_std_init=3.0)
