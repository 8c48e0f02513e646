"""A training process killed with SIGKILL leaves its last checkpoint intact, and `--resume` continues from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from agents import checkpoints as ckpt
from commformer.export import load_policy

TINY = [
    "training.train_batch_size=200",
    "training.minibatch_size=100",
    "training.num_epochs=1",
    "model.embed_dim=16",
    "resources.num_envs_per_env_runner=2",
    "run.checkpoint_every=1",
]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from agents.cli import main; sys.exit(main())", *args]


def test_sigkill_mid_training_then_resume(tmp_path):
    run_dir = tmp_path / "k"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _cli(
            "train", "configs/signal.yaml", *TINY, "stop.env_steps=1000000", f"run.output_dir={tmp_path}", "run.name=k"
        ),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill takes Ray's processes down with it
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = sorted((run_dir / "checkpoints").glob("iter_*/meta.json")) if run_dir.exists() else []
            if len(done) >= 3:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("training wrote no checkpoints within 120 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up: the worst case
        proc.wait(timeout=30)

    latest = ckpt.latest_checkpoint(run_dir)
    meta = ckpt.read_meta(latest)
    assert meta["env_steps"] == 200 * meta["iteration"]
    load_policy(latest / ckpt.POLICY)  # the exported policy of the surviving checkpoint is complete

    target = meta["env_steps"] + 400
    resumed = subprocess.run(
        _cli("train", "--resume", str(run_dir), f"stop.env_steps={target}"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {latest}" in resumed.stdout
    final = ckpt.read_meta(ckpt.latest_checkpoint(run_dir))
    # no step counted twice: the counter goes on from the checkpoint, two iterations of 200 steps
    assert final == {"iteration": meta["iteration"] + 2, "env_steps": target}


def test_sigterm_stops_like_ctrl_c(tmp_path):
    """With a remote EnvRunner: SIGTERM (what `kill`, systemd and schedulers send) gives a clean stop: status 143, a
    sentence, the last checkpoint complete and resumable (it used to abort through Ray's own handler, status -6)."""
    run_dir = tmp_path / "t"
    proc = subprocess.Popen(
        _cli(
            "train",
            "configs/signal.yaml",
            *TINY,
            "resources.num_env_runners=1",
            "stop.env_steps=1000000",
            f"run.output_dir={tmp_path}",
            "run.name=t",
        ),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "LATEST").exists():
            assert time.monotonic() < deadline, "training wrote no checkpoint within 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # the trainer alone, as `kill PID` does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM); the last complete checkpoint is intact" in err
    assert "max_restarts > 0" not in err  # Ray's harmless error-level line about the EnvRunners is kept off
    ckpt.check_resumable(ckpt.latest_checkpoint(run_dir))
