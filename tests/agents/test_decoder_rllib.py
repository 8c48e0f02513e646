"""CommFormer-dec inside the real RLlib pipeline: the EnvRunner takes the actions the policy chose agent after agent,
and the learner's teacher-forced recomputation equals the rollout's logits exactly (PPO ratio 1 before any update),
with the plain and with the decoupled (sample-ahead) PPO batch."""

from __future__ import annotations

import numpy as np
import pytest

from agents.build import build_ppo_config, probe_env
from agents.config import load_config

DECODER = [
    "model.decoder=autoregressive",
    "training.train_batch_size=256",
    "training.minibatch_size=128",
    "training.num_epochs=2",  # 4 gradient steps per iteration
    "training.graph_every=1000",
    "model.embed_dim=16",
    "resources.num_envs_per_env_runner=4",
    "model.gates.init_bias=0.5",  # p = 0.62: some sampled decisions differ from the greedy ones
]


def _record_losses(monkeypatch) -> list[dict]:
    import agents.learner

    calls: list[dict] = []
    real = agents.learner.ppo_team_loss

    def recording(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=None, gates=None):
        valid = weight.bool()
        calls.append(
            {
                "old": float((logits - old_logits).abs()[valid].max()),
                "prox": None if prox_logits is None else float((logits - prox_logits).abs()[valid].max()),
                "actions": actions.detach().clone(),
            }
        )
        return real(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=prox_logits, gates=gates)

    monkeypatch.setattr(agents.learner, "ppo_team_loss", recording)
    return calls


@pytest.mark.parametrize("sample_ahead", [False, True])
def test_the_learner_recomputes_the_rollouts_decoder_logits_exactly(ray_session, monkeypatch, sample_ahead):
    calls = _record_losses(monkeypatch)
    ahead = ["training.sample_ahead=true", "resources.num_env_runners=1"] if sample_ahead else []  # a remote runner
    config = load_config("configs/signal.yaml", [*DECODER, *ahead])
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    try:
        algo.train()
        algo.train()
    finally:
        algo.stop()
    assert len(calls) == 8
    first = calls[0]
    assert first["old"] == 0.0  # the rollout's own logits, recomputed teacher-forced on its actions
    if sample_ahead:  # iteration 2 trains on a batch sampled one update back: the proximal logits are the weights'
        assert calls[4]["prox"] == 0.0 and calls[4]["old"] > 0.0
    else:
        assert calls[4]["old"] == 0.0
    assert calls[-1]["old"] > 0.0  # and the check sees a difference once the policy has moved
    actions = first["actions"].numpy()
    assert len(np.unique(actions)) > 1  # drawn, not one fixed action


def test_evaluates_greedy_actor_plays_the_decoders_greedy_actions():
    """`commformer evaluate` / `rollout` act through `greedy_actor`: with the decoder, each agent's argmax given the
    earlier agents' greedy actions, not the argmax of logits computed without them."""
    import torch

    from agents.play import greedy_actor
    from commformer.config import ModelConfig
    from commformer.policy import CommFormerPolicy

    torch.manual_seed(0)
    policy = CommFormerPolicy(ModelConfig(embed_dim=8, decoder="autoregressive"), 4, 5, 3).float().eval()
    with torch.no_grad():
        for param in policy.decoder.parameters():
            param.normal_(0.0, 1.0)  # make the earlier actions matter
    gen = np.random.default_rng(0)
    for _ in range(10):
        obs = {
            "obs": gen.standard_normal((4, 5)).astype(np.float32),
            "action_mask": np.ones((4, 3), dtype=np.float32),
            "alive": np.ones(4, dtype=np.float32),
        }
        actions, stats = greedy_actor(policy, use_state=False)(obs)
        tensors = [torch.as_tensor(obs[k]) for k in ("obs", "action_mask", "alive")]
        assert np.array_equal(actions, policy.act(*tensors).actions.numpy())
        assert stats["messages"] >= 0
