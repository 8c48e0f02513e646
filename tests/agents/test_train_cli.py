"""End to end through the CLI: a 2-iteration training, its checkpoints and TensorBoard files, evaluate, rollout,
resume; and every kind of bad input refused (exit 2, a message naming it) before Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import checkpoints as ckpt
from agents.cli import main
from commformer.export import load_policy

TINY = [
    "training.train_batch_size=400",
    "training.minibatch_size=200",
    "training.num_epochs=2",
    "model.embed_dim=16",
    "resources.num_envs_per_env_runner=4",
    "run.checkpoint_every=1",
    "run.keep_checkpoints=2",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    code = main(
        [
            "train",
            "configs/mpe_spread.yaml",
            *TINY,
            "stop.env_steps=800",
            f"run.output_dir={out}",
            "run.name=r",
        ]
    )
    assert code == 0
    return out / "r"


def test_training_writes_config_checkpoints_and_latest(run_dir):
    assert (run_dir / "config.yaml").is_file()
    latest = ckpt.latest_checkpoint(run_dir)
    assert latest.name == "iter_000002"
    assert ckpt.read_meta(latest) == {"iteration": 2, "env_steps": 800}
    assert (latest / "algorithm" / "rllib_checkpoint.json").is_file()
    assert not list((run_dir / "checkpoints").glob(".tmp_*"))


def test_tensorboard_has_scalars_and_graph_images(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in (
        "return/episode_return_mean",
        "loss/policy_loss",
        "comm/gate_open_rate",
        "comm/messages_per_step",
        "comm/gate_clipped_fraction",  # the gates' share of the PPO clip (agents/learner.ppo_team_loss)
    ):
        assert tag in tags["scalars"], tag
    steps = [e.step for e in events.Scalars("comm/gate_open_rate")]
    assert steps == [400, 800]  # x axis = env steps
    assert {"graph/adjacency", "graph/sender_probs"} <= set(tags["images"])


def test_exported_policy_matches_the_learner(run_dir):
    """The safetensors export equals the RLlib learner state saved in the same checkpoint."""
    import pickle

    latest = ckpt.latest_checkpoint(run_dir)
    policy, metadata = load_policy(latest / "policy")
    assert metadata["env"]["name"] == "mpe_spread"
    # A file this test's own training wrote, so reading it with pickle is safe.
    module_dir = latest / "algorithm" / "learner_group" / "learner" / "rl_module" / "default_policy"
    state_file = next(module_dir.glob("module_state.*"))
    if state_file.suffix == ".pt":
        state = torch.load(state_file, weights_only=False)
    else:
        with open(state_file, "rb") as f:
            state = pickle.load(f)
    for name, tensor in policy.state_dict().items():
        np.testing.assert_array_equal(np.asarray(state[f"policy.{name}"]), tensor.numpy())


def test_evaluate_writes_the_promised_json(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    gif = tmp_path / "ep.gif"
    assert main(["evaluate", str(run_dir), "--episodes", "3", "--json", str(out), "--render", str(gif)]) == 0
    result = json.loads(out.read_text())
    for key in (
        "episodes",
        "return_mean",
        "return_std",
        "return_ci95",
        "episode_len_mean",
        "win_rate",
        "messages_per_step",
        "gate_open_rate",
    ):
        assert key in result
    assert result["episodes"] == 3 and result["episode_len_mean"] == 25.0
    assert result["win_rate"] is None  # MPE has no win signal
    assert 0.0 <= result["gate_open_rate"] <= 1.0
    from PIL import Image

    with Image.open(gif) as im:
        # reset frame + 25 steps of the first episode (Pillow merges identical consecutive frames)
        assert 20 <= im.n_frames <= 26
    assert "return_mean" in capsys.readouterr().out


def test_evaluate_is_deterministic(run_dir, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["evaluate", str(run_dir), "--episodes", "2", "--seed", "5", "--json", str(a)]) == 0
    assert main(["evaluate", str(run_dir), "--episodes", "2", "--seed", "5", "--json", str(b)]) == 0
    assert json.loads(a.read_text())["return_mean"] == json.loads(b.read_text())["return_mean"]


def test_rollout_random_and_trained(run_dir, tmp_path, capsys):
    assert main(["rollout", "mpe_spread", "n_agents=4", "--episodes", "2"]) == 0
    assert "random policy" in capsys.readouterr().out
    gif = tmp_path / "r.gif"
    latest = str(ckpt.latest_checkpoint(run_dir))
    assert main(["rollout", "mpe_spread", "--checkpoint", latest, "--episodes", "1", "--render", str(gif)]) == 0
    assert gif.stat().st_size > 0


def test_resume_continues_steps_and_parameters(run_dir, tmp_path):
    """Resume restores the learner exactly and counts on from the checkpoint's env steps."""
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy)
    before, _ = load_policy(ckpt.latest_checkpoint(copy) / "policy")
    assert main(["train", "--resume", str(copy), "stop.env_steps=1200", "run.checkpoint_every=100"]) == 0
    latest = ckpt.latest_checkpoint(copy)
    assert ckpt.read_meta(latest) == {"iteration": 3, "env_steps": 1200}
    after, _ = load_policy(latest / "policy")
    # one more iteration moved the parameters, starting from the restored ones (not from a fresh init)
    assert any(not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters(), strict=True))
    drift = max(
        float((p - q).abs().max().detach()) for p, q in zip(before.parameters(), after.parameters(), strict=True)
    )
    assert drift < 0.1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "configs/mpe_spread.yaml", "model.graph.sparsity=2"], "model.graph.sparsity"),
        (["train", "configs/mpe_spread.yaml", "model.grph.k=1"], "unknown config key 'model.grph'"),
        (["train", "configs/mpe_spread.yaml", "model.graph.k=3"], "model.graph.k=3"),
        (["train", "configs/mpe_spread.yaml", "training.lr=-1"], "training.lr=-1"),
        (
            ["train", "configs/mpe_spread.yaml", "resources.num_envs_per_env_runner=0"],
            "num_envs_per_env_runner",
        ),
        (["train", "configs/mpe_spread.yaml", "env.name=atari"], "env.name='atari'"),
        (["train", "configs/nope.yaml"], "nope.yaml' does not exist"),
        (["train", "--resume", "/nonexistent/run"], "does not exist"),
        (["evaluate", "/nonexistent/run"], "does not exist"),
        (["rollout", "atari"], "unknown env 'atari'"),
    ],
)
def test_bad_input_exits_2_with_a_named_error_before_ray_starts(argv, message, capsys):
    import ray

    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized()


