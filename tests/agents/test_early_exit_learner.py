"""Early exits inside the real RLlib learner: which parameters each phase moves, recorded depths replayed.

Each case runs one real training iteration (local EnvRunner + local Learner) on the signal env, 4 gradient steps.
"""

from __future__ import annotations

import pytest
import torch

from tests.agents.iteration import Params, one_iteration

BASE = [
    "training.train_batch_size=256",
    "training.minibatch_size=128",
    "training.num_epochs=2",  # 4 gradient steps per iteration
    "training.graph_every=1000",
    "model.embed_dim=16",
    "model.num_blocks=2",
    "model.early_exit.enabled=true",
    "resources.num_envs_per_env_runner=4",
]


def _one_iteration(overrides: list[str]) -> tuple[Params, Params, dict]:
    return one_iteration([*BASE, *overrides])


def _moved(before: dict, after: dict, prefix: str) -> list[bool]:
    return [not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)]


def test_heads_learn_in_warmup_and_the_gates_wait(ray_session):
    before, after, metrics = _one_iteration(["model.early_exit.warmup_steps=100"])
    assert all(_moved(before, after, "exits.heads."))
    assert not any(_moved(before, after, "exits.gates."))
    assert all(_moved(before, after, "blocks.1.")) and metrics["exit_phase_gates"] == 0.0
    assert metrics["exit_distill_kl"] > 0.0


def test_gates_and_heads_alternate_after_warmup(ray_session):
    before, after, metrics = _one_iteration(["model.early_exit.warmup_steps=0", "model.early_exit.alternate_every=1"])
    assert all(_moved(before, after, "exits.heads.")) and all(_moved(before, after, "exits.gates."))
    assert 0.0 <= metrics["exit_target_depth_mean"] <= 2.0


@pytest.mark.parametrize("gate_lr", [0.05, 1e-4])
def test_gates_step_with_their_own_learning_rate(ray_session, gate_lr):
    """Each gate-phase Adam step moves a gate bias by at most about gate_lr (exactly lr * sign on the first step);
    one iteration here has 4-5 gradient steps (RLlib's batch slightly exceeds 256 env steps)."""
    overrides = ["model.early_exit.warmup_steps=0", "model.early_exit.alternate_every=100"]
    before, after, _ = _one_iteration([*overrides, f"model.early_exit.gate_lr={gate_lr}"])
    moves = [float((after[k] - before[k]).abs().max()) for k in before if k.startswith("exits.gates.") and "bias" in k]
    assert moves and all(0.5 * gate_lr <= m <= 5 * gate_lr * 1.01 for m in moves), moves


def test_graph_steps_leave_the_exits_alone(ray_session):
    before, after, _ = _one_iteration(["training.graph_every=1", "model.early_exit.warmup_steps=0"])
    assert not any(_moved(before, after, "exits."))


@pytest.mark.parametrize("bias", [3.0, -3.0])
def test_recorded_exit_depths_are_replayed_in_the_loss(ray_session, monkeypatch, bias):
    """Rollouts act with exits (bias 3: every team leaves at depth 0 through head 0; -3: none leaves). Before the
    first gradient step the learner's logits equal the rollout's bit for bit, which needs the recorded depth:
    head 0 and the final head disagree."""
    import agents.learner

    seen: list[float] = []
    real = agents.learner.ppo_team_loss

    def recording(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=None):
        seen.append(float((logits - old_logits).abs()[weight.bool()].max()))
        return real(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=prox_logits)

    monkeypatch.setattr(agents.learner, "ppo_team_loss", recording)
    _, _, metrics = _one_iteration(
        [
            "model.early_exit.rollout=true",
            f"model.early_exit.gate_init_bias={bias}",
            "model.early_exit.warmup_steps=100",
        ]
    )
    assert seen[0] == 0.0 and seen[-1] > 0.0
    assert metrics["exit_rollout_depth_mean"] == (0.0 if bias > 0 else 2.0)


def test_replaying_the_wrong_depth_would_be_seen(ray_session, monkeypatch):
    """The check above can fail: without the replay, head-0 rollouts differ from the full-depth recomputation."""
    from ray.rllib.core.columns import Columns

    import agents.learner
    import agents.rl_module

    seen: list[float] = []
    real = agents.learner.ppo_team_loss

    def recording(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=None):
        seen.append(float((logits - old_logits).abs()[weight.bool()].max()))
        return real(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=prox_logits)

    def forgetful_forward_train(self, batch, **kwargs):
        out = self.policy_output(batch)  # the recorded depth is not passed on
        return {
            Columns.ACTION_DIST_INPUTS: out.logits.flatten(-2),
            agents.rl_module.VALUES_NORMALIZED: out.values,
            agents.rl_module.POLICY_OUTPUT: out,
        }

    monkeypatch.setattr(agents.learner, "ppo_team_loss", recording)
    monkeypatch.setattr(agents.rl_module.CommFormerRLModule, "_forward_train", forgetful_forward_train)
    _one_iteration(["model.early_exit.rollout=true", "model.early_exit.gate_init_bias=3.0"])
    assert seen[0] > 0.0


def test_sample_ahead_takes_the_proximal_logits_along_the_recorded_depths(ray_session, monkeypatch):
    """With `training.sample_ahead` the update clips around the proximal logits, which TeamPPOBatch computes:
    rollouts that leave at head 0 (bias 3) need those logits from head 0 too, or the first ratio is not 1."""
    import agents.learner

    seen: list[float] = []
    real = agents.learner.ppo_team_loss

    def recording(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=None):
        assert prox_logits is not None
        seen.append(float((logits - prox_logits).abs()[weight.bool()].max()))
        return real(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=prox_logits)

    monkeypatch.setattr(agents.learner, "ppo_team_loss", recording)
    overrides = ["model.early_exit.rollout=true", "model.early_exit.gate_init_bias=3.0"]
    overrides += ["model.early_exit.warmup_steps=100", "training.sample_ahead=true", "resources.num_env_runners=1"]
    _, _, metrics = _one_iteration(overrides)
    assert seen[0] < 1e-6 and seen[-1] > 0.0
    assert metrics["exit_rollout_depth_mean"] == 0.0
