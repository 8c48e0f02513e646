"""Bad input to `commformer train`, second pass: each case is a command and the exit status and message fragment
it must give, refused before Ray starts (`ray.is_initialized()` stays False; `init_ray` is replaced by a function
that fails the test). Resumes are tried on a checkpoint written by hand (the files `--resume` checks, signed as
`commformer train` signs them), so no training is needed; tests/agents/test_train_cli.py resumes real runs.
"""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agents import checkpoints as ckpt
from agents.cli import main
from agents.config import load_config, save_config

SPREAD = "configs/mpe_spread.yaml"


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.train

    def refuse() -> bool:
        raise AssertionError("Ray was started for input that should have been refused first")

    monkeypatch.setattr(agents.train, "init_ray", refuse)


def _yaml(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


TRAIN_CASES: list[tuple[str, list[str], str]] = [
    ("nan lr", [SPREAD, "training.lr=.nan"], "training.lr=nan; expected a finite number"),
    ("inf lr", [SPREAD, "training.lr=.inf"], "training.lr=inf; expected a finite number"),
    ("nan graph lr", [SPREAD, "training.graph_lr=.nan"], "training.graph_lr=nan; expected a finite number"),
    ("nan gate cost", [SPREAD, "model.gates.cost_weight=.nan"], "model.gates.cost_weight=nan; expected a finite"),
    ("nan env option", [SPREAD, "env.options.local_ratio=.nan"], "env.options.local_ratio must be finite"),
    ("half a step", [SPREAD, "stop.env_steps=2.5"], "stop.env_steps=2.5; expected an integer"),
    ("a million env copies", [SPREAD, "resources.num_envs_per_env_runner=1000000"], "expected at most 4096"),
    ("a huge width", [SPREAD, "model.embed_dim=100000000"], "model.embed_dim=100000000; expected an integer in"),
    ("a huge depth", [SPREAD, "model.num_blocks=100000"], "model.num_blocks=100000; expected an integer in"),
    ("a huge team", [SPREAD, "env.options.n_agents=10000"], "env.options.n_agents must be in [1, 1024]"),
    ("a huge grid", ["configs/predator_prey_10x10.yaml", "env.options.dim=100000"], "env.options.dim must be <="),
    ("absolute run name", [SPREAD, "run.name=/tmp/elsewhere"], "run.name='/tmp/elsewhere'; expected a single"),
    ("run name that climbs", [SPREAD, "run.name=../../x"], "run.name='../../x'; expected a single"),
    ("empty run name", [SPREAD, "run.name="], "run.name=''; expected a single"),
    ("a GPU on a machine without one", [SPREAD, "resources.num_gpus_per_learner=1"], "sees no CUDA device"),
    ("more runners than CPUs", [SPREAD, "resources.num_env_runners=64"], "but this machine has"),
    ("trust without resume", [SPREAD, "--trust-checkpoint"], "--trust-checkpoint applies to --resume"),
]


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_before_ray(argv: list[str], message: str, tmp_path: Path, capsys: Any) -> None:
    argv = [argv[0], f"run.output_dir={tmp_path}", *argv[1:]]
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())  # nothing left behind


FILE_CASES: list[tuple[str, bytes, str]] = [
    ("binary", bytes(range(256)) * 4, "is not UTF-8 text"),
    ("duplicate section", b"training:\n  lr: 0.001\ntraining:\n  gamma: 0.9\n", "'training' a second time"),
    ("duplicate key", b"run:\n  seed: 1\n  seed: 2\n", "'seed' a second time (first on line 2)"),
    ("deep nesting", b"a: " + b"[" * 200_000 + b"]" * 200_000 + b"\n", "nested too deeply"),
    ("a list", b"- 1\n- 2\n", "must hold a mapping at the top level"),
]


