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
        assert model.graph.gumbel == (task == "graph_n6_gumbel")  # the without-noise arm must say so: default on
