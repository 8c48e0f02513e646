"""A real two-node Ray cluster on this machine: `ray job submit` trains, its EnvRunner runs on the second node.

The head (1 CPU, with the dashboard that serves job submission) and a worker node (1 CPU and the custom
resource `rollout`) are separate `ray start --block` processes in their own process groups, so the test stops
exactly them (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from agents import checkpoints as ckpt

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))
# Ray 2.60's `ray start` turns on token authentication (the token is in ~/.ray/auth_token); every process that
# talks to this cluster must be in token mode too.
ENV = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token", "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _node_ports() -> list[str]:
    """Fresh ports for what Ray would otherwise put on fixed defaults (the dashboard agent's 52365 is taken when
    another Ray runs on this machine, and then the head accepts no job)."""
    names = (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    )
    return [f"--{name}={_free_port()}" for name in names]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**ENV, "RAY_USAGE_STATS_ENABLED": "0"}
    with log.open("w") as out:
        return subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1", *_node_ports(), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory) -> Iterator[dict[str, str]]:
    logs = tmp_path_factory.mktemp("ray_logs")
    gcs, dashboard = _free_port(), _free_port()
    head = _start(
        [
            "--head",
            f"--port={gcs}",
            "--num-cpus=1",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
        ],
        logs / "head.log",
    )
    procs = [head]
    try:
        address = f"127.0.0.1:{gcs}"
        _wait_for(lambda: _nodes(address) >= 1, 180, "the head node", logs)
        procs.append(_start([f"--address={address}", "--num-cpus=1", '--resources={"rollout": 2}'], logs / "w.log"))
        _wait_for(lambda: _nodes(address) >= 2, 180, "the worker node", logs)
        yield {"address": address, "dashboard": f"http://127.0.0.1:{dashboard}", "logs": str(logs)}
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _nodes(address: str) -> int:
    code = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR');"
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False, env=ENV
    )
    try:
        return int(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return 0


def _wait_for(ready, seconds: float, what: str, logs: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(2)
    tails = {p.name: p.read_text()[-2000:] for p in logs.glob("*.log")}
    raise AssertionError(f"{what} did not come up within {seconds} s; logs: {tails}")


def test_job_submit_trains_with_env_runners_on_the_rollout_node(two_nodes, tmp_path) -> None:
    out = tmp_path / "runs"
    command = [
        RAY,
        "job",
        "submit",
        f"--address={two_nodes['dashboard']}",
        # the job's driver signs its checkpoints with the tests' key (tests/conftest.py), not this user's
        f"--runtime-env-json={json.dumps({'env_vars': {ckpt.KEY_ENV: os.environ[ckpt.KEY_ENV]}})}",
        "--",
        sys.executable,
        "-m",
        "agents.submit",
        "configs/signal.yaml",
        "training.train_batch_size=256",
        "training.minibatch_size=128",
        "training.num_epochs=1",
        "model.embed_dim=16",
        "resources.num_envs_per_env_runner=2",
        "resources.num_env_runners=1",
        "resources.num_cpus_per_env_runner=0.5",
        "resources.custom_resources_per_env_runner.rollout=1",
        "stop.env_steps=512",
        f"run.output_dir={out}",
        "run.name=job",
    ]
    deadline = time.monotonic() + 120
    while True:  # the head's dashboard agent takes a while after the node is up to accept jobs
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=600, check=False, env=ENV, cwd=Path(__file__).parents[2]
        )
        if "No available agent to submit job" not in done.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "succeeded" in done.stdout.lower()

    latest = ckpt.latest_checkpoint(out / "job")
    ckpt.check_resumable(latest)
    assert ckpt.read_meta(latest)["env_steps"] >= 512

    # Where did the EnvRunner actor live? Ray's state API keeps finished jobs' actors with their node.
    code = (
        "import json, ray; from ray.util.state import list_actors;"
        f"ray.init(address={two_nodes['address']!r}, logging_level='ERROR');"
        "rollout = [n['NodeID'] for n in ray.nodes() if n['Resources'].get('rollout')];"
        "runners = [a.node_id for a in list_actors(filters=[('class_name', '=', 'TeamEnvRunner')],"
        " detail=True, raise_on_missing_output=False)];"
        "print(json.dumps({'rollout': rollout, 'runners': runners}))"
    )
    placed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, env=ENV
    )
    where = json.loads(placed.stdout.strip().splitlines()[-1])
    assert len(where["rollout"]) == 1 and where["runners"], where
    assert set(where["runners"]) == set(where["rollout"]), where
