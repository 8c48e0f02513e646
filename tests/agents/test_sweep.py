"""`commformer sweep`: a grid of 2 values x 2 seeds really runs as 4 Tune trials, each an ordinary run directory;
re-running the same command skips finished trials and runs only what is missing; bad specs are refused before Ray
starts; and the training driver runs in a Tune trial's worker thread, where no signal handler can be installed."""

from __future__ import annotations

import csv
import math
import signal
import threading
from pathlib import Path

import pytest

from agents import checkpoints as ckpt
from agents.cli import main
from agents.config import ConfigError
from agents.sweep import parse_specs, plan
from agents.train import _stop_on_sigterm, _stop_on_sigterm_in_main_thread

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "signal.yaml")
TINY = [
    "training.train_batch_size=400",
    "training.minibatch_size=200",
    "training.num_epochs=1",
    "model.embed_dim=16",
    "resources.num_envs_per_env_runner=4",
    "stop.env_steps=800",
]
TRIALS = [
    "training.lr=0.001,seed=0",
    "training.lr=0.001,seed=1",
    "training.lr=0.002,seed=0",
    "training.lr=0.002,seed=1",
]


def _sweep(out: Path, capsys) -> str:
    argv = ["sweep", CONFIG, "--seeds", "0", "1", "training.lr=0.001,0.002", *TINY, f"run.output_dir={out}"]
    assert main(argv) == 0
    return capsys.readouterr().out


