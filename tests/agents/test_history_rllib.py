"""The history encoders inside RLlib: rollout and update agree bit for bit, and a trained orchid policy goes
through checkpoint export, `evaluate` and `rollout` (which must build the env with the policy's window).

Memory env with a short delay (8) and a window of 12, so that an iteration takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents import checkpoints as ckpt
from agents.cli import main
from commformer.export import load_policy

SMALL = [
    "env.options.delay=8",
    "model.history=12",
    "model.embed_dim=16",
    "training.train_batch_size=270",
    "training.minibatch_size=135",
    "training.num_epochs=2",
    "resources.num_envs_per_env_runner=3",
]


@pytest.mark.parametrize("encoder", ["orchid", "attention"])
def test_rollout_and_update_agree_with_a_history_encoder(ray_session, monkeypatch, encoder):
    """The learner's first recomputation of the logits equals the EnvRunner's exactly (PPO ratio 1): the window
    the learner reads is the one stored with the sample."""
    import agents.learner
    from agents.build import build_ppo_config, probe_env
    from agents.config import load_config

    seen: list[float] = []
    real = agents.learner.ppo_team_loss

    def recording(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=None, gates=None):
        seen.append(float((logits - old_logits).detach().abs()[weight.bool()].max()))
        return real(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=prox_logits, gates=gates)

    monkeypatch.setattr(agents.learner, "ppo_team_loss", recording)
    config = load_config("configs/memory_orchid.yaml", [*SMALL, f"model.encoder={encoder}"])
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    try:
        batch_window = algo.env_runner.env.single_observation_space["history"].shape
        algo.train()
    finally:
        algo.stop()
    assert batch_window == (12, 2, 6)
    assert len(seen) >= 4
    assert seen[0] == 0.0  # bit-identical before any update
    assert seen[-1] > 0.0  # and the check can see a difference once the policy has moved


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, ray_session) -> Path:
    out = tmp_path_factory.mktemp("runs")
    args = [*SMALL, "stop.env_steps=540", "run.checkpoint_every=1", f"run.output_dir={out}", "run.name=r"]
    assert main(["train", "configs/memory_orchid.yaml", *args]) == 0
    return out / "r"


def test_exported_policy_keeps_its_encoder(run_dir):
    latest = ckpt.latest_checkpoint(run_dir)
    assert ckpt.read_meta(latest) == {"iteration": 2, "env_steps": 540}
    policy, metadata = load_policy(latest / ckpt.POLICY)
    assert policy.config.encoder == "orchid" and policy.config.history == 12
    assert policy.config.orchid.max_len == 12 and policy.encoder.history_encoder is not None
    spec = json.loads((latest / ckpt.POLICY / "policy.json").read_text())
    assert spec["dims"]["history"] == 12
    assert metadata["env"]["options"]["delay"] == 8


def test_evaluate_and_rollout_build_the_window_the_policy_reads(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run_dir), "--episodes", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["episodes"] == 3 and result["episode_len_mean"] == 9.0  # delay + 1 steps
    assert 0.0 <= result["return_mean"] <= 1.0
    latest = str(ckpt.latest_checkpoint(run_dir))
    gif = tmp_path / "r.gif"
    assert main(["rollout", "memory", "--checkpoint", latest, "--episodes", "2", "--render", str(gif)]) == 0
    assert "policy of" in capsys.readouterr().out and gif.stat().st_size > 0


def test_a_damaged_window_length_in_the_export_is_named(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "policy"
    shutil.copytree(ckpt.latest_checkpoint(run_dir) / ckpt.POLICY, copy)
    spec = json.loads((copy / "policy.json").read_text())
    spec["dims"]["history"] = 5
    (copy / "policy.json").write_text(json.dumps(spec))
    from commformer.export import PolicyFileError

    with pytest.raises(PolicyFileError, match=r"dims\.history=5 but model\.encoder='orchid' with model\.history=12"):
        load_policy(copy)
