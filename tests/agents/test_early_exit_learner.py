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
    assert all(_moved(before, after, "trunk.blocks.1.")) and metrics["exit_phase_gates"] == 0.0
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


def _record_first_step_diffs(monkeypatch, seen: list[dict[str, float]]) -> None:
    """Records, at every gradient step, how far the learner's logits are from the rollout's along the recorded
    path (`replay`), and the final head's from the proximal final logits (`final_vs_prox`), over counted agents."""
    from ray.rllib.core.columns import Columns

    import agents.learner
    from agents.team_batch import PROX_FINAL_LOGITS

    real = agents.learner.CommFormerPPOLearner.compute_loss_for_module

    def loss(self, *, module_id, config, batch, fwd_out):
        valid = batch[Columns.OBS]["alive"].bool()
        out = fwd_out[agents.learner.POLICY_OUTPUT]
        n, a = out.logits.shape[-2:]
        replay = (fwd_out[Columns.ACTION_DIST_INPUTS] - batch[Columns.ACTION_DIST_INPUTS]).view(-1, n, a)
        row = {"replay": float(replay.abs()[valid].max())}
        if PROX_FINAL_LOGITS in batch:
            final = out.exits.final_logits - batch[PROX_FINAL_LOGITS].view(-1, n, a)
            row["final_vs_prox"] = float(final.abs()[valid].max())
        seen.append(row)
        return real(self, module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)

    monkeypatch.setattr(agents.learner.CommFormerPPOLearner, "compute_loss_for_module", loss)


@pytest.mark.parametrize("bias", [3.0, -3.0])
def test_recorded_exit_depths_are_replayed_in_the_loss(ray_session, monkeypatch, bias):
    """Rollouts act with exits (bias 3: every team leaves at depth 0 through head 0; -3: none leaves). Before the
    first gradient step the learner's logits equal the rollout's bit for bit, which needs the recorded depth:
    head 0 and the final head disagree. The main policy's term starts at ratio 1 around the proximal final logits."""
    seen: list[dict[str, float]] = []
    _record_first_step_diffs(monkeypatch, seen)
    _, _, metrics = _one_iteration(
        [
            "model.early_exit.rollout=true",
            f"model.early_exit.gate_init_bias={bias}",
            "model.early_exit.warmup_steps=100",
        ]
    )
    assert seen[0]["replay"] == 0.0 and seen[-1]["replay"] > 0.0
    assert seen[0]["final_vs_prox"] < 1e-6 and seen[-1]["final_vs_prox"] > 0.0
    assert metrics["exit_rollout_depth_mean"] == (0.0 if bias > 0 else 2.0)


def test_replaying_the_wrong_depth_would_be_seen(ray_session, monkeypatch):
    """The check above can fail: without the replay, head-0 rollouts differ from the full-depth recomputation."""
    from ray.rllib.core.columns import Columns

    import agents.rl_module

    seen: list[dict[str, float]] = []
    _record_first_step_diffs(monkeypatch, seen)

    def forgetful_forward_train(self, batch, **kwargs):
        out = self.policy_output(batch, gate_open=self._recorded_gates(batch))  # the recorded depth is not passed on
        return {
            Columns.ACTION_DIST_INPUTS: out.logits.flatten(-2),
            agents.rl_module.VALUES_NORMALIZED: out.values,
            agents.rl_module.POLICY_OUTPUT: out,
        }

    monkeypatch.setattr(agents.rl_module.CommFormerRLModule, "_forward_train", forgetful_forward_train)
    _one_iteration(["model.early_exit.rollout=true", "model.early_exit.gate_init_bias=3.0"])
    assert seen[0]["replay"] > 0.0


def test_the_main_policy_learns_from_steps_taken_at_an_exit(ray_session):
    """Every step acts at exit 0 (bias 3), the value loss is off and the heads read the backbone detached: the
    encoder, the blocks and the final head still move, through the main policy's term on the final head's
    log-prob of the executed action. Before that term only exit head 0 received the steps' PPO gradient."""
    overrides = ["model.early_exit.rollout=true", "model.early_exit.gate_init_bias=3.0"]
    overrides += ["model.early_exit.warmup_steps=100", "training.vf_loss_coeff=0.0"]
    before, after, metrics = _one_iteration(overrides)
    assert metrics["exit_rollout_depth_mean"] == 0.0
    for prefix in ("encoder.obs_embed.", "trunk.blocks.0.", "trunk.blocks.1.", "policy_head.", "trunk.gate."):
        assert any(_moved(before, after, prefix)), prefix
    assert not any(_moved(before, after, "value_head."))  # control: nothing else trains without the value loss


def test_sample_ahead_takes_the_proximal_logits_along_the_recorded_depths(ray_session, monkeypatch):
    """With `training.sample_ahead` the update clips around the proximal logits, which TeamPPOBatch computes:
    rollouts that leave at head 0 (bias 3) need those logits from head 0 too, or the first ratio is not 1."""
    import agents.learner

    seen: list[float] = []
    real = agents.learner.ppo_team_loss

    def recording(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=None, gates=None):
        if gates is None:  # the exit head's own term (the main policy's carries the gates)
            assert prox_logits is not None
            seen.append(float((logits - prox_logits).abs()[weight.bool()].max()))
        return real(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=prox_logits, gates=gates)

    monkeypatch.setattr(agents.learner, "ppo_team_loss", recording)
    overrides = ["model.early_exit.rollout=true", "model.early_exit.gate_init_bias=3.0"]
    overrides += ["model.early_exit.warmup_steps=100", "training.sample_ahead=true", "resources.num_env_runners=1"]
    _, _, metrics = _one_iteration(overrides)
    assert seen[0] < 1e-6 and seen[-1] > 0.0
    assert metrics["exit_rollout_depth_mean"] == 0.0