def _final_return(run_dir: Path) -> float:
    """The last non-empty return_mean of the run's metrics.csv, read with the csv module alone."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [float(r["return_mean"]) for r in rows if r["return_mean"]][-1]


def test_a_sweep_runs_every_trial_as_a_run_and_resumes_without_retraining(tmp_path, capsys):
    out = _sweep(tmp_path, capsys)
    sweep_dir = tmp_path / "signal-sweep"
    assert sorted(p.name for p in sweep_dir.iterdir() if not p.name.startswith(".") and p.is_dir()) == TRIALS
    assert "4 trials, 0 done earlier (skipped), 0 to continue, 4 new" in out
    for name in TRIALS:
        run_dir = sweep_dir / name
        latest = ckpt.latest_checkpoint(run_dir)
        assert ckpt.read_meta(latest)["env_steps"] == 800
        saved = (run_dir / "config.yaml").read_text()
        assert f"seed: {name[-1]}" in saved and f"lr: {name.split('=')[1].split(',')[0]}" in saved
        assert list(run_dir.glob("events.out.tfevents.*"))  # TensorBoard, as any run
    # The summary: each trial's final return, and the mean over seeds per grid point, computed here from the CSVs.
    finals = {name: _final_return(sweep_dir / name) for name in TRIALS}
    for lr in ("0.001", "0.002"):
        a, b = finals[f"training.lr={lr},seed=0"], finals[f"training.lr={lr},seed=1"]
        mean, std = (a + b) / 2, abs(a - b) / math.sqrt(2)
        assert f"training.lr={lr}  2 seeds  return {mean:.3f} +- {std:.3f}" in out
    assert "status" in out and "env steps" in out  # the progress table

    # evaluate reads a trial like any run (no Ray)
    assert main(["evaluate", str(sweep_dir / TRIALS[0]), "--episodes", "1"]) == 0
    capsys.readouterr()

    # Interrupted before its last trial ran: the same command runs that one only.
    import shutil

    shutil.rmtree(sweep_dir / TRIALS[3])
    stamps = {name: sorted((p, p.stat().st_mtime_ns) for p in (sweep_dir / name).rglob("*")) for name in TRIALS[:3]}
    again = _sweep(tmp_path, capsys)
    assert "4 trials, 3 done earlier (skipped), 0 to continue, 1 new" in again
    for name in TRIALS[:3]:  # not retrained: not a file touched
        assert sorted((p, p.stat().st_mtime_ns) for p in (sweep_dir / name).rglob("*")) == stamps[name]
    assert ckpt.read_meta(ckpt.latest_checkpoint(sweep_dir / TRIALS[3]))["env_steps"] == 800

    # A longer run of the same sweep continues every trial from its checkpoint (planned here, not run).
    longer = ["training.lr=0.001,0.002", *TINY[:-1], "stop.env_steps=1200", f"run.output_dir={tmp_path}"]
    trials = plan(CONFIG, [0, 1], longer)
    assert [t.status for t in trials] == ["continue"] * 4
    # Another experiment under the same name is refused, naming the key.
    with pytest.raises(ConfigError, match=r"holds another experiment \(model.embed_dim=16 there, 32"):
        other = [o for o in TINY if not o.startswith("model.embed_dim")]
        plan(CONFIG, [0, 1], ["training.lr=0.001,0.002", *other, "model.embed_dim=32", f"run.output_dir={tmp_path}"])


def test_specs_split_into_axes_and_shared_overrides():
    fixed, axes = parse_specs(["training.lr=0.001, 0.002", "run.checkpoint_every=5", "env.options={n_agents: 3, k: 1}"])
    assert fixed == ["run.checkpoint_every=5", "env.options={n_agents: 3, k: 1}"]  # a YAML mapping is one value
    assert [(a.key, a.values) for a in axes] == [("training.lr", ("0.001", "0.002"))]


@pytest.mark.parametrize(
    ("seeds", "specs", "message"),
    [
        ([0], ["training.lr=0.001,,0.002"], "has an empty value in its list"),
        ([0], ["training.lr=0.1,0.1"], "repeats a value"),
        ([0], ["training.lr=0.1", "training.lr=0.2,0.3"], "'training.lr' is given twice"),
        ([0], ["run.seed=1,2"], "expected --seeds S1 S2"),
        ([0], ["run.name=x"], "the sweep names each trial"),
        ([0, 0], [], "repeats a seed"),
        ([0], ["training.lr=0.001,-1"], "trial training.lr=-1,seed=0: training.lr="),
        ([0], ["model.graph.k=1,5"], "model.graph.k=5"),  # checked against the env: N=3 has 2 others
        ([0], ["training.lr=" + ",".join(str(i / 1e4 + 1e-5) for i in range(1001))], "at most 1000"),
        ([0], ["trainig.lr=1,2"], "unknown config key 'trainig'"),
    ],
)
def test_bad_sweeps_are_refused_before_ray_starts(seeds, specs, message, tmp_path):
    import ray

    with pytest.raises(ConfigError, match=None) as info:
        plan(CONFIG, seeds, [*specs, f"run.output_dir={tmp_path}"])
    assert message in str(info.value)
    assert not ray.is_initialized()
    assert not (tmp_path / "signal-sweep").exists()


def test_the_cli_reads_seeds_up_to_the_first_override(tmp_path, capsys):
    assert main(["sweep", CONFIG, "--seeds", "0", "x", f"run.output_dir={tmp_path}"]) == 2
    assert "--seeds: expected an integer seed" in capsys.readouterr().err
    assert main(["sweep", CONFIG, "--seeds", "0", "0", f"run.output_dir={tmp_path}"]) == 2
    assert "repeats a seed" in capsys.readouterr().err


def test_sigterm_stops_training_in_the_main_thread_and_is_left_alone_in_a_tune_worker_thread():
    before = signal.getsignal(signal.SIGTERM)
    with _stop_on_sigterm_in_main_thread() as installed:
        assert installed and signal.getsignal(signal.SIGTERM) is _stop_on_sigterm
    assert signal.getsignal(signal.SIGTERM) is before

    seen: dict[str, object] = {}

    def worker() -> None:  # as Tune runs a function trainable
        try:
            with _stop_on_sigterm_in_main_thread() as installed:
                seen["installed"] = installed
                seen["handler"] = signal.getsignal(signal.SIGTERM)
        except ValueError as err:  # what signal.signal raises outside the main thread
            seen["error"] = err

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"installed": False, "handler": before}
