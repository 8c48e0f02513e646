"""benchmarks/gpu_scale.py: the table against a hand computation, and every arm a valid experiment config."""

from __future__ import annotations

import pytest

from agents.config import load_config
from benchmarks.gpu_scale import ARMS, table


def test_table_shares_and_per_thousand_steps_by_hand():
    row = {
        "arm": "gpu",
        "env_steps_per_s": 10_000.0,
        "env_steps": 20_000,
        "wall_s": 2.0,
        "update_s": 1.2,
        "fetch_s": 0.6,
        "runner_env_s": 0.4,
        "runner_inference_s": 0.3,
        "runner_sample_s": 1.0,
        "remote_runners": True,
    }
    last = table([row]).splitlines()[-1]
    # shares of 2.0 s: 60% / 30% / 10%; per 1,000 of 20,000 steps: 60 / 30 / 10 ms; runners 20 / 15 / 15 ms
    assert last == "| gpu | 10,000 | 60.0% | 30.0% | 10.0% | 60.0 / 30.0 / 10.0 | 20.0 / 15.0 / 15.0 |"
    synchronous = {**row, "fetch_s": None}  # no sample-ahead: no separate hand-off, it is in the rest
    assert table([synchronous]).splitlines()[-1].startswith("| gpu | 10,000 | 60.0% | 0.0% | 40.0% |")


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_every_arm_is_a_valid_config(arm):
    config = load_config("configs/smax_3m.yaml", list(ARMS[arm]))
    assert config.training.minibatch_size <= config.training.train_batch_size
