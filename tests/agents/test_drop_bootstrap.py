"""DropBootstrapSteps, the learner pipeline's last piece, on hand-made batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing

from agents.learner import DropBootstrapSteps

ADV = Postprocessing.ADVANTAGES


def _batch() -> dict:
    keep = torch.tensor([True, True, False, True, True, True, False])
    return {
        "default_policy": {
            Columns.OBS: {"obs": torch.arange(14.0).view(7, 2), "alive": torch.ones(7, 2)},
            Columns.ACTIONS: np.arange(7),
            ADV: torch.tensor([1.0, 3.0, 100.0, 5.0, 7.0, 9.0, -50.0]),
            Columns.LOSS_MASK: keep,
        }
    }


def test_keeps_the_counted_rows_of_every_column_and_restandardises_advantages():
    out = DropBootstrapSteps()(rl_module=None, batch=_batch(), episodes=[])["default_policy"]
    assert Columns.LOSS_MASK not in out
    rows = [0, 1, 3, 4, 5]
    assert torch.equal(out[Columns.OBS]["obs"], torch.arange(14.0).view(7, 2)[rows])
    assert out[Columns.OBS]["alive"].shape == (5, 2)
    assert out[Columns.ACTIONS].tolist() == rows
    kept = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0])  # the bootstrap rows' 100 and -50 play no part
    assert torch.allclose(out[ADV], (kept - 5.0) / kept.std())


def test_a_batch_without_a_loss_mask_is_left_as_it_is():
    batch = _batch()
    del batch["default_policy"][Columns.LOSS_MASK]
    out = DropBootstrapSteps()(rl_module=None, batch=batch, episodes=[])["default_policy"]
    assert torch.equal(out[ADV], _batch()["default_policy"][ADV])


def test_a_column_that_is_not_one_row_per_step_is_named():
    batch = _batch()
    batch["default_policy"]["extra"] = torch.zeros(3)
    with pytest.raises(TypeError, match="'extra' is a Tensor of length 3; expected a tensor or array of 7 rows"):
        DropBootstrapSteps()(rl_module=None, batch=batch, episodes=[])


def test_a_padded_sequence_mask_is_refused():
    batch = _batch()
    batch["default_policy"][Columns.LOSS_MASK] = torch.ones(7, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"has shape \(7, 4\); expected one entry per step"):
        DropBootstrapSteps()(rl_module=None, batch=batch, episodes=[])
