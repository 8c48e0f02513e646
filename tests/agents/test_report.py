"""`commformer report` on runs whose final returns are chosen here, so that every statistic can be worked out by hand:
means, interquartile means, the min-max normalised IQM over tasks, the probability of improvement (pairs counted
by hand, ties as one half), intervals that hold their estimate; the curves and marl-eval's documented format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from agents.cli import main
from agents.config import ConfigError
from agents.metrics import MetricsWriter, Row
from agents.report import report

# config -> task -> final returns of seeds 0..3
FINALS = {
    "0.001": {"signal": [1.0, 2.0, 3.0, 10.0], "memory": [5.0, 5.0, 5.0, 5.0]},
    "0.002": {"signal": [0.0, 1.0, 2.0, 3.0], "memory": [4.0, 6.0, 4.0, 6.0]},
}


def _run(root: Path, lr: str, task: str, seed: int, final: float) -> None:
    run_dir = root / f"{task}-lr{lr}-s{seed}"
    run_dir.mkdir(parents=True)
    config = {
        "env": {"name": task, "options": {"n_agents": 3}, "team_reward": "mean", "use_state": False},
        "model": {"embed_dim": 16},
        "training": {"lr": float(lr)},
        "stop": {"env_steps": 1200},
        "run": {"seed": seed, "name": run_dir.name, "output_dir": str(root)},
        "resources": {"num_env_runners": seed % 2},  # not part of the experiment: seeds of one config still
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    writer = MetricsWriter(run_dir, keep_until=0)
    writer.write(Row(1, 400, 1.0, final - 1.0, 25.0, None))
    if lr == "0.001" and task == "signal" and seed == 3:  # the last iteration ended no episode: the one before counts
        writer.write(Row(2, 800, 2.0, final, 25.0, None))
        writer.write(Row(3, 1200, 3.0, math.nan, math.nan, None))
    else:
        writer.write(Row(2, 800, 2.0, final - 0.5, 25.0, None))
        writer.write(Row(3, 1200, 3.0, final, 25.0, None))
    writer.close()


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    import agents.report

    patch = pytest.MonkeyPatch()  # fewer resamples: the estimates checked here do not depend on their number
    patch.setattr(agents.report, "REPS", 2000)
    patch.setattr(agents.report, "CURVE_REPS", 200)
    root = tmp_path_factory.mktemp("runs")
    for lr, tasks in FINALS.items():
        for task, finals in tasks.items():
            for seed, final in enumerate(finals):
                _run(root, lr, task, seed, final)
    out = tmp_path_factory.mktemp("report")
    try:
        yield report([str(root)], str(out)), out
    finally:
        patch.undo()


def _row(result, config, task):
    return next(r for r in result["per_task"] if r["config"] == config and r["task"] == task)


def test_runs_are_grouped_by_config_and_task(reported):
    result, _ = reported
    assert result["configs"] == ["training.lr=0.001", "training.lr=0.002"]
    assert result["tasks"] == ["memory", "signal"]
    assert _row(result, "training.lr=0.001", "signal")["scores"] == [1.0, 2.0, 3.0, 10.0]


def test_per_task_mean_and_iqm_match_the_hand_computed_values(reported):
    result, _ = reported
    a = _row(result, "training.lr=0.001", "signal")
    assert a["mean"] == pytest.approx(4.0)  # (1 + 2 + 3 + 10) / 4
    assert a["iqm"] == pytest.approx(2.5)  # the middle half: (2 + 3) / 2
    b = _row(result, "training.lr=0.002", "memory")
    assert b["mean"] == pytest.approx(5.0) and b["iqm"] == pytest.approx(5.0)  # middle half of 4, 4, 6, 6
    for row in result["per_task"]:
        for key in ("mean", "iqm"):
            low, high = row[f"{key}_ci95"]
            assert min(row["scores"]) <= low <= row[key] <= high <= max(row["scores"])
    constant = _row(result, "training.lr=0.001", "memory")
    assert constant["mean_ci95"] == [5.0, 5.0]  # every resample of four 5s has mean 5
    assert a["mean_ci95"][1] > a["mean_ci95"][0]  # a spread sample has a real interval


def test_normalised_iqm_over_tasks(reported):
    result, _ = reported
    a = next(r for r in result["aggregate"] if r["config"] == "training.lr=0.001")
    # signal: min 0, max 10 over all runs -> 0.1, 0.2, 0.3, 1.0; memory: min 4, max 6 -> 0.5 x 4.
    # Sorted 0.1 0.2 | 0.3 0.5 0.5 0.5 | 0.5 1.0: the middle half's mean is 0.45.
    assert a["normalised_iqm"] == pytest.approx(0.45)


def test_probability_of_improvement_counts_pairs(reported):
    result, _ = reported
    forward = next(r for r in result["improvement"] if r["x"] == "training.lr=0.001")
    # signal: pairs (a > b) + ties / 2 over 16 pairs: 1.5 + 2.5 + 3.5 + 4 = 11.5; memory: 5 vs 4,6,4,6 -> 8 of 16.
    assert forward["probability"] == pytest.approx((11.5 / 16 + 8 / 16) / 2)
    backward = next(r for r in result["improvement"] if r["x"] == "training.lr=0.002")
    assert backward["probability"] == pytest.approx(1 - forward["probability"])
    low, high = forward["probability_ci95"]
    assert 0.0 <= low <= forward["probability"] <= high <= 1.0


def test_curves_and_the_marl_eval_export(reported):
    result, out = reported
    from PIL import Image

    assert sorted(Path(p).name for p in result["curves"]) == ["curves_memory.png", "curves_signal.png"]
    with Image.open(out / "curves_signal.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
    data = json.loads((out / "marl_eval.json").read_text())
    # {env: {task: {algorithm: {run: {"step_i": {"step_count", metric: [..]}, "absolute_metrics": {...}}}}}}
    assert set(data) == {"signal", "memory"}
    algorithms = data["signal"]["default"]
    assert set(algorithms) == {"training.lr=0.001", "training.lr=0.002"}
    assert all("," not in name for name in algorithms)  # marl-eval splits algorithm names at commas
    run = algorithms["training.lr=0.001"]["seed_3"]
    assert run["step_0"] == {"step_count": 400, "return": [9.0]}
    assert "step_2" not in run  # the iteration without an episode is no step
    assert run["absolute_metrics"] == {"return": [10.0]}
    assert set(algorithms["training.lr=0.002"]) == {"seed_0", "seed_1", "seed_2", "seed_3"}
    assert json.loads((out / "report.json").read_text())["configs"] == result["configs"]


def test_bad_inputs_are_refused_by_name(tmp_path, capsys):
    with pytest.raises(ConfigError, match="holds no run"):
        report([str(tmp_path)], str(tmp_path / "out"))
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("a,b\n")
    (run_dir / "config.yaml").write_text("env: {name: signal}\n")
    assert main(["report", str(run_dir), "--out", str(tmp_path / "o")]) == 2
    assert "expected iteration,env_steps" in capsys.readouterr().err
