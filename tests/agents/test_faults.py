"""Faults a run survives (an env that raises, a dead EnvRunner, NaN observations) and the give-up rule."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents import checkpoints as ckpt
from agents.config import ConfigError, load_config
from agents.env_runner import EnvFailingError
from agents.faults import FaultLimitError, FaultTracker, check_resources, wait_for_resources
from envs.registry import ENVS, EnvEntry
from envs.signal import SignalEnv, SignalOptions

TINY = [
    "training.train_batch_size=256",
    "training.minibatch_size=128",
    "training.num_epochs=1",
    "model.embed_dim=16",
    "resources.num_envs_per_env_runner=2",
]


# ---------------------------------------------------------------------------------------------------------------
# The counters and the give-up rule, on hand-built results.


def _result(env_errors: float = 0, restarts: float = 0, nonfinite: float = 0, skipped: float = 0) -> dict[str, Any]:
    return {
        "env_runners": {"num_env_step_failures": env_errors, "nonfinite_obs_steps": nonfinite},
        "fault_tolerance": {"num_remote_worker_restarts": restarts},
        "learners": {"default_policy": {"skipped_updates_lifetime": skipped}},
    }


def test_tracker_reports_increments_of_the_lifetime_counters() -> None:
    tracker = FaultTracker(max_bad_iterations=3)
    assert tracker.update(_result()) == dict.fromkeys(tracker.totals, 0.0)
    assert tracker.summary() == ""
    deltas = tracker.update(_result(env_errors=2, restarts=1))
    assert deltas == {"env_errors": 2, "env_runner_restarts": 1, "nonfinite_obs_steps": 0, "skipped_updates": 0}
    assert tracker.bad_streak == 0  # crashes that were repaired are not "bad": nothing keeps coming
    assert tracker.summary() == " | faults: 2 env errors, 1 runner restart"
    assert tracker.update(_result(env_errors=3, restarts=1))["env_errors"] == 1


def test_tracker_survives_a_resume_and_counters_that_restart() -> None:
    """A resumed run neither counts its past faults again nor forgets them (the state travels in checkpoints)."""
    tracker = FaultTracker(max_bad_iterations=1)
    tracker.update(_result(env_errors=2, restarts=1))
    resumed = FaultTracker(max_bad_iterations=1)
    resumed.load(json.loads(json.dumps(tracker.state())))
    # RLlib restores its lifetime metrics with the algorithm, but counts runner restarts from 0 again.
    assert resumed.update(_result(env_errors=2, restarts=0, nonfinite=0)) == dict.fromkeys(resumed.totals, 0.0)
    assert resumed.totals == {"env_errors": 2, "env_runner_restarts": 1, "nonfinite_obs_steps": 0, "skipped_updates": 0}
    deltas = resumed.update(_result(env_errors=3, restarts=1))
    assert deltas["env_errors"] == 1 and deltas["env_runner_restarts"] == 1
    assert resumed.summary() == " | faults: 3 env errors, 2 runner restarts"


def test_tracker_stops_after_max_bad_iterations_in_a_row() -> None:
    tracker = FaultTracker(max_bad_iterations=3)
    tracker.update(_result(nonfinite=5))
    tracker.update(_result(nonfinite=5, skipped=1))
    tracker.update(_result(nonfinite=5, skipped=1))  # a clean iteration resets the streak
    tracker.update(_result(nonfinite=9, skipped=1))
    tracker.update(_result(nonfinite=9, skipped=2))
    with pytest.raises(FaultLimitError, match=r"3 iterations in a row saw non-finite values .* 4 env steps"):
        tracker.update(_result(nonfinite=13, skipped=2))


def test_tracker_stops_after_max_bad_iterations_without_a_sample() -> None:
    tracker = FaultTracker(max_bad_iterations=2)
    tracker.update(_result(), sampled=False)
    tracker.update(_result(), sampled=True)  # a sample resets the streak
    tracker.update(_result(), sampled=False)
    with pytest.raises(FaultLimitError, match=r"2 iterations in a row sampled no env steps: .*/worker-\*\.err"):
        tracker.update(_result(), sampled=False)


def test_a_loop_whose_runners_never_sample_stops_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every EnvRunner dead or restarting: RLlib's result then has no sampled-steps count at all (it crashed the loop
    with "cannot convert float NaN to integer"); the loop shows the idle iterations and stops after the limit."""
    from agents.rl_module import TeamDims
    from agents.tensorboard import RunLogger
    from agents.train import _Run

    class NoRunners:
        iteration = 0

        def train(self) -> dict[str, Any]:
            self.iteration += 1
            return {"env_runners": {}, "fault_tolerance": {"num_healthy_workers": 0}}

    config = load_config("configs/signal.yaml", [*TINY, "faults.max_bad_iterations=3", "run.checkpoint_every=1000"])
    out = io.StringIO()
    session = _Run(config, tmp_path / "r", TeamDims(3, 18, 5, None), NoRunners(), out)
    monkeypatch.setattr(RunLogger, "log_graph", lambda *a, **k: None)  # no learner to draw the graph of
    monkeypatch.setattr(session, "snapshot", lambda: types.SimpleNamespace(trunk=types.SimpleNamespace(graph=None)))
    with pytest.raises(FaultLimitError, match="3 iterations in a row sampled no env steps"):
        session.loop(0)
    assert out.getvalue().count("steps          0/") == 3, out.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Resources the cluster does not have are refused before any actor is started.