def test_corrupt_checkpoints_are_named(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy)
    latest = ckpt.latest_checkpoint(copy)
    (latest / "policy" / "policy.safetensors").write_bytes(b"not a tensor file")
    assert main(["evaluate", str(latest)]) == 2
    assert "policy.safetensors' is not a readable safetensors file" in capsys.readouterr().err
    (latest / "policy" / "policy.json").write_text("{")
    assert main(["evaluate", str(latest)]) == 2
    assert "policy.json' is not valid JSON" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    assert main(["evaluate", str(empty)]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_a_damaged_latest_pointer_falls_back_to_the_newest_complete_checkpoint(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy)
    (copy / "checkpoints" / "LATEST").write_text("iter_999999")
    (copy / "checkpoints" / ".tmp_iter_000003_x").mkdir()  # what a kill mid-save leaves behind
    assert ckpt.latest_checkpoint(copy).name == "iter_000002"


def test_restore_gives_identical_parameters_and_counters(run_dir):
    """Restoring the Algorithm reproduces the saved learner parameters exactly, and the env-step counter."""
    from agents.build import build_ppo_config
    from agents.config import load_config
    from agents.train import init_ray

    latest = ckpt.latest_checkpoint(run_dir)
    saved, _ = load_policy(latest / "policy")
    started = init_ray()
    algo = build_ppo_config(load_config(run_dir / "config.yaml")).build_algo()
    try:
        fresh = algo.learner_group._learner.module["default_policy"].policy
        assert any(not torch.equal(p, q) for p, q in zip(fresh.parameters(), saved.parameters(), strict=True))
        algo.restore_from_path(str((latest / "algorithm").resolve()))
        restored = algo.learner_group._learner.module["default_policy"].policy
        for (name, p), q in zip(restored.named_parameters(), saved.parameters(), strict=True):
            assert torch.equal(p.detach(), q), name
        assert algo.iteration == 2
        lifetime = algo.metrics.peek(("env_runners", "num_env_steps_sampled_lifetime"))
        assert int(lifetime) == 800
    finally:
        algo.stop()
        if started:
            import ray

            ray.shutdown()


def test_resume_refuses_damaged_checkpoints_by_name(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy)
    latest = ckpt.latest_checkpoint(copy)
    shutil.rmtree(latest / "algorithm" / "learner_group")
    assert main(["train", "--resume", str(copy)]) == 2
    assert "cannot be resumed: 'algorithm/learner_group' is missing" in capsys.readouterr().err

    copy2 = tmp_path / "r2"
    shutil.copytree(run_dir, copy2)
    latest2 = ckpt.latest_checkpoint(copy2)
    (latest2 / "algorithm" / "algorithm_state.pkl").write_bytes(b"garbage")
    assert main(["train", "--resume", str(copy2), "stop.env_steps=1200"]) == 2  # refused before Ray: not as written
    assert "'algorithm/' changed since it was written (algorithm_state.pkl)" in capsys.readouterr().err
    config_before = (copy2 / "config.yaml").read_bytes()
    assert main(["train", "--resume", str(copy2), "stop.env_steps=1200", "--trust-checkpoint"]) == 2
    err = capsys.readouterr().err
    assert "warning: resuming" in err and "could not be restored" in err
    assert (copy2 / "config.yaml").read_bytes() == config_before  # a resume that fails changes nothing


def test_rollout_refuses_bad_env_options_by_name(capsys):
    assert main(["rollout", "mpe_spread", "n_agents=0"]) == 2
    assert "env.options.n_agents" in capsys.readouterr().err
    assert main(["rollout", "mpe_spread", "colour=red"]) == 2
    assert "unknown option env.options.colour" in capsys.readouterr().err


def test_resuming_a_finished_run_trains_and_writes_nothing(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(run_dir, copy)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (copy / "checkpoints").rglob("*"))
    config_before = (copy / "config.yaml").read_bytes()
    assert main(["train", "--resume", str(copy)]) == 0  # stop.env_steps=800 is already reached
    assert main(["train", "--resume", str(copy), "stop.env_steps=400"]) == 0  # below the run's progress
    after = sorted((p.name, p.stat().st_mtime_ns) for p in (copy / "checkpoints").rglob("*"))
    assert before == after
    assert (copy / "config.yaml").read_bytes() == config_before
    out = capsys.readouterr().out
    assert "is at 800 env steps and stop.env_steps=800" in out and "stop.env_steps=400;" in out


def test_progress_line_eta_is_zero_once_the_target_is_passed():
    """The last iteration overshoots stop.env_steps by up to one batch: the ETA then reads 0, not negative."""
    import io

    from agents.train import Progress

    progress = Progress(total_steps=1000, start_steps=0, out=io.StringIO())
    progress.t0 -= 10.0  # 10 s into the run
    assert "ETA 0m05s" in progress.line(2, 666, -1.0, 66.6)  # 666 steps in 10 s: 334 left take ~5 s
    assert "ETA 0m00s" in progress.line(3, 1200, -1.0, 120.0)
