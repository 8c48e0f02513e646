"""The graph heatmap written to TensorBoard: shape, colour scale, robustness."""

from __future__ import annotations

import numpy as np

from agents.tensorboard import heatmap


def test_heatmap_shape_and_colour_ends():
    img = heatmap(np.array([[0.0, 1.0], [0.5, np.nan]]), cell=3)
    assert img.shape == (3, 6, 6) and img.dtype == np.uint8
    assert img[:, 0, 0].tolist() == [68, 1, 84]  # 0 -> dark purple
    assert img[:, 0, 3].tolist() == [253, 231, 37]  # 1 -> yellow
    assert img[:, 3, 0].tolist() == [33, 145, 140]  # 0.5 -> teal
    assert img[:, 3, 3].tolist() == [68, 1, 84]  # NaN is drawn as 0, not a crash
    # each cell is a uniform block
    assert (img[:, :3, :3] == img[:, :1, :1]).all()


def test_heatmap_default_size_scales_with_the_team():
    assert heatmap(np.zeros((3, 3))).shape == (3, 192, 192)
    assert heatmap(np.zeros((64, 64))).shape == (3, 256, 256)  # at least 4 pixels per agent


def test_learner_metric_groups_and_fault_counters_reach_the_event_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agents.tensorboard import RunLogger

    logger = RunLogger(tmp_path)
    learner = {
        "policy_loss": 0.5,
        "moe_policy_usage_entropy": 1.2,
        "exit_distill_kl": 0.03,
        "loss_value": 0.25,
        "other_key": 9.0,
    }
    runners = {"episode_return_mean": -20.0, "episode_win_rate": 0.75}
    result = {"env_runners": runners, "learners": {"default_policy": learner}, "policy_lag": 1.0}
    logger.log_result(result, env_steps=4000, fps=1000.0)
    logger.log_faults({"env_errors": 2.0, "skipped_updates": 0.0}, env_steps=4000)
    logger.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = {tag: events.Scalars(tag)[-1] for tag in events.Tags()["scalars"]}
    assert scalars["moe/policy_usage_entropy"].value == np.float32(1.2)
    assert scalars["exit/distill_kl"].value == np.float32(0.03)
    assert scalars["loss_terms/value"].value == np.float32(0.25)  # a named term of the loss
    assert scalars["loss/policy_loss"].value == 0.5 and scalars["loss/policy_loss"].step == 4000
    assert scalars["faults/env_errors"].value == 2.0 and scalars["faults/skipped_updates"].value == 0.0
    assert scalars["return/episode_return_mean"].value == -20.0
    assert scalars["return/episode_win_rate"].value == 0.75
    assert scalars["perf/policy_lag"].value == 1.0  # training.sample_ahead
    assert not any("other_key" in tag for tag in scalars)  # only the known groups are written


def test_progress_summary_shows_the_win_rate_only_where_the_env_has_one(tmp_path):
    from agents.tensorboard import RunLogger

    logger = RunLogger(tmp_path)
    learner = {"gate_open_rate": 0.5, "messages_per_step": 1.25}
    with_win = {"env_runners": {"episode_win_rate": 0.875}, "learners": {"default_policy": learner}}
    assert logger.summary(with_win) == " | win 0.88 gates 0.50 msgs 1.2"
    assert logger.summary({"env_runners": {}, "learners": {"default_policy": learner}}) == " | gates 0.50 msgs 1.2"
    logger.close()


def test_labelled_heatmap_keeps_the_grid_and_draws_its_axes():
    """The grid is `heatmap`'s, pixel for pixel, at (MARGIN, MARGIN); the margins carry text (the indices and axis
    names), and the colour bar runs from the colour of 1 at the top to that of 0 at the bottom."""
    from agents.tensorboard import MARGIN, labelled_heatmap

    for n in (3, 64):
        matrix = np.random.default_rng(n).random((n, n))
        grid, img = heatmap(matrix), labelled_heatmap(matrix, "P(sender kept)")
        size = grid.shape[1]
        assert (img[:, MARGIN : MARGIN + size, MARGIN : MARGIN + size] == grid).all()
        ink = (img < 128).all(axis=0)  # near-black pixels: text
        assert ink[:MARGIN, MARGIN : MARGIN + size].sum() > 20  # sender indices and the word "sender"
        assert ink[MARGIN : MARGIN + size, :MARGIN].sum() > 20  # receiver indices and the word "receiver"
        bar = img[:, MARGIN : MARGIN + size, MARGIN + size + 12 + 5]
        assert bar[:, 0].tolist() == [253, 231, 37] and bar[:, -1].tolist() == [68, 1, 84]


def test_tick_labels_never_crowd_an_axis():
    from agents.tensorboard import tick_step

    assert [tick_step(n) for n in (3, 16, 17, 64, 256)] == [1, 1, 2, 4, 16]
    assert all(len(range(0, n, tick_step(n))) <= 16 for n in range(1, 1025))