def test_gpu_learner_in_a_driver_without_cuda_is_refused() -> None:
    config = load_config("configs/signal.yaml", ["resources.num_gpus_per_learner=1"])
    with pytest.raises(ConfigError, match=r"num_gpus_per_learner=1.0 with resources.num_learners=0 .* no CUDA"):
        check_resources(config, {"CPU": 2.0}, cuda_in_driver=False)
    check_resources(config, {"CPU": 2.0}, cuda_in_driver=True)  # the driver's own GPU: fine


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["resources.num_learners=1", "resources.num_gpus_per_learner=1"],
            r"asks for 1 GPUs \(for the Learners\) but the cluster has 0",
        ),
        (["resources.num_env_runners=3"], r"asks for 3 CPUs \(for the EnvRunners\) but the cluster has 2"),
        (
            ["resources.num_env_runners=1", "resources.num_learners=1"],
            r"asks for 2 CPUs \(for the EnvRunners and Learners\) but the cluster has 1",
        ),
        (
            ["resources.num_env_runners=1", "resources.custom_resources_per_env_runner.rollout=1"],
            r"1 units of the custom resource 'rollout' \(for the EnvRunners\) but the cluster has 0",
        ),
    ],
)
def test_resources_the_cluster_lacks_are_refused(overrides: list[str], message: str) -> None:
    config = load_config("configs/signal.yaml", overrides)
    cpus = 1.0 if "resources.num_learners=1" in overrides and "resources.num_env_runners=1" in overrides else 2.0
    with pytest.raises(ConfigError, match=message):
        check_resources(config, {"CPU": cpus}, cuda_in_driver=False)


def test_a_growing_cluster_is_asked_for_the_actors_and_awaited() -> None:
    """On a joined cluster the autoscaler gets one bundle per actor, and the run starts once the nodes are up."""
    config = load_config(
        "configs/signal.yaml",
        [
            "resources.num_env_runners=2",
            "resources.custom_resources_per_env_runner.rollout=1",
            "resources.num_learners=1",
            "resources.num_gpus_per_learner=1",
        ],
    )
    cluster = iter([{"CPU": 2.0}, {"CPU": 2.0}, {"CPU": 10.0, "GPU": 1.0, "rollout": 16.0}])
    requested: list[list[dict[str, float]]] = []
    out = io.StringIO()
    wait_for_resources(config, lambda: next(cluster), requested.append, timeout_s=5, out=out, poll_s=0.01)
    assert requested == [[{"CPU": 1.0, "rollout": 1.0}, {"CPU": 1.0, "rollout": 1.0}, {"CPU": 1.0, "GPU": 1.0}]]
    assert out.getvalue().startswith("waiting up to 5 s for the cluster to add nodes: the resources section asks")


