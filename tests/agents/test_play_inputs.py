"""`commformer evaluate` and `commformer rollout` turn every bad input into a one-line error with exit status 2,
before any episode is played: damaged policy files, a policy that does not fit the env, a negative seed, output
paths that cannot be written. In-process (`agents.cli.main`), on a checkpoint written by hand: no Ray."""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import agents.play
from agents import checkpoints as ckpt
from agents.cli import main
from agents.play import make_play_env
from commformer.config import ModelConfig
from commformer.export import SPEC, WEIGHTS, save_policy
from commformer.policy import CommFormerPolicy

ENV = {"name": "mpe_spread", "options": {"n_agents": 3, "max_cycles": 4}, "team_reward": "mean", "use_state": True}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete checkpoint as `commformer train` writes it (meta.json + policy/), of a small untrained policy."""
    path = tmp_path_factory.mktemp("run") / "iter_000001"
    env = make_play_env(ENV)
    state = env.observation_space["state"].shape[0]
    dims = {"n_agents": env.n_agents, "obs_dim": env.obs_dim, "n_actions": env.n_actions, "state_dim": state}
    env.close()
    torch.manual_seed(0)
    policy = CommFormerPolicy(
        ModelConfig(embed_dim=8, num_heads=2), dims["n_agents"], dims["obs_dim"], dims["n_actions"], state
    )
    save_policy(policy, path / ckpt.POLICY, dims, {"env": ENV, "iteration": 1, "env_steps": 0})
    (path / ckpt.META).write_text(json.dumps({"iteration": 1, "env_steps": 0}))
    return path


def _spec(path: Path) -> dict[str, Any]:
    return json.loads((path / ckpt.POLICY / SPEC).read_text())


def _write_spec(path: Path, spec: Any) -> None:
    (path / ckpt.POLICY / SPEC).write_text(json.dumps(spec))


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        spec = _spec(path)
        change(spec)
        _write_spec(path, spec)

    return edit


def _text(text: str) -> Callable[[Path], None]:
    return lambda path: (path / ckpt.POLICY / SPEC).write_text(text)


def _weights_overwritten(path: Path) -> None:
    """Every tensor byte replaced, the safetensors header (8-byte length + JSON) intact: loads, plays NaN before."""
    weights = path / ckpt.POLICY / WEIGHTS
    raw = weights.read_bytes()
    start = 8 + struct.unpack("<Q", raw[:8])[0]
    weights.write_bytes(raw[:start] + b"\x3f" * (len(raw) - start))


def _dims(**changes: int) -> Callable[[Path], None]:
    return _edit(lambda spec: spec["dims"].update(changes))


def _env(**changes: Any) -> Callable[[Path], None]:
    return _edit(lambda spec: spec["metadata"]["env"].update(changes))


def _no_env(spec: dict[str, Any]) -> None:
    del spec["metadata"]["env"]


BAD_POLICIES = [
    (_text("[1, 2, 3]"), "policy.json' holds a JSON list; expected a commformer-policy description", None),
    (_text("[" * 200_000 + "]" * 200_000), "policy.json' is nested too deeply", None),
    (_dims(n_agents=30000), "dims.n_agents=30000; expected an integer in [1, 4096]", None),
    (_dims(n_agents=500), "'encoder.agent_embed.weight' has shape [3, 8] in the file, expected [500, 8]", None),
    (_dims(obs_dim=7), "'encoder.obs_embed.0.weight' has shape [18] in the file, expected [7]", None),
    (_weights_overwritten, "policy.safetensors' has sha256 ", None),
    (_env(name="atari"), "policy.json' names env 'atari', which this build does not have", None),
    (_edit(_no_env), "policy.json' has metadata.env=None; expected the env section", None),
    (_env(options=[3]), "policy.json' has metadata.env.options=[3]; expected an object", None),
    (
        _env(name="mpe_reference", options={"max_cycles": 4}),
        "metadata.env: the policy does not fit env 'mpe_reference' with options {'max_cycles': 4} (agents: policy 3, "
        "env 2;",
        "was trained on 'mpe_reference', not on 'mpe_spread'",
    ),
    (
        _env(options={"n_agents": 4, "max_cycles": 4}),
        "(agents: policy 3, env 4; observation size: policy 18, env 24",
        None,
    ),
    (_env(use_state=False), "state size: policy ", None),
]
"""(damage done to a copy of the checkpoint, the message of evaluate, rollout's where it differs)"""


@pytest.fixture
def no_play(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records every call of the episode loop: a refusal must come before any episode is played."""
    calls: list[int] = []

    def play(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise AssertionError("an episode was played before the input was refused")

    monkeypatch.setattr(agents.play, "play", play)
    return calls


def _exit_status(argv: list[str]) -> int:
    """main's return value, or the status of argparse's SystemExit."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


@pytest.mark.parametrize(("damage", "message", "rollout_message"), BAD_POLICIES)
@pytest.mark.parametrize("command", ["evaluate", "rollout"])
def test_a_bad_policy_is_refused_in_one_line_before_playing(
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    no_play: list,
    command: str,
    damage: Callable[[Path], None],
    message: str,
    rollout_message: str | None,
) -> None:
    copy = tmp_path / "ck"
    shutil.copytree(checkpoint, copy)
    damage(copy)
    if command == "evaluate":
        argv = ["evaluate", str(copy), "--episodes", "1"]
    else:
        argv = ["rollout", "mpe_spread", "--checkpoint", str(copy)]
        message = rollout_message or message
    assert _exit_status(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"commformer {command}: error: ") and err.count("\n") == 1, err
    assert message in err
    assert no_play == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rollout", "mpe_spread", "n_agents=5", "--checkpoint", "{ck}"], "agents: policy 3, env 5"),
        (["rollout", "mpe_spread", "n_agents=5", "--checkpoint", "{ck}"], "env 'mpe_spread' with options"),
        (["rollout", "mpe_reference", "--checkpoint", "{ck}"], "was trained on 'mpe_spread', not on 'mpe_reference'"),
        (["evaluate", "{ck}", "--seed", "-1"], "seed must be >= 0"),
        (["rollout", "mpe_spread", "--seed", "-1"], "seed must be >= 0"),
        (["rollout", "mpe_spread", "--seed", "x"], "expected an integer seed"),
        (["evaluate", "{ck}", "--seed", str(2**32)], "seed must be >= 0 and <= 4294967295"),
        (["evaluate", "{ck}", "--json", "{tmp}"], "--json '{tmp}' is a directory; expected the path of a file"),
        (["evaluate", "{ck}", "--render", "{tmp}/d.gif"], "--render '{tmp}/d.gif' is a directory"),
        (["evaluate", "{ck}", "--json", "{tmp}/f/out.json"], "--json '{tmp}/f/out.json' cannot be written"),
        (["evaluate", "{ck}", "--render", "{tmp}/f/a/b.gif"], "--render '{tmp}/f/a/b.gif' cannot be written"),
        (["evaluate", "{ck}", "--json", "/proc/commformer.json"], "--json '/proc/commformer.json' cannot be written"),
        (["rollout", "mpe_spread", "--render", "{tmp}/d.gif"], "--render '{tmp}/d.gif' is a directory"),
        (["rollout", "mpe_spread", "--render", "{tmp}/f/r.gif"], "--render '{tmp}/f/r.gif' cannot be written"),
    ],
)
def test_bad_arguments_exit_2_with_a_named_error_before_playing(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_play: list, argv: list, message: str
) -> None:
    (tmp_path / "d.gif").mkdir()
    (tmp_path / "f").write_text("a file")
    argv = [a.format(ck=checkpoint, tmp=tmp_path) for a in argv]
    assert _exit_status(argv) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err
    assert err.strip().splitlines()[-1].startswith("commformer ")
    assert no_play == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_directory_is_refused_before_playing(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_play: list
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["evaluate", str(checkpoint), "--json", str(locked / "out.json")]) == 2
    finally:
        locked.chmod(0o700)
    assert "out.json' cannot be written" in capsys.readouterr().err


def test_good_inputs_still_play_and_write_their_files(checkpoint: Path, tmp_path: Path) -> None:
    """The checks refuse nothing that works: new parent directories are created, an existing file is replaced."""
    out, gif = tmp_path / "new" / "dir" / "e.json", tmp_path / "r.gif"
    gif.write_bytes(b"old")
    assert main(["evaluate", str(checkpoint), "--episodes", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["episodes"] == 2
    argv = ["rollout", "mpe_spread", "--checkpoint", str(checkpoint), "--episodes", "1", "--render", str(gif)]
    assert main(argv) == 0
    assert gif.read_bytes()[:3] == b"GIF"