@pytest.mark.parametrize(("content", "message"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_config_files_that_are_not_configs(content: bytes, message: str, tmp_path: Path, capsys: Any) -> None:
    assert main(["train", _yaml(tmp_path, "bad.yaml", content)]) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_a_directory_as_config(tmp_path: Path, capsys: Any) -> None:
    assert main(["train", str(tmp_path)]) == 2
    assert "is a directory; expected a YAML file" in capsys.readouterr().err


def test_ordinary_number_notation_is_read_as_numbers() -> None:
    """YAML 1.1 (PyYAML) reads 1e-3 and 1e6 as strings; every config and override reads them as numbers."""
    config = load_config(SPREAD, ["training.lr=1e-3", "stop.env_steps=1e6", "training.graph_lr=2E-4"])
    assert config.training.lr == 0.001 and config.training.graph_lr == 0.0002
    assert config.stop.env_steps == 1_000_000 and isinstance(config.stop.env_steps, int)
    assert load_config(SPREAD, ["run.name='1e3'"]).run.name == "1e3"  # quoted stays a string


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_an_output_dir_that_cannot_hold_the_run(kind: str, tmp_path: Path, capsys: Any) -> None:
    if kind == "file":
        target = tmp_path / "f"
        target.write_text("")
        expected = "is not a directory"
    else:
        target = Path("/proc/commformer-runs")  # /proc refuses new files, even to root
        expected = "is not writable"
    assert main(["train", SPREAD, f"run.output_dir={target}"]) == 2
    assert expected in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------------
# Resumes, on a checkpoint written by hand.


def _fake_run(tmp_path: Path, env_steps: int = 800, sign: bool = True) -> Path:
    """A run directory with one complete checkpoint holding the files `--resume` checks before Ray starts."""
    run_dir = tmp_path / "run"
    config = load_config(SPREAD, [f"run.output_dir={tmp_path}", "run.name=run", "stop.env_steps=800"])
    run_dir.mkdir()
    save_config(config, run_dir / ckpt.CONFIG)

    def fill(tmp: Path) -> None:
        for part in ckpt.RESUMABLE:
            path = tmp / part
            path.parent.mkdir(parents=True, exist_ok=True)
            if part.endswith("learner_group"):
                path.mkdir()
                (path / "state.pkl").write_bytes(b"learner state")
            else:
                path.write_bytes(b"rllib state")
        if sign:
            ckpt.sign_algorithm(tmp)

    ckpt.write_checkpoint(run_dir, 2, env_steps, fill, keep=2)
    return run_dir


def _snapshot(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


RESUME_CASES: list[tuple[str, list[str], str]] = [
    ("fewer agents", ["env.options.n_agents=5"], "env.options.n_agents=5 differs from the run's 3"),
    ("another env", ["env.name=signal"], "env.name='signal' differs from the run's 'mpe_spread'"),
    ("a wider model", ["model.embed_dim=32"], "model.embed_dim=32 differs from the run's 64"),
    ("another seed", ["run.seed=7"], "run.seed=7 differs"),
    ("a config file too", [SPREAD], "give either a CONFIG file or --resume RUN_DIR, not both"),
]


@pytest.mark.parametrize(("extra", "message"), [c[1:] for c in RESUME_CASES], ids=[c[0] for c in RESUME_CASES])
def test_a_resume_that_cannot_follow_its_checkpoint_is_refused_and_changes_nothing(
    extra: list[str], message: str, tmp_path: Path, capsys: Any
) -> None:
    run_dir = _fake_run(tmp_path)
    before = _snapshot(run_dir)
    config = [a for a in extra if a.endswith(".yaml")]
    overrides = [a for a in extra if not a.endswith(".yaml")]
    assert main(["train", *config, "stop.env_steps=1600", *overrides, "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize("stop", [800, 400])
def test_a_resume_with_nothing_to_train_says_so_and_changes_nothing(stop: int, tmp_path: Path, capsys: Any) -> None:
    run_dir = _fake_run(tmp_path)
    before = _snapshot(run_dir)
    assert main(["train", "--resume", str(run_dir), f"stop.env_steps={stop}"]) == 0
    assert f"nothing to train: '{run_dir}' is at 800 env steps and stop.env_steps={stop}" in capsys.readouterr().out
    assert _snapshot(run_dir) == before


def _tamper(checkpoint: Path, how: str) -> str:
    """Changes a signed checkpoint the way `how` says; returns the refusal's expected fragment."""
    if how == "planted pickle":
        (checkpoint / ckpt.ALGORITHM / "learner_group" / "evil.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")
        return "changed since it was written (learner_group/evil.pkl)"
    if how == "edited pickle":
        (checkpoint / ckpt.ALGORITHM / "algorithm_state.pkl").write_bytes(b"other state")
        return "changed since it was written (algorithm_state.pkl)"
    if how == "no manifest":
        (checkpoint / ckpt.MANIFEST).unlink()
        return f"it has no '{ckpt.MANIFEST}'"
    if how == "damaged manifest":
        (checkpoint / ckpt.MANIFEST).write_text("[1, 2")
        return "is damaged"
    if how == "forged manifest":  # hashes that match, signed by a key that is not this user's
        manifest = json.loads((checkpoint / ckpt.MANIFEST).read_text())
        manifest["hmac"] = "0" * 64
        (checkpoint / ckpt.MANIFEST).write_text(json.dumps(manifest))
        return "was not signed with this user's key"
    raise AssertionError(how)


TAMPERING = ["planted pickle", "edited pickle", "no manifest", "damaged manifest", "forged manifest"]


@pytest.mark.parametrize("how", TAMPERING)
def test_a_resume_of_a_checkpoint_not_known_to_be_yours(
    how: str, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before anything is unpickled, unless --trust-checkpoint; then the run says why at start."""
    import agents.train

    run_dir = _fake_run(tmp_path)
    expected = _tamper(ckpt.latest_checkpoint(run_dir), how)
    before = _snapshot(run_dir)
    assert main(["train", "--resume", str(run_dir), "stop.env_steps=1600"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "--trust-checkpoint" in err and "can run any code" in err, err
    assert _snapshot(run_dir) == before

    trained: list[Path] = []
    monkeypatch.setattr(agents.train, "train", lambda config, run_dir, resume: trained.append(run_dir))
    assert main(["train", "--resume", str(run_dir), "stop.env_steps=1600", "--trust-checkpoint"]) == 0
    assert trained == [run_dir]
    err = capsys.readouterr().err
    assert "warning: resuming" in err and expected in err


def test_overrides_after_an_option_are_still_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --resume RUN stop.env_steps=N` (argparse alone would call the override unrecognised); a stray word
    that is not key=value is still refused."""
    import agents.train

    run_dir = _fake_run(tmp_path)
    seen: list[int] = []
    monkeypatch.setattr(agents.train, "train", lambda config, run_dir, resume: seen.append(config.stop.env_steps))
    assert main(["train", "--resume", str(run_dir), "stop.env_steps=1600"]) == 0
    assert main(["train", "run.seed=1", "--resume", str(run_dir), "stop.env_steps=2400"]) == 2  # seed is fixed
    assert seen == [1600]
    assert main(["train", "--resume", str(run_dir), "stray"]) == 2  # read as a CONFIG beside --resume: refused
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(run_dir), "stop.env_steps=1600", "--bogus"])


def test_a_signed_checkpoint_resumes_without_a_word(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agents.train

    run_dir = _fake_run(tmp_path)
    monkeypatch.setattr(agents.train, "train", lambda config, run_dir, resume: None)
    assert main(["train", "--resume", str(run_dir), "stop.env_steps=1600"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_signing_key_is_private_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ckpt.KEY_ENV, str(tmp_path / "keys" / "k"))
    checkpoint = ckpt.latest_checkpoint(_fake_run(tmp_path))
    key = tmp_path / "keys" / "k"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    assert ckpt.algorithm_trust(checkpoint) is None
    monkeypatch.setenv(ckpt.KEY_ENV, str(tmp_path / "other-user"))  # another user's key cannot vouch for it
    assert "was not signed with this user's key" in (ckpt.algorithm_trust(checkpoint) or "")


def test_a_run_whose_first_save_failed_can_start_again(tmp_path: Path) -> None:
    """A full disk at the first save leaves an empty checkpoints/; the same run name must not be a trap."""
    from agents.train import prepare_run

    (tmp_path / "r" / ckpt.CHECKPOINTS).mkdir(parents=True)
    config, run_dir = prepare_run(SPREAD, [f"run.output_dir={tmp_path}", "run.name=r"], None)
    assert run_dir == tmp_path / "r"
    save_config(config, run_dir / ckpt.CONFIG)  # what the failed first run left, besides the empty checkpoints/
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        prepare_run(None, [], str(run_dir))


def test_a_failed_save_names_the_cause_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    """Disk full while a checkpoint is written: a sentence saying so, the previous checkpoint and LATEST intact."""
    from agents.rl_module import TeamDims
    from agents.train import _Run

    run_dir = _fake_run(tmp_path)
    before = _snapshot(run_dir)

    class FullDisk:
        iteration = 3

        def save_to_path(self, path: str) -> None:
            Path(path).mkdir(parents=True)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    config = load_config(run_dir / ckpt.CONFIG)
    session = _Run(config, run_dir, TeamDims(3, 18, 5, None), FullDisk(), io.StringIO())
    with pytest.raises(ckpt.CheckpointError) as caught:
        session.save(3, 1200)
    message = str(caught.value)
    assert "No space left on device" in message and "iter_000002" in message and f"--resume {run_dir}" in message
    assert _snapshot(run_dir) == before  # no half-written checkpoint, LATEST unchanged


def test_tensorboard_drops_the_steps_a_resume_redoes(tmp_path: Path) -> None:
    """Steps logged after the last checkpoint by a process that then died appear once, as the resumed run logs them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agents.tensorboard import RunLogger

    first = RunLogger(tmp_path, purge_step=0)
    for step in (100, 200, 300, 400):  # checkpoint at 200; the process dies after logging 400
        first.writer.add_scalar("x", float(step), step)
    first.close()
    resumed = RunLogger(tmp_path, purge_step=201)
    for step in (300, 400):
        resumed.writer.add_scalar("x", -float(step), step)
    resumed.close()
    events = EventAccumulator(str(tmp_path)).Reload().Scalars("x")
    assert [(e.step, e.value) for e in events] == [(100, 100.0), (200, 200.0), (300, -300.0), (400, -400.0)]


def test_a_disk_fault_while_training_is_a_sentence(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk outside the checkpoint writer (TensorBoard, config.yaml) ends with a sentence and status 1; an
    OSError that is not a disk fault keeps its traceback."""
    import agents.train

    def full(config: Any, run_dir: Path, resume: bool) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / "events.out.tfevents.1"))

    monkeypatch.setattr(agents.train, "train", full)
    assert main(["train", SPREAD, f"run.output_dir={tmp_path}", "run.name=d"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"commformer train: error: No space left on device ('{tmp_path / 'd' / 'events.out.tfevents.1'}')"
    )

    def refused(config: Any, run_dir: Path, resume: bool) -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    monkeypatch.setattr(agents.train, "train", refused)
    with pytest.raises(ConnectionRefusedError):
        main(["train", SPREAD, f"run.output_dir={tmp_path}", "run.name=e"])
