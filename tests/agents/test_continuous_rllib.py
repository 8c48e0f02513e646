"""Continuous actions inside RLlib: the PPO consistency rule in the real learner, a training run with its exported
policy, `commformer evaluate` (greedy: the mean, clipped by the env) and `commformer rollout` with a random policy.

The env is mpe2's simple_spread with `continuous_actions=True`, by import path (configs/mpe_spread_continuous.yaml).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import checkpoints as ckpt
from agents.cli import main
from agents.play import greedy_actor, make_play_env, play
from commformer.export import SPEC, load_policy
from tests.agents.iteration import one_iteration

SPREAD = ["env.name=mpe2.simple_spread_v3", "env.options={N: 2, max_cycles: 10, continuous_actions: true}"]
BASE = [
    *SPREAD,
    "training.train_batch_size=200",
    "training.minibatch_size=100",
    "training.num_epochs=2",  # 4 gradient steps
    "model.embed_dim=16",
    "resources.num_envs_per_env_runner=2",
]


@pytest.mark.parametrize("log_std", ["parameter", "state"])
def test_rollout_and_update_agree_on_the_gaussian(ray_session, monkeypatch, log_std):
    """Before the first gradient step the learner recomputes exactly the rollout's means and log-stds (and gate
    logits): the log-prob of the stored unclipped sample is then the rollout's, the PPO ratio exactly 1."""
    import agents.learner

    seen, gate_seen, outside = [], [], []
    real = agents.learner.ppo_team_loss

    def recording(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=None, gates=None, **kw):
        valid = weight.bool()
        seen.append(float((logits - old_logits).detach().abs()[valid].max()))
        assert gates is not None  # signal.yaml's gates are learned: the rollout sampled and recorded them
        gate_seen.append(float((gates.logit - gates.old_logit).abs()[valid].max()))
        assert actions.dtype == torch.float32 and actions.shape[-1] == 5 and kw["dims_mask"].shape == actions.shape
        outside.append(float(((actions < 0) | (actions > 1)).float().mean()))  # the stored samples are unclipped
        return real(logits, old_logits, actions, advantages, weight, clip_param, prox_logits, gates, **kw)

    monkeypatch.setattr(agents.learner, "ppo_team_loss", recording)
    before, after, metrics = one_iteration(
        [*BASE, "training.graph_every=1000", "model.gates.init_bias=0.5", f"model.log_std={log_std}"]
    )
    assert len(seen) >= 4
    assert seen[0] == 0.0 and gate_seen[0] == 0.0  # bit-identical before any update
    assert seen[-1] > 0.0  # and the check sees a difference once the policy has moved
    assert outside[0] > 0.2  # std 1 around 0: many samples lie outside [0, 1], stored as drawn
    moved = "policy_head.log_std" if log_std == "parameter" else "policy_head.mlp.out.weight"
    assert not torch.equal(before[moved], after[moved])
    # The entropy the learner logs is the Gaussian's: 5 entries of log-std ~0 each, 0.5 * log(2 pi e) nats.
    assert abs(metrics["entropy"] - 5 * 0.5 * np.log(2 * np.pi * np.e)) < 0.3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    argv = ["train", "configs/mpe_spread_continuous.yaml", *SPREAD, "training.train_batch_size=200"]
    argv += [
        "training.minibatch_size=100",
        "training.num_epochs=1",
        "model.embed_dim=16",
        "resources.num_env_runners=0",
    ]
    argv += ["resources.num_envs_per_env_runner=2", "stop.env_steps=400", f"run.output_dir={out}", "run.name=c"]
    assert main(argv) == 0
    return out / "c"


def test_a_trained_continuous_policy_is_exported_and_evaluated_greedily(run_dir, tmp_path):
    policy_dir = ckpt.latest_checkpoint(run_dir) / ckpt.POLICY
    dims = json.loads((policy_dir / SPEC).read_text())["dims"]
    assert dims["action_kind"] == "continuous" and dims["n_actions"] == 5
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run_dir), "--episodes", "2", "--seed", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["episodes"] == 2 and np.isfinite(result["return_mean"])
    # The same figure from the greedy actor by hand: the Gaussian's mean, which the env clips.
    policy, metadata = load_policy(policy_dir)
    env = make_play_env(metadata["env"], policy)
    try:
        stats = play(env, greedy_actor(policy, use_state=True), 2, seed=1)
    finally:
        env.close()
    assert np.mean(stats.returns) == pytest.approx(result["return_mean"], abs=1e-9)


def test_rollout_plays_a_continuous_env_with_a_random_policy_and_a_trained_one(run_dir, capsys):
    options = ["N=2", "max_cycles=5", "continuous_actions=true"]
    assert main(["rollout", "mpe2.simple_spread_v3", *options, "--episodes", "1"]) == 0
    assert "2 agents, random policy" in capsys.readouterr().out
    latest = str(ckpt.latest_checkpoint(run_dir))
    assert main(["rollout", "mpe2.simple_spread_v3", "--checkpoint", latest, "--episodes", "1"]) == 0
