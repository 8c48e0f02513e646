"""`commformer evaluate/rollout --early-exit` end to end on a tiny run with exits: the report, its MACs, the exported
exits, and refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import checkpoints as ckpt
from agents.cli import main
from agents.play import EarlyExitActor, greedy_actor, make_play_env, play
from commformer.export import load_policy, save_policy

TINY = [
    "training.train_batch_size=400",
    "training.minibatch_size=200",
    "training.num_epochs=2",
    "model.embed_dim=16",
    "model.num_blocks=2",
    "model.early_exit.enabled=true",
    "resources.num_envs_per_env_runner=4",
    "run.checkpoint_every=1",
    "stop.env_steps=400",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "configs/mpe_spread.yaml", *TINY, f"run.output_dir={out}", "run.name=r"]) == 0
    return ckpt.latest_checkpoint(out / "r")


def _with_gates(checkpoint: Path, target: Path, bias: float) -> Path:
    """A copy of the checkpoint whose exported exit gates all have this bias (so exits are certain or impossible)."""
    shutil.copytree(checkpoint, target)
    policy, metadata = load_policy(target / ckpt.POLICY)
    spec = json.loads((target / ckpt.POLICY / "policy.json").read_text())
    with torch.no_grad():
        for gate in policy.exits.gates:  # type: ignore[union-attr]
            gate.weight.zero_()
            gate.bias.fill_(bias)
    save_policy(policy, target / ckpt.POLICY, spec["dims"], metadata)
    return target


def _evaluate(path: Path, out: Path, *extra: str) -> dict:
    assert main(["evaluate", str(path), "--episodes", "2", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_exits_that_always_fire_save_macs_and_report_everything(checkpoint, tmp_path, capsys):
    ck = _with_gates(checkpoint, tmp_path / "open", 10.0)
    summary = _evaluate(ck, tmp_path / "e.json", "--early-exit")
    report = summary["early_exit"]
    steps = 2 * 25  # two mpe_spread episodes of max_cycles=25
    assert report["exit_depth_histogram"] == {"0": steps, "1": 0, "2": 0}
    assert report["exit_depth_mean"] == 0.0
    assert report["macs_per_step_executed"] == report["macs_per_exit"][0] < report["macs_per_step_full_depth"]
    assert report["macs_per_action_executed"] == pytest.approx(report["macs_per_step_executed"] / 3)
    assert 0.0 < report["macs_saved_fraction"] < 1.0
    assert report["ece_at_exit"]["0"] is not None and report["ece_at_exit"]["1"] is None
    assert all(0.0 <= e <= 1.0 for e in report["ece_per_head"])
    assert summary["messages_per_step"] == 0.0  # no block ran: nobody read a message
    printed = capsys.readouterr().out
    assert "exit_depth_histogram" in printed and "macs_saved_fraction" in printed


def test_exits_that_never_fire_act_exactly_as_the_full_policy(checkpoint, tmp_path):
    ck = _with_gates(checkpoint, tmp_path / "closed", -10.0)
    with_exits = _evaluate(ck, tmp_path / "a.json", "--early-exit")
    plain = _evaluate(ck, tmp_path / "b.json")
    assert with_exits["return_mean"] == plain["return_mean"]
    report = with_exits["early_exit"]
    assert report["exit_depth_mean"] == 2.0 and report["agreement_with_full_depth"] == 1.0
    # passing every gate costs the exit modules on top of the plain policy: counted, not hidden
    assert report["macs_per_step_executed"] == report["macs_per_exit"][-1] > report["macs_per_step_full_depth"]

    policy, metadata = load_policy(ck / ckpt.POLICY)
    env = make_play_env(metadata["env"], policy)
    actions: dict[str, list] = {"exit": [], "greedy": []}
    for name, actor in (("exit", EarlyExitActor(policy, True)), ("greedy", greedy_actor(policy, True))):

        def record(obs, actor=actor, name=name):
            taken, stats = actor(obs)
            actions[name].append(taken.tolist())
            return taken, stats

        play(env, record, 1, seed=3)
    env.close()
    assert actions["exit"] == actions["greedy"]


def test_rollout_with_exits_and_refusals(checkpoint, tmp_path, capsys):
    assert main(["rollout", "mpe_spread", "--checkpoint", str(checkpoint), "--early-exit", "--episodes", "1"]) == 0
    assert "macs_per_step_executed" in capsys.readouterr().out
    assert main(["rollout", "mpe_spread", "--early-exit"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_evaluate_early_exit_refuses_a_policy_without_exits(checkpoint, tmp_path, capsys):
    target = tmp_path / "plain"
    shutil.copytree(checkpoint, target)
    policy, _ = load_policy(target / ckpt.POLICY)
    spec = json.loads((target / ckpt.POLICY / "policy.json").read_text())
    spec["model"]["early_exit"]["enabled"] = False
    spec.pop("weights_sha256")  # the weights are rewritten below: the stored hash is of the old file
    (target / ckpt.POLICY / "policy.json").write_text(json.dumps(spec))
    state = {k: v for k, v in policy.state_dict().items() if not k.startswith("exits.")}
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(target / ckpt.POLICY / "policy.safetensors"))
    assert main(["evaluate", str(target), "--early-exit"]) == 2
    assert "model.early_exit.enabled" in capsys.readouterr().err


def test_latency_benchmark_times_the_policy_on_observations_from_its_env(checkpoint):
    """benchmarks.early_exit latency --checkpoint: inputs are real team observations of the run's env (not noise),
    and every depth is timed."""
    from benchmarks.early_exit import _observed_inputs, latency
    from envs.registry import make_team_env

    policy, metadata = load_policy(checkpoint / ckpt.POLICY)
    inputs = _observed_inputs(policy, metadata["env"], steps=30)  # crosses the end of a 25-step episode
    env = make_team_env("mpe_spread", metadata["env"]["options"], use_state=True)
    first, _ = env.reset(seed=0)
    obs, mask, alive, history = inputs[0]
    np.testing.assert_array_equal(obs[0].numpy(), first["obs"])
    assert len(inputs) == 30 and mask.shape == (1, 3, 5) and alive.shape == (1, 3) and history is None
    result = latency(str(checkpoint), repeats=3)
    assert set(result) == {"full_depth_no_exits", "gates_decide", "exit_at_0", "exit_at_1", "exit_at_2"}
    assert all(seconds > 0 for seconds in result.values())
