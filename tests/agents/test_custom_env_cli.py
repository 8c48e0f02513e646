"""Training, evaluating and rolling out a PettingZoo env nobody adapted, by import path, end to end through the CLI.

`configs/custom.yaml` (SISL pursuit by module path) trains 2 tiny iterations with a remote EnvRunner, which builds
the env from the import path in its own process; evaluate reads the env from the exported policy's metadata. A
user's factory module that lives only in the directory commformer runs in trains too: the driver and Ray's workers
both find it there (the rule README.md states)."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from agents import checkpoints as ckpt
from agents.cli import main
from commformer.export import load_policy

TINY = [
    "training.train_batch_size=400",
    "training.minibatch_size=200",
    "training.num_epochs=2",
    "model.embed_dim=16",
    "resources.num_envs_per_env_runner=2",
    "resources.num_env_runners=1",  # a remote EnvRunner: the env is built from its import path in another process
    "run.checkpoint_every=1",
    "stop.env_steps=800",
]
CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "custom.yaml")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", CONFIG, *TINY, "env.options.max_cycles=50", f"run.output_dir={out}", "run.name=p"]) == 0
    return out / "p"


def test_training_by_module_path_writes_a_run_whose_policy_names_the_env(run_dir):
    latest = ckpt.latest_checkpoint(run_dir)
    assert ckpt.read_meta(latest) == {"iteration": 2, "env_steps": 800}
    policy, metadata = load_policy(latest / "policy")
    assert metadata["env"]["name"] == "pettingzoo.sisl.pursuit_v5"
    assert metadata["env"]["factory"] is None
    assert metadata["env"]["options"] == {"n_pursuers": 8, "n_evaders": 30, "max_cycles": 50}
    assert policy.n_agents == 8


def test_evaluate_and_rollout_build_the_env_from_the_metadata(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run_dir), "--episodes", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["env"] == "pettingzoo.sisl.pursuit_v5" and result["episode_len_mean"] == 50.0
    latest = str(ckpt.latest_checkpoint(run_dir))
    assert main(["rollout", "pettingzoo.sisl.pursuit_v5", "--checkpoint", latest, "--episodes", "1"]) == 0
    assert "pettingzoo.sisl.pursuit_v5: 8 agents, policy of" in capsys.readouterr().out
    assert main(["rollout", "pettingzoo.sisl.pursuit_v5", "n_pursuers=5", "max_cycles=10", "--episodes", "1"]) == 0
    assert "5 agents, random policy" in capsys.readouterr().out


def test_a_policy_not_known_to_be_yours_builds_no_env_by_import_path_unless_trusted(run_dir, tmp_path, capsys):
    copy = tmp_path / "p"
    shutil.copytree(run_dir, copy)
    (ckpt.latest_checkpoint(copy) / ckpt.MANIFEST).unlink()  # as a run written by someone else
    assert main(["evaluate", str(copy), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "names the env 'pettingzoo.sisl.pursuit_v5' by import path" in err and "--trust-env" in err
    assert main(["evaluate", str(copy), "--episodes", "1", "--trust-env"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", CONFIG, "env.name=nopkg.team_v0"], "module 'nopkg.team_v0' cannot be imported"),
        (["train", CONFIG, "env.options.continuous=1"], "unexpected keyword argument 'continuous'"),
        (
            [
                *["train", CONFIG, "env.name=mpe2.simple_tag_v3", "env.options={continuous_actions: true}"],
                *["model.early_exit.enabled=true", "model.num_blocks=2"],
            ],
            "continuous (Box) actions with model.early_exit.enabled=true",
        ),
        (["rollout", "pettingzoo.classic.tictactoe_v3"], "is_parallelizable"),
        (["rollout", "nopkg:make"], "module 'nopkg' cannot be imported"),
        (["rollout", "a:b:c"], "not of the form module.path:callable"),
    ],
)
def test_bad_envs_by_import_path_exit_2_before_ray_starts(argv, message, capsys):
    import ray

    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized()


def test_a_factory_in_the_working_directory_trains_with_remote_env_runners(tmp_path, monkeypatch):
    package = tmp_path / "cwd_only_envs"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "team.py").write_text(
        textwrap.dedent(
            """
            from pettingzoo.sisl import pursuit_v5


            def make_env(n_pursuers=3):
                return pursuit_v5.parallel_env(n_pursuers=n_pursuers, n_evaders=4, max_cycles=40)
            """
        )
    )
    monkeypatch.chdir(tmp_path)  # importable from here only: neither installed nor on PYTHONPATH
    argv = ["train", CONFIG, *TINY, "env.factory=cwd_only_envs.team:make_env", "env.name=mine", "env.options={}"]
    assert main([*argv, "env.options.n_pursuers=3", "run.output_dir=runs", "run.name=f"]) == 0
    _, metadata = load_policy(ckpt.latest_checkpoint(tmp_path / "runs" / "f") / "policy")
    assert metadata["env"] == {
        "name": "mine",
        "factory": "cwd_only_envs.team:make_env",
        "options": {"n_pursuers": 3},
        "team_reward": "mean",
        "use_state": True,
    }