def test_a_cluster_that_does_not_grow_in_time_is_refused_by_name() -> None:
    config = load_config("configs/signal.yaml", ["resources.num_learners=1", "resources.num_gpus_per_learner=1"])
    polls = []

    def available() -> dict[str, float]:
        polls.append(1)
        return {"CPU": 4.0}

    wait_for_resources(config, available, None, timeout_s=0.05, out=io.StringIO(), poll_s=0.01)
    assert len(polls) >= 2  # it polled until the deadline
    with pytest.raises(ConfigError, match=r"asks for 1 GPUs \(for the Learners\)"):
        check_resources(config, available(), cuda_in_driver=False)


def test_resources_the_cluster_has_are_accepted() -> None:
    config = load_config(
        "configs/signal.yaml",
        [
            "resources.num_env_runners=2",
            "resources.num_cpus_per_env_runner=0.5",
            "resources.custom_resources_per_env_runner.rollout=1",
            "resources.num_learners=2",
            "resources.num_gpus_per_learner=0.5",
        ],
    )
    assert config.resources.demand() == {"CPU": 3.0, "GPU": 1.0, "rollout": 2.0}
    check_resources(config, {"CPU": 3.0, "GPU": 1.0, "rollout": 2.0}, cuda_in_driver=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("resources.custom_resources_per_env_runner.rollout=0", r"custom_resources_per_env_runner.rollout=0"),
        ("resources.custom_resources_per_env_runner=3", r"custom_resources_per_env_runner=3; expected a mapping"),
        ("faults.max_bad_iterations=0", r"faults.max_bad_iterations=0; expected a value > 0"),
        ("faults.env_runner_restart_delay_s=-1", r"faults.env_runner_restart_delay_s=-1.0; expected a value >= 0"),
    ],
)
def test_bad_fault_and_resource_keys_are_named(override: str, message: str) -> None:
    overrides = ["resources.num_env_runners=1", override]
    with pytest.raises(ConfigError, match=message):
        load_config("configs/signal.yaml", overrides)


def test_custom_resources_without_remote_runners_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"num_env_runners=0 .* expected num_env_runners >= 1"):
        load_config("configs/signal.yaml", ["resources.custom_resources_per_env_runner.rollout=1"])


# ---------------------------------------------------------------------------------------------------------------
# Real training with injected faults (sampling in the driver, so the test's env table is the one used).


class _FaultySignal(SignalEnv):
    """The signal env, raising in step() at the given counts of steps (over all copies), or with NaN observations.

    RLlib restarts the sample() call in which an env fails, so failures must be rarer than one per iteration for
    an iteration to complete (as real env errors are).
    """

    steps = 0  # shared by every copy in this process

    def __init__(self, options: SignalOptions, *, raise_at: tuple[int, ...] = (), nan: bool = False) -> None:
        super().__init__(options)
        self.raise_at, self.nan = raise_at, nan

    def step(self, actions: dict[str, Any]) -> Any:
        type(self).steps += 1
        if type(self).steps in self.raise_at:
            raise RuntimeError("injected env failure")
        obs, *rest = super().step(actions)
        if self.nan:
            obs = {agent: np.full_like(o, np.nan) for agent, o in obs.items()}
        return (obs, *rest)


@pytest.fixture
def faulty_env(monkeypatch: pytest.MonkeyPatch):
    def install(**kwargs: Any) -> str:
        entry = EnvEntry(SignalOptions, lambda options, render_mode=None: _FaultySignal(options, **kwargs), "faulty")
        monkeypatch.setitem(ENVS, "faulty_signal", entry)
        return "faulty_signal"

    return install


def _train(tmp_path: Path, overrides: list[str]) -> tuple[Path, str]:
    from agents.train import prepare_run, train

    config, run_dir = prepare_run("configs/signal.yaml", [*TINY, f"run.output_dir={tmp_path}", *overrides], None)
    out = io.StringIO()
    try:
        train(config, run_dir, out=out)
    finally:
        print(out.getvalue())
    return run_dir, out.getvalue()


