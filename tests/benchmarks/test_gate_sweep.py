"""benchmarks/gate_sweep.py: every task changes what its name says, whatever the ready config's defaults are."""

from __future__ import annotations

import pytest

from agents.config import load_config
from benchmarks import gate_sweep


@pytest.mark.parametrize("task", gate_sweep.TASKS)
def test_each_task_sets_what_it_names(task: str) -> None:
    config = load_config("configs/signal.yaml", gate_sweep.TASKS[task])
    options, model, training = config.env.options, config.model, config.training
    fixed = task in ("fixed_edge", "useless", "start_closed")
    assert (training.graph_freeze_fraction == 0.0) == fixed
    assert options.offset == (
        1 if task in ("fixed_edge", "start_closed") else load_config("configs/signal.yaml").env.options.offset
    )
    assert (model.gates.init_bias == -3.0) == (task == "start_closed")
    if task.startswith("graph_n6"):
        assert options.n_agents == 6
        assert model.graph.gumbel == (task != "graph_n6")  # the without-noise arm must say so: default on
    assert model.graph.held_product == (task == "graph_n6_held")
    assert (model.graph.warmup_fraction > 0) == (task == "graph_n6_warm")


def test_the_sweep_plans_one_tune_trial_per_task_cost_and_seed_and_rows_each(tmp_path, monkeypatch) -> None:
    """`gate_sweep sweep` hands agents/sweep.py every (cost, seed) of a task as one trial, with the task's settings
    and the benchmark's, then writes a row per trial that has none (Tune's training is recorded, not run)."""
    import agents.sweep

    ran: list[list[agents.sweep.Trial]] = []
    rows: list[tuple[str, float, int]] = []
    monkeypatch.setattr(agents.sweep, "run", lambda trials: ran.append(list(trials)))
    monkeypatch.setattr(gate_sweep, "write_row", lambda task, cost, seed, *a, **k: rows.append((task, cost, seed)))
    out = tmp_path / "rows"
    out.mkdir()
    (out / f"{gate_sweep._name('useless', 0.01, 1)}.json").write_text("{}")  # a row from an earlier sweep
    gate_sweep.sweep(["fixed_edge", "useless"], [0.0, 0.01], [0, 1], 2000, 3, out, tmp_path / "runs")
    assert [len(trials) for trials in ran] == [4, 4]
    for task, trials in zip(["fixed_edge", "useless"], ran, strict=True):
        assert {(t.config.model.gates.cost_weight, t.seed) for t in trials} == {
            (c, s) for c in (0.0, 0.01) for s in (0, 1)
        }
        for trial in trials:
            assert trial.config.env.options.offset == (1 if task == "fixed_edge" else -1)  # -1: the wrong edge
            assert trial.config.training.graph_freeze_fraction == 0.0
            assert trial.config.stop.env_steps == 2000 and trial.config.resources.num_env_runners == 0
            assert trial.run_dir.parent == (tmp_path / "runs" / f"gate_sweep-{task}").resolve()
    expected = {(task, c, s) for task in ("fixed_edge", "useless") for c in (0.0, 0.01) for s in (0, 1)}
    assert sorted(rows) == sorted(expected - {("useless", 0.01, 1)})
