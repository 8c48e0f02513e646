"""benchmarks/critic_rerun.py times every case that applies to a config, and refuses one without gates by name."""

from __future__ import annotations

import pytest

from benchmarks import critic_rerun

SMALL = ["--config", "configs/predator_prey.yaml", "--batch", "16", "--rounds", "2"]


def test_one_dense_block_gets_both_reruns_and_two_blocks_the_teams_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert critic_rerun.main(SMALL) == 0
    out = capsys.readouterr().out
    assert "rerun by receivers" in out and "rerun by teams" in out and "greedy (no rerun)" in out
    assert "of the agents" in out and out.count("ms per step") == 3
    assert critic_rerun.main([*SMALL, "model.num_blocks=2"]) == 0
    out = capsys.readouterr().out
    assert "2 block(s)" in out and "rerun by receivers" not in out and out.count("ms per step") == 2


def test_a_config_without_gates_is_refused_by_name() -> None:
    with pytest.raises(SystemExit, match=r"model\.gates\.enabled is false"):
        critic_rerun.main([*SMALL, "model.gates.enabled=false"])