def test_env_that_raises_drops_episodes_and_training_goes_on(ray_session, tmp_path, faulty_env) -> None:
    _FaultySignal.steps = 0
    name = faulty_env(raise_at=(100, 700))
    run_dir, out = _train(tmp_path, [f"env.name={name}", "stop.env_steps=1024", "run.name=r"])
    meta = ckpt.read_meta(ckpt.latest_checkpoint(run_dir))
    assert meta["env_steps"] >= 1024
    assert out.rstrip().splitlines()[-2].endswith("| faults: 2 env errors")  # the last progress line


def test_an_env_that_fails_in_every_sample_stops_the_run_naming_its_error(ray_session, tmp_path, faulty_env) -> None:
    """An env that raises every 30 steps never lets one sample() call of the batch complete (each failure starts the
    call over): without a limit the run sampled forever in silence. It stops with the env's own error."""
    _FaultySignal.steps = 0
    name = faulty_env(raise_at=tuple(range(30, 100_000, 30)))
    with pytest.raises(EnvFailingError, match=r"raised in step\(\) 10 times .* RuntimeError: injected env failure"):
        _train(tmp_path, [f"env.name={name}", "stop.env_steps=1024", "run.name=f"])


def test_nan_observations_are_counted_and_a_run_that_keeps_them_stops(ray_session, tmp_path, faulty_env) -> None:
    name = faulty_env(nan=True)
    with pytest.raises(FaultLimitError, match="2 iterations in a row saw non-finite values"):
        _train(
            tmp_path,
            [
                f"env.name={name}",
                "stop.env_steps=5000",
                "run.name=n",
                "faults.max_bad_iterations=2",
                "run.checkpoint_every=1",
            ],
        )
    latest = ckpt.latest_checkpoint(tmp_path / "n")  # the iteration before the stop was saved and is resumable
    ckpt.check_resumable(latest)
    assert ckpt.read_meta(latest)["iteration"] == 1


@pytest.mark.parametrize("sample_ahead", [False, True])
def test_dead_env_runner_is_replaced(ray_session, tmp_path, sample_ahead) -> None:
    """Kill the only remote EnvRunner's process while it samples: RLlib restarts it and training goes on (with
    `training.sample_ahead` the sample in flight is lost and the restarted runner starts the next one)."""
    from agents.build import build_ppo_config, probe_env

    config = load_config(
        "configs/signal.yaml",
        [
            *TINY,
            "resources.num_env_runners=1",
            "resources.num_cpus_per_env_runner=0.5",
            "faults.env_runner_restart_delay_s=0",
            f"training.sample_ahead={str(sample_ahead).lower()}",
        ],
    )
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    tracker = FaultTracker(config.faults.max_bad_iterations, env_runners=1)
    try:
        first = algo.train()
        pid = algo.env_runner_group.foreach_env_runner(lambda runner: os.getpid(), local_env_runner=False)[0]
        killer = threading.Timer(0.3, os.kill, (pid, signal.SIGKILL))  # lands inside the next train() call
        killer.start()
        try:
            algo.train()
        finally:
            killer.join()
        steps = first["env_runners"]["num_env_steps_sampled_lifetime"]
        seen_down = False
        deadline = time.monotonic() + 300  # Ray restarts the actor process; slow on a loaded 2-core machine
        while time.monotonic() < deadline:
            result = algo.train()
            tracker.update(result)
            seen_down |= tracker.summary().startswith(" | faults: 0/1 runners up")
            if (
                tracker.totals["env_runner_restarts"] >= 1
                and result["env_runners"]["num_env_steps_sampled_lifetime"] > steps + 256
            ):
                break
        assert seen_down  # the progress line says so while the runner is being replaced
        assert tracker.totals["env_runner_restarts"] >= 1
        assert tracker.summary() == " | faults: 1 runner restart"
        assert result["env_runners"]["num_env_steps_sampled_lifetime"] > steps + 256
        assert math.isfinite(result["env_runners"].get("episode_return_mean", math.nan))
    finally:
        algo.stop()
